"""Linear algebra and structure: inverses, solves, determinants, Cholesky, slices, blocks,
diagonals, Kronecker products and reductions along an axis.

The derivative rules of each op are tested by tests/test_op_rules.py (on spd and
well-conditioned matrices); here: the Matrix Cookbook identities SymPy's tests state,
compiled kernels against PyTorch float64, how SymPy spellings are read (a product with an
inverse is a solve, Trace(A*B) forms no product), code size, singular and non-positive-
definite matrices, and the errors for forms that cannot be read.
"""

import re

import numpy as np
import pytest
import sympy as sp
import torch

import symgrad as sg
from symgrad.autodiff import derive
from symgrad.errors import ModelShapeError, UnsupportedFunctionError
from symgrad.interpret import evaluate
from symgrad.pipeline import generate

n = 3
X = sp.MatrixSymbol("X", n, n)
A = sp.MatrixSymbol("A", n, n)
B = sp.MatrixSymbol("B", n, n)
a = sp.MatrixSymbol("a", n, 1)
c = sp.MatrixSymbol("c", n, 1)
rng = np.random.default_rng(7)
XV = rng.uniform(-1, 1, (n, n)) + 3 * np.eye(n)
AV, BV = rng.normal(size=(n, n)), rng.normal(size=(n, n))
av, cv = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
M = rng.normal(size=(n, n))
SPD = M @ M.T + n * np.eye(n)
ENV = {"X": XV, "A": AV, "B": BV, "a": av, "c": cv}


def gradient(loss, wrt=X, env=None):
    """d loss / d wrt of one example, from symgrad's gradient graph (no compiler)."""
    symbols = [X, A, B, a, c]
    model = sg.Model("identity_check", loss=loss, params=symbols, wrt=[wrt])
    graph = derive(model.graph, [str(wrt.name)], None)
    (result,) = graph.results["gradients"]
    return evaluate(graph, env or ENV, [result.node])[result.node]


Xi = np.linalg.inv(XV)

# The identities of SymPy's matrix-derivative tests (sympy/matrices/expressions/tests/
# test_derivatives.py), from the Matrix Cookbook.
COOKBOOK = [
    ("d log det X = X^-T", sp.log(sp.Determinant(X)), Xi.T),
    ("d det X = det(X) X^-T", sp.Determinant(X), np.linalg.det(XV) * Xi.T),
    ("d tr(A X^-1 B) = -(X^-1 B A X^-1)^T", sp.Trace(A * X.inv() * B), -(Xi @ BV @ AV @ Xi).T),
    ("d a^T X^-1 c = -X^-T a c^T X^-T", sg.scalar(a.T * X.inv() * c), -Xi.T @ av @ cv.T @ Xi.T),
    ("d tr(X^-1) = -(X^-2)^T", sp.Trace(X.inv()), -(Xi @ Xi).T),
    ("d tr(A X B) = A^T B^T", sp.Trace(A * X * B), AV.T @ BV.T),
    ("d tr(X A X^T) = X A^T + X A", sp.Trace(X * A * X.T), XV @ AV.T + XV @ AV),
    ("d a^T X c = a c^T", sg.scalar(a.T * X * c), av @ cv.T),
    ("d a^T X^T X c = X (a c^T + c a^T)", sg.scalar(a.T * X.T * X * c), XV @ (av @ cv.T + cv @ av.T)),
    ("d tr(X^2) = 2 X^T", sp.Trace(X**2), 2 * XV.T),
    ("d log det X^-1... via X**-1: d a^T X^-2 c", sg.scalar(a.T * X**-2 * c),
     -(Xi.T @ av @ cv.T @ Xi.T @ Xi.T + Xi.T @ Xi.T @ av @ cv.T @ Xi.T)),
]


@pytest.mark.parametrize("name, loss, expected", COOKBOOK, ids=[c[0] for c in COOKBOOK])
def test_matrix_cookbook_identities(name, loss, expected):
    np.testing.assert_allclose(gradient(loss), expected, rtol=1e-10, atol=1e-12)


def test_log_det_of_an_spd_matrix_is_its_inverse_through_cholesky():
    env = dict(ENV, X=SPD)
    for loss in (sg.logdet(sg.spd(X)), sp.log(sp.Determinant(sg.spd(X)))):
        np.testing.assert_allclose(gradient(loss, env=env), np.linalg.inv(SPD), rtol=1e-10)
    with sp.assuming(sp.Q.positive_definite(X)):
        model = sg.Model("assumed_spd", loss=sp.log(sp.Determinant(X)), params=[X])
        ops_used = {node.op for node in model.graph.nodes}
    assert "cholesky" in ops_used and "lu" not in ops_used


# --- how SymPy spellings are read -----------------------------------------------------------------


def _ops(model, kind="value_and_grad"):
    graph = derive(model.graph, [str(s.name) for s in model.params], "mean")
    from symgrad.graph import live_nodes
    from symgrad.plan import kernel_results

    return [graph.nodes[i].op for i in live_nodes(graph, kernel_results(graph, kind))]


def test_a_product_with_an_inverse_is_a_solve_never_an_inverse():
    for loss in (sg.sum(X.inv() * B), sg.sum(B * X.inv()), sg.sum(B.T * sp.Inverse(X) * B), sg.sum(X**-1 * B)):
        model = sg.Model("solve_form", loss=loss, params=[X, B])
        for kind in ("forward", "value_and_grad"):
            used = _ops(model, kind)
            assert "lu_solve" in used and "identity" not in used, (loss, kind, used)


def test_trace_of_a_product_forms_no_product():
    model = sg.Model("trace_form", loss=sp.Trace(A * B), params=[A, B])
    assert "matmul" not in _ops(model)


# --- compiled kernels against PyTorch float64 ---------------------------------------------------------


@pytest.fixture(scope="module")
def kitchen_sink(compile_model):
    L = sp.MatrixSymbol("L", n, n)
    x = sp.MatrixSymbol("x", n, 1)
    R = sp.MatrixSymbol("R", 2, n)
    S = L * L.T + sp.Identity(n)
    loss = (sg.scalar(x.T * A.inv() * B * x) + sp.log(sp.Determinant(A)) + sp.Determinant(A)
            + sp.Trace(A * B.T) + sg.logdet(sg.spd(S)) + sg.scalar(x.T * sg.spd(S).inv() * x)
            + sg.sum(sg.cholesky(S)) + sg.sum(sg.triangular_solve(L + 3 * sp.Identity(n), B, lower=False, trans=True))
            + sg.sum(sp.KroneckerProduct(B, x.T)[1:3, 1:9:2].applyfunc(sp.exp)) + sg.sum(sg.vstack(x, B[:, 0:1]).applyfunc(sp.sin))
            + sg.sum(sp.BlockMatrix([[A, B], [R, R]]).applyfunc(sp.cos))
            + sg.sum(sp.BlockDiagMatrix(A, R.T * R).applyfunc(sp.tanh))
            + sg.sum(sg.softmax(A, axis=1).applyfunc(sp.sqrt)) + sg.sum(sg.log_softmax(B, axis=0) * 0.1)
            + sg.sum(sg.logsumexp(A, axis=0)) + sg.sum(sg.max(A, axis=1)) + sg.sum(sg.min(B, axis=0))
            + sg.max(B) + sg.sum(sg.mean(A, axis=1)) + sg.sum(sg.cross_entropy(A, B.applyfunc(sp.exp), axis=1))
            + sg.sum(sp.KroneckerProduct(B, x.T)) + sg.sum(sg.diag(x) * A) + sg.sum(sp.DiagonalOf(A))
            + sg.norm(A - B))
    model = sg.Model("linalg_kitchen_sink", loss=loss, params=[A, B, L, R], inputs=[x])
    return compile_model(model)


def _torch_kitchen_sink(tA, tB, tL, tR, tx):
    eye = torch.eye(n, dtype=torch.float64)
    S = tL @ tL.T + eye

    def one(xe):
        return ((xe.T @ torch.linalg.solve(tA, tB @ xe)).sum() + torch.logdet(tA) + torch.det(tA)
                + torch.trace(tA @ tB.T) + torch.logdet(S) + (xe.T @ torch.linalg.solve(S, xe)).sum()
                + torch.linalg.cholesky(S).sum()
                + torch.linalg.solve_triangular(torch.triu(tL + 3 * eye).T, tB, upper=False).sum()
                + torch.exp(torch.kron(tB, xe.T)[1:3, 1:9:2]).sum() + torch.sin(torch.cat([xe, tB[:, 0:1]])).sum()
                + torch.cos(torch.cat([torch.cat([tA, tB], 1), torch.cat([tR, tR], 1)])).sum()
                + torch.tanh(torch.block_diag(tA, tR.T @ tR)).sum()
                + torch.sqrt(torch.softmax(tA, 1)).sum() + (torch.log_softmax(tB, 0) * 0.1).sum()
                + torch.logsumexp(tA, 0).sum() + tA.amax(1).sum() + tB.amin(0).sum() + tB.amax()
                + tA.mean(1).sum() - (torch.exp(tB) * torch.log_softmax(tA, 1)).sum()
                + torch.kron(tB, xe.T).sum() + (torch.diag(xe[:, 0]) @ tA).sum() + torch.diagonal(tA).sum()
                + torch.linalg.norm(tA - tB))

    return sum(one(tx[e]) for e in range(tx.shape[0])) / tx.shape[0]


def test_compiled_kernels_agree_with_pytorch(kitchen_sink):
    values = {"A": XV, "B": BV, "L": rng.normal(size=(n, n)), "R": rng.normal(size=(2, n)),
              "x": rng.normal(size=(5, n, 1))}
    loss, grads = kitchen_sink.value_and_grad(**values)
    leaves = {k: torch.tensor(v, requires_grad=k != "x") for k, v in values.items()}
    reference = _torch_kitchen_sink(leaves["A"], leaves["B"], leaves["L"], leaves["R"], leaves["x"])
    reference.backward()
    assert loss == pytest.approx(reference.item(), rel=1e-13)
    for name in ("A", "B", "L", "R"):
        np.testing.assert_allclose(grads[name], leaves[name].grad.numpy(), rtol=1e-11, atol=1e-12, err_msg=name)


def test_ties_split_the_gradient_of_max_along_an_axis_evenly(compile_model):
    Z = sp.MatrixSymbol("Z", 2, 3)
    module = compile_model(sg.Model("axis_ties", loss=sg.sum(sg.max(Z, axis=1)) + sg.min(Z), params=[Z]))
    z = np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    _, grads = module.value_and_grad(Z=z)
    tz = torch.tensor(z, requires_grad=True)
    (tz.amax(1).sum() + tz.amin()).backward()
    np.testing.assert_allclose(grads["Z"], tz.grad.numpy(), rtol=1e-15)
    np.testing.assert_allclose(grads["Z"], [[0.5, 0.5, 1.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-15)


# --- singular and non-positive-definite matrices ---------------------------------------------------


@pytest.fixture(scope="module")
def factor_outputs(compile_model):
    Y = sp.MatrixSymbol("Y", n, n)
    b = sp.MatrixSymbol("b", n, 1)
    outputs = {"det": sp.Determinant(Y), "logdet": sp.log(sp.Determinant(Y)), "solve": Y.inv() * b,
               "spd_logdet": sg.logdet(sg.spd(Y)), "spd_solve": sg.spd(Y).inv() * b, "cholesky": sg.cholesky(Y)}
    return compile_model(sg.Model("factor_outputs", outputs=outputs, loss=sg.sum(Y.inv() * b), inputs=[Y, b],
                                       wrt=[Y]))


def test_a_singular_matrix_gives_inf_or_nan_in_its_example_only(factor_outputs):
    singular = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 1.0, 1.0]])
    Y = np.stack([SPD, singular, np.zeros((n, n))])
    b = np.ones((3, n, 1))
    out = factor_outputs.forward(Y=Y, b=b)
    np.testing.assert_allclose(out["det"][0], np.linalg.det(SPD), rtol=1e-13)
    np.testing.assert_allclose(out["solve"][0], np.linalg.solve(SPD, b[0]), rtol=1e-13)
    np.testing.assert_allclose(out["cholesky"][0], np.linalg.cholesky(SPD), rtol=1e-13)
    assert out["det"][1] == 0 and out["det"][2] == 0
    assert out["logdet"][1] == -np.inf and out["logdet"][2] == -np.inf
    for k in (1, 2):
        assert not np.all(np.isfinite(out["solve"][k])), out["solve"][k]
    _, grads = factor_outputs.value_and_grad(Y=Y, b=b)
    assert np.all(np.isfinite(grads["Y"][0])) and not np.all(np.isfinite(grads["Y"][1]))


def test_a_matrix_that_is_not_positive_definite_gives_nan_through_cholesky(factor_outputs):
    indefinite = np.diag([1.0, -1.0, 2.0])
    out = factor_outputs.forward(Y=np.stack([SPD, indefinite]), b=np.ones((2, n, 1)))
    assert np.isfinite(out["spd_logdet"][0]) and np.isnan(out["spd_logdet"][1])
    assert np.all(np.isnan(out["spd_solve"][1]))
    chol = out["cholesky"][1]
    assert chol[0, 0] == 1 and np.isnan([chol[1, 1], chol[2, 1], chol[2, 2]]).all()
    # the LU form has the determinant's sign (of U's pivots and of the row swaps): the log of a
    # negative determinant is NaN
    assert np.isnan(out["logdet"][1]) and out["det"][1] == pytest.approx(-2.0)
    swapped = factor_outputs.forward(Y=np.array([[[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
                                                 [[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]]),
                                     b=np.ones((2, n, 1)))
    assert list(swapped["det"]) == [-2.0, 2.0]
    assert np.isnan(swapped["logdet"][0]) and swapped["logdet"][1] == pytest.approx(np.log(2.0))


# --- code size ------------------------------------------------------------------------------------------


def _gaussian(d):
    x, mu, L = sp.MatrixSymbol("x", d, 1), sp.MatrixSymbol("mu", d, 1), sp.MatrixSymbol("L", d, d)
    sigma = sg.spd(sg.tril(L) * sg.tril(L).T)
    r = x - mu
    loss = sg.logdet(sigma) + sg.scalar(r.T * sigma.inv() * r) + sg.sum(sg.softmax(L, axis=1)[0:2, :])
    return sg.Model(f"gaussian_size_{d}", loss=loss, params=[mu, L], inputs=[x])


def test_code_size_does_not_grow_with_the_matrix_size():
    """The kernels of a 4x4 and a 64x64 covariance differ in their numbers only."""
    sizes = []
    for d in (4, 64):
        files = generate(_gaussian(d)).package.files
        sizes.append(sum(len(re.sub(r"\d+", "0", text)) for name, text in files.items()
                         if name.endswith(("_forward.c", "_grad.c"))))
    assert sizes[0] == sizes[1], sizes


# --- what cannot be read ----------------------------------------------------------------------------------


R23 = sp.MatrixSymbol("R23", 2, 3)


@pytest.mark.parametrize("build, error, message", [
    (lambda: sg.Model("m", loss=sg.sum(sp.Inverse(R23)), params=[R23]), Exception, "square"),
    (lambda: sg.Model("m", loss=sg.logdet(R23), params=[R23]), Exception, "square"),
    (lambda: sg.Model("m", loss=sg.sum(sg.cholesky(R23)), params=[R23]), Exception, "square"),
    (lambda: sg.Model("m", loss=sg.sum(sg.softmax(R23, axis=2)), params=[R23]), ValueError, "axis must be 0"),
    (lambda: sg.Model("m", loss=sg.sum(sg.vstack(R23, a)), params=[R23, a]), Exception, "columns must agree"),
    (lambda: sg.Model("m", loss=sg.sum(X[::2, :]), params=[X]), UnsupportedFunctionError,
     "SymPy gives it the shape 1x3"),
    (lambda: sg.Model("m", loss=sg.sum(sg.triangular_solve(X, R23)), params=[X, R23]), Exception,
     "right-hand side"),
    (lambda: sg.Model("m", loss=sg.sum(sg.cross_entropy(R23, sp.Symbol("k"), axis=1)), params=[R23]), Exception,
     "target of the logits' shape"),
])
def test_unsupported_forms_are_named(build, error, message):
    with pytest.raises(error) as info:
        build()
    assert message in str(info.value), str(info.value)


def test_a_zero_power_is_refused():
    with pytest.raises(UnsupportedFunctionError, match="whole powers"):
        sg.Model("m", loss=sg.sum(sp.MatPow(X, 0, evaluate=False)), params=[X])


def test_solve_shape_mismatch_is_a_shape_error():
    from symgrad.graph import Builder, Graph
    from symgrad.ops.factor import solve

    b = Builder(Graph())
    square = b.apply("symbol", attrs=("S", "param", (3, 3), X))
    rhs = b.apply("symbol", attrs=("r", "param", (2, 1), sp.MatrixSymbol("r", 2, 1)))
    with pytest.raises(ModelShapeError, match="right-hand side"):
        solve(b, square, rhs)


def test_a_quadratic_form_in_an_spd_inverse_is_one_triangular_solve_per_example():
    """(x - mu)^T Sigma^-1 (x - mu) is |L^-1 (x - mu)|^2: one solve per example forward and one
    backward (not two each), and the adjoint of L is one batch-summed product."""
    from symgrad.graph import live_nodes
    from symgrad.plan import kernel_results

    model = _gaussian(4)
    graph = derive(model.graph, ["mu", "L"], "mean")
    live = [graph.nodes[i] for i in live_nodes(graph, kernel_results(graph, "value_and_grad"))]
    assert sum(1 for node in live if node.op in ("tri_solve", "cho_solve") and node.varying) == 2
    assert not any(node.op == "triangle" and node.varying for node in live)
    assert "x.T*A^-1*x -> y.T*y with y = L^-1*x, L = cholesky(A), for an spd A" in graph.rewrites


@pytest.fixture(scope="module")
def shared_factor(compile_model):
    P = sp.MatrixSymbol("P", n, n)
    x = sp.MatrixSymbol("x", n, 2)
    S = P * P.T + sp.Identity(n)
    outputs = {"lu": P.inv() * x, "lu_t": (x.T * P.inv()).T, "tri": sg.triangular_solve(P, x),
               "tri_t": sg.triangular_solve(P, x, lower=False, trans=True), "cho": sg.spd(S).inv() * x}
    return compile_model(sg.Model("shared_factor", outputs=outputs, loss=sg.sum(outputs["lu"] + outputs["cho"]),
                                  params=[P], inputs=[x]))


def test_solves_with_a_shared_factor_match_the_per_example_path_and_numpy(shared_factor):
    """A factor of params only solves a tile's examples at once (n > 1 examples); one example
    takes the per-example loop. Both against NumPy, over more than one tile."""
    p = XV
    x = rng.normal(size=(300, n, 2))
    batch = shared_factor.forward(P=p, x=x)
    s = p @ p.T + np.eye(n)
    expected = {"lu": np.linalg.solve(p, x), "lu_t": np.linalg.solve(p.T, x), "tri": np.linalg.solve(np.tril(p), x),
                "tri_t": np.linalg.solve(np.triu(p).T, x), "cho": np.linalg.solve(s, x)}
    for name, want in expected.items():
        np.testing.assert_allclose(batch[name], want, rtol=1e-12, atol=1e-13, err_msg=name)
        for e in (0, 299):
            one = shared_factor.forward(P=p, x=x[e])[name]
            np.testing.assert_allclose(one, batch[name][e], rtol=1e-14, atol=1e-15, err_msg=name)
    _, grads = shared_factor.value_and_grad(P=p, x=x)
    tp = torch.tensor(p, requires_grad=True)
    tx = torch.tensor(x)
    ts = tp @ tp.T + torch.eye(n, dtype=torch.float64)
    ((torch.linalg.solve(tp, tx) + torch.linalg.solve(ts, tx)).sum(dim=(1, 2)).mean()).backward()
    np.testing.assert_allclose(grads["P"], tp.grad.numpy(), rtol=1e-11)


def test_the_gradients_of_linear_algebra_ops_are_sympy_expressions():
    """model.gradients() (the SymPy view) of models using the ops: the adjoints of slices and
    Kronecker products are written out as explicit matrices."""
    R = sp.MatrixSymbol("R", n, 2)
    for loss in (sp.log(sp.Determinant(X)), sg.sum(X.inv() * R), sg.sum(X[0:2, 1:3]),
                 sg.sum(sp.KroneckerProduct(X, R)), sg.sum(sg.cholesky(X * X.T)), sg.sum(sg.vstack(X, R.T))):
        model = sg.Model("sympy_view", loss=loss, params=[X, R])
        gradients = model.gradients()
        assert set(gradients) == {X, R}
    assert sg.Model("sympy_view", loss=sg.sum(X[0:2, 1:3]), params=[X]).gradients()[X] == sp.Matrix(
        [[0, 1, 1], [0, 1, 1], [0, 0, 0]])
