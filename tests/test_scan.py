"""``sg.scan`` against PyTorch float64: one C loop over the steps, whatever the length.

An Elman network and an LSTM written once as a step, their gradients (backpropagation
through time) against PyTorch's autograd across the kernels' tiles and the runtime's
batch slices; per-example lengths against PyTorch on each example cut to its length (the
padding is NaN, so a read past the end would show); forward mode and Hessian-vector
products through a scan; the scan op's VJP and JVP against central differences of its
NumPy reference; the generated C at two lengths; the errors for steps symgrad cannot scan.
"""

import sys
import time
from dataclasses import replace

import numpy as np
import pytest
import sympy as sp
import torch

import symgrad as sg
import symgrad.scan  # noqa: F401  (sg.scan is the function; the module is in sys.modules)
from symgrad.errors import ModelShapeError
from symgrad.graph import Builder, Graph
from symgrad.interpret import evaluate
from symgrad.pipeline import generate, show_text

from conftest import central_difference

scan_module = sys.modules["symgrad.scan"]
K, H = 3, 4


def _elman(T, name="elman_scan"):
    X = sp.MatrixSymbol("X", T, K)
    W = sp.MatrixSymbol("W", H, H + K)
    b = sp.MatrixSymbol("b", H, 1)
    w_out = sp.MatrixSymbol("w_out", 1, H)
    y = sp.Symbol("y")

    def step(h, x_t):
        h = (W * sg.vstack(h, x_t) + b).applyfunc(sp.tanh)
        return h, sg.scalar(w_out * h)

    h, ys = sg.scan(step, sp.ZeroMatrix(H, 1), sequences=X)
    prediction = sg.scalar(w_out * h)
    return sg.Model(name, loss=(prediction - y) ** 2 + sg.sum(ys) / 10, params=[W, b, w_out], inputs=[X, y],
                    outputs={"prediction": prediction, "ys": ys}, kernels=("jvp", "hvp"))


def _torch_elman(p, X, y):
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    h = torch.zeros(X.shape[0], H, 1, dtype=torch.float64)
    total = 0
    for step in range(X.shape[1]):
        h = torch.tanh(t["W"] @ torch.cat([h, torch.tensor(X[:, step, :, None])], 1) + t["b"])
        total = total + (t["w_out"] @ h)[:, 0, 0]
    prediction = (t["w_out"] @ h)[:, 0, 0]
    loss = ((prediction - torch.tensor(y)) ** 2 + total / 10).mean()
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in t.items()}


def _elman_params(rng):
    return dict(W=rng.normal(size=(H, H + K)) * 0.5, b=rng.normal(size=(H, 1)), w_out=rng.normal(size=(1, H)))


@pytest.fixture(scope="module")
def elman(build_dir):
    return sg.compile(_elman(6), out_dir=build_dir)


@pytest.mark.parametrize("n", [1, 300, 16500])  # one example, several tiles, several batch slices
def test_elman_gradients_agree_with_pytorch(elman, n):
    rng = np.random.default_rng(n)
    p = _elman_params(rng)
    X, y = rng.normal(size=(n, 6, K)), rng.normal(size=n)
    loss, grads = elman.value_and_grad(X=X, y=y, **p)
    t_loss, t_grads = _torch_elman(p, X, y)
    assert loss == pytest.approx(t_loss, rel=1e-12)
    for k in p:
        np.testing.assert_allclose(grads[k], t_grads[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_ys_stack_the_outputs_and_match_the_numpy_reference(elman):
    rng = np.random.default_rng(5)
    p = _elman_params(rng)
    X, y = rng.normal(size=(4, 6, K)), rng.normal(size=4)
    out = elman.forward(X=X, y=y, **p)
    model = _elman(6)
    for e in range(4):
        env = {**p, "X": X[e], "y": y[e]}
        values = evaluate(model.graph, env)
        reference = {r.name: values[r.node] for r in model.graph.results["outputs"]}
        np.testing.assert_allclose(out["ys"][e], reference["ys"], rtol=1e-12)
        np.testing.assert_allclose(out["prediction"][e], reference["prediction"], rtol=1e-12)
    h = np.zeros((4, H, 1))
    for step in range(6):
        h = np.tanh(p["W"] @ np.concatenate([h, X[:, step, :, None]], 1) + p["b"])
        np.testing.assert_allclose(out["ys"][:, step, 0], (p["w_out"] @ h)[:, 0, 0], rtol=1e-12)


def test_forward_mode_hessian_vector_products_and_hessians_through_a_scan(elman):
    rng = np.random.default_rng(7)
    p = _elman_params(rng)
    X, y = rng.normal(size=(5, 6, K)), rng.normal(size=5)
    v = {k: rng.normal(size=val.shape) for k, val in p.items()}
    _, grads = elman.value_and_grad(X=X, y=y, **p)
    _, tangents = elman.jvp(v, X=X, y=y, **p)
    directional = sum(np.sum(grads[k] * v[k]) for k in p)
    assert float(np.mean(tangents["loss"])) == pytest.approx(directional, rel=1e-10)
    hvp = elman.hvp(v, X=X, y=y, **p)
    eps = 1e-6
    plus = elman.value_and_grad(X=X, y=y, **{k: p[k] + eps * v[k] for k in p})[1]
    minus = elman.value_and_grad(X=X, y=y, **{k: p[k] - eps * v[k] for k in p})[1]
    for k in p:
        np.testing.assert_allclose(hvp[k], (plus[k] - minus[k]) / (2 * eps), rtol=1e-5, atol=1e-7, err_msg=k)
    _, _, hessian = elman.hessian(X=X, y=y, **p)  # from hvp sweeps
    for a in p:
        product = sum(np.tensordot(hessian[a][b], v[b], axes=v[b].ndim) for b in p)
        np.testing.assert_allclose(product, hvp[a], rtol=1e-10, atol=1e-12, err_msg=a)


# --- an LSTM over sequences of different lengths ---------------------------------------------------


T_LSTM, V = 7, 5


def _lstm():
    X = sp.MatrixSymbol("X", T_LSTM, V)       # one-hot tokens
    Y = sp.MatrixSymbol("Y", T_LSTM, V)       # one-hot next tokens
    n = sp.Symbol("n")                        # the example's length
    W = sp.MatrixSymbol("W", 4 * H, H + V)
    b = sp.MatrixSymbol("b", 4 * H, 1)
    U = sp.MatrixSymbol("U", V, H)
    u = sp.MatrixSymbol("u", 1, H)

    def step(carry, rows):
        h, c = carry
        x_t, y_t = rows
        z = W * sg.vstack(h, x_t) + b
        i, f = sg.sigmoid(z[0:H, :]), sg.sigmoid(z[H:2 * H, :])
        g, o = z[2 * H:3 * H, :].applyfunc(sp.tanh), sg.sigmoid(z[3 * H:, :])
        c = sp.HadamardProduct(f, c) + sp.HadamardProduct(i, g)
        h = sp.HadamardProduct(o, c.applyfunc(sp.tanh))
        return (h, c), sg.cross_entropy(U * h, y_t)

    (h, c), losses = sg.scan(step, (sp.ZeroMatrix(H, 1), sp.ZeroMatrix(H, 1)), sequences=(X, Y), length=n)
    return sg.Model("lstm_scan", loss=sg.sum(losses) + sg.scalar(u * h), params=[W, b, U, u], inputs=[X, Y, n],
                    outputs={"losses": losses}, reduce="sum")


def _torch_lstm(p, x, y, length):
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    h = torch.zeros(H, 1, dtype=torch.float64)
    c = torch.zeros(H, 1, dtype=torch.float64)
    loss = 0
    for step in range(length):
        z = t["W"] @ torch.cat([h, torch.tensor(x[step, :, None])]) + t["b"]
        i, f, g, o = torch.sigmoid(z[:H]), torch.sigmoid(z[H:2 * H]), torch.tanh(z[2 * H:3 * H]), torch.sigmoid(z[3 * H:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        logits = (t["U"] @ h)[:, 0]
        loss = loss - (torch.tensor(y[step]) * torch.log_softmax(logits, 0)).sum()
    loss = loss + (t["u"] @ h)[0, 0]
    loss.backward()
    return loss.item(), {k: np.zeros(v.shape) if v.grad is None else v.grad.numpy() for k, v in t.items()}


@pytest.fixture(scope="module")
def lstm(build_dir):
    return sg.compile(_lstm(), out_dir=build_dir)


def test_lstm_over_variable_lengths_agrees_with_pytorch_on_each_example_cut_to_its_length(lstm):
    rng = np.random.default_rng(3)
    N = 40  # several tiles
    p = dict(W=rng.normal(size=(4 * H, H + V)) * 0.5, b=rng.normal(size=(4 * H, 1)) * 0.3,
             U=rng.normal(size=(V, H)), u=rng.normal(size=(1, H)))
    lengths = rng.integers(0, T_LSTM + 1, size=N).astype(float)
    lengths[:4] = [0, 1, T_LSTM, T_LSTM - 1]
    tokens = rng.integers(0, V, size=(N, T_LSTM + 1))
    X = np.eye(V)[tokens[:, :-1]]
    Y = np.eye(V)[tokens[:, 1:]]
    for e, n in enumerate(lengths.astype(int)):  # past the end: NaN, so any read of it would show
        X[e, n:] = np.nan
        Y[e, n:] = np.nan
    loss, grads = lstm.value_and_grad(X=X, Y=Y, n=lengths, **p)
    total, reference = 0.0, {k: 0 for k in p}
    for e in range(N):
        t_loss, t_grads = _torch_lstm(p, X[e], Y[e], int(lengths[e]))
        total += t_loss
        for k in p:
            reference[k] = reference[k] + t_grads[k]
    assert loss == pytest.approx(total, rel=1e-12)
    for k in p:
        np.testing.assert_allclose(grads[k], reference[k], rtol=1e-10, atol=1e-12, err_msg=k)
    losses = lstm.forward(X=X, Y=Y, n=lengths, **p)["losses"]
    for e, n in enumerate(lengths.astype(int)):
        assert np.all(losses[e, n:] == 0) and np.all(np.isfinite(losses[e]))


def test_gradients_with_respect_to_the_sequence_stop_at_its_end(build_dir):
    X = sp.MatrixSymbol("X", 5, 2)
    n = sp.Symbol("n")
    w = sp.MatrixSymbol("w", 1, 2)

    def step(s, x_t):
        return (s + w * x_t).applyfunc(sp.tanh), None

    final, ys = sg.scan(step, sp.ZeroMatrix(1, 1), sequences=X, length=n)
    assert ys is None
    model = sg.Model("scan_input_grad", loss=sg.sum(final), params=[w], inputs=[X, n], wrt=["w", "X"])
    module = sg.compile(model, out_dir=build_dir)
    rng = np.random.default_rng(0)
    Xv, wv = rng.normal(size=(3, 5, 2)), rng.normal(size=(1, 2))
    lengths = np.array([0.0, 2.0, 5.0])
    _, grads = module.value_and_grad(X=Xv, n=lengths, w=wv)
    for e, length in enumerate(lengths.astype(int)):
        tx = torch.tensor(Xv[e], requires_grad=True)
        s = torch.zeros(1, dtype=torch.float64)
        for t in range(length):
            s = torch.tanh(s + torch.tensor(wv[0]) @ tx[t])
        if length:
            s.sum().backward()
            expected = tx.grad.numpy()
        else:
            expected = np.zeros((5, 2))
        np.testing.assert_allclose(grads["X"][e], expected / 3, rtol=1e-12, atol=1e-15)
        assert np.all(grads["X"][e, length:] == 0)


# --- the op's rules against central differences of its NumPy reference -------------------------------


def _masked(step):
    return replace(step, masked=True)


@pytest.mark.parametrize("kind", ["plain", "masked", "reverse"])
def test_scan_vjp_and_jvp_match_central_differences(kind):
    step = scan_module.TEST_STEP
    shapes = [(2, 1), (3, 3), (2, 2), (2, 3)]
    if kind == "masked":
        step, shapes = _masked(step), shapes + [()]
    if kind == "reverse":
        step = replace(step, reverse=True)
    rng = np.random.default_rng(11)
    values = [rng.uniform(-1, 1, size=s) for s in shapes]
    if kind == "masked":
        values[-1] = np.asarray(2.0)
    g = Graph()
    b = Builder(g)
    leaves = [b.apply("symbol", attrs=(f"a{k}", "param", s, sp.MatrixSymbol(f"a{k}", *s) if s else sp.Symbol(f"a{k}")))
              for k, s in enumerate(shapes)]
    out = b.apply("scan", *leaves, attrs=(step,))
    size = g.nodes[out].shape
    weights = rng.standard_normal(size)
    env = {f"a{k}": v for k, v in enumerate(values)} | {"g": weights}
    if kind == "masked":  # what the views of a model send: the final carry's and the outputs' adjoints
        weights = np.zeros(size)
        terms = []
        for what, (offset, shape) in {"gf": (step.block("carry", 0)[2] + 3 * 2, (2, 1)),
                                      "gy": (step.block("y", 0)[2], (3, 2))}.items():
            env[what] = rng.standard_normal(shape)
            weights[0, offset:offset + env[what].size] = env[what].reshape(-1)
            symbol = b.apply("symbol", attrs=(what, "param", shape, sp.MatrixSymbol(what, *shape)))
            terms.append(b.apply("loop_embed", symbol, attrs=(offset, shape, size[1])))
        cotangent = b.add(*terms)
    else:
        cotangent = b.apply("symbol", attrs=("g", "param", size, sp.MatrixSymbol("g", *size)))
    contributions = scan_module.scan_vjp(b, out, cotangent)
    for k in range(len(shapes) - (kind == "masked")):
        def scalarized(x, k=k):
            args = list(values)
            args[k] = x
            return float(np.sum(weights * scan_module.run_scan(args, step)))

        got = evaluate(g, env, [contributions[k]])[contributions[k]]
        np.testing.assert_allclose(got, central_difference(scalarized, values[k]), rtol=1e-6, atol=1e-8,
                                   err_msg=f"vjp arg {k}")
        direction = rng.standard_normal(shapes[k])
        tangent = b.apply("symbol", attrs=(f"t{k}", "param", shapes[k], sp.MatrixSymbol(f"t{k}", *shapes[k])))
        t = scan_module.scan_jvp(b, out, [tangent if i == k else None for i in range(len(shapes))])
        got = evaluate(g, env | {f"t{k}": direction}, [t])[t]

        def along(h, k=k):
            args = list(values)
            args[k] = values[k] + h * direction
            return scan_module.run_scan(args, step)

        np.testing.assert_allclose(got, (along(1e-6) - along(-1e-6)) / 2e-6, rtol=1e-5, atol=1e-7,
                                   err_msg=f"jvp arg {k}")


# --- size, display, errors ----------------------------------------------------------------------------


def test_code_size_and_build_time_do_not_depend_on_the_length():
    sizes, times = {}, {}
    for T in (20, 2000):
        start = time.perf_counter()
        package = generate(_elman(T, f"elman_scan_{T}")).package
        times[T] = time.perf_counter() - start
        sizes[T] = sum(len(package.files[f]) for f in package.c_sources)
    assert abs(sizes[2000] - sizes[20]) < 0.01 * sizes[20]  # the same C but for the numbers in it
    assert times[2000] < 3 * times[20] + 0.5


def test_show_prints_the_step_and_its_reverse_once():
    text = show_text(_elman(2000, "elman_show"))
    assert "scan(t = 0..1999" in text and "scan(t = 1999..0" in text
    assert "s0 = tanh(W*vstack(h, x_t) + b)" in text and "h <- s0" in text
    assert len(text) < 20000


def _scan_error(**kwargs):
    X = sp.MatrixSymbol("X", 4, 2)
    W = sp.MatrixSymbol("W", 3, 2)
    options = dict(step=lambda h, x: (h + W * x, None), init=sp.ZeroMatrix(3, 1), sequences=X)
    options.update(kwargs)
    with pytest.raises(ModelShapeError) as info:
        sg.scan(options.pop("step"), options.pop("init"), **options)
    return str(info.value)


def test_errors_name_what_is_wrong():
    W = sp.MatrixSymbol("W", 3, 2)
    assert "changes the shape of the carry state from (3, 1) to (2, 1)" in _scan_error(
        step=lambda state, x: (x, None))
    assert "must return (new_carry, y_t)" in _scan_error(step=lambda h, x: h + W * x)
    assert "returned 2 carries for 1 initial one" in _scan_error(step=lambda h, x: ((h, h), None))
    assert "sequence" in _scan_error(sequences=sp.Symbol("s")) and "not a matrix" in _scan_error(
        sequences=sp.Symbol("s"))
    assert "initial carry" in _scan_error(init=sp.Symbol("h0"))
    assert "length=2.5 is not a whole number" in _scan_error(length=2.5)
    assert "length=3 but the sequences have 4 rows" in _scan_error(length=3)
    assert "length must be None" in _scan_error(length=sp.MatrixSymbol("L", 2, 1))
    assert "without sequences" in _scan_error(sequences=None)


def test_a_scan_without_sequences_runs_its_length():
    a = sp.Symbol("a")
    final, ys = sg.scan(lambda s, _: (s * a, sg.scalar(s)), sp.Matrix([[1]]), length=5)
    model = sg.Model("scan_power", loss=sg.scalar(final) + sg.sum(ys), params=[a])
    values = evaluate(model.graph, {"a": 1.5})
    (loss,) = model.graph.results["example_loss"]
    assert float(values[loss.node]) == pytest.approx(1.5 ** 5 + sum(1.5 ** k for k in range(5)))


def test_the_training_kernel_steps_through_a_scan(elman):
    rng = np.random.default_rng(2)
    p = _elman_params(rng)
    X, y = rng.normal(size=(40, 6, K)), rng.normal(size=40)
    loss, grads = elman.value_and_grad(X=X, y=y, **p)
    trained = {k: v.copy() for k, v in p.items()}
    assert elman.sgd_step(trained, 0.1, X=X, y=y) == pytest.approx(loss, rel=1e-14)
    for k in p:
        np.testing.assert_allclose(trained[k], p[k] - 0.1 * grads[k], rtol=1e-13, atol=1e-15)


def test_float32_kernels_of_a_scan_agree_with_float64(lstm, build_dir):
    single = sg.compile(_lstm(), out_dir=build_dir / "float32", dtype="float32")
    rng = np.random.default_rng(4)
    N = 20
    p = dict(W=rng.normal(size=(4 * H, H + V)) * 0.5, b=rng.normal(size=(4 * H, 1)) * 0.3,
             U=rng.normal(size=(V, H)), u=rng.normal(size=(1, H)))
    tokens = rng.integers(0, V, size=(N, T_LSTM + 1))
    arrays = dict(X=np.eye(V)[tokens[:, :-1]], Y=np.eye(V)[tokens[:, 1:]], n=rng.integers(0, T_LSTM + 1, N) * 1.0)
    loss, grads = lstm.value_and_grad(**arrays, **p)
    loss32, grads32 = single.value_and_grad(**{k: v.astype(np.float32) for k, v in (arrays | p).items()})
    assert loss32 == pytest.approx(loss, rel=1e-5)
    for k in p:
        assert np.max(np.abs(grads32[k] - grads[k])) < 1e-5 * np.max(np.abs(grads[k])), k
