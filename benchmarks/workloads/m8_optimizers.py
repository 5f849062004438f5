"""M8 and M9: what optimizers call. Second-order kernels (M8) and flat-vector one-point calls (M9).

M8 times the Hessian-vector product and the dense Hessian of the Rosenbrock
function of a vector of n = 100 and the Jacobian of 1000 residuals with
respect to 10 parameters, each as an optimizer asks for it: symgrad through
``symgrad.scipy.Objective`` (``hessp``, ``hess``, ``residual_jacobian``), JAX
as ``jit`` of ``jvp`` of ``grad``, ``hessian`` and ``jacfwd``, CasADi as SX
functions of ``jtimes``, ``hessian`` and ``jacobian`` (and their generated C),
torch as ``torch.func``.

M9 times one value-and-gradient (and one value) of the Rosenbrock function
of n = 100 at one point, given as one float64 vector, the call every
optimizer makes: symgrad's ``Objective.fun_and_jac`` and ``fun`` (one pointer
in, one array out) for a model of one ``MatrixSymbol("x", 100, 1)`` and for one
of 100 scalar symbols, against the same function written in C by hand and
called through cffi with one pointer in and one out, and the peers'
one-point calls.
"""

from __future__ import annotations

import importlib
import sys

import numpy as np

from ..harness import Case, Metric
from ..models import rosenbrock, symgrad_model
from ..peers import casadi_module, jax_modules, to_numpy, torch_module
from .base import Workload
from .m2_rosenbrock import _vector_rosenbrock, np_forward, np_value_and_grad

HAND_C = r"""
/* The Rosenbrock function of x[0..n-1] and its gradient, written by hand: one pointer in, one out. */
double rosen(const double *x, long n)
{
    double f = 0;
    for (long i = 0; i + 1 < n; ++i) {
        const double d = x[i + 1] - x[i] * x[i], e = 1 - x[i];
        f += 100 * d * d + e * e;
    }
    return f;
}

double rosen_vg(const double *x, long n, double *g)
{
    double f = 0;
    g[0] = 0;
    for (long i = 0; i + 1 < n; ++i) {
        const double d = x[i + 1] - x[i] * x[i], e = 1 - x[i];
        f += 100 * d * d + e * e;
        g[i] += -400 * x[i] * d - 2 * e;
        g[i + 1] = 200 * d;
    }
    return f;
}

void rosen_der(const double *x, long n, double *g)
{
    g[0] = 0;
    for (long i = 0; i + 1 < n; ++i) {
        const double d = x[i + 1] - x[i] * x[i], e = 1 - x[i];
        g[i] += -400 * x[i] * d - 2 * e;
        g[i + 1] = 200 * d;
    }
}
"""


def hand_module(work_dir):
    """The hand-written C above, compiled by cffi at -O3 (symgrad's kernels: -O3 and more; cached in work_dir)."""
    import cffi

    folder = work_dir / "hand_c"
    folder.mkdir(parents=True, exist_ok=True)
    name = "_bench_hand_rosen"
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    except ImportError:
        pass
    ffi = cffi.FFI()
    ffi.cdef("double rosen(const double *x, long n); double rosen_vg(const double *x, long n, double *g); "
             "void rosen_der(const double *x, long n, double *g);")
    ffi.set_source(name, HAND_C, extra_compile_args=["-O3"])
    ffi.compile(tmpdir=str(folder))
    return importlib.import_module(name)


def np_hvp(x, v):
    """Hessian of the Rosenbrock function at x times v (SciPy's rosen_hess_prod, in NumPy)."""
    hv = np.zeros_like(x)
    hv[0] = (1200 * x[0] ** 2 - 400 * x[1] + 2) * v[0] - 400 * x[0] * v[1]
    hv[1:-1] = (-400 * x[:-2] * v[:-2] + (202 + 1200 * x[1:-1] ** 2 - 400 * x[2:]) * v[1:-1]
                - 400 * x[1:-1] * v[2:])
    hv[-1] = -400 * x[-2] * v[-2] + 200 * v[-1]
    return hv


def np_hessian(x):
    """The dense Hessian of the Rosenbrock function at x (SciPy's rosen_hess, in NumPy)."""
    H = np.diag(-400 * x[:-1], 1) + np.diag(-400 * x[:-1], -1)
    diagonal = np.zeros_like(x)
    diagonal[0] = 1200 * x[0] ** 2 - 400 * x[1] + 2
    diagonal[-1] = 200
    diagonal[1:-1] = 202 + 1200 * x[1:-1] ** 2 - 400 * x[2:]
    return H + np.diag(diagonal)


def _ready(jax):
    return jax.block_until_ready


class M8(Workload):
    id = "M8"
    title = "second order and Jacobians for optimizers"

    def __init__(self, cfg, available):
        super().__init__(cfg, available)
        self.dim = 10 if cfg.quick else 100
        self.rows = 100 if cfg.quick else 1000
        self.terms = 5  # A_j*exp(-k_j*t) terms: 10 parameters
        rng = np.random.default_rng(8)
        self.point = rng.uniform(-1.5, 1.5, self.dim)
        self.v = rng.standard_normal(self.dim)
        self.t = np.linspace(0.0, 4.0, self.rows)
        self.p = np.ravel(np.column_stack([rng.uniform(0.5, 2.0, self.terms), rng.uniform(0.2, 3.0, self.terms)]))
        self.y = self._np_residuals(self.p) + 0.01 * rng.standard_normal(self.rows)  # residuals: the noise
        self.title = (f"Hessians and Jacobians: Rosenbrock n = {self.dim}, {self.rows:,} residuals by "
                      f"{2 * self.terms} params")

    def description(self):
        return (f"What second-order and least-squares optimizers call, at one point given as a float64 vector. "
                f"(1) The Hessian of the Rosenbrock function of {self.dim} variables times a vector, "
                f"(2) its dense {self.dim}x{self.dim} Hessian, (3) the {self.rows:,}x{2 * self.terms} Jacobian of "
                f"the residuals r_i = sum_j A_j*exp(-k_j*t_i) - y_i ({self.terms} terms) with respect to the "
                f"{2 * self.terms} parameters (A_j, k_j). symgrad: symgrad.scipy.Objective's hessp, hess and "
                f"residual_jacobian (flat-vector C wrappers over the hvp, hessian and jacobian kernels; the "
                f"Rosenbrock model is one MatrixSymbol x of {self.dim}x1). JAX: jit of jvp(grad(f)), "
                f"hessian(f) and jacfwd(r). CasADi: SX Functions of jtimes(gradient(f, x), x, v), hessian(f, x) "
                f"and jacobian(r, p), and their generated C. torch: torch.func's jvp(grad(f)), hessian(f) and "
                f"jacfwd(r), eager. NumPy: the formulas by hand (SciPy's rosen_hess_prod and rosen_hess).")

    def metrics(self):
        return [Metric("hvp", f"Hessian-vector product, n = {self.dim}", "µs/call", 1e6, has_forward=False),
                Metric("hessian", f"dense Hessian, n = {self.dim}", "µs/call", 1e6, has_forward=False),
                Metric("jacobian", f"Jacobian, {self.rows:,} residuals x {2 * self.terms} params", "µs/call", 1e6,
                       has_forward=False)]

    # --- references ---

    def _np_residuals(self, p):
        A, k = p[0::2], p[1::2]
        return np.exp(-np.outer(self.t, k)) @ A - getattr(self, "y", 0.0)

    def _np_jacobian(self, p):
        A, k = p[0::2], p[1::2]
        E = np.exp(-np.outer(self.t, k))
        J = np.empty((self.rows, 2 * self.terms))
        J[:, 0::2] = E
        J[:, 1::2] = -self.t[:, None] * E * A
        return J

    def references(self):
        return {"hvp": ((np_hvp(self.point, self.v), {}), None),
                "hessian": ((np_hessian(self.point), {}), None),
                "jacobian": ((self._np_jacobian(self.p), {}), None)}

    def self_check(self):
        h = 1e-6
        _, g_plus = np_value_and_grad(self.point + h * self.v)
        _, g_minus = np_value_and_grad(self.point - h * self.v)
        numeric = (g_plus - g_minus) / (2 * h)
        exact = np_hvp(self.point, self.v)
        if np.max(np.abs(numeric - exact)) > 1e-5 * np.max(np.abs(exact)):
            raise AssertionError("the NumPy Hessian-vector product disagrees with differences of the gradient")
        if not np.allclose(np_hessian(self.point) @ self.v, exact, rtol=1e-13, atol=1e-10):
            raise AssertionError("the NumPy Hessian disagrees with its Hessian-vector product")
        columns = [(self._np_residuals(self.p + h * e) - self._np_residuals(self.p - h * e)) / (2 * h)
                   for e in np.eye(2 * self.terms)]
        if not np.allclose(np.stack(columns, axis=1), self._np_jacobian(self.p), rtol=1e-6, atol=1e-8):
            raise AssertionError("the NumPy Jacobian disagrees with central differences")

    # --- contenders ---

    def _models(self):
        import sympy as sp

        import symgrad as sg

        x = sp.MatrixSymbol("x", self.dim, 1)
        rosen = sg.Model(f"bench_m8_rosen_n{self.dim}", params=[x], loss=rosenbrock([x[i, 0] for i in range(self.dim)]),
                         kernels=("hvp", "hessian"))
        params = sp.symbols(f"p0:{2 * self.terms}")
        t, y = sp.symbols("t y")
        r = sum(params[2 * j] * sp.exp(-params[2 * j + 1] * t) for j in range(self.terms)) - y
        fit = sg.Model(f"bench_m8_fit{self.terms}", params=list(params), inputs=[t, y], outputs={"r": r},
                       loss=r**2 / 2, reduce="sum", kernels=("jacobian",))
        return rosen, fit

    def build_symgrad(self):
        from symgrad.scipy import Objective

        rosen, fit = self._models()
        objective = Objective(self.symgrad_module(rosen))
        residuals = Objective(self.symgrad_module(fit), data={"t": self.t, "y": self.y}, residual="r")
        point, v, p = self.point, self.v, self.p
        hessp, hess, jacobian = objective.hessp, objective.hess, residuals.residual_jacobian
        return {"hvp": Case(lambda: hessp(point, v), _alone),
                "hessian": Case(lambda: hess(point), _alone),
                "jacobian": Case(lambda: jacobian(p), _alone)}

    def build_numpy(self):
        point, v, p = self.point, self.v, self.p
        return {"hvp": Case(lambda: np_hvp(point, v), _alone),
                "hessian": Case(lambda: np_hessian(point), _alone),
                "jacobian": Case(lambda: self._np_jacobian(p), _alone)}

    def _jax_residuals(self, jnp):
        t, y, terms = jnp.asarray(self.t), jnp.asarray(self.y), self.terms

        def r(p):
            return jnp.exp(-jnp.outer(t, p[1::2])) @ p[0::2] - y

        return r

    def build_jax(self):
        jax, jnp = jax_modules()

        def f(x):
            return _vector_rosenbrock(x, jnp.sum)

        hvp = jax.jit(lambda x, v: jax.jvp(jax.grad(f), (x,), (v,))[1])
        hess = jax.jit(jax.hessian(f))
        jac = jax.jit(jax.jacfwd(self._jax_residuals(jnp)))
        point, v, p = jnp.asarray(self.point), jnp.asarray(self.v), jnp.asarray(self.p)
        ready = _ready(jax)
        return {"hvp": Case(lambda: ready(hvp(point, v)), _alone),
                "hessian": Case(lambda: ready(hess(point)), _alone),
                "jacobian": Case(lambda: ready(jac(p)), _alone)}

    def build_torch(self):
        torch = torch_module()
        from torch import func

        def f(x):
            return _vector_rosenbrock(x, torch.sum)

        t, y = torch.from_numpy(self.t), torch.from_numpy(self.y)

        def r(p):
            return torch.exp(-torch.outer(t, p[1::2])) @ p[0::2] - y

        grad = func.grad(f)
        point, v, p = torch.from_numpy(self.point), torch.from_numpy(self.v), torch.from_numpy(self.p)
        hess, jac = func.hessian(f), func.jacfwd(r)
        return {"hvp": Case(lambda: func.jvp(grad, (point,), (v,))[1], _alone),
                "hessian": Case(lambda: hess(point), _alone),
                "jacobian": Case(lambda: jac(p), _alone)}

    def _casadi_functions(self):
        def make():
            ca = casadi_module()
            x, v = ca.SX.sym("x", self.dim), ca.SX.sym("v", self.dim)
            f = rosenbrock([x[i] for i in range(self.dim)])
            hvp = ca.Function("m8_hvp", [x, v], [ca.jtimes(ca.gradient(f, x), x, v)])
            hess = ca.Function("m8_hess", [x], [ca.densify(ca.hessian(f, x)[0])])
            p, t, y = ca.SX.sym("p", 2 * self.terms), ca.SX.sym("t", self.rows), ca.SX.sym("y", self.rows)
            r = sum(p[2 * j] * ca.exp(-p[2 * j + 1] * t) for j in range(self.terms)) - y
            jac = ca.Function("m8_jac", [p, t, y], [ca.densify(ca.jacobian(r, p))])
            return {"m8_hvp": hvp, "m8_hess": hess, "m8_jac": jac}

        return self.cached("casadi", make)

    def _casadi_cases(self, fs):
        ca = casadi_module()
        point, v, p, t, y = (ca.DM(a) for a in (self.point, self.v, self.p, self.t, self.y))
        hvp, hess, jac = fs["m8_hvp"], fs["m8_hess"], fs["m8_jac"]
        return {"hvp": Case(lambda: hvp(point, v), _alone_dm),
                "hessian": Case(lambda: hess(point), _alone_dm),
                "jacobian": Case(lambda: jac(p, t, y), _alone_dm)}

    def build_casadi_sx(self):
        return self._casadi_cases(self._casadi_functions())

    def build_casadi_c(self):
        return self._casadi_cases(self.casadi_external(self._casadi_functions(),
                                                       f"bench_m8_{self.dim}_{self.rows}"))


class M9(Workload):
    id = "M9"
    title = "flat-vector one-point calls"

    def __init__(self, cfg, available):
        super().__init__(cfg, available)
        self.dim = 10 if cfg.quick else 100
        self.point = np.random.default_rng(2).uniform(-1.5, 1.5, self.dim)  # M2's point
        self.title = f"Rosenbrock n = {self.dim}, one point as one vector"

    def description(self):
        return (f"One value_and_grad (and one forward) of the Rosenbrock function of {self.dim} variables at one "
                f"point held as a float64 vector, the call of an optimizer. symgrad: symgrad.scipy.Objective's "
                f"fun_and_jac and fun (theta to C as one pointer, the data bound once), for a model of one "
                f"MatrixSymbol x of {self.dim}x1 written element by element (first table), the same "
                f"written as sp.Sum over an index (second: one loop in C) and M2's model of {self.dim} scalar "
                f"symbols (third); the same function in C by hand (a loop over x, gcc -O3) "
                f"called through cffi with one pointer in and one out; the peers' one-point calls as in M2 "
                f"(jit of value_and_grad, torch autograd, CasADi SX and its C). The fourth table: the gradient "
                f"alone, Objective.jac against the hand-written gradient.")

    def metrics(self):
        return [Metric("flat_matrix", f"MatrixSymbol x ({self.dim}x1), 1 point", "µs/call", 1e6),
                Metric("flat_sum", f"MatrixSymbol x ({self.dim}x1) summed by sp.Sum, 1 point", "µs/call", 1e6),
                Metric("flat_scalars", f"{self.dim} scalar symbols, 1 point", "µs/call", 1e6),
                Metric("jac", f"gradient alone (jac), MatrixSymbol x ({self.dim}x1)", "µs/call", 1e6,
                       has_forward=False)]

    def references(self):
        value, grad = np_value_and_grad(self.point)
        ref = ((value, {"x": grad}), np_forward(self.point))
        return {"flat_matrix": ref, "flat_sum": ref, "flat_scalars": ref, "jac": ((0.0, {"x": grad}), None)}

    def self_check(self):
        from ..harness import finite_difference_check

        _, grad = np_value_and_grad(self.point)
        finite_difference_check(lambda q: float(np_forward(q["x"])), {"x": grad}, {"x": self.point})

    # --- contenders ---

    def build_symgrad(self):
        import sympy as sp

        import symgrad as sg
        from symgrad.scipy import Objective

        x = sp.MatrixSymbol("x", self.dim, 1)
        matrix = Objective(self.symgrad_module(sg.Model(f"bench_m9_x{self.dim}", params=[x],
                                                        loss=rosenbrock([x[i, 0] for i in range(self.dim)]))))
        scalars = Objective(self.symgrad_module(symgrad_model("m2", self.dim)))
        i = sp.Symbol("i", integer=True)
        term = 100 * (x[i + 1, 0] - x[i, 0] ** 2) ** 2 + (1 - x[i, 0]) ** 2
        summed = Objective(self.symgrad_module(sg.Model(f"bench_m9_sum{self.dim}", params=[x],
                                                        loss=sp.Sum(term, (i, 0, self.dim - 2)))))
        point = self.point
        cases = {}
        for key, obj in (("flat_matrix", matrix), ("flat_sum", summed), ("flat_scalars", scalars)):
            both, fun = obj.fun_and_jac, obj.fun
            cases[key] = Case(lambda both=both: both(point), _value_and_gradient, lambda fun=fun: fun(point), float)
        jac = matrix.jac
        cases["jac"] = Case(lambda: jac(point), _gradient_alone)
        return cases

    def build_hand_c(self):
        module = hand_module(self.cfg.work_dir)
        ffi, lib = module.ffi, module.lib
        fb, n, empty = ffi.from_buffer, self.dim, np.empty
        rosen, rosen_vg, rosen_der = lib.rosen, lib.rosen_vg, lib.rosen_der

        def fun(x):
            return rosen(fb("double *", x), n)

        def fun_and_jac(x):
            g = empty(n)
            return rosen_vg(fb("double *", x), n, fb("double *", g)), g

        def jac(x):
            g = empty(n)
            rosen_der(fb("double *", x), n, fb("double *", g))
            return g

        point = self.point
        case = Case(lambda: fun_and_jac(point), _value_and_gradient, lambda: fun(point), float)
        return {"flat_matrix": case, "flat_sum": case, "flat_scalars": case,
                "jac": Case(lambda: jac(point), _gradient_alone)}

    def build_numpy(self):
        point = self.point
        return {"flat_matrix": Case(lambda: np_value_and_grad(point), _value_and_gradient,
                                    lambda: np_forward(point), float)}

    def build_jax(self):
        jax, jnp = jax_modules()

        def f(x):
            return _vector_rosenbrock(x, jnp.sum)

        vg, fwd = jax.jit(jax.value_and_grad(f)), jax.jit(f)
        point = jnp.asarray(self.point)
        ready = jax.block_until_ready
        return {"flat_matrix": Case(lambda: ready(vg(point)), _value_and_gradient, lambda: ready(fwd(point)),
                                    np.asarray)}

    def build_torch(self):
        torch = torch_module()
        point = torch.from_numpy(self.point)

        def vg():
            x = point.detach().requires_grad_()
            value = _vector_rosenbrock(x, torch.sum)
            return value, torch.autograd.grad(value, x)[0]

        def fwd():
            with torch.no_grad():
                return _vector_rosenbrock(point, torch.sum)

        return {"flat_matrix": Case(vg, lambda out: (out[0].detach().numpy(), {"x": out[1].numpy()}), fwd,
                                    lambda out: out.numpy())}

    def _casadi_functions(self):
        def make():
            ca = casadi_module()
            x = ca.SX.sym("x", self.dim)
            value = rosenbrock([x[i] for i in range(self.dim)])
            return {"m9_vg": ca.Function("m9_vg", [x], [value, ca.gradient(value, x)]),
                    "m9_fwd": ca.Function("m9_fwd", [x], [value])}

        return self.cached("casadi", make)

    def _casadi_cases(self, fs):
        ca = casadi_module()
        point = ca.DM(self.point)
        vg, fwd = fs["m9_vg"], fs["m9_fwd"]
        return {"flat_matrix": Case(lambda: vg(point), lambda out: (float(out[0]), {"x": to_numpy(out[1])}),
                                    lambda: fwd(point), float)}

    def build_casadi_sx(self):
        return self._casadi_cases(self._casadi_functions())

    def build_casadi_c(self):
        return self._casadi_cases(self.casadi_external(self._casadi_functions(), f"bench_m9_{self.dim}"))


def _alone(out):
    """One array result (a product, a Hessian, a Jacobian) compared as the reference's value."""
    return np.asarray(out), {}


def _alone_dm(out):
    return to_numpy(out), {}


def _value_and_gradient(out):
    value, gradient = out
    return np.asarray(value), {"x": np.asarray(gradient)}


def _gradient_alone(out):
    return 0.0, {"x": np.asarray(out)}
