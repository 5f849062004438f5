"""Matrix models: derivative rules at random shapes, networks against NumPy by hand,
code size, numerical stability, precision and batching."""

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import ops
from symgrad.graph import Builder, Graph, Node
from symgrad.interpret import evaluate
from symgrad.plan import plan_kernel

from conftest import central_difference


def _random_shapes(op_name, rng):
    r = lambda: int(rng.integers(1, 5))  # noqa: E731
    m, k, n = r(), r(), r()
    return {
        "matmul": [((m, k), (k, n))],
        "transpose": [((m, n),)],
        "sum": [((m, n),)],
        "trace": [((m, m),)],
        "softmax": [((m, n),)],
        "log_softmax": [((m, n),)],
        "logsumexp": [((m, n),)],
    }[op_name]


@pytest.mark.parametrize("op_name", ["matmul", "transpose", "sum", "trace", "softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("seed", range(4))
def test_tensor_vjp_at_random_shapes(op_name, seed):
    rng = np.random.default_rng(seed)
    op = ops.get(op_name)
    for shapes in _random_shapes(op_name, rng):
        g = Graph()
        b = Builder(g)
        leaves = [b.apply("symbol", attrs=(f"a{k}", "param", s, sp.MatrixSymbol(f"a{k}", *s)))
                  for k, s in enumerate(shapes)]
        out_shape = op.shape(list(shapes), ())
        out = g.intern(Node(op_name, tuple(leaves), (), out_shape, False))
        gsym = sp.MatrixSymbol("g", *out_shape) if out_shape else sp.Symbol("g")
        cot = b.apply("symbol", attrs=("g", "param", out_shape, gsym))
        values = [rng.uniform(-1, 1, size=s) for s in shapes]
        weights = rng.standard_normal(out_shape)
        env = {f"a{k}": v for k, v in enumerate(values)} | {"g": weights}
        for k, contribution in enumerate(op.vjp(b, out, cot)):
            got = evaluate(g, env, [contribution])[contribution]

            def scalarized(x, k=k):
                args = list(values)
                args[k] = x
                return float(np.sum(weights * op.numpy(args, ())))

            np.testing.assert_allclose(got, central_difference(scalarized, values[k]), rtol=1e-6, atol=1e-8)


# --- networks against NumPy written by hand ------------------------------------------------


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


@pytest.fixture(scope="module")
def xor_net(compile_model):
    x = sp.MatrixSymbol("x", 1, 2)
    t = sp.Symbol("t")
    W1, b1 = sp.MatrixSymbol("W1", 2, 2), sp.MatrixSymbol("b1", 1, 2)
    W2, b2 = sp.MatrixSymbol("W2", 2, 1), sp.Symbol("b2")
    h = sg.sigmoid(x * W1 + b1)
    y = sg.sigmoid((h * W2)[0, 0] + b2)
    return compile_model(sg.Model("xor_test", loss=(t - y) ** 2, params=[W1, b1, W2, b2], inputs=[x, t],
                                  outputs={"y": y}))


XOR_X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
XOR_T = np.array([0.0, 1.0, 1.0, 0.0])
XOR_START = {"W1": np.array([[3.0, 2.0], [4.0, 3.0]]), "b1": np.array([-2.0, -4.0]),
             "W2": np.array([5.0, -5.0]), "b2": -2.0}


def _xor_by_hand(W1, b1, W2, b2):
    H = _sigmoid(XOR_X @ W1 + b1)
    Y = _sigmoid(H @ W2 + b2)
    dY = 2 * (Y - XOR_T) / 4
    dZ2 = dY * Y * (1 - Y)
    dZ1 = np.outer(dZ2, W2) * H * (1 - H)
    grads = {"W1": XOR_X.T @ dZ1, "b1": dZ1.sum(0), "W2": H.T @ dZ2, "b2": dZ2.sum()}
    return Y, np.mean((XOR_T - Y) ** 2), grads


def test_xor_textbook_start_and_first_step(xor_net):
    Y, cost, grads = _xor_by_hand(**XOR_START)
    out = xor_net.forward(x=XOR_X, t=XOR_T, **XOR_START)
    np.testing.assert_allclose(out["y"], Y, rtol=1e-14)
    np.testing.assert_allclose(out["y"], [0.18333462, 0.74255260, 0.74255260, 0.33430961], atol=1e-8)
    assert out["loss"] == pytest.approx(0.0694832061, abs=1e-10)
    loss, g = xor_net.value_and_grad(x=XOR_X, t=XOR_T, **XOR_START)
    for name in grads:
        np.testing.assert_allclose(g[name], grads[name], rtol=1e-12, atol=1e-15)
        assert np.shape(g[name]) == np.shape(XOR_START[name])  # gradients come back in the shape given
    stepped = {k: v - 0.1 * g[k] for k, v in XOR_START.items()}
    assert xor_net.forward(x=XOR_X, t=XOR_T, **stepped)["loss"] == pytest.approx(0.069232, abs=1e-6)


def _mlp_model(hidden, activation="tanh", name=None):
    x = sp.MatrixSymbol("x", 64, 1)
    target = sp.MatrixSymbol("target", 10, 1)
    W1, b1 = sp.MatrixSymbol("W1", hidden, 64), sp.MatrixSymbol("b1", hidden, 1)
    W2, b2 = sp.MatrixSymbol("W2", 10, hidden), sp.MatrixSymbol("b2", 10, 1)
    pre = W1 * x + b1
    h = pre.applyfunc(sp.tanh) if activation == "tanh" else sg.relu(pre)
    logits = W2 * h + b2
    return sg.Model(name or f"mlp_{hidden}_{activation}", loss=sg.cross_entropy(logits, target),
                    params=[W1, b1, W2, b2], inputs=[x, target], outputs={"logits": logits})


def _mlp_by_hand(p, X, T, activation):
    Z1 = X @ p["W1"].T + p["b1"][:, 0]
    H = np.tanh(Z1) if activation == "tanh" else np.maximum(Z1, 0)
    L = H @ p["W2"].T + p["b2"][:, 0]
    L = L - L.max(axis=1, keepdims=True)
    P = np.exp(L) / np.exp(L).sum(axis=1, keepdims=True)
    n = len(X)
    loss = -np.sum(T * np.log(P)) / n
    dL = (P * T.sum(axis=1, keepdims=True) - T) / n
    dH = dL @ p["W2"]
    dZ1 = dH * (1 - H**2) if activation == "tanh" else dH * (Z1 > 0)
    return loss, {"W1": dZ1.T @ X, "b1": dZ1.sum(0)[:, None], "W2": dL.T @ H, "b2": dL.sum(0)[:, None]}


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_mlp_gradients_match_numpy_by_hand(activation, compile_model, rng):
    net = compile_model(_mlp_model(32, activation))
    params = {"W1": rng.normal(0, 0.2, (32, 64)), "b1": rng.normal(0, 0.1, (32, 1)),
              "W2": rng.normal(0, 0.2, (10, 32)), "b2": rng.normal(0, 0.1, (10, 1))}
    X = rng.uniform(0, 1, (300, 64))
    T = np.eye(10)[rng.integers(0, 10, 300)]
    loss, grads = net.value_and_grad(x=X, target=T, **params)
    ref_loss, ref = _mlp_by_hand(params, X, T, activation)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for name in ref:
        np.testing.assert_allclose(grads[name], ref[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_softmax_regression_with_class_indices_matches_numpy(compile_model, rng):
    x, c = sp.MatrixSymbol("x", 64, 1), sp.Symbol("c")
    W, b = sp.MatrixSymbol("W", 10, 64), sp.MatrixSymbol("b", 10, 1)
    net = compile_model(sg.Model("softmax_regression_test", loss=sg.cross_entropy(W * x + b, c),
                                 params=[W, b], inputs=[x, c]))
    Wv, bv = rng.normal(0, 0.1, (10, 64)), rng.normal(0, 0.1, (10, 1))
    X, labels = rng.uniform(0, 1, (200, 64)), rng.integers(0, 10, 200)
    loss, g = net.value_and_grad(W=Wv, b=bv, x=X, c=labels)
    L = X @ Wv.T + bv[:, 0]
    P = np.exp(L - L.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    T = np.eye(10)[labels]
    assert loss == pytest.approx(-np.mean(np.log(P[np.arange(200), labels])), rel=1e-12)
    np.testing.assert_allclose(g["W"], (P - T).T @ X / 200, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(g["b"], ((P - T).sum(0) / 200)[:, None], rtol=1e-10, atol=1e-15)
    with pytest.raises(sg.errors.KernelError, match="class index"):
        net.value_and_grad(W=Wv, b=bv, x=X[:2], c=[3, 10])
    with pytest.raises(sg.errors.KernelError, match="class index"):
        net.value_and_grad(W=Wv, b=bv, x=X[:2], c=[3, 2.5])


def test_batch_sums_in_c_equal_the_mean_of_per_example_gradients(compile_model, rng):
    mean_net = compile_model(_mlp_model(16, name="mlp_mean"))
    each = _mlp_model(16, name="mlp_each")
    each = sg.Model("mlp_each", loss=each.loss, params=list(each.params), inputs=list(each.inputs), reduce=None)
    each_net = compile_model(each)
    params = {"W1": rng.normal(0, 0.3, (16, 64)), "b1": rng.normal(0, 0.1, (16, 1)),
              "W2": rng.normal(0, 0.3, (10, 16)), "b2": rng.normal(0, 0.1, (10, 1))}
    X, T = rng.uniform(0, 1, (1000, 64)), np.eye(10)[rng.integers(0, 10, 1000)]
    loss, g = mean_net.value_and_grad(x=X, target=T, **params)
    losses, per_example = each_net.value_and_grad(x=X, target=T, **params)
    assert per_example["W1"].shape == (1000, 16, 64)
    assert loss == pytest.approx(np.mean(losses), rel=1e-12)
    for name in g:
        np.testing.assert_allclose(g[name], per_example[name].mean(axis=0), rtol=1e-10, atol=1e-15)


# --- generated code ---------------------------------------------------------------------------


def test_code_size_does_not_grow_with_layer_width():
    def source(hidden):
        files = sg.generate(_mlp_model(hidden)).package.files
        # The model's own C: the runtime helpers' source is the same for every model.
        return "".join(text for name, text in files.items() if name.endswith(".c") and name != "symgrad_runtime.c")

    small, wide = source(128), source(1024)
    assert abs(len(wide) - len(small)) / len(small) < 0.10
    assert len(wide) < 40_000


def test_scratch_memory_is_planned_and_shared():
    model = _mlp_model(128)
    graph = sg.pipeline.derived(model, model.reduce)
    plan = plan_kernel(graph, "value_and_grad", model=model.name)
    per_tile = [b for b in plan.buffers if b.per_tile]
    offsets = {b.offset for b in per_tile}
    assert len(offsets) < len(per_tile)  # buffers with disjoint lifetimes share memory
    unshared = sum(graph.nodes[b.node].size for b in per_tile)
    assert plan.tile_size < unshared


# --- numerics ------------------------------------------------------------------------------


def test_softmax_family_is_stable_for_huge_logits(compile_model):
    z, t = sp.MatrixSymbol("z", 3, 1), sp.MatrixSymbol("t", 3, 1)
    net = compile_model(sg.Model("stable_ce", loss=sg.cross_entropy(z, t) + sg.logsumexp(z) / 10,
                                 inputs=[z, t], wrt=[z], outputs={"p": sg.softmax(z), "lp": sg.log_softmax(z)}))
    logits = np.array([[1000.0, -1000.0, 999.0], [-1000.0, -1001.0, -1000.5]])
    target = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    out = net.forward(z=logits, t=target)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    lse = logits.max(axis=1) + np.log(np.exp(shifted).sum(axis=1))
    np.testing.assert_allclose(out["lp"][:, :, 0], log_p, rtol=1e-13)
    np.testing.assert_allclose(out["p"][:, :, 0], np.exp(log_p), rtol=1e-13)
    expected = np.mean(-np.sum(target * log_p, axis=1) + lse / 10)
    assert out["loss"] == pytest.approx(expected, rel=1e-13)
    _, g = net.value_and_grad(z=logits, t=target)
    expected_grad = (np.exp(log_p) * (1 + 0.1) - target) / 2
    np.testing.assert_allclose(g["z"], expected_grad, rtol=1e-12, atol=1e-300)  # in the shape passed


@pytest.mark.parametrize("loss_of,expected,derivative", [
    (lambda z: sp.log(sg.sigmoid(z)), lambda z: -np.logaddexp(0, -z), lambda z: _sigmoid(-z)),
    (lambda z: sp.log(1 - sg.sigmoid(z)), lambda z: -np.logaddexp(0, z), lambda z: -_sigmoid(z)),
    (lambda z: sp.log(1 + sp.exp(z)), lambda z: np.logaddexp(0, z), lambda z: _sigmoid(z)),
    (lambda z: sg.softplus(z), lambda z: np.logaddexp(0, z), lambda z: _sigmoid(z)),
])
def test_log_sigmoid_and_log_one_plus_exp_are_rewritten_stably(loss_of, expected, derivative, compile_model):
    z = sp.Symbol("z")
    net = compile_model(sg.Model(f"stable_{abs(hash(str(loss_of(z)))) % 10**8}", loss=loss_of(z), inputs=[z],
                                 wrt=[z], reduce=None))
    values = np.array([-1000.0, -30.0, -1.0, 0.0, 2.0, 40.0, 1000.0])
    loss, g = net.value_and_grad(z=values)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(loss, expected(values), rtol=1e-13)
        np.testing.assert_allclose(g["z"], derivative(values), rtol=1e-13)


def test_float32_kernels(compile_model, build_dir, rng):
    model = _mlp_model(24, name="mlp_float32")
    net64 = compile_model(model)
    net32 = sg.compile(model, build_dir / "float32", dtype="float32")  # one precision per folder
    params = {"W1": rng.normal(0, 0.3, (24, 64)), "b1": rng.normal(0, 0.1, (24, 1)),
              "W2": rng.normal(0, 0.3, (10, 24)), "b2": rng.normal(0, 0.1, (10, 1))}
    X, T = rng.uniform(0, 1, (64, 64)), np.eye(10)[rng.integers(0, 10, 64)]
    loss64, g64 = net64.value_and_grad(x=X, target=T, **params)
    loss32, g32 = net32.value_and_grad(x=X, target=T, **params)
    assert net32.DTYPE == "float32" and g32["W1"].dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for name in g64:
        scale = np.max(np.abs(g64[name]))
        assert np.max(np.abs(g32[name] - g64[name])) <= 1e-5 * scale


def test_vectors_may_come_as_rows_of_a_batch(compile_model, rng):
    net = compile_model(_mlp_model(8, name="mlp_shapes"))
    params = {"W1": rng.normal(size=(8, 64)), "b1": rng.normal(size=(8,)), "W2": rng.normal(size=(10, 8)),
              "b2": rng.normal(size=(10, 1))}
    X, T = rng.uniform(size=(5, 64)), np.eye(10)[rng.integers(0, 10, 5)]
    flat = net.value_and_grad(x=X, target=T, **params)
    columns = net.value_and_grad(x=X[:, :, None], target=T[:, :, None], **params)
    assert flat[0] == columns[0]
    assert flat[1]["b1"].shape == (8,) and flat[1]["b2"].shape == (10, 1)
    single = net.forward(x=X[0], target=T[0], **params)
    assert single["logits"].shape == (10, 1)
    np.testing.assert_allclose(single["logits"], net.forward(x=X, target=T, **params)["logits"][0])
