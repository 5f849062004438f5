"""Random matrix models against PyTorch float64 (torch.func): every kernel kind.

Each model is built twice from one random program: as SymPy expressions for symgrad and as a
PyTorch function of one example (the reference, vmapped over the batch). The heads drawn:
matrix products, sums, Hadamard products and powers, transposes, scalar multiples, elements,
slices, stacks and block matrices, element-wise functions (including the textbook spellings
symgrad rewrites: 1/(1 + exp(-u)), log(1 + exp(u)), log(sigmoid(u)), sin(u)/u, 1 - cos(u)),
reductions of all elements and along an axis (sum, mean, max, min, logsumexp, softmax,
log_softmax), norms, traces, inverses, solves, determinants, matrix powers, log-determinants,
Cholesky factors and triangular solves, Kronecker products, diagonals, broadcasts, Piecewise,
n-ary Max/Min, cross-entropies, mse, sums and products over an index, and conv2d. For each
model the test compares forward, value_and_grad, jvp (torch.func.jvp), jacobian (jacrev, per
example), hvp (jvp of the gradient) and hessian (torch.func.hessian, input blocks per example)
with the reference, for a batch of 3 and of 1; and the same calls with Fortran-ordered,
strided, read-only and reversed-batch inputs and strided params (the same bits), an empty
batch and a batch one past the runtime's slice size.

CI runs the fixed seeds of SEEDS; ``SYMGRAD_TORCH_RANDOM=N`` runs N more, from seed 1000 on
(about 1-2 s per model).
"""

from __future__ import annotations

import math
import os
import random

import numpy as np
import pytest
import sympy as sp

import symgrad as sg

torch = pytest.importorskip("torch")
from torch.func import hessian as t_hessian, jacrev, jvp as t_jvp, vmap  # noqa: E402

F = torch.nn.functional


@pytest.fixture(scope="module", autouse=True)
def float64_torch():
    """The references' constants (torch.eye, torch.ones) in float64, for this module only."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)

F = torch.nn.functional


class N:
    """A value of the program: its SymPy form, its torch form (env -> tensor) and its shape."""

    def __init__(self, s, t, shape):
        self.s, self.t, self.shape = s, t, shape


ELEMENTWISE = [
    ("tanh", sp.tanh, torch.tanh),
    ("sin", sp.sin, torch.sin),
    ("cos", sp.cos, torch.cos),
    ("sigmoid", sg.sigmoid, torch.sigmoid),
    ("softplus", sg.softplus, F.softplus),
    ("atan", sp.atan, torch.atan),
    ("erf", sp.erf, torch.erf),
    ("sq", lambda u: u**2, lambda u: u**2),
    ("cube", lambda u: u**3, lambda u: u**3),
    ("hyp", lambda u: sp.sqrt(1 + u**2), lambda u: torch.sqrt(1 + u**2)),
    ("log1psq", lambda u: sp.log(1 + u**2), lambda u: torch.log(1 + u**2)),
    ("exptanh", lambda u: sp.exp(sp.tanh(u)), lambda u: torch.exp(torch.tanh(u))),
    ("asinh", sp.asinh, torch.asinh),
    ("sigm_txt", lambda u: 1 / (1 + sp.exp(-u)), lambda u: torch.sigmoid(u)),
    ("softplus_txt", lambda u: sp.log(1 + sp.exp(u)), lambda u: F.softplus(u)),
    ("rat", lambda u: u / (1 + u**2), lambda u: u / (1 + u**2)),
    ("abs", sp.Abs, torch.abs),
    ("relu", sg.relu, torch.relu),
    ("cosh", lambda u: sp.cosh(sp.tanh(u)), lambda u: torch.cosh(torch.tanh(u))),
    ("sech", sp.sech, lambda u: 1 / torch.cosh(u)),
    ("erfc", sp.erfc, torch.erfc),
    ("logpos", lambda u: sp.log(2 + sp.sin(u)), lambda u: torch.log(2 + torch.sin(u))),
    ("sqrtpos", lambda u: sp.sqrt(sp.exp(u) + 1), lambda u: torch.sqrt(torch.exp(u) + 1)),
    ("lgamma", lambda u: sp.loggamma(u**2 + 1), lambda u: torch.lgamma(u**2 + 1)),
    ("tanpi", lambda u: sp.tan(sp.atan(u) / 2), lambda u: torch.tan(torch.atan(u) / 2)),
    ("expm1", lambda u: sp.exp(u) - 1, torch.expm1),
    ("log1p", lambda u: sp.log(1 + u**2), lambda u: torch.log1p(u**2)),
    ("sinc", lambda u: sp.sin(u) / u, lambda u: torch.sinc(u / math.pi)),
    ("cosm1", lambda u: 1 - sp.cos(u), lambda u: 1 - torch.cos(u)),
    ("logsig", lambda u: sp.log(sg.sigmoid(u)), F.logsigmoid),
    ("log1msig", lambda u: sp.log(1 - sg.sigmoid(u)), lambda u: F.logsigmoid(-u)),
    ("sign_abs", lambda u: sp.sign(u) * u, lambda u: torch.sign(u) * u),
    ("acosb", lambda u: sp.acos(sp.tanh(u) * sp.Rational(9, 10)), lambda u: torch.acos(torch.tanh(u) * 0.9)),
    ("atanhb", lambda u: sp.atanh(sp.tanh(u) / 2), lambda u: torch.atanh(torch.tanh(u) / 2)),
    ("acoshb", lambda u: sp.acosh(u**2 + 2), lambda u: torch.acosh(u**2 + 2)),
    ("digamma", lambda u: sp.digamma(u**2 + 1), lambda u: torch.digamma(u**2 + 1)),
]


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)
        self.seed = seed
        r = self.r
        self.n = r.randint(1, 3)
        self.m = r.randint(1, 3)
        self.params, self.inputs = [], []
        self.pool = []
        self.leaf_values = {}
        self.count = 0

    def leaf(self, name, shape, role):
        sym = sp.Symbol(name, real=True) if shape == () else sp.MatrixSymbol(name, *shape)
        node = N(sym, (lambda env, nm=name: env[nm]), shape)
        (self.params if role == "param" else self.inputs).append(sym)
        self.pool.append(node)
        return node

    def pick(self, pred=lambda n: True):
        cands = [p for p in self.pool if pred(p)]
        return self.r.choice(cands) if cands else None

    def scal(self):
        return self.pick(lambda p: p.shape == ())

    def mat(self):
        return self.pick(lambda p: p.shape != ())

    def add(self, node):
        self.pool.append(node)
        return node

    def step(self):
        r = self.r
        kind = r.choice(["ew", "ew", "ew", "matmul", "matmul", "add", "hadamard", "scale", "reduce", "reduce",
                         "axis", "axis", "scalar", "scalar", "transpose", "element", "slice", "stack", "inv",
                         "det", "logdet", "trace", "kron", "diag", "bcast", "scalar_mat", "pw", "minmax",
                         "chol", "trisolve", "cross_entropy", "mse", "loop", "hpow", "nmax", "matpow", "block",
                         "diagof", "tracemm", "lse2", "ce_index", "conv", "mean_all"])
        return getattr(self, "op_" + kind)()

    def op_ew(self):
        a = self.pick()
        name, fs, ft = self.r.choice(ELEMENTWISE)
        if a.shape == ():
            return self.add(N(fs(a.s), lambda env, a=a, ft=ft: ft(a.t(env)), ()))
        return self.add(N(a.s.applyfunc(fs), lambda env, a=a, ft=ft: ft(a.t(env)), a.shape))

    def op_matmul(self):
        a = self.mat()
        if a is None:
            return None
        b = self.pick(lambda p: p.shape != () and p.shape[0] == a.shape[1])
        if b is None:
            b = self.pick(lambda p: p.shape != () and p.shape[1] == a.shape[1])
            if b is None:
                return None
            return self.add(N(a.s * b.s.T, lambda env, a=a, b=b: a.t(env) @ b.t(env).T, (a.shape[0], b.shape[0])))
        return self.add(N(a.s * b.s, lambda env, a=a, b=b: a.t(env) @ b.t(env), (a.shape[0], b.shape[1])))

    def op_add(self):
        a = self.pick()
        b = self.pick(lambda p: p.shape == a.shape)
        sign = self.r.choice([1, -1])
        return self.add(N(a.s + sign * b.s, lambda env, a=a, b=b, sg_=sign: a.t(env) + sg_ * b.t(env), a.shape))

    def op_hadamard(self):
        a = self.mat()
        if a is None:
            return None
        b = self.pick(lambda p: p.shape == a.shape)
        return self.add(N(sp.HadamardProduct(a.s, b.s), lambda env, a=a, b=b: a.t(env) * b.t(env), a.shape))

    def op_scale(self):
        a, c = self.mat(), self.scal()
        if a is None or c is None:
            return None
        return self.add(N(c.s * a.s, lambda env, a=a, c=c: c.t(env) * a.t(env), a.shape))

    def op_reduce(self):
        a = self.mat()
        if a is None:
            return None
        k = self.r.choice(["sum", "max", "min", "lse", "norm", "mean", "softmax_sum"])
        if k == "sum":
            return self.add(N(sg.sum(a.s), lambda env, a=a: a.t(env).sum(), ()))
        if k == "mean":
            return self.add(N(sg.mean(a.s), lambda env, a=a: a.t(env).mean(), ()))
        if k == "max":
            return self.add(N(sg.max(a.s), lambda env, a=a: a.t(env).amax(), ()))
        if k == "min":
            return self.add(N(sg.min(a.s), lambda env, a=a: a.t(env).amin(), ()))
        if k == "lse":
            return self.add(N(sg.logsumexp(a.s), lambda env, a=a: torch.logsumexp(a.t(env).reshape(-1), 0), ()))
        if k == "norm":
            # keep away from 0: norm of [a; 1]
            b = sg.vstack(a.s, sp.OneMatrix(1, a.shape[1]))
            return self.add(N(sg.norm(b), lambda env, a=a: torch.linalg.norm(
                torch.cat([a.t(env), torch.ones(1, a.shape[1])], 0)), ()))
        if k == "softmax_sum":
            sh = a.shape
            w = sp.Matrix(sh[0], sh[1], lambda i, j: sp.Rational(i * sh[1] + j + 1, 3))
            wt = torch.tensor(np.array(w.tolist(), dtype=float))
            return self.add(N(sg.sum(sp.HadamardProduct(sg.softmax(a.s), w)),
                              lambda env, a=a, wt=wt: (torch.softmax(a.t(env).reshape(-1), 0).reshape(a.shape) * wt).sum(), ()))

    def op_axis(self):
        a = self.mat()
        if a is None:
            return None
        axis = self.r.choice([0, 1])
        k = self.r.choice(["sum", "mean", "max", "min", "softmax", "log_softmax", "logsumexp"])
        p, q = a.shape
        out = (1, q) if axis == 0 else (p, 1)
        fs = {"sum": sg.sum, "mean": sg.mean, "max": sg.max, "min": sg.min, "softmax": sg.softmax,
              "log_softmax": sg.log_softmax, "logsumexp": sg.logsumexp}[k]
        tf = {"sum": lambda u: u.sum(axis, keepdim=True), "mean": lambda u: u.mean(axis, keepdim=True),
              "max": lambda u: u.amax(axis, keepdim=True), "min": lambda u: u.amin(axis, keepdim=True),
              "softmax": lambda u: torch.softmax(u, axis), "log_softmax": lambda u: torch.log_softmax(u, axis),
              "logsumexp": lambda u: torch.logsumexp(u, axis, keepdim=True)}[k]
        shape = a.shape if k in ("softmax", "log_softmax") else out
        return self.add(N(fs(a.s, axis=axis), lambda env, a=a, tf=tf: tf(a.t(env)), shape))

    def op_scalar(self):
        a, b = self.scal(), self.scal()
        if a is None:
            return None
        k = self.r.choice(["mul", "div", "add", "pow", "max", "atan2", "hypot"])
        if k == "mul":
            return self.add(N(a.s * b.s, lambda env, a=a, b=b: a.t(env) * b.t(env), ()))
        if k == "div":
            return self.add(N(a.s / (1 + b.s**2), lambda env, a=a, b=b: a.t(env) / (1 + b.t(env) ** 2), ()))
        if k == "add":
            return self.add(N(a.s - b.s, lambda env, a=a, b=b: a.t(env) - b.t(env), ()))
        if k == "pow":
            e = self.r.choice([2, 3, sp.Rational(1, 2), sp.Rational(3, 2), -1, sp.Float(2.5)])
            base = 1 + a.s**2
            return self.add(N(base**e, lambda env, a=a, e=float(e): (1 + a.t(env) ** 2) ** e, ()))
        if k == "max":
            return self.add(N(sp.Max(a.s, b.s), lambda env, a=a, b=b: torch.maximum(a.t(env), b.t(env)), ()))
        if k == "atan2":
            return self.add(N(sp.atan2(a.s, 1 + b.s**2), lambda env, a=a, b=b: torch.atan2(a.t(env), 1 + b.t(env) ** 2), ()))
        if k == "hypot":
            return self.add(N(sp.sqrt(a.s**2 + b.s**2 + 1), lambda env, a=a, b=b: torch.sqrt(a.t(env) ** 2 + b.t(env) ** 2 + 1), ()))

    def op_transpose(self):
        a = self.mat()
        if a is None:
            return None
        return self.add(N(a.s.T, lambda env, a=a: a.t(env).T, (a.shape[1], a.shape[0])))

    def op_element(self):
        a = self.mat()
        if a is None:
            return None
        i, j = self.r.randrange(a.shape[0]), self.r.randrange(a.shape[1])
        return self.add(N(a.s[i, j], lambda env, a=a, i=i, j=j: a.t(env)[i, j], ()))

    def op_slice(self):
        a = self.pick(lambda p: p.shape != () and (p.shape[0] > 1 or p.shape[1] > 1))
        if a is None:
            return None
        p, q = a.shape
        r0 = self.r.randrange(p); r1 = self.r.randint(r0 + 1, p)
        c0 = self.r.randrange(q); c1 = self.r.randint(c0 + 1, q)
        return self.add(N(a.s[r0:r1, c0:c1], lambda env, a=a, r0=r0, r1=r1, c0=c0, c1=c1: a.t(env)[r0:r1, c0:c1],
                          (r1 - r0, c1 - c0)))

    def op_stack(self):
        a = self.mat()
        if a is None:
            return None
        if self.r.random() < 0.5:
            b = self.pick(lambda p: p.shape != () and p.shape[1] == a.shape[1])
            return self.add(N(sg.vstack(a.s, b.s), lambda env, a=a, b=b: torch.cat([a.t(env), b.t(env)], 0),
                              (a.shape[0] + b.shape[0], a.shape[1])))
        b = self.pick(lambda p: p.shape != () and p.shape[0] == a.shape[0])
        return self.add(N(sg.hstack(a.s, b.s), lambda env, a=a, b=b: torch.cat([a.t(env), b.t(env)], 1),
                          (a.shape[0], a.shape[1] + b.shape[1])))

    def _square(self):
        a = self.pick(lambda p: p.shape != () and p.shape[0] == p.shape[1])
        if a is None:
            a = self.mat()
            if a is None:
                return None, None
            s = a.s * a.s.T
            t = lambda env, a=a: a.t(env) @ a.t(env).T
            k = a.shape[0]
        else:
            s, t, k = a.s, a.t, a.shape[0]
        # well conditioned: 4 I + tanh(S)
        s2 = 4 * sp.Identity(k) + s.applyfunc(sp.tanh)
        t2 = lambda env, t=t, k=k: 4 * torch.eye(k) + torch.tanh(t(env))
        return (s2, t2, k), (s, t, k)

    def op_inv(self):
        sq, _ = self._square()
        if sq is None:
            return None
        s, t, k = sq
        if self.r.random() < 0.5:
            return self.add(N(s.inv(), lambda env, t=t: torch.linalg.inv(t(env)), (k, k)))
        b = self.pick(lambda p: p.shape != () and p.shape[0] == k)
        if b is None:
            return None
        return self.add(N(s.inv() * b.s, lambda env, t=t, b=b: torch.linalg.solve(t(env), b.t(env)), b.shape))

    def op_det(self):
        sq, _ = self._square()
        if sq is None:
            return None
        s, t, k = sq
        return self.add(N(sp.Determinant(s), lambda env, t=t: torch.linalg.det(t(env)), ()))

    def op_logdet(self):
        a = self.mat()
        if a is None:
            return None
        k = a.shape[0]
        s = sg.spd(a.s * a.s.T + sp.Identity(k))
        t = lambda env, a=a, k=k: a.t(env) @ a.t(env).T + torch.eye(k)
        c = self.r.choice(["logdet", "quad", "inv"])
        if c == "logdet":
            return self.add(N(sg.logdet(s), lambda env, t=t: torch.logdet(t(env)), ()))
        if c == "inv":
            return self.add(N(s.inv(), lambda env, t=t: torch.linalg.inv(t(env)), (k, k)))
        v = self.pick(lambda p: p.shape != () and p.shape[0] == k and p.shape[1] == 1)
        if v is None:
            return None
        return self.add(N(sg.scalar(v.s.T * s.inv() * v.s),
                          lambda env, t=t, v=v: (v.t(env).T @ torch.linalg.solve(t(env), v.t(env)))[0, 0], ()))

    def op_chol(self):
        a = self.mat()
        if a is None:
            return None
        k = a.shape[0]
        s = sg.spd(a.s * a.s.T + sp.Identity(k))
        t = lambda env, a=a, k=k: a.t(env) @ a.t(env).T + torch.eye(k)
        return self.add(N(sg.cholesky(s), lambda env, t=t: torch.linalg.cholesky(t(env)), (k, k)))

    def op_trisolve(self):
        a = self.mat()
        if a is None:
            return None
        k = a.shape[0]
        L = sg.cholesky(sg.spd(a.s * a.s.T + sp.Identity(k)))
        Lt = lambda env, a=a, k=k: torch.linalg.cholesky(a.t(env) @ a.t(env).T + torch.eye(k))
        b = self.pick(lambda p: p.shape != () and p.shape[0] == k)
        trans = self.r.random() < 0.5
        return self.add(N(sg.triangular_solve(L, b.s, lower=True, trans=trans),
                          lambda env, Lt=Lt, b=b, tr=trans: torch.linalg.solve_triangular(
                              Lt(env).T if tr else Lt(env), b.t(env), upper=tr), b.shape))

    def op_trace(self):
        sq, raw = self._square()
        if raw is None:
            return None
        s, t, k = raw
        return self.add(N(sp.Trace(s), lambda env, t=t: torch.trace(t(env)), ()))

    def op_kron(self):
        a = self.pick(lambda p: p.shape != () and p.shape[0] * p.shape[1] <= 4)
        b = self.pick(lambda p: p.shape != () and p.shape[0] * p.shape[1] <= 4)
        if a is None or b is None:
            return None
        return self.add(N(sp.KroneckerProduct(a.s, b.s), lambda env, a=a, b=b: torch.kron(a.t(env), b.t(env)),
                          (a.shape[0] * b.shape[0], a.shape[1] * b.shape[1])))

    def op_diag(self):
        v = self.pick(lambda p: p.shape != () and p.shape[1] == 1)
        if v is None:
            return None
        k = v.shape[0]
        return self.add(N(sg.diag(v.s), lambda env, v=v: torch.diag(v.t(env)[:, 0]), (k, k)))

    def op_bcast(self):
        c = self.pick(lambda p: p.shape == (1, 1) or p.shape == ())
        if c is None:
            return None
        shape = (self.r.randint(1, 3), self.r.randint(1, 3))
        if c.shape == ():
            return self.add(N(c.s * sp.OneMatrix(*shape), lambda env, c=c, sh=shape: c.t(env) * torch.ones(sh), shape))
        return self.add(N(sg.broadcast_to(c.s, shape), lambda env, c=c, sh=shape: c.t(env).expand(sh), shape))

    def op_scalar_mat(self):
        a = self.pick(lambda p: p.shape == (1, 1))
        if a is None:
            return None
        return self.add(N(sg.scalar(a.s), lambda env, a=a: a.t(env)[0, 0], ()))

    def op_pw(self):
        a, b = self.scal(), self.scal()
        if a is None:
            return None
        return self.add(N(sp.Piecewise((a.s * b.s, a.s > b.s), (a.s + 2 * b.s, True)),
                          lambda env, a=a, b=b: torch.where(a.t(env) > b.t(env), a.t(env) * b.t(env),
                                                            a.t(env) + 2 * b.t(env)), ()))

    def op_minmax(self):
        a = self.mat()
        if a is None:
            return None
        b = self.pick(lambda p: p.shape == a.shape)
        return self.add(N(sp.HadamardProduct(a.s, a.s.applyfunc(sp.tanh)) + b.s.applyfunc(sg.relu),
                          lambda env, a=a, b=b: a.t(env) * torch.tanh(a.t(env)) + torch.relu(b.t(env)), a.shape))

    def op_cross_entropy(self):
        a = self.pick(lambda p: p.shape != () and p.shape[1] == 1)
        if a is None:
            return None
        k = a.shape[0]
        target = sp.Matrix(k, 1, lambda i, j: sp.Rational(1, k))
        return self.add(N(sg.cross_entropy(a.s, target),
                          lambda env, a=a, k=k: -(torch.log_softmax(a.t(env)[:, 0], 0) / k).sum(), ()))

    def op_mse(self):
        a = self.mat()
        if a is None:
            return None
        b = self.pick(lambda p: p.shape == a.shape)
        return self.add(N(sg.mse(a.s, b.s), lambda env, a=a, b=b: ((a.t(env) - b.t(env)) ** 2).mean(), ()))

    def op_loop(self):
        a = self.pick(lambda p: p.shape != () and p.shape[0] >= 2)
        if a is None:
            return None
        i = sp.Symbol("i", integer=True)
        p, q = a.shape
        j = self.r.randrange(q)
        body = (a.s[i + 1, j] - sp.sin(a.s[i, j])) ** 2
        if self.r.random() < 0.5:
            return self.add(N(sp.Sum(body, (i, 0, p - 2)), lambda env, a=a, j=j: (
                (a.t(env)[1:, j] - torch.sin(a.t(env)[:-1, j])) ** 2).sum(), ()))
        body = 1 + sp.tanh(a.s[i, j]) / 2
        return self.add(N(sp.Product(body, (i, 0, p - 1)), lambda env, a=a, j=j: (1 + torch.tanh(a.t(env)[:, j]) / 2).prod(), ()))

    def op_hpow(self):
        a = self.mat()
        if a is None:
            return None
        e = self.r.choice([2, 3])
        return self.add(N(sp.HadamardPower(a.s, e), lambda env, a=a, e=e: a.t(env) ** e, a.shape))

    def op_nmax(self):
        xs = [self.scal() for _ in range(3)]
        if xs[0] is None:
            return None
        f, tf = (sp.Max, torch.amax) if self.r.random() < 0.5 else (sp.Min, torch.amin)
        return self.add(N(f(xs[0].s, xs[1].s + 1, xs[2].s - 1), lambda env, xs=xs, tf=tf: tf(torch.stack(
            [xs[0].t(env), xs[1].t(env) + 1, xs[2].t(env) - 1]), 0), ()))

    def op_matpow(self):
        sq, _ = self._square()
        if sq is None:
            return None
        s, t, k = sq
        e = self.r.choice([-1, -2, 2])
        return self.add(N(s ** e, lambda env, t=t, e=e: torch.linalg.matrix_power(t(env), e), (k, k)))

    def op_block(self):
        a = self.mat()
        if a is None:
            return None
        b = self.pick(lambda p: p.shape != () and p.shape[0] == a.shape[0])
        c = self.pick(lambda p: p.shape != () and p.shape[1] == a.shape[1])
        if c is None:
            return None
        z = sp.ZeroMatrix(c.shape[0], b.shape[1])
        return self.add(N(sp.BlockMatrix([[a.s, b.s], [c.s, z]]), lambda env, a=a, b=b, c=c: torch.cat([
            torch.cat([a.t(env), b.t(env)], 1), torch.cat([c.t(env), torch.zeros(c.shape[0], b.shape[1])], 1)], 0),
            (a.shape[0] + c.shape[0], a.shape[1] + b.shape[1])))

    def op_diagof(self):
        a = self.pick(lambda p: p.shape != () and p.shape[0] == p.shape[1])
        if a is None:
            return None
        return self.add(N(sp.DiagonalOf(a.s), lambda env, a=a: torch.diagonal(a.t(env)).reshape(-1, 1), (a.shape[0], 1)))

    def op_tracemm(self):
        a = self.mat()
        if a is None:
            return None
        b = self.pick(lambda p: p.shape == (a.shape[1], a.shape[0]))
        if b is None:
            return None
        return self.add(N(sp.Trace(a.s * b.s), lambda env, a=a, b=b: torch.trace(a.t(env) @ b.t(env)), ()))

    def op_lse2(self):
        a, b = self.scal(), self.scal()
        if a is None:
            return None
        k = self.r.choice(["lae", "softmax2", "lse_txt"])
        if k == "lae":
            return self.add(N(sp.log(sp.exp(a.s) + sp.exp(b.s)), lambda env, a=a, b=b: torch.logaddexp(a.t(env), b.t(env)), ()))
        if k == "softmax2":
            return self.add(N(sp.exp(a.s) / (sp.exp(a.s) + sp.exp(b.s)), lambda env, a=a, b=b: torch.sigmoid(a.t(env) - b.t(env)), ()))
        m = self.mat()
        if m is None:
            return None
        return self.add(N(sp.log(sg.sum(m.s.applyfunc(sp.exp))), lambda env, m=m: torch.logsumexp(m.t(env).reshape(-1), 0), ()))

    def op_ce_index(self):
        a = self.pick(lambda p: p.shape != () and p.shape[1] == 1 and p.shape[0] >= 2)
        if a is None:
            return None
        k = self.r.randrange(a.shape[0])
        return self.add(N(sg.cross_entropy(a.s, k), lambda env, a=a, k=k: -torch.log_softmax(a.t(env)[:, 0], 0)[k], ()))

    def op_conv(self):
        a = self.pick(lambda p: p.shape != () and p.shape[0] >= 2 and p.shape[1] >= 2)
        if a is None:
            return None
        name = f"K{len(self.params)}"
        K = sp.MatrixSymbol(name, 2, 2)
        self.params.append(K)
        pad = self.r.choice([0, 1])
        h, w = a.shape
        shape = (h + 2 * pad - 1, w + 2 * pad - 1)
        return self.add(N(sg.conv2d(a.s, K, padding=pad), lambda env, a=a, nm=name, pad=pad: F.conv2d(
            a.t(env)[None, None], env[nm][None, None], padding=pad)[0, 0], shape))

    def op_mean_all(self):
        a = self.mat()
        if a is None:
            return None
        return self.add(N(sg.mean(a.s.applyfunc(sp.cos)), lambda env, a=a: torch.cos(a.t(env)).mean(), ()))

    def build(self, steps=None):
        r = self.r
        n, m = self.n, self.m
        self.leaf("a", (), "param")
        self.leaf("W", (m, n), "param")
        if r.random() < 0.6:
            self.leaf("b", (m, 1), "param")
        if r.random() < 0.3:
            self.leaf("c", (), "param")
        if r.random() < 0.3:
            self.leaf("U", (n, r.randint(1, 3)), "param")
        self.leaf("x", (n, 1), "input")
        if r.random() < 0.5:
            self.leaf("s", (), "input")
        if r.random() < 0.3:
            self.leaf("X", (r.randint(1, 3), n), "input")
        steps = steps or r.randint(3, 12)
        made = 0
        tries = 0
        while made < steps and tries < 200:
            tries += 1
            try:
                node = self.step()
            except (sp.ShapeError, ValueError, TypeError, NotImplementedError, AttributeError, IndexError):
                node = None
            if node is not None:
                made += 1
        # the loss: the last few nodes, matrices summed or summed squared, in both forms
        tail = self.pool[-4:]
        ls, lt = [], []
        for p in tail:
            if p.shape == ():
                ls.append(p.s); lt.append(p.t)
            elif r.random() < 0.5:
                ls.append(sg.sum(sp.HadamardProduct(p.s, p.s))); lt.append(lambda env, p=p: (p.t(env) ** 2).sum())
            else:
                ls.append(sg.sum(p.s)); lt.append(lambda env, p=p: p.t(env).sum())
        self.loss_s = sp.Add(*ls)
        self.loss_t = lambda env, lt=lt: sum(f(env) for f in lt)
        outs = [p for p in self.pool[len(self.params) + len(self.inputs):] if r.random() < 0.3][:3]
        self.outputs = {f"o{k}": p for k, p in enumerate(outs)}
        self.reduce = r.choice(["mean", "sum", None])
        wrt = [s for s in self.params]
        if r.random() < 0.3:
            wrt.append(self.inputs[0])
        self.wrt = wrt
        return self

    def model(self, kernels=("jacobian", "jvp", "hvp", "hessian"), name=None):
        return sg.Model(name or f"tr{self.seed}", loss=self.loss_s, params=self.params, inputs=self.inputs,
                        outputs={k: v.s for k, v in self.outputs.items()}, reduce=self.reduce, wrt=self.wrt,
                        kernels=kernels)

    def values(self, batch, rng):
        vals = {}
        for s in self.params:
            shape = () if not hasattr(s, "shape") else tuple(int(d) for d in s.shape)
            vals[str(s.name)] = rng.standard_normal(shape) if shape else float(rng.standard_normal())
        for s in self.inputs:
            shape = () if not hasattr(s, "shape") else tuple(int(d) for d in s.shape)
            vals[str(s.name)] = rng.standard_normal((batch, *shape))
        return vals


TOL = dict(rtol=1e-7, atol=1e-8)


def T(v):  # noqa: N802
    return torch.tensor(np.asarray(v, dtype=np.float64), dtype=torch.float64)


class Ref:
    def __init__(self, g, vals):
        self.g, self.vals = g, vals
        self.wrt = [str(s.name) for s in g.wrt]
        self.roles = {str(s.name): "param" for s in g.params} | {str(s.name): "input" for s in g.inputs}

    def example(self, env):
        out = {k: v.t(env) for k, v in self.g.outputs.items()}
        out["loss"] = self.g.loss_t(env)
        return out

    def __call__(self, *w):
        env = {k: T(v) for k, v in self.vals.items()}
        for name, val in zip(self.wrt, w):
            env[name] = val
        pnames = [k for k in env if self.roles[k] == "param"]
        inames = [k for k in env if self.roles[k] == "input"]
        per = vmap(lambda *xs: self.example({**{k: env[k] for k in pnames}, **dict(zip(inames, xs))}))(
            *[env[k] for k in inames])
        if self.g.reduce is not None:
            per = dict(per, loss=per["loss"].mean() if self.g.reduce == "mean" else per["loss"].sum())
        return per

    def w0(self):
        return tuple(T(self.vals[n]) for n in self.wrt)


def close(got, want, what):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else np.asarray(want)
    got = np.asarray(got, dtype=np.float64)
    if got.size != want.size:
        raise AssertionError(f"{what}: size {got.shape} vs {want.shape}")
    np.testing.assert_allclose(np.reshape(got, want.shape), want, err_msg=what, **TOL)


def check(g, m, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    vals = g.values(batch, rng)
    ref = Ref(g, vals)
    want = ref(*ref.w0())
    if not all(torch.isfinite(v).all() for v in want.values()):
        return "nonfinite"
    fwd = m.forward(**vals)
    for k in want:
        if k == "loss" and "loss" not in fwd:
            continue
        close(fwd[k], want[k], f"forward {k}")
    tangents = {n: rng.standard_normal(np.shape(vals[n])) for n in ref.wrt}
    outs, tans = m.jvp(tangents, **vals)
    _, rt = t_jvp(ref, ref.w0(), tuple(T(tangents[n]) for n in ref.wrt))
    for k in rt:
        close(tans[k], rt[k], f"jvp {k}")
    jac = m.jacobian(**vals)
    J = jacrev(ref, argnums=tuple(range(len(ref.wrt))))(*ref.w0())
    for row in J:
        for i, n in enumerate(ref.wrt):
            full = J[row][i]
            if g.reduce is not None and row == "loss":
                continue
            # per-example blocks: torch's J has the batch axis of the row and (for inputs) of the symbol
            if ref.roles[n] == "input":
                k = full.dim() - np.ndim(vals[n])  # position of the symbol's batch axis
                full = torch.stack([full[e].select(k - 1, e) for e in range(batch)])
            close(jac[row][n], full, f"jacobian {row}/{n}")
    if g.reduce is None:
        return "ok-noreduce"
    loss, grads = m.value_and_grad(**vals)
    close(loss, want["loss"], "loss")
    G = jacrev(lambda *w: ref(*w)["loss"], argnums=tuple(range(len(ref.wrt))))
    gw = G(*ref.w0())
    for i, n in enumerate(ref.wrt):
        close(grads[n], gw[i], f"grad {n}")
    v = {n: rng.standard_normal(np.shape(vals[n])) for n in ref.wrt}
    hv = m.hvp(v, **vals)
    _, rh = t_jvp(G, ref.w0(), tuple(T(v[n]) for n in ref.wrt))
    for i, n in enumerate(ref.wrt):
        close(hv[n], rh[i], f"hvp {n}")
    hl, hg, H = m.hessian(**vals)
    close(hl, want["loss"], "hessian loss")
    full = t_hessian(lambda *w: ref(*w)["loss"], argnums=tuple(range(len(ref.wrt))))(*ref.w0())
    for i, a in enumerate(ref.wrt):
        for j, b in enumerate(ref.wrt):
            blk = full[i][j]
            if ref.roles[a] == ref.roles[b] == "input":
                sa = np.ndim(vals[a]) - 1
                blk = torch.stack([blk[e].select(sa, e) for e in range(blk.shape[0])])
            elif ref.roles[a] == "param" and ref.roles[b] == "input":
                blk = torch.movedim(blk, np.ndim(vals[a]), 0)  # the batch axis first
            if ref.roles[a] != ref.roles[b] or ref.roles[a] == "input":
                assert np.shape(H[a][b]) == tuple(blk.shape), (a, b, np.shape(H[a][b]), blk.shape)
            close(H[a][b], blk, f"H[{a}][{b}]")
    return "ok"


def _same(a, b, what):
    if isinstance(a, dict):
        assert set(a) == set(b), what
        for k in a:
            _same(a[k], b[k], f"{what}/{k}")
        return
    if isinstance(a, tuple):
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{what}[{i}]")
        return
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=what)


def variants(g, m, seed=0):
    """Layouts and dtypes of the same data give the same bits; batch sizes 0 and CHUNK+1."""
    from symgrad import runtime
    rng = np.random.default_rng(seed + 7)
    vals = g.values(4, rng)
    inputs = [str(s.name) for s in g.inputs]
    base = m.forward(**vals)
    calls = {"forward": lambda v: m.forward(**v)}
    tang = {str(s.name): rng.standard_normal(np.shape(vals[str(s.name)])) for s in g.wrt}
    calls["jvp"] = lambda v: m.jvp(tang, **v)
    calls["jacobian"] = lambda v: m.jacobian(**v)
    if g.reduce is not None:
        calls["vg"] = lambda v: m.value_and_grad(**v)
        calls["hvp"] = lambda v: m.hvp(tang, **v)
        calls["hessian"] = lambda v: m.hessian(**v)
    want = {k: f(vals) for k, f in calls.items()}
    def fortran(v):
        return np.asfortranarray(v) if np.ndim(v) >= 2 else v
    def strided(v):
        if np.ndim(v) == 0:
            return v
        big = np.zeros(np.shape(v) + (2,))
        big[..., 0] = v
        return big[..., 0]
    def readonly(v):
        v = np.array(v); v.flags.writeable = False; return v
    def reversed_batch(v):
        return np.ascontiguousarray(v[::-1])[::-1]
    for label, f in (("fortran", fortran), ("strided", strided), ("readonly", readonly), ("reversed", reversed_batch)):
        v = {k: (f(x) if k in inputs else x) for k, x in vals.items()}
        for k, c in calls.items():
            _same(c(v), want[k], f"{label} {k}")
    # params as non-contiguous too
    v = {k: (strided(x) if np.ndim(x) else x) for k, x in vals.items()}
    for k, c in calls.items():
        _same(c(v), want[k], f"strided params {k}")
    # batch of 0
    v0 = {k: (x[:0] if k in inputs else x) for k, x in vals.items()}
    if g.reduce != "mean":
        out0 = m.forward(**v0)
        for k, o in out0.items():
            if k == "loss" and g.reduce is not None:
                assert o == 0, o
                continue
            assert np.shape(o)[0] == 0, ("empty forward", k, np.shape(o))
    if g.reduce == "sum":
        loss0, grads0 = m.value_and_grad(**v0)
        assert loss0 == 0, loss0
    # batch CHUNK+1 with the 4 examples repeated: per-example results repeat, sums scale
    n = runtime.CHUNK + 1
    reps = -(-n // 4)
    vb = {k: (np.concatenate([x] * reps)[:n] if k in inputs else x) for k, x in vals.items()}
    fb = m.forward(**vb)
    for k in fb:
        if k == "loss" and g.reduce is not None:
            continue
        np.testing.assert_allclose(fb[k][:4], base[k], rtol=1e-14, atol=1e-14, err_msg=f"chunk forward {k}")
        np.testing.assert_allclose(fb[k][-1], base[k][(n - 1) % 4], rtol=1e-14, atol=1e-14, err_msg=f"chunk forward {k}")
    return "ok"


#: Seeds whose models cover most heads in a few seconds each (31: a constant-0 output; seed 169
#: found the AVX-512 miscompilation of test_adversarial).
SEEDS = [0, 3, 5, 9, 19, 31, 47, 61, 88, 114, 140, 236]
EXTRA = int(os.environ.get("SYMGRAD_TORCH_RANDOM", "0"))


@pytest.mark.parametrize("seed", SEEDS + list(range(1000, 1000 + EXTRA)))
def test_random_matrix_model_matches_torch_func(seed, compile_model):
    g = Gen(seed).build()
    try:
        module = compile_model(g.model(name=f"torch_random_{seed}"))
    except sg.errors.ModelError as e:
        if "Product loop" in str(e):
            pytest.skip("second derivatives through a Product are refused (README)")
        raise
    for batch in (3, 1):
        check(g, module, batch=batch, seed=seed)
    variants(g, module, seed)
