"""Convolution and pooling against PyTorch float64: forward values, gradients with respect to
weights, biases and inputs, on batches that cross the kernels' tile size, and the layers'
one-line display and error messages. (The registry tests check each op's VJP and JVP against
central differences of its NumPy form.)"""

import numpy as np
import pytest
import sympy as sp
import torch
import torch.nn.functional as F

import symgrad as sg
from symgrad.pipeline import show_text

C, H, W, CO, K = 2, 6, 7, 3, 3


def _conv2d_model():
    x = sp.MatrixSymbol("x", C * H, W)
    w = sp.MatrixSymbol("w", CO * C * K, K)
    b = sp.MatrixSymbol("b", CO, 1)
    y = sg.conv2d(x, w, b, stride=(1, 2), padding=1, in_channels=C, out_channels=CO)
    h = sg.relu(y)
    pooled_max = sg.max_pool2d(h, 2, channels=CO)
    pooled_avg = sg.avg_pool2d(h, 2, stride=1, channels=CO)
    loss = sg.sum(pooled_max.applyfunc(sp.tanh)) + sg.sum(pooled_avg.applyfunc(lambda v: v**2))
    return sg.Model("conv2d_pools", loss=loss, params=[w, b], inputs=[x], wrt=[w, b, x],
                    outputs={"y": y, "pooled": pooled_max})


def _torch_conv2d(X, Wv, Bv):
    n = len(X)
    tx = torch.tensor(X.reshape(n, C, H, W), requires_grad=True)
    tw = torch.tensor(Wv.reshape(CO, C, K, K), requires_grad=True)
    tb = torch.tensor(Bv.reshape(CO), requires_grad=True)
    y = F.conv2d(tx, tw, tb, stride=(1, 2), padding=1)
    h = torch.relu(y)
    pooled = F.max_pool2d(h, 2)
    per_example = torch.tanh(pooled).sum((1, 2, 3)) + (F.avg_pool2d(h, 2, stride=1) ** 2).sum((1, 2, 3))
    loss = per_example.mean()
    loss.backward()
    return loss.item(), tw.grad.numpy(), tb.grad.numpy(), tx.grad.numpy(), y.detach().numpy(), pooled.detach().numpy()


@pytest.fixture(scope="module")
def conv2d_module(compile_model):
    return compile_model(_conv2d_model())


@pytest.mark.parametrize("n", [1, 7, 300])  # one example, a few, more than one tile
def test_conv2d_and_pools_agree_with_pytorch(conv2d_module, n):
    rng = np.random.default_rng(n)
    X = rng.standard_normal((n, C * H, W))
    Wv = rng.standard_normal((CO * C * K, K))
    Bv = rng.standard_normal((CO, 1))
    loss, grads = conv2d_module.value_and_grad(w=Wv, b=Bv, x=X)
    t_loss, t_w, t_b, t_x, t_y, t_pooled = _torch_conv2d(X, Wv, Bv)
    assert loss == pytest.approx(t_loss, rel=1e-12)
    np.testing.assert_allclose(grads["w"], t_w.reshape(Wv.shape), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["b"], t_b.reshape(Bv.shape), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.reshape(grads["x"], X.shape), t_x.reshape(X.shape), rtol=1e-10, atol=1e-12)
    out = conv2d_module.forward(w=Wv, b=Bv, x=X)
    np.testing.assert_allclose(np.reshape(out["y"], (n, -1)), t_y.reshape(n, -1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.reshape(out["pooled"], (n, -1)), t_pooled.reshape(n, -1), rtol=1e-12, atol=1e-12)


L, C1, CO1, K1 = 11, 3, 2, 4


def _conv1d_model():
    """conv1d with stride and padding, weights given per example (an input) and no bias."""
    x = sp.MatrixSymbol("x", C1, L)
    w = sp.MatrixSymbol("w", CO1 * C1, K1)
    y = sg.conv1d(x, w, stride=2, padding=2)
    loss = sg.sum(y.applyfunc(sp.sin))
    return sg.Model("conv1d_inputs", loss=loss, inputs=[x, w], wrt=[x, w], reduce="sum", outputs={"y": y})


def test_conv1d_with_per_example_weights_agrees_with_pytorch(compile_model):
    module = compile_model(_conv1d_model())
    rng = np.random.default_rng(5)
    n = 9
    X = rng.standard_normal((n, C1, L))
    Wv = rng.standard_normal((n, CO1 * C1, K1))
    loss, grads = module.value_and_grad(x=X, w=Wv)
    tx = torch.tensor(X, requires_grad=True)
    tw = torch.tensor(Wv.reshape(n, CO1, C1, K1), requires_grad=True)
    y = torch.stack([F.conv1d(tx[e:e + 1], tw[e], stride=2, padding=2)[0] for e in range(n)])
    t_loss = torch.sin(y).sum()
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(grads["x"], tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grads["w"], tw.grad.numpy().reshape(Wv.shape), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(module.forward(x=X, w=Wv)["y"], y.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_each_layer_and_its_gradient_show_as_one_line():
    text = show_text(_conv2d_model())
    assert "y = conv2d(x, w, stride=(1, 2), padding=1) + channel_repeat(b)" in text
    assert "max_pool2d(h, 2)" in text and "avg_pool2d(h, 2, stride=1)" in text
    assert "w_bar = conv2d_weight_grad(x, y_bar, stride=(1, 2), padding=1)" in text
    assert "x_bar = conv_transpose2d(y_bar, w, stride=(1, 2), padding=1)" in text
    assert "b_bar = channel_sum(y_bar)" in text
    assert "conv1d(x, w, stride=2, padding=2)" in show_text(_conv1d_model())


def test_layouts_that_do_not_fit_are_refused_with_the_layout_to_use():
    x = sp.MatrixSymbol("x", 10, 5)
    with pytest.raises(sp.ShapeError, match="not a multiple of in_channels=3"):
        sg.conv2d(x, sp.MatrixSymbol("w", 9, 3), in_channels=3)
    with pytest.raises(sp.ShapeError, match=r"out_channels\*in_channels = 4"):
        sg.conv2d(x, sp.MatrixSymbol("w", 6, 3), in_channels=2, out_channels=2)
    with pytest.raises(sp.ShapeError, match="does not fit"):
        sg.conv2d(x, sp.MatrixSymbol("w", 7, 7))
    with pytest.raises(sp.ShapeError, match="one number per output channel"):
        sg.conv2d(x, sp.MatrixSymbol("w", 3, 3), sp.MatrixSymbol("b", 2, 1))
    with pytest.raises(sp.ShapeError, match="at most half the kernel"):
        sg.max_pool2d(x, 2, padding=2)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_strided_view_as_input_and_float32_kernels(compile_model, dtype):
    """The helpers read their args through strides: a transposed input (column stride not 1)
    and average pooling with padding; float32 kernels agree with float64 PyTorch to float32."""
    xt = sp.MatrixSymbol("xt", 7, 6)  # the image, transposed
    w = sp.MatrixSymbol("w", 2 * 2, 3)
    y = sg.avg_pool2d(sg.conv2d(xt.T, w, stride=(2, 1), out_channels=2), 3, stride=1, padding=1, channels=2)
    module = compile_model(sg.Model(f"conv_view_{dtype}", loss=sg.sum(y.applyfunc(sp.sin)), params=[w],
                                    inputs=[xt], wrt=[w, xt]), dtype=dtype)
    rng = np.random.default_rng(11)
    XT, Wv = rng.standard_normal((4, 7, 6)), rng.standard_normal((4, 3))
    loss, grads = module.value_and_grad(w=Wv, xt=XT)
    tx = torch.tensor(XT, requires_grad=True)
    tw = torch.tensor(Wv, requires_grad=True)
    out = F.conv2d(tx.transpose(1, 2)[:, None], tw.reshape(2, 1, 2, 3), stride=(2, 1))
    t_loss = torch.sin(F.avg_pool2d(out, 3, stride=1, padding=1)).sum((1, 2, 3)).mean()
    t_loss.backward()
    tol = 1e-12 if dtype == "float64" else 2e-5
    assert loss == pytest.approx(t_loss.item(), rel=tol, abs=tol)
    np.testing.assert_allclose(grads["w"], tw.grad.numpy(), rtol=tol, atol=tol)
    np.testing.assert_allclose(grads["xt"], tx.grad.numpy(), rtol=tol, atol=tol)
