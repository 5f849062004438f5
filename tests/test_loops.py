"""Sums and products over an index against PyTorch float64: one C loop, whatever the length.

Checks values and gradients of a Rosenbrock sum at two lengths (and that the generated C
does not grow with the length), a Lennard-Jones pair potential (a nested sum whose inner
bounds depend on the outer index), a product with a zero term, and a batch of per-example
sums with shared params across the kernels' tile size; and the errors for loops symgrad
cannot read. (The registry tests check the sum's VJP and JVP against central differences.)"""

import time

import numpy as np
import pytest
import sympy as sp
import torch

import symgrad as sg
from symgrad.errors import ModelShapeError, UnsupportedFunctionError
from symgrad.pipeline import generate, show_text

i, j = sp.symbols("i j", integer=True)


def _rosenbrock(n):
    x = sp.MatrixSymbol("x", n, 1)
    f = sp.Sum(100 * (x[i + 1, 0] - x[i, 0] ** 2) ** 2 + (1 - x[i, 0]) ** 2, (i, 0, n - 2))
    return sg.Model(f"rosenbrock_sum_{n}", loss=f, params=[x])


def _torch_rosenbrock(X):
    t = torch.tensor(X, requires_grad=True)
    loss = (100 * (t[1:] - t[:-1] ** 2) ** 2 + (1 - t[:-1]) ** 2).sum()
    loss.backward()
    return loss.item(), t.grad.numpy()


@pytest.mark.parametrize("n", [20, 2000])
def test_a_sum_is_one_loop_that_agrees_with_pytorch(compile_model, n):
    module = compile_model(_rosenbrock(n))
    X = np.random.default_rng(n).standard_normal((n, 1))
    loss, grads = module.value_and_grad(x=X)
    t_loss, t_grad = _torch_rosenbrock(X)
    assert loss == pytest.approx(t_loss, rel=1e-13)
    np.testing.assert_allclose(grads["x"], t_grad, rtol=1e-12, atol=1e-10)


def test_code_size_and_build_time_do_not_depend_on_the_length():
    sizes, times = {}, {}
    for n in (20, 2000):
        start = time.perf_counter()
        package = generate(_rosenbrock(n)).package
        times[n] = time.perf_counter() - start
        sizes[n] = sum(len(package.files[f]) for f in package.c_sources)
    assert abs(sizes[2000] - sizes[20]) < 0.01 * sizes[20]  # the same C but for the numbers in it
    assert times[2000] < 3 * times[20] + 0.5


def _lennard_jones(n):
    r = sp.MatrixSymbol("r", n, 3)
    d2 = sum((r[i, k] - r[j, k]) ** 2 for k in range(3))
    energy = sp.Sum(sp.Sum(4 * (d2 ** -6 - d2 ** -3), (j, i + 1, n - 1)), (i, 0, n - 2))
    return sg.Model(f"lennard_jones_{n}", loss=energy, params=[r])


def test_a_nested_pair_sum_agrees_with_pytorch(compile_model):
    n = 12
    module = compile_model(_lennard_jones(n))
    grid = np.array([[a, b, c] for a in range(3) for b in range(3) for c in range(3)], float)[:n]
    R = 1.12 * grid + 0.05 * np.random.default_rng(3).standard_normal((n, 3))
    loss, grads = module.value_and_grad(r=R)
    t = torch.tensor(R, requires_grad=True)
    upper = torch.triu_indices(n, n, 1)
    d2 = ((t[:, None, :] - t[None, :, :]) ** 2).sum(-1)[upper[0], upper[1]]
    t_loss = (4 * (d2 ** -6 - d2 ** -3)).sum()
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(grads["r"], t.grad.numpy(), rtol=1e-10, atol=1e-10)
    assert "sum(i = 0..10: sum(j = i + 1..11: " in show_text(_lennard_jones(n))


def test_a_product_with_a_zero_term_and_per_example_sums_agree_with_pytorch(compile_model):
    n = 5
    x = sp.MatrixSymbol("x", n, 1)
    a, w = sp.symbols("a w")
    product = sp.Product(a + sp.sin(x[i, 0]), (i, 0, n - 1))
    weighted = sp.Sum(w * x[i, 0] ** 2 * (i + 1), (i, 0, n - 1))
    model = sg.Model("product_and_sum", loss=product + sp.tanh(weighted), params=[a, w], inputs=[x], wrt=[a, w, x],
                     outputs={"product": product})
    module = compile_model(model)
    rng = np.random.default_rng(7)
    batch = 300  # more than one tile
    X = rng.standard_normal((batch, n, 1))
    a_value, w_value = 0.3, -0.7
    X[4, 2, 0] = np.arcsin(-a_value)  # a zero term: its gradient is the product of the others
    X[5, 1, 0] = X[5, 3, 0] = np.arcsin(-a_value)  # two zero terms: every gradient is 0
    loss, grads = module.value_and_grad(a=a_value, w=w_value, x=X)
    tx = torch.tensor(X, requires_grad=True)
    ta = torch.tensor(a_value, requires_grad=True, dtype=torch.float64)
    tw = torch.tensor(w_value, requires_grad=True, dtype=torch.float64)
    t_product = torch.prod(ta + torch.sin(tx[:, :, 0]), dim=1)
    weights = torch.arange(1, n + 1, dtype=torch.float64)
    t_loss = (t_product + torch.tanh((tw * tx[:, :, 0] ** 2 * weights).sum(1))).mean()
    t_loss.backward()
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    assert grads["a"] == pytest.approx(ta.grad.item(), rel=1e-10)
    assert grads["w"] == pytest.approx(tw.grad.item(), rel=1e-10)
    np.testing.assert_allclose(grads["x"], tx.grad.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(module.forward(a=a_value, w=w_value, x=X)["product"], t_product.detach().numpy(),
                               rtol=1e-13, atol=1e-15)


def test_loops_symgrad_cannot_read_are_refused_naming_the_problem():
    x = sp.MatrixSymbol("x", 4, 1)
    with pytest.raises(ModelShapeError, match=r"reads rows 1\.\.4 of a matrix with 4 rows"):
        sg.Model("past_the_end", loss=sp.Sum(x[i + 1, 0], (i, 0, 3)), params=[x])
    with pytest.raises(ModelShapeError, match="not affine"):
        sg.Model("square_index", loss=sp.Sum(x[i * i, 0], (i, 0, 1)), params=[x])
    with pytest.raises(ModelShapeError, match="finite range"):
        sg.Model("infinite", loss=sp.Sum(x[0, 0] ** i, (i, 0, sp.oo)), params=[x])
    n = sp.Symbol("n", integer=True)
    with pytest.raises(ModelShapeError, match="uses n"):
        sg.Model("symbolic_bound", loss=sp.Sum(x[i, 0], (i, 0, n)), params=[x])
    with pytest.raises((ModelShapeError, UnsupportedFunctionError), match="matrix"):
        sg.Model("matrix_term", loss=sp.Sum(sg.sum(x * i), (i, 0, 2)), params=[x])


def test_the_hessian_through_sums_agrees_with_pytorch(compile_model):
    """Forward over reverse through loops: the loop's reverse pass has a JVP (a reverse loop of
    the term's directional derivative), also where a capture is a value computed outside
    (the mean of x) and a scalar param multiplies a whole sum."""
    n = 6
    x = sp.MatrixSymbol("x", n, 1)
    a = sp.Symbol("a")
    mean = sg.sum(x) / n
    loss = (sp.Sum(100 * (x[i + 1, 0] - x[i, 0] ** 2) ** 2 + (a - x[i, 0]) ** 2, (i, 0, n - 2))
            + a * sp.Sum((x[i, 0] - mean) ** 2, (i, 0, n - 1)))
    module = compile_model(sg.Model("sums_hessian", loss=loss, params=[x, a], kernels=("hvp", "hessian")))
    X, A = np.random.default_rng(1).standard_normal((n, 1)), 0.7

    def reference(v):
        tx, ta = v[:n].reshape(n, 1), v[n]
        return ((100 * (tx[1:] - tx[:-1] ** 2) ** 2 + (ta - tx[:-1]) ** 2).sum()
                + ta * ((tx - tx.mean()) ** 2).sum())

    point = torch.tensor(np.concatenate([X[:, 0], [A]]))
    expected = torch.autograd.functional.hessian(reference, point).numpy()
    _, _, blocks = module.hessian(x=X, a=A)
    got = np.zeros((n + 1, n + 1))
    got[:n, :n] = blocks["x"]["x"].reshape(n, n)
    got[:n, n] = blocks["x"]["a"].reshape(n)
    got[n, :n] = blocks["a"]["x"].reshape(n)
    got[n, n] = blocks["a"]["a"]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-10)


def test_indexed_elements_of_a_declared_matrix_read_as_its_elements():
    x = sp.MatrixSymbol("x", 5, 1)
    X = sp.IndexedBase(x)
    indexed = sg.Model("indexed_sum", loss=sp.Sum(X[i] ** 2 * X[0] + sp.sin(X[i + 1]), (i, 0, 3)), params=[x])
    written = sg.Model("element_sum", loss=sp.Sum(x[i, 0] ** 2 * x[0, 0] + sp.sin(x[i + 1, 0]), (i, 0, 3)),
                       params=[x])
    assert show_text(indexed).replace("indexed_sum", "element_sum") == show_text(written)
    with pytest.raises(UnsupportedFunctionError, match="needs two indices"):
        sg.Model("two_indices", loss=sp.Sum(sp.IndexedBase(sp.MatrixSymbol("M", 3, 3))[i], (i, 0, 2)),
                 params=[sp.MatrixSymbol("M", 3, 3)])


def test_float32_loops_agree_with_float64(compile_model):
    model = _lennard_jones(5)
    single, double = compile_model(model, dtype="float32"), compile_model(model)
    grid = np.array([[a, b, 0] for a in range(3) for b in range(2)], float)[:5]
    R = 1.12 * grid + 0.05 * np.random.default_rng(4).standard_normal((5, 3))
    (l32, g32), (l64, g64) = single.value_and_grad(r=R), double.value_and_grad(r=R)
    assert l32 == pytest.approx(l64, rel=1e-5)
    np.testing.assert_allclose(g32["r"], g64["r"], rtol=1e-4, atol=1e-4 * np.abs(g64["r"]).max())


def test_empty_ranges_and_terms_without_the_index(compile_model):
    w, x = sp.Symbol("w"), sp.MatrixSymbol("x", 3, 1)
    loss = sp.Sum(w, (i, 0, 9)) + sp.Sum(x[i, 0], (i, 2, 1)) + sp.Product(x[i, 0], (i, 3, 2)) + sp.Sum(1, (i, 0, 4)) * w
    module = compile_model(sg.Model("edge_loops", loss=loss, params=[w, x]))
    loss_value, grads = module.value_and_grad(w=2.0, x=np.ones((3, 1)))
    assert loss_value == 31.0 and grads["w"] == 15.0  # 10 w + 0 + 1 + 5 w
    np.testing.assert_array_equal(grads["x"], np.zeros((3, 1)))
