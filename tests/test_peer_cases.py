"""Cases from peers' public test suites, on the extra kernels (jvp, hvp, hessian, jacobian),
linear algebra and structure ops, and the flat-vector calls of symgrad.scipy.

References are PyTorch float64 with torch.func (jvp, jacrev/jacfwd, hessian), whose
semantics the kernels follow: ``hvp`` is ``jvp(grad(f))`` of the reduced loss, ``hessian`` is
``torch.func.hessian`` of it. The cases follow
- JAX tests/linalg_test.py gradient cases (testDetGrad, testSlogdetGrad, testInvGrad, testSolve
  gradients, testCholeskyGrad): determinants, log-determinants, inverses and solves of
  well-conditioned and near-singular (but invertible) matrices, and Cholesky factors;
- autograd tests/test_linalg.py (test_inv, test_solve_arg1/arg2, test_det, test_slogdet,
  test_cholesky, test_solve_triangular): second derivatives through the same ops, by composing
  them with elementwise ops;
- PyTorch's gradcheck-style cases (common_methods_invocations: cholesky, slogdet, linalg.solve,
  linalg.inv, amax ties, softmax/log_softmax/logsumexp along a dim at large logits) and the
  kink conventions of torch.abs, torch.relu and torch.pow at zero under forward mode.
Each model is built once per module; the file runs in well under a minute.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.errors import ArgumentError, ArgumentShapeError, ModelError

torch = pytest.importorskip("torch")
from torch.func import hessian as t_hessian, jacrev, jvp as t_jvp, vmap  # noqa: E402

KINDS = ("jvp", "hvp", "hessian", "jacobian")
F64 = dict(rtol=1e-8, atol=1e-9)
F32 = dict(rtol=2e-3, atol=2e-3)


def _t(value):
    return torch.tensor(np.asarray(value, dtype=np.float64))


def _close(got, expected, what, **tol):
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    np.testing.assert_allclose(np.reshape(np.asarray(got, dtype=np.float64), expected.shape), expected,
                               err_msg=what, **tol)


class Reference:
    """The model's batch in PyTorch: outputs of every example and the reduced loss as functions
    of the wrt values (an input's value: the whole batch)."""

    def __init__(self, model, params, data, example):
        self.model, self.params, self.data, self.example = model, params, data, example
        self.wrt = list(model.wrt)
        self.roles = {str(s.name): "param" for s in model.params} | {str(s.name): "input" for s in model.inputs}
        self.arrays = params | data

    def __call__(self, *wrt_values):
        p = {k: _t(v) for k, v in self.params.items()}
        d = {k: _t(v) for k, v in self.data.items()}
        for name, value in zip(self.wrt, wrt_values):
            (p if self.roles[name] == "param" else d)[name] = value
        names = list(d)
        per = (vmap(lambda *xs: self.example(p, dict(zip(names, xs))))(*[d[k] for k in names]) if names
               else self.example(p, {}))
        if "loss" in per and self.model.reduce is not None:
            per = dict(per, loss=per["loss"].mean() if self.model.reduce == "mean" else per["loss"].sum())
        return per

    def values(self):
        return tuple(_t(self.arrays[name]) for name in self.wrt)

    def random(self, seed):
        rng = np.random.default_rng(seed)
        return {name: rng.standard_normal(np.shape(self.arrays[name])) for name in self.wrt}


def _check_all(m, ref, tol, kinds=KINDS, seed=0):
    """forward, jvp, hvp and hessian (params' blocks) of module m against the reference."""
    arrays = ref.arrays
    expected = ref(*ref.values())
    forward = m.forward(**arrays)
    for name in expected:
        _close(forward[name], expected[name], f"forward {name}", **tol)
    if "jvp" in kinds:
        tangents = ref.random(seed)
        _, got = m.jvp(tangents, **arrays)
        _, reference = t_jvp(ref, ref.values(), tuple(_t(tangents[n]) for n in ref.wrt))
        for name in reference:
            _close(got[name], reference[name], f"jvp {name}", **tol)
    if ref.model.reduce is None:
        return
    grad = jacrev(lambda *w: ref(*w)["loss"], argnums=tuple(range(len(ref.wrt))))
    if "hvp" in kinds:
        v = ref.random(seed + 1)
        got = m.hvp(v, **arrays)
        _, reference = t_jvp(grad, ref.values(), tuple(_t(v[n]) for n in ref.wrt))
        for name, value in zip(ref.wrt, reference):
            _close(got[name], value, f"hvp {name}", **tol)
    if "hessian" in kinds:
        _, _, H = m.hessian(**arrays)
        full = t_hessian(lambda *w: ref(*w)["loss"], argnums=tuple(range(len(ref.wrt))))(*ref.values())
        for i, a in enumerate(ref.wrt):
            for j, b in enumerate(ref.wrt):
                if ref.roles[a] == ref.roles[b] == "param":
                    _close(H[a][b], full[i][j], f"H[{a}][{b}]", **tol)


# --- linear algebra: LU and Cholesky paths, second order ------------------------------------------

n = 3
X, A = sp.MatrixSymbol("X", n, n), sp.MatrixSymbol("A", n, n)
B, u = sp.MatrixSymbol("B", n, 2), sp.MatrixSymbol("u", n, 1)
_L = sg.cholesky(sg.spd(A * A.T + sp.Identity(n)))
LINALG_LOSS = (sp.log(sp.Determinant(X)) + sp.Determinant(X) + sg.sum((X.inv() * B).applyfunc(lambda t: t ** 2))
               + sp.Trace(A * X.inv()) + sg.scalar(u.T * X ** -2 * u) + sg.sum(B.T * X.inv().T * u)
               + sg.logdet(sg.spd(A * A.T + sp.Identity(n))) * sg.scalar(u.T * u)
               + sg.scalar(u.T * sg.spd(A * A.T + sp.Identity(n)).inv() * u)
               + sg.sum(_L.applyfunc(lambda t: t ** 3)) + sg.sum(sg.triangular_solve(_L, B, lower=True).applyfunc(sp.sin))
               + sg.sum(sg.tril(X) * u))


def _linalg_example(p, d):
    X, A, B, u = p["X"], p["A"], d["B"], d["u"]
    Xi = torch.linalg.inv(X)
    S = A @ A.T + torch.eye(n)
    L = torch.linalg.cholesky(S)
    loss = (torch.logdet(X) + torch.det(X) + (torch.linalg.solve(X, B) ** 2).sum() + torch.trace(A @ Xi)
            + (u.T @ Xi @ Xi @ u)[0, 0] + (B.T @ Xi.T @ u).sum() + torch.logdet(S) * (u.T @ u)[0, 0]
            + (u.T @ torch.linalg.solve(S, u))[0, 0] + (L ** 3).sum()
            + torch.sin(torch.linalg.solve_triangular(L, B, upper=False)).sum() + (torch.tril(X) @ u).sum())
    return {"s": torch.linalg.solve(X, B), "L": L, "loss": loss}


@pytest.fixture(scope="module")
def linalg(tmp_path_factory):
    model = sg.Model("peer_linalg", params=[X, A], inputs=[B, u], loss=LINALG_LOSS,
                     outputs={"s": X.inv() * B, "L": _L}, reduce="mean", kernels=KINDS)
    return model, sg.compile(model, out_dir=tmp_path_factory.mktemp("peer"))


def _linalg_values(near_singular):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((n, n)) + 3 * np.eye(n)
    if near_singular:  # JAX's near-singular cases: condition number ~1e6, determinant > 0
        U, s, Vt = np.linalg.svd(x)
        s[-1] = 1e-5
        x = U @ np.diag(s) @ Vt
        if np.linalg.det(x) < 0:
            x[:, 0] *= -1
    return {"X": x, "A": rng.standard_normal((n, n))}, {"B": rng.standard_normal((2, n, 2)),
                                                         "u": rng.standard_normal((2, n, 1))}


@pytest.mark.parametrize("near_singular", [False, True], ids=["conditioned", "near_singular"])
def test_linalg_second_order_against_torch(linalg, near_singular):
    """det, logdet, inverse powers, solves, Cholesky and triangular solves in one loss: forward,
    jvp, hvp and the Hessian. Near a singular matrix the derivatives grow like cond**k; the
    tolerance is relative to them."""
    model, m = linalg
    params, data = _linalg_values(near_singular)
    tol = dict(rtol=1e-5, atol=1e-3) if near_singular else F64
    _check_all(m, Reference(model, params, data, _linalg_example), tol)


def test_linalg_jacobian_against_jacrev_per_example(linalg):
    model, m = linalg
    params, data = _linalg_values(False)
    J = m.jacobian(**params, **data)
    for e in range(2):
        f = lambda X, A: _linalg_example({"X": X, "A": A}, {"B": _t(data["B"][e]), "u": _t(data["u"][e])})  # noqa
        reference = jacrev(f, argnums=(0, 1))(_t(params["X"]), _t(params["A"]))
        for row in ("s", "L", "loss"):
            for j, name in enumerate(("X", "A")):
                _close(np.asarray(J[row][name])[e], reference[row][j], f"J[{row}][{name}] {e}", **F64)


# --- axis ops at large logits and ties, slices and concatenation, float32 -------------------------

W, Z = sp.MatrixSymbol("W", 3, 4), sp.MatrixSymbol("Z", 3, 4)
c = sp.Symbol("c")
_H = sg.vstack(W[0:2, :].applyfunc(sp.tanh) * c, W[2:3, :])
AXIS_OUT = {"sm": sg.softmax(_H * c + Z, axis=1), "lse": sg.logsumexp(W * c + Z, axis=0),
            "ls": sg.log_softmax(W + Z * c, axis=0), "mx": sg.max(W, axis=1), "mn": sg.min(W * c, axis=0)}
AXIS_LOSS = (sg.sum(AXIS_OUT["sm"].applyfunc(lambda t: t ** 2)) + sg.sum(AXIS_OUT["lse"]) / 100
             + sg.sum(AXIS_OUT["ls"].applyfunc(lambda t: t * t)) / 1e6 + sg.sum(AXIS_OUT["mx"]) * c ** 2
             + sg.sum(AXIS_OUT["mn"]) * c + sg.sum(sg.log_softmax(W, axis=1)[:, 0:1]))


def _axis_example(p, d):
    W, Z, c = p["W"], d["Z"], p["c"]
    H = torch.cat([torch.tanh(W[0:2]) * c, W[2:3]], 0)
    out = {"sm": torch.softmax(H * c + Z, 1), "lse": torch.logsumexp(W * c + Z, 0, keepdim=True),
           "ls": torch.log_softmax(W + Z * c, 0), "mx": torch.amax(W, 1, keepdim=True),
           "mn": torch.amin(W * c, 0, keepdim=True)}
    loss = ((out["sm"] ** 2).sum() + out["lse"].sum() / 100 + (out["ls"] ** 2).sum() / 1e6
            + out["mx"].sum() * c ** 2 + out["mn"].sum() * c + torch.log_softmax(W, 1)[:, 0:1].sum())
    return out | {"loss": loss}


@pytest.fixture(scope="module", params=["float64", "float32"])
def axis(request, tmp_path_factory):
    model = sg.Model("peer_axis", params=[W, c], inputs=[Z], loss=AXIS_LOSS, outputs=AXIS_OUT, reduce="sum",
                     kernels=KINDS)
    return model, request.param, sg.compile(model, out_dir=tmp_path_factory.mktemp("peer"), dtype=request.param)


@pytest.mark.parametrize("scale", [1.0, 300.0], ids=["ordinary", "large_logits"])
def test_axis_softmax_family_max_ties_and_slices_against_torch(axis, scale):
    """torch's amax/amin split a tie evenly in backward and forward mode: W's rows hold ties of
    the maximum and W's columns ties of the minimum. At logits of several hundred the softmax
    family stays finite and right (each line shifted by its maximum), in float32 too."""
    model, dtype, m = axis
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 4)) * scale
    w[0, 1] = w[0, 2] = w[0].max() + 1  # a tie of the row maximum
    w[:, 3] = w[:, 0]                   # ties of the column minimum (and a second row tie)
    data = {"Z": rng.standard_normal((2, 3, 4)) * scale}
    _check_all(m, Reference(model, {"W": w, "c": 1.0}, data, _axis_example), F64 if dtype == "float64" else F32)


# --- structure ops under forward mode ---------------------------------------------------------------

Ps, Qs, v3 = sp.MatrixSymbol("P", 2, 2), sp.MatrixSymbol("Q", 2, 3), sp.MatrixSymbol("v3", 3, 1)
_K = sp.KroneckerProduct(Ps, Qs)
_BM = sp.BlockMatrix([[Ps, Qs], [Qs.T * Ps, sp.ZeroMatrix(3, 3)]])
_HS = sg.hstack(Ps, Qs)
STRUCT_OUT = {"K": _K, "dg": sp.DiagonalOf(_BM), "st": _K[0:4:2, 1:5:2], "n": sg.norm(Qs * v3)}
STRUCT_LOSS = (sg.sum(_K.applyfunc(lambda t: t ** 2)) * c + sg.sum(_BM.applyfunc(sp.sin))
               + sg.sum(sp.BlockDiagMatrix(Ps, Qs.T * Qs) * STRUCT_OUT["dg"])
               + sg.sum(sg.diag(v3) * v3) * sp.Trace(Ps * Qs * Qs.T) + sg.sum(sg.mean(_HS, axis=0).applyfunc(sp.exp))
               + sg.sum(sg.sum(_K, axis=1).applyfunc(sp.tanh)) + STRUCT_OUT["n"] ** 3
               + sg.sum(STRUCT_OUT["st"].applyfunc(lambda t: t ** 3)) + sg.max(_HS) * c ** 2 + sg.min(STRUCT_OUT["st"]))


def _struct_example(p, d):
    P, Q, v, c = p["P"], p["Q"], d["v3"], p["c"]
    K = torch.kron(P, Q)
    BM = torch.cat([torch.cat([P, Q], 1), torch.cat([Q.T @ P, torch.zeros(3, 3, dtype=P.dtype)], 1)], 0)
    dg = torch.diagonal(BM).reshape(5, 1)
    hs = torch.cat([P, Q], 1)
    st = K[0:4:2, 1:5:2]
    nrm = torch.linalg.norm(Q @ v)
    loss = ((K ** 2).sum() * c + torch.sin(BM).sum() + (torch.block_diag(P, Q.T @ Q) @ dg).sum()
            + (torch.diag(v[:, 0]) @ v).sum() * torch.trace(P @ Q @ Q.T) + torch.exp(hs.mean(0, keepdim=True)).sum()
            + torch.tanh(K.sum(1, keepdim=True)).sum() + nrm ** 3 + (st ** 3).sum() + hs.max() * c ** 2 + st.min())
    return {"K": K, "dg": dg, "st": st, "n": nrm, "loss": loss}


def test_structure_ops_second_order_against_torch(tmp_path_factory):
    """Kronecker products, blocks, block diagonals, diagonals, strided slices, concatenation,
    axis means and sums, the norm and Trace(A*B) (never formed) under jvp, hvp and hessian."""
    model = sg.Model("peer_struct", params=[Ps, Qs, c], inputs=[v3], loss=STRUCT_LOSS, outputs=STRUCT_OUT,
                     reduce="mean", kernels=KINDS)
    m = sg.compile(model, out_dir=tmp_path_factory.mktemp("peer"))
    rng = np.random.default_rng(7)
    params = {"P": rng.standard_normal((2, 2)), "Q": rng.standard_normal((2, 3)), "c": 0.6}
    _check_all(m, Reference(model, params, {"v3": rng.standard_normal((3, 3, 1))}, _struct_example), F64)


# --- inputs in wrt, reduce=None: one Hessian block per example ----------------------------------------

Y, z, w = sp.MatrixSymbol("Y", 2, 2), sp.MatrixSymbol("z", 2, 1), sp.Symbol("w")
_S = Y * Y.T + sp.Identity(2)
PER_LOSS = (sg.logdet(sg.spd(_S)) * w + sg.scalar(z.T * sg.spd(_S).inv() * z)
            + sg.sum(sg.softmax(sg.vstack(z, Y[0:1, :].T) * w, axis=0).applyfunc(sp.log)))


def _per_example(Y, w, z):
    S = Y @ Y.T + torch.eye(2, dtype=Y.dtype)
    return (torch.logdet(S) * w + (z.T @ torch.linalg.solve(S, z))[0, 0]
            + torch.log(torch.softmax(torch.cat([z, Y[0:1, :].T], 0) * w, 0)).sum())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_inputs_in_wrt_per_example_hvp_hessian_and_jvp(tmp_path_factory, dtype):
    """reduce=None with an input in wrt: hvp and hessian are each example's own (torch.func on
    one example), and a tangent of one example's shape is repeated over the batch."""
    model = sg.Model(f"peer_per_{dtype}", params=[Y, w], inputs=[z], loss=PER_LOSS, wrt=[w, z, Y], reduce=None,
                     kernels=KINDS)
    m = sg.compile(model, out_dir=tmp_path_factory.mktemp("peer"), dtype=dtype)
    tol = F64 if dtype == "float64" else F32
    rng = np.random.default_rng(4)
    y0, w0, Zv = rng.standard_normal((2, 2)), 0.9, rng.standard_normal((3, 2, 1))
    v = {"w": 0.3, "z": rng.standard_normal((3, 2, 1)), "Y": rng.standard_normal((2, 2))}
    got = m.hvp(v=v, Y=y0, w=w0, z=Zv)
    _, _, H = m.hessian(Y=y0, w=w0, z=Zv)
    _, tangents = m.jvp(tangents={"z": v["z"][0], "w": 1.0}, Y=y0, w=w0, z=Zv)
    names = ("Y", "w", "z")
    for e in range(3):
        point = (_t(y0), _t(w0), _t(Zv[e]))
        _, hv = t_jvp(jacrev(_per_example, argnums=(0, 1, 2)), point, (_t(v["Y"]), _t(v["w"]), _t(v["z"][e])))
        for name, value in zip(names, hv):
            _close(np.asarray(got[name])[e], value, f"hvp {name} example {e}", **tol)
        full = t_hessian(_per_example, argnums=(0, 1, 2))(*point)
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                _close(np.asarray(H[a][b])[e], full[i][j], f"H[{a}][{b}] example {e}", **tol)
        _, dl = t_jvp(lambda w, z: _per_example(point[0], w, z), point[1:], (_t(1.0), _t(v["z"][0])))
        _close(np.asarray(tangents["loss"])[e], dl, f"jvp loss example {e}", **tol)


# --- kinks and powers at zero under forward mode, as torch.func gives them ----------------------------

xs, ys, a_ = sp.symbols("x y a")
EDGE_OUT = {"p": xs ** ys, "q": sp.sqrt(sp.Abs(xs) + xs ** 2) * a_, "r": xs ** 3 * ys, "ab": sp.Abs(xs) * ys,
            "rl": sg.relu(ys - xs), "mx": sp.Max(xs, ys) * a_}
EDGE_LOSS = (sp.Abs(xs) * a_ + sg.relu(xs) * a_ ** 2 + xs * sp.Abs(xs) + sg.relu(xs) ** 2 * a_ + xs ** ys
             + sp.Max(xs, ys) * a_)


def _edge_example(p, d):
    x, y, a = p["x"], p["y"], p["a"]
    out = {"p": x ** y, "q": torch.sqrt(torch.abs(x) + x ** 2) * a, "r": x ** 3 * y, "ab": torch.abs(x) * y,
           "rl": torch.relu(y - x), "mx": torch.maximum(x, y) * a}
    loss = (torch.abs(x) * a + torch.relu(x) * a ** 2 + x * torch.abs(x) + torch.relu(x) ** 2 * a + x ** y
            + torch.maximum(x, y) * a)
    return out | {"loss": loss}


@pytest.fixture(scope="module")
def edges(tmp_path_factory):
    model = sg.Model("peer_edges", params=[xs, ys, a_], loss=EDGE_LOSS, outputs=EDGE_OUT, kernels=("jvp", "hvp"))
    return model, sg.compile(model, out_dir=tmp_path_factory.mktemp("peer"))


@pytest.mark.parametrize("x0,y0", [(0.0, 2.0), (0.0, 1.0), (0.0, 0.5), (0.0, 0.0), (0.0, 3.0), (1.5, 1.5)])
def test_kinks_and_powers_at_zero_match_torch_func(edges, x0, y0):
    """abs and relu at 0 (gradient 0), x**y at a zero base (d/dy taken as 0 for y >= 0, d/dx
    as 0 for y = 0) and a tie of Max (split half each) in jvp and hvp, against torch.func's
    jvp and jvp(grad). (At such points the mixed second derivatives of x**y are not symmetric
    in torch.func.hessian, so the Hessian is checked through hvp.)"""
    model, m = edges
    _check_all(m, Reference(model, {"x": x0, "y": y0, "a": 1.3}, {}, _edge_example), F64, kinds=("jvp", "hvp"))


# --- errors name the problem and the fix ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    k, cc, t = sp.symbols("k cc t")
    x = sp.MatrixSymbol("x", 2, 1)
    model = sg.Model("peer_errors", params=[k, cc], inputs=[x, t], loss=(k * x[0] - t) ** 2 + cc * x[1] ** 2,
                     outputs={"o": k * x}, wrt=[k, x], kernels=KINDS)
    return sg.compile(model, out_dir=tmp_path_factory.mktemp("peer"))


def test_bad_tangents_are_refused_by_name(small):
    arrays = dict(k=1.0, cc=1.0, x=np.ones((4, 2, 1)), t=np.ones(4))
    with pytest.raises(ArgumentError, match="'kk' is not among the symbols differentiated; tangents takes: k, x"):
        small.jvp(tangents={"kk": 1.0}, **arrays)
    with pytest.raises(ArgumentError, match="'cc' is not among the symbols differentiated"):
        small.hvp(v={"cc": 1.0}, **arrays)
    with pytest.raises(ArgumentShapeError, match=r"'tangents\[x\]' has 3 examples but input 'x' has 4"):
        small.jvp(tangents={"x": np.ones((3, 2, 1))}, **arrays)
    with pytest.raises(ArgumentShapeError, match=r"'tangents\[k\]' is one number shared by all examples"):
        small.jvp(tangents={"k": np.ones(4)}, **arrays)
    with pytest.raises(sg.errors.ArgumentDtypeError, match=r"'tangents\[k\]' has dtype complex128"):
        small.jvp(tangents={"k": 1 + 2j}, **arrays)
    with pytest.raises(ArgumentError, match="tangents= is missing"):
        small.jvp(v={"k": 1.0}, **arrays)
    with pytest.raises(ArgumentError, match="out= is not an option"):
        small.hvp(v={"k": 1.0}, out=None, **arrays)


def test_kernel_names_and_second_order_without_a_loss_are_refused():
    k = sp.Symbol("k")
    with pytest.raises(ModelError, match="'jacobain'.*'jacobian', 'jvp', 'hvp', 'hessian'"):
        sg.Model("peer_bad", params=[k], loss=k ** 2, kernels=("hvp", "jacobain"))
    with pytest.raises(ModelError, match="'Hessian'"):
        sg.Model("peer_bad", params=[k], loss=k ** 2, kernels=("Hessian",))
    for kind in ("hvp", "hessian"):
        with pytest.raises(ModelError, match=f"kernels='{kind}' differentiates the loss twice; give the model loss="):
            sg.Model("peer_bad", params=[k], outputs={"o": k}, kernels=(kind,))


# --- flat calls: theta must be the 1-D vector the layout describes ---------------------------------------


def test_flat_objective_against_torch_and_refuses_theta_of_another_shape(tmp_path_factory):
    """scipy.optimize passes theta as a 1-D vector; a 2-D array of as many elements is refused
    (by the fast path of every function, as by the general check), not read in C order."""
    from symgrad.scipy import Objective

    Wm, bm = sp.MatrixSymbol("Wm", 2, 3), sp.MatrixSymbol("bm", 2, 1)
    xm, ym, s = sp.MatrixSymbol("xm", 3, 1), sp.MatrixSymbol("ym", 2, 1), sp.Symbol("s")
    r = (Wm * xm + bm).applyfunc(sp.tanh) * s - ym
    model = sg.Model("peer_flat", params=[Wm, bm, s], inputs=[xm, ym], loss=sg.sum(r.applyfunc(lambda u: u ** 2)),
                     outputs={"r": r}, reduce="mean", kernels=("jacobian", "hvp", "hessian"))
    m = sg.compile(model, out_dir=tmp_path_factory.mktemp("peer"))
    rng = np.random.default_rng(3)
    Xd, Yd = rng.standard_normal((5, 3, 1)), rng.standard_normal((5, 2, 1))
    obj = Objective(m, data={"xm": Xd, "ym": Yd}, residual="r")
    theta, p = rng.standard_normal(9), rng.standard_normal(9)

    def loss(th):
        rr = torch.tanh(th[:6].reshape(2, 3) @ _t(Xd) + th[6:8].reshape(2, 1)) * th[8] - _t(Yd)
        return (rr ** 2).sum((1, 2)).mean()

    _close(obj.fun(theta), loss(_t(theta)), "fun", **F64)
    _close(obj.jac(theta), jacrev(loss)(_t(theta)), "jac", **F64)
    _close(obj.hessp(theta, p), t_hessian(loss)(_t(theta)) @ _t(p), "hessp", **F64)
    _close(obj.hess(theta), t_hessian(loss)(_t(theta)), "hess", **F64)
    for name in ("fun", "jac", "fun_and_jac", "hess", "residuals", "residual_jacobian"):
        with pytest.raises(ArgumentShapeError, match=r"theta has shape \(3, 3\); expected \(9,\): Wm at \[0:6\]"):
            getattr(obj, name)(theta.reshape(3, 3))
    with pytest.raises(ArgumentShapeError, match=r"theta has shape \(9, 1\)"):
        obj.hessp(theta.reshape(9, 1), p)
    with pytest.raises(ArgumentShapeError, match=r"has shape \(9, 1\); expected \(9,\)"):
        obj.hessp(theta, p.reshape(9, 1))


def test_tangents_the_kernel_does_not_read_are_checked_too(tmp_path_factory):
    """u, Q and r enter the loss linearly and z not at all, so the hvp kernel reads none of their
    tangents: a tangent of the wrong shape or dtype is refused all the same (JAX and torch.func
    refuse a tangent that does not match its primal), and a right one counts as what it is."""
    wv, uv, zv, xv = sp.symbols("wv uv zv xv")
    Q, r = sp.MatrixSymbol("Q", 2, 2), sp.MatrixSymbol("r", 2, 1)
    model = sg.Model("peer_unread", params=[wv, uv, zv, Q], inputs=[xv, r], wrt=[wv, uv, zv, Q, r],
                     loss=wv ** 2 * xv + uv + sg.sum(Q) + sg.sum(r), outputs={"o": wv * xv}, kernels=("jvp", "hvp"))
    m = sg.compile(model, out_dir=tmp_path_factory.mktemp("peer"))
    arrays = dict(wv=0.5, uv=2.0, zv=3.0, Q=np.eye(2), xv=np.array([1.0, 2.0, 3.0]), r=np.ones((3, 2, 1)))
    got = m.hvp(v={"wv": 1.0, "uv": 1.0, "zv": 2.0, "Q": np.ones((2, 2)), "r": np.ones((3, 2, 1))}, **arrays)
    assert got["wv"] == pytest.approx(2 * 2.0) and got["uv"] == 0.0
    np.testing.assert_array_equal(got["Q"], np.zeros((2, 2)))
    with pytest.raises(ArgumentShapeError, match=r"param 'v\[zv\]' is one number shared by all examples; got an "
                                                 r"array of shape \(5,\)"):
        m.hvp(v={"zv": np.ones(5)}, **arrays)
    with pytest.raises(ArgumentShapeError, match=r"param 'v\[Q\]' must have shape \(2, 2\); got \(3, 2\)"):
        m.hvp(v={"Q": np.ones((3, 2))}, **arrays)
    with pytest.raises(ArgumentShapeError, match=r"input 'v\[r\]' has shape \(3, 3\)"):
        m.hvp(v={"r": np.ones((3, 3))}, **arrays)
    with pytest.raises(sg.errors.ArgumentDtypeError, match=r"'tangents\[uv\]' has dtype <U3"):
        m.jvp(tangents={"uv": "abc"}, **arrays)


def test_spd_ops_forward_mode_agrees_with_their_gradients(tmp_path_factory):
    """sg.spd(S) reads S's lower triangle; its gradients are those of the full matrix at a
    symmetric point (torch.linalg.solve and torch.logdet on S itself). Along a symmetric
    tangent jvp and hvp equal torch.func's; along any tangent jvp is <gradient, tangent>, so
    forward and reverse mode agree (torch's own Cholesky jvp does not, off the symmetric ones)."""
    S, bb = sp.MatrixSymbol("S", 3, 3), sp.MatrixSymbol("bb", 3, 1)
    Ssp = sg.spd(S)
    loss = (sg.logdet(Ssp) + sg.scalar(bb.T * Ssp.inv() * bb) + sg.sum((Ssp.inv() * bb).applyfunc(sp.sin))
            + sg.sum(sg.cholesky(Ssp) * bb) + sg.sum((S.inv() * bb).applyfunc(sp.cos)))
    model = sg.Model("peer_spd", params=[S, bb], loss=loss, kernels=("jvp", "hvp"))
    m = sg.compile(model, out_dir=tmp_path_factory.mktemp("peer"))

    def f(S, b):
        return (torch.logdet(S) + (b.T @ torch.linalg.solve(S, b))[0, 0] + torch.sin(torch.linalg.solve(S, b)).sum()
                + (torch.linalg.cholesky(S) @ b).sum() + torch.cos(torch.linalg.solve(S, b)).sum())

    rng = np.random.default_rng(0)
    M = rng.standard_normal((3, 3))
    s0, b0 = M @ M.T + np.eye(3), rng.standard_normal((3, 1))
    D, db = rng.standard_normal((3, 3)), rng.standard_normal((3, 1))
    _, grads = m.value_and_grad(S=s0, bb=b0)
    reference = jacrev(f, argnums=(0, 1))(_t(s0), _t(b0))
    _close(grads["S"], reference[0], "grad S", **F64)
    symmetric = (D + D.T) / 2
    _, tangents = m.jvp({"S": symmetric, "bb": db}, S=s0, bb=b0)
    _close(tangents["loss"], t_jvp(f, (_t(s0), _t(b0)), (_t(symmetric), _t(db)))[1], "jvp, symmetric tangent", **F64)
    _, tangents = m.jvp({"S": D, "bb": db}, S=s0, bb=b0)
    _close(tangents["loss"], np.sum(grads["S"] * D) + np.sum(grads["bb"] * db), "jvp = <grad, t>", **F64)
    got = m.hvp({"S": symmetric, "bb": db}, S=s0, bb=b0)
    _, expected = t_jvp(jacrev(f, argnums=(0, 1)), (_t(s0), _t(b0)), (_t(symmetric), _t(db)))
    _close(got["S"], expected[0], "hvp S", **F64)
    _close(got["bb"], expected[1], "hvp bb", **F64)


def test_symbolic_hessian_of_axis_extremes_is_a_formula_of_numbers():
    """The tie indicators of sg.max/sg.min along an axis are numbers (Piecewise 1/0) in the
    formulas model.gradients() and model.hessian() show: SymPy refused the Eq inside a product
    ('Relational cannot be used in Mul')."""
    Xm, cm = sp.MatrixSymbol("Xm", 2, 2), sp.Symbol("cm")
    model = sg.Model("peer_axis_formula", params=[Xm, cm],
                     loss=sg.sum(sg.max(Xm, axis=1)) * cm + sg.sum(sg.min(Xm, axis=0)))
    H = model.hessian()
    assert np.shape(H[cm][Xm]) == (2, 2) and np.shape(H[Xm][Xm]) == (2, 2, 2, 2)
    assert not any(isinstance(e, sp.core.relational.Relational) for e in sp.Array(H[cm][Xm]))
    model.gradients()
