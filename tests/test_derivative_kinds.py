"""The extra kernel kinds (jacobian, jvp, hvp, hessian) against PyTorch float64 torch.func and
central differences of the kernel one order below.

Each case is a small model built once (module scope) with every extra kernel, with a PyTorch
function of one example as the reference: scalar and matrix models, an MLP, inputs in ``wrt``,
``reduce="mean"``, ``"sum"`` and ``None``, and a float32 build. Hessian-vector products and
Hessians are also checked across the batch size at which the runtime cuts a batch into slices
(and on two threads) against the one-example results added up.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.errors import ModelError

torch = pytest.importorskip("torch")
from torch.func import hessian as t_hessian, jacfwd, jacrev, jvp as t_jvp, vmap  # noqa: E402

KINDS = ("jacobian", "jvp", "hvp", "hessian")
N = 5


class Case:
    """A model, its values, and the same model of one example in PyTorch."""

    def __init__(self, model, params, data, reference, dtype="float64"):
        self.model, self.params, self.data, self.reference, self.dtype = model, params, data, reference, dtype
        self.wrt = model.wrt
        self.roles = {str(s.name): "param" for s in model.params} | {str(s.name): "input" for s in model.inputs}

    # --- the reference ------------------------------------------------------------------

    def _tensors(self, values):
        return {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in values.items()}

    def batch_fn(self, *wrt_values):
        """Outputs of every example and the reduced loss, as functions of the wrt values
        (an input's: the whole batch)."""
        p, d = self._tensors(self.params), self._tensors(self.data)
        for name, value in zip(self.wrt, wrt_values):
            (p if self.roles[name] == "param" else d)[name] = value
        names = list(d)
        per = vmap(lambda *xs: self.reference(p, dict(zip(names, xs))))(*[d[k] for k in names])
        loss = per["loss"]
        reduced = loss.mean() if self.model.reduce == "mean" else loss.sum() if self.model.reduce == "sum" else loss
        return {**{k: v for k, v in per.items() if k != "loss"}, "loss": reduced}

    def wrt_values(self):
        return tuple(torch.tensor(np.asarray((self.params | self.data)[n], dtype=np.float64)) for n in self.wrt)

    def example_fn(self, n):
        """Outputs and loss of example n as functions of the wrt values (an input's: example n's)."""
        p, d = self._tensors(self.params), self._tensors(self.data)
        d = {k: v[n] for k, v in d.items()}

        def f(*wrt_values):
            pp, dd = dict(p), dict(d)
            for name, value in zip(self.wrt, wrt_values):
                (pp if self.roles[name] == "param" else dd)[name] = value
            return self.reference(pp, dd)

        values = tuple(torch.tensor(np.asarray(p[name] if self.roles[name] == "param" else d[name],
                                               dtype=np.float64)) for name in self.wrt)
        return f, values

    def arrays(self):
        return self.params | self.data


def _tol(case):
    return dict(rtol=2e-3, atol=2e-4) if case.dtype == "float32" else dict(rtol=1e-9, atol=1e-10)


def _fit_case():
    x = sp.MatrixSymbol("x", 3, 1)
    t = sp.Symbol("t")
    k, c = sp.symbols("k c")
    r = sp.Matrix([k * x[0] - t, c * x[1] ** 2 - t, x[2] * k * c])
    model = sg.Model("dk_fit", params=[k, c], inputs=[x, t], outputs={"r": r},
                     loss=sg.sum(r.applyfunc(lambda u: u ** 2)), kernels=KINDS)
    rng = np.random.default_rng(0)

    def reference(p, d):
        x, t, k, c = d["x"], d["t"], p["k"], p["c"]
        r = torch.stack([k * x[0] - t, c * x[1] ** 2 - t, x[2] * k * c]).reshape(3, 1)
        return {"r": r, "loss": (r ** 2).sum()}

    return Case(model, {"k": 1.3, "c": -0.7}, {"x": rng.standard_normal((N, 3, 1)), "t": rng.standard_normal(N)},
                reference)


def _mlp_case():
    x, target = sp.MatrixSymbol("x", 4, 1), sp.MatrixSymbol("target", 2, 1)
    W1, b1 = sp.MatrixSymbol("W1", 3, 4), sp.MatrixSymbol("b1", 3, 1)
    W2, b2 = sp.MatrixSymbol("W2", 2, 3), sp.MatrixSymbol("b2", 2, 1)
    h = (W1 * x + b1).applyfunc(sp.tanh)
    logits = W2 * h + b2
    model = sg.Model("dk_mlp", loss=sg.cross_entropy(logits, target), params=[W1, b1, W2, b2],
                     inputs=[x, target], outputs={"logits": logits}, reduce="sum", kernels=KINDS)
    rng = np.random.default_rng(1)
    params = {"W1": rng.standard_normal((3, 4)), "b1": rng.standard_normal((3, 1)),
              "W2": rng.standard_normal((2, 3)), "b2": rng.standard_normal((2, 1))}
    target_values = rng.uniform(size=(N, 2, 1))
    data = {"x": rng.standard_normal((N, 4, 1)), "target": target_values / target_values.sum(axis=1, keepdims=True)}

    def reference(p, d):
        logits = p["W2"] @ torch.tanh(p["W1"] @ d["x"] + p["b1"]) + p["b2"]
        return {"logits": logits, "loss": -(d["target"] * torch.log_softmax(logits, dim=0)).sum()}

    return Case(model, params, data, reference)


def _scalar32_case():
    w, x, y = sp.symbols("w x y")
    model = sg.Model("dk_scalar32", params=[w], inputs=[x, y], loss=(w * sg.sigmoid(x) - y) ** 2 + sp.exp(w * x) / 4,
                     outputs={"o": w * sp.sin(x)}, wrt=[w, x], reduce=None, kernels=KINDS)
    rng = np.random.default_rng(2)

    def reference(p, d):
        w, x, y = p["w"], d["x"], d["y"]
        return {"o": w * torch.sin(x), "loss": (w * torch.sigmoid(x) - y) ** 2 + torch.exp(w * x) / 4}

    return Case(model, {"w": 0.6}, {"x": rng.uniform(-1, 1, N), "y": rng.uniform(-1, 1, N)}, reference, "float32")


def _inputs_case():
    a, z = sp.MatrixSymbol("a", 2, 1), sp.MatrixSymbol("z", 2, 1)
    s = sp.Symbol("s")
    u = sp.Matrix([a[0] * z[1], s * z[0], s])
    loss = sg.scalar(a.T * z) ** 2 * s + sp.log(1 + s ** 2 * sg.scalar(z.T * z))
    model = sg.Model("dk_inputs", params=[a, s], inputs=[z], loss=loss, outputs={"u": u}, wrt=[a, s, z],
                     kernels=KINDS)
    rng = np.random.default_rng(3)

    def reference(p, d):
        a, s, z = p["a"], p["s"], d["z"]
        u = torch.stack([a[0, 0] * z[1, 0], s * z[0, 0], s]).reshape(3, 1)
        return {"u": u, "loss": (a.T @ z)[0, 0] ** 2 * s + torch.log(1 + s ** 2 * (z.T @ z)[0, 0])}

    return Case(model, {"a": rng.standard_normal((2, 1)), "s": 0.8}, {"z": rng.standard_normal((N, 2, 1))},
                reference)


CASES = {"fit": _fit_case, "mlp": _mlp_case, "scalar32": _scalar32_case, "inputs": _inputs_case}


@pytest.fixture(scope="module", params=list(CASES))
def built(request, compile_model):
    case = CASES[request.param]()
    return case, compile_model(case.model, dtype=case.dtype)


def _np(x):
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _shape(symbol):
    return tuple(int(d) for d in symbol.shape) if hasattr(symbol, "shape") else ()


def _random_tangents(case, rng, batched=True):
    out = {}
    for name in case.wrt:
        value = np.asarray(case.arrays()[name])
        out[name] = rng.standard_normal(value.shape) if value.shape else float(rng.standard_normal())
    return out


# --- jvp -------------------------------------------------------------------------------


def test_jvp_matches_torch_and_central_differences(built):
    case, m = built
    rng = np.random.default_rng(10)
    tangents = _random_tangents(case, rng)
    outputs, got = m.jvp(tangents=tangents, **case.arrays())
    primal, expected = t_jvp(case.batch_fn, case.wrt_values(),
                             tuple(torch.tensor(np.asarray(tangents[n], dtype=np.float64)) for n in case.wrt))
    assert set(got) == set(expected) == set(outputs)
    forward = m.forward(**case.arrays())
    for name in expected:
        np.testing.assert_allclose(outputs[name], forward[name], rtol=1e-12)
        np.testing.assert_allclose(np.reshape(got[name], np.shape(_np(expected[name]))), _np(expected[name]),
                                   **_tol(case), err_msg=name)
    if case.dtype == "float64":  # central differences of the forward kernel
        h = 1e-6
        plus = m.forward(**{**case.arrays(), **{n: np.asarray(case.arrays()[n]) + h * np.asarray(tangents[n])
                                                for n in case.wrt}})
        minus = m.forward(**{**case.arrays(), **{n: np.asarray(case.arrays()[n]) - h * np.asarray(tangents[n])
                                                 for n in case.wrt}})
        for name in got:
            np.testing.assert_allclose(got[name], (np.asarray(plus[name]) - np.asarray(minus[name])) / (2 * h),
                                       rtol=1e-5, atol=1e-7, err_msg=name)


def test_jvp_of_one_example_and_missing_tangents_are_zero(built):
    case, m = built
    one = {k: (v[0] if k in case.data else v) for k, v in case.arrays().items()}
    outputs, got = m.jvp({}, **one)  # the tangents dict by position; nothing given: all zero
    for name, value in got.items():
        assert np.all(np.asarray(value) == 0), name
        assert np.shape(value) == np.shape(outputs[name])


# --- hvp and hessian --------------------------------------------------------------------


def _reference_hessian(case):
    """H[a][b] of the reduced loss in symgrad's layout (per-example blocks for inputs)."""
    names = case.wrt
    if case.model.reduce is None:  # everything per example
        blocks = []
        for n in range(N):
            f, values = case.example_fn(n)
            blocks.append(t_hessian(lambda *v: f(*v)["loss"], argnums=tuple(range(len(names))))(*values))
        return {a: {b: np.stack([_np(blocks[n][i][j]) for n in range(N)]) for j, b in enumerate(names)}
                for i, a in enumerate(names)}
    full = t_hessian(lambda *v: case.batch_fn(*v)["loss"], argnums=tuple(range(len(names))))(*case.wrt_values())
    H = {a: {} for a in names}
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            block = _np(full[i][j])
            ia, ib = case.roles[a] == "input", case.roles[b] == "input"
            sa = np.shape(case.arrays()[a])[1:] if ia else np.shape(case.arrays()[a])
            if ia and ib:  # (N, *sa, N, *sb): each example's own block
                block = np.stack([block[(n,) + (slice(None),) * len(sa) + (n,)] for n in range(N)])
            elif ib:  # (*sa, N, *sb) -> (N, *sa, *sb)
                block = np.moveaxis(block, len(sa), 0)
            H[a][b] = block
    return H


def test_hessian_matches_torch_and_is_symmetric(built):
    case, m = built
    loss, grads, H = m.hessian(**case.arrays())
    expected_loss, expected_grads = m.value_and_grad(**case.arrays())
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-12)
    reference = _reference_hessian(case)
    for a in case.wrt:
        np.testing.assert_allclose(grads[a], expected_grads[a], rtol=1e-12)
        for b in case.wrt:
            np.testing.assert_allclose(H[a][b], reference[a][b], **_tol(case), err_msg=f"H[{a}][{b}]")
            sa, sb = _shape(case.model.symbols[a]), _shape(case.model.symbols[b])
            lead = np.ndim(H[a][b]) - len(sa) - len(sb)
            flipped = np.transpose(H[b][a], tuple(range(lead)) + tuple(range(lead + len(sb), lead + len(sb) + len(sa)))
                                   + tuple(range(lead, lead + len(sb))))
            np.testing.assert_array_equal(H[a][b], flipped)  # symmetric by construction, to the bit


def test_hvp_matches_torch_and_the_gradient_by_central_differences(built):
    case, m = built
    rng = np.random.default_rng(11)
    v = {}
    for name in case.wrt:
        shape = np.shape(case.arrays()[name])
        v[name] = rng.standard_normal(shape) if shape else float(rng.standard_normal())
    got = m.hvp(v=v, **case.arrays())
    if case.model.reduce is None:
        expected = {}
        for n in range(N):
            f, values = case.example_fn(n)
            tangent = tuple(torch.tensor(np.asarray(v[name] if case.roles[name] == "param" else v[name][n],
                                                    dtype=np.float64)) for name in case.wrt)
            grad = jacrev(lambda *w: f(*w)["loss"], argnums=tuple(range(len(case.wrt))))
            _, out = t_jvp(grad, values, tangent)
            for name, value in zip(case.wrt, out):
                expected.setdefault(name, []).append(_np(value))
        expected = {k: np.stack(v) for k, v in expected.items()}
    else:
        grad = jacrev(lambda *w: case.batch_fn(*w)["loss"], argnums=tuple(range(len(case.wrt))))
        _, out = t_jvp(grad, case.wrt_values(), tuple(torch.tensor(np.asarray(v[n], dtype=np.float64))
                                                     for n in case.wrt))
        expected = {name: _np(value) for name, value in zip(case.wrt, out)}
    for name in case.wrt:
        np.testing.assert_allclose(np.reshape(got[name], expected[name].shape), expected[name], **_tol(case),
                                   err_msg=name)
    if case.dtype == "float64":  # central differences of value_and_grad's gradient
        h = 1e-6
        step = lambda sign: {n: np.asarray(case.arrays()[n]) + sign * h * np.asarray(v[n]) for n in case.wrt}
        plus = m.grad(**{**case.arrays(), **step(1)})
        minus = m.grad(**{**case.arrays(), **step(-1)})
        for name in case.wrt:
            np.testing.assert_allclose(got[name], (plus[name] - minus[name]) / (2 * h), rtol=1e-5, atol=1e-7)


# --- jacobian ------------------------------------------------------------------------------


def test_jacobian_matches_torch_per_example(built):
    case, m = built
    J = m.jacobian(**case.arrays())
    rows = list(case.model.outputs) + ["loss"]
    assert list(J) == rows
    for n in range(N):
        f, values = case.example_fn(n)
        reference = jacrev(f, argnums=tuple(range(len(case.wrt))))(*values)
        forward_reference = jacfwd(f, argnums=tuple(range(len(case.wrt))))(*values)
        for row in rows:
            for j, name in enumerate(case.wrt):
                expected = _np(reference[row][j])
                np.testing.assert_allclose(_np(forward_reference[row][j]), expected, rtol=1e-12, atol=1e-14)
                np.testing.assert_allclose(np.asarray(J[row][name])[n], expected, **_tol(case),
                                           err_msg=f"J[{row}][{name}] example {n}")


def test_jacobian_of_one_example_has_no_batch_axis(built):
    case, m = built
    one = {k: (v[0] if k in case.data else v) for k, v in case.arrays().items()}
    J = m.jacobian(**one)
    batch = m.jacobian(**case.arrays())
    for row in J:
        for name in J[row]:
            np.testing.assert_allclose(J[row][name], np.asarray(batch[row][name])[0], rtol=1e-6 if case.dtype == "float32"
                                       else 1e-13, atol=1e-12)


def test_jacobian_mode_is_the_one_with_fewer_sweeps():
    from symgrad.forward import jacobian_mode

    assert jacobian_mode(_fit_case().model.graph, ("k", "c")) == "forward"  # 2 sweeps, not 4
    mlp = _mlp_case().model
    assert jacobian_mode(mlp.graph, mlp.wrt) == "reverse"  # 3 sweeps, not 23


# --- across the batch thresholds ------------------------------------------------------------


def test_hvp_and_hessian_across_slices_and_threads_equal_the_examples_summed(compile_model):
    """A batch of more than one slice (16,384 examples), on one and two threads, against the
    one-example results (each one its own example's mean) averaged."""
    case = _fit_case()
    m = compile_model(case.model)
    rng = np.random.default_rng(12)
    count = 16384 + 700
    X, T = rng.standard_normal((count, 3, 1)), rng.standard_normal(count)
    v = {"k": 0.3, "c": -1.1}
    singles = [m.hvp(v=v, k=1.3, c=-0.7, x=X[n], t=float(T[n])) for n in range(count)]
    expected = {name: sum(s[name] for s in singles) / count for name in ("k", "c")}
    for threads in (1, 2):
        got = m.hvp(v=v, k=1.3, c=-0.7, x=X, t=T, threads=threads)
        for name in expected:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-11)
        _, _, H = m.hessian(k=1.3, c=-0.7, x=X, t=T, threads=threads)
        np.testing.assert_allclose(H["k"]["k"] * v["k"] + H["k"]["c"] * v["c"], expected["k"], rtol=1e-11)
        np.testing.assert_allclose(H["c"]["k"] * v["k"] + H["c"]["c"] * v["c"], expected["c"], rtol=1e-11)


# --- errors ------------------------------------------------------------------------------------


def test_bad_tangents_raise_errors_that_name_them(compile_model):
    case = _fit_case()
    m = compile_model(case.model)
    arrays = case.arrays()
    with pytest.raises(sg.errors.ArgumentError, match="'x' is not among the symbols differentiated"):
        m.hvp(v={"x": 1.0}, **arrays)
    with pytest.raises(sg.errors.ArgumentError, match="v= is missing"):
        m.hvp(**arrays)
    with pytest.raises(sg.errors.ArgumentError, match="must be a dict"):
        m.jvp(tangents=[1.0, 2.0], **arrays)
    with pytest.raises(sg.errors.ArgumentShapeError, match=r"v\[k\]"):
        m.hvp(v={"k": np.ones(3)}, **arrays)


def test_unknown_kernel_names_are_refused_with_the_valid_ones():
    k = sp.Symbol("k")
    with pytest.raises(ModelError, match="'hessians'.*'jacobian', 'jvp', 'hvp', 'hessian'"):
        sg.Model("dk_bad", params=[k], loss=k ** 2, kernels=("hessians",))
    with pytest.raises(ModelError, match="loss"):
        sg.Model("dk_bad", params=[k], outputs={"o": k}, kernels=("hvp",))


def test_a_function_whose_kernel_was_not_built_names_the_kernels_to_add(compile_model):
    k = sp.Symbol("k")
    m = compile_model(sg.Model("dk_plain", params=[k], loss=k ** 2))
    with pytest.raises(sg.errors.MissingKernelError, match=r"without hvp\(\): add 'hvp' to the kernels="):
        m.hvp(v={"k": 1.0}, k=1.0)
    with pytest.raises(AttributeError, match="'hvp' or 'hessian'"):
        m.hessian(k=1.0)
    assert not hasattr(m, "jacobian") and not hasattr(m, "no_such_name")
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        m.no_such_name


# --- formulas and views -------------------------------------------------------------------------


def test_model_hessian_equals_sympy_diff_twice():
    w, b, x = sp.symbols("w b x")
    loss = sp.tanh(w * x + b) * w + sp.log(1 + b ** 2) * x
    model = sg.Model("dk_formula", params=[w, b], inputs=[x], loss=loss)
    H = model.hessian()
    for u in (w, b):
        for v in (w, b):
            difference = H[u][v] - sp.diff(loss, u, v)
            for point in ({w: 0.3, b: -0.4, x: 1.7}, {w: -1.1, b: 0.9, x: -0.2}):
                assert abs(float(difference.subs(point))) < 1e-12


def test_model_hessian_of_matrices_is_an_array_of_both_shapes():
    x, A = sp.MatrixSymbol("x", 2, 1), sp.MatrixSymbol("A", 2, 2)
    model = sg.Model("dk_quadratic", params=[x], inputs=[A], loss=sg.scalar(x.T * A * x) + sp.exp(x[0]))
    H = model.hessian()[x][x]
    assert H.shape == (2, 1, 2, 1)
    assert sp.simplify(H[0, 0, 0, 0] - (2 * A[0, 0] + sp.exp(x[0, 0]))) == 0
    assert sp.simplify(H[0, 0, 1, 0] - (A[0, 1] + A[1, 0])) == 0


def test_show_hessian_and_stats_of_the_extra_kernels():
    from symgrad.pipeline import show_hessian, show_stats, show_text

    case = _fit_case()
    text = show_hessian(case.model)
    assert "forward over reverse" in text and "(H v)[k] = " in text and "(H v)[c] = " in text
    stats = show_stats(case.model)
    for line in ("jvp (outputs, loss and their tangents)", "hvp (Hessian times v, forward over reverse)",
                 "hessian: value_and_grad and 2 hvp sweeps", "jacobian: forward mode, 2 sweeps"):
        assert line in stats, stats
    assert "The compiled jacobian takes forward sweeps: 2" in show_text(case.model)
    assert "jacobian: reverse mode, 3 sweeps" in show_stats(_mlp_case().model)
    columns = show_stats(_no_inputs_model("dk_columns_stats", lambda x, p: {}))
    assert "hessian: value_and_grad and one call of the hessian kernel, 5 columns" in columns, columns


@pytest.mark.parametrize("make", [_fit_case, _inputs_case], ids=["fit", "inputs"])
def test_check_compares_every_extra_kernel_with_central_differences(make, compile_model):
    from symgrad.check import check_model

    case = make()
    report = check_model(case.model, compile_model(case.model), points=1)
    assert report.ok, report.line()
    assert set(report.extra_errors) == set(KINDS)
    assert "hessian vs central differences of grad" in report.line()


# --- a model without inputs: every Hessian column and Jacobian sweep in one call -----------------


def _no_inputs_model(name, outputs, kernels=KINDS):
    x, p = sp.MatrixSymbol("x", 4, 1), sp.Symbol("p")
    loss = sum(100 * (x[i + 1, 0] - x[i, 0] ** 2) ** 2 + (1 - x[i, 0]) ** 2 for i in range(3)) + p ** 2 * x[0, 0]
    return sg.Model(name, params=[x, p], loss=loss, outputs=outputs(x, p), kernels=kernels)


def _torch_rosen(x, p):
    return sum(100 * (x[i + 1, 0] - x[i, 0] ** 2) ** 2 + (1 - x[i, 0]) ** 2 for i in range(3)) + p ** 2 * x[0, 0]


@pytest.fixture(scope="module")
def no_inputs(compile_model):
    """Reverse Jacobian sweeps (3 rows, 5 wrt elements) and forward ones (5 and 5)."""
    few = _no_inputs_model("dk_rosen_rows", lambda x, p: {"c": sp.Matrix([x[0] * x[1] + p, x[2] ** 2])},
                           kernels=("jacobian",))
    many = _no_inputs_model("dk_rosen_cols", lambda x, p: {"c": sp.Matrix([x[0] * x[1] + p, x[2] ** 2, sp.sin(x[3]),
                                                                            p * x[1]])})
    return [(model, compile_model(model)) for model in (few, many)]


def test_without_inputs_the_hessian_takes_one_call_and_equals_the_hvp_sweeps(no_inputs):
    from symgrad import runtime
    from symgrad.pipeline import kernel_kinds

    model, m = no_inputs[1]
    assert "hessian" in kernel_kinds(model) and "hvp" in kernel_kinds(model)
    x0, p0 = np.array([[0.3], [-0.8], [1.1], [0.4]]), 0.7
    loss, grads, H = m.hessian(x=x0, p=p0)
    sweeps = runtime.hessian_of(m.value_and_grad, m._hvp, m.WRT)(lambda **a: None)
    _, _, by_sweeps = sweeps(x=x0, p=p0)
    reference = t_hessian(_torch_rosen, argnums=(0, 1))(torch.tensor(x0), torch.tensor(p0, dtype=torch.float64))
    for i, a in enumerate(("x", "p")):
        for j, b in enumerate(("x", "p")):
            np.testing.assert_allclose(H[a][b], by_sweeps[a][b], rtol=1e-13, atol=1e-12)
            np.testing.assert_allclose(H[a][b], _np(reference[i][j]), rtol=1e-12, atol=1e-12)
    assert np.shape(H["x"]["p"]) == (4, 1) and np.shape(H["x"]["x"]) == (4, 1, 4, 1) and type(H["p"]["p"]) is float
    flat = np.asarray(H["x"]["x"]).reshape(4, 4)
    np.testing.assert_array_equal(flat, flat.T)


@pytest.mark.parametrize("which,mode", [(0, "reverse"), (1, "forward")])
def test_without_inputs_the_jacobian_takes_one_call_in_either_mode(no_inputs, which, mode):
    from symgrad.forward import jacobian_mode

    model, m = no_inputs[which]
    assert jacobian_mode(model.graph, model.wrt) == mode
    x0, p0 = np.array([[0.3], [-0.8], [1.1], [0.4]]), 0.7
    J = m.jacobian(x=x0, p=p0)

    def rows(x, p):
        c = [x[0, 0] * x[1, 0] + p, x[2, 0] ** 2] + ([torch.sin(x[3, 0]), p * x[1, 0]] if which else [])
        return {"c": torch.stack(c).reshape(-1, 1), "loss": _torch_rosen(x, p)}

    reference = jacrev(rows, argnums=(0, 1))(torch.tensor(x0), torch.tensor(p0, dtype=torch.float64))
    for row in ("c", "loss"):
        for j, name in enumerate(("x", "p")):
            np.testing.assert_allclose(J[row][name], _np(reference[row][j]), rtol=1e-12, atol=1e-12,
                                       err_msg=f"J[{row}][{name}]")


@pytest.mark.parametrize("with_input", [True, False], ids=["sweeps", "one_call"])
def test_symbols_the_kernels_do_not_read_have_zero_blocks(with_input, compile_model):
    """z is read by nothing and u only linearly: kernels without their tangent arguments still
    give every block, zero where it is."""
    w, u, z, x = sp.symbols("w u z x")
    data = x if with_input else 1
    model = sg.Model(f"dk_unread_{with_input}", params=[w, u, z], inputs=[x] if with_input else [],
                     loss=w ** 2 * data + u, outputs={"o": w * data}, kernels=KINDS)
    m = compile_model(model)
    arrays = {"w": 0.5, "u": 2.0, "z": 3.0} | ({"x": np.array([1.0, 2.0, 3.0])} if with_input else {})
    _, _, H = m.hessian(**arrays)
    expected = 2 * np.mean(arrays["x"]) if with_input else 2.0
    assert H["w"]["w"] == pytest.approx(expected)
    assert all(H[a][b] == 0 for a in "wuz" for b in "wuz" if (a, b) != ("w", "w"))
    J = m.jacobian(**arrays)
    np.testing.assert_allclose(J["loss"]["u"], np.ones(3) if with_input else 1.0)
    np.testing.assert_array_equal(J["o"]["z"], np.zeros(3) if with_input else 0.0)
    np.testing.assert_array_equal(m.hvp(v={"z": 1.0}, **arrays)["w"], 0.0)


def test_export_describes_the_extra_kernels(tmp_path):
    """symgrad export writes the extra kernels' C library; its header says what each result is."""
    from symgrad.export import export_c

    result = export_c(_fit_case().model, tmp_path)
    header = (tmp_path / "dk_fit" / "dk_fit.h").read_text()
    for kind in ("jvp", "hvp", "jacobian"):
        assert f"dk_fit_{kind}(" in header
    assert "tangent of r" in header and "derivative along the tangents, for k" in header
    assert result is not None


def test_a_model_without_a_loss_has_its_outputs_jacobian_and_jvp(compile_model):
    a, b, x = sp.symbols("a b x")
    model = sg.Model("dk_no_loss", params=[a, b], inputs=[x], outputs={"y": a * sp.exp(b * x)},
                     kernels=("jacobian", "jvp"))
    m = compile_model(model)
    X = np.linspace(0.0, 1.0, 4)
    J = m.jacobian(a=2.0, b=0.5, x=X)
    assert list(J) == ["y"]
    np.testing.assert_allclose(J["y"]["a"], np.exp(0.5 * X), rtol=1e-14)
    np.testing.assert_allclose(J["y"]["b"], 2.0 * X * np.exp(0.5 * X), rtol=1e-14)
    outputs, tangents = m.jvp({"a": 1.0, "b": -1.0}, a=2.0, b=0.5, x=X)
    np.testing.assert_allclose(tangents["y"], np.exp(0.5 * X) - 2.0 * X * np.exp(0.5 * X), rtol=1e-13)
    assert not hasattr(m, "hvp")
