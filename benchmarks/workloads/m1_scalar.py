"""M1: f(x1, x2) = ln x1 + x1*x2 - sin x2 and its gradient, one point per call and a batch."""

from __future__ import annotations

import numpy as np

from ..harness import Case, Metric
from ..models import m1_loss, ops_of, symgrad_model
from ..peers import casadi_module, jax_modules, to_numpy, torch_module
from .base import Workload, jax_result, sympy_result, torch_result

NAMES = ("x1", "x2")
POINT = (0.7, 1.3)


def np_value_and_grad(x1, x2):
    value = np.log(x1) + x1 * x2 - np.sin(x2)
    return value, (1.0 / x1 + x2, x1 - np.cos(x2))


def np_forward(x1, x2):
    return np.log(x1) + x1 * x2 - np.sin(x2)


class M1(Workload):
    id = "M1"
    title = "scalar f(x1, x2) = ln x1 + x1*x2 - sin x2"

    def __init__(self, cfg, available):
        super().__init__(cfg, available)
        self.n = 1000 if cfg.quick else 10**6
        rng = np.random.default_rng(1)
        self.X1 = rng.uniform(0.5, 2.0, self.n)
        self.X2 = rng.uniform(-2.0, 2.0, self.n)

    def description(self):
        return (f"Gradient with respect to x1 and x2 (reduce=None: one value and gradient per point). "
                f"One point per call from Python (Python floats in, symgrad's by keyword, the others' by position; "
                f"the library's own results out), and "
                f"a batch of {self.n:,} points (x1 in [0.5, 2], x2 in [-2, 2]) given as each library's "
                f"array type, prepared once.")

    def metrics(self):
        return [Metric("point", "1 point per call", "µs/call", 1e6),
                Metric("batch", f"batch of {self.n:,} points", "ns/point", 1e9 / self.n)]

    def references(self):
        out = {}
        for key, args in (("point", POINT), ("batch", (self.X1, self.X2))):
            value, grads = np_value_and_grad(*args)
            out[key] = ((value, dict(zip(NAMES, grads))), np_forward(*args))
        return out

    def self_check(self):
        from ..harness import finite_difference_check

        point = {"x1": self.X1[:50], "x2": self.X2[:50]}
        _, grads = np_value_and_grad(point["x1"], point["x2"])
        finite_difference_check(lambda p: float(np.sum(np_forward(p["x1"], p["x2"]))),
                                dict(zip(NAMES, grads)), point)

    # --- contenders ---

    def build_numpy(self):
        def result(out):
            return out[0], dict(zip(NAMES, out[1]))

        X1, X2 = self.X1, self.X2
        return {
            "point": Case(lambda: np_value_and_grad(*POINT), result, lambda: np_forward(*POINT), float),
            "batch": Case(lambda: np_value_and_grad(X1, X2), result, lambda: np_forward(X1, X2), np.asarray),
        }

    def build_symgrad(self):
        mod = self.symgrad_module(symgrad_model("m1"))
        x1, x2 = POINT  # by keyword, as lambdify's function gets them by position
        batch = {"x1": self.X1, "x2": self.X2}

        def vg_result(out):
            return out[0], out[1]

        def fwd_result(out):
            return out["loss"]

        return {
            "point": Case(lambda: mod.value_and_grad(x1=x1, x2=x2), vg_result, lambda: mod.forward(x1=x1, x2=x2),
                          fwd_result),
            "batch": Case(lambda: mod.value_and_grad(**batch), vg_result, lambda: mod.forward(**batch), fwd_result),
        }

    def build_jax(self):
        jax, jnp = jax_modules()
        ops = ops_of("jax")

        def f(x1, x2):
            return m1_loss(x1, x2, ops)

        vg = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
        fwd = jax.jit(f)
        vg_batch = jax.jit(jax.vmap(jax.value_and_grad(f, argnums=(0, 1))))
        fwd_batch = jax.jit(jax.vmap(f))
        X1, X2 = jnp.asarray(self.X1), jnp.asarray(self.X2)
        ready = jax.block_until_ready
        x1, x2 = POINT
        return {
            "point": Case(lambda: ready(vg(x1, x2)), jax_result(NAMES), lambda: ready(fwd(x1, x2)), np.asarray),
            "batch": Case(lambda: ready(vg_batch(X1, X2)), jax_result(NAMES), lambda: ready(fwd_batch(X1, X2)),
                          np.asarray),
        }

    def build_torch(self):
        torch = torch_module()
        ops = ops_of("torch")
        f64 = torch.float64
        x1, x2 = POINT

        def vg_point():
            a = torch.tensor(x1, dtype=f64, requires_grad=True)
            b = torch.tensor(x2, dtype=f64, requires_grad=True)
            value = m1_loss(a, b, ops)
            return value, torch.autograd.grad(value, (a, b))

        def fwd_point():
            with torch.no_grad():
                return m1_loss(torch.tensor(x1, dtype=f64), torch.tensor(x2, dtype=f64), ops)

        X1 = torch.from_numpy(self.X1).requires_grad_()
        X2 = torch.from_numpy(self.X2).requires_grad_()
        ones = torch.ones(self.n, dtype=f64)

        def vg_batch():
            value = m1_loss(X1, X2, ops)
            return value, torch.autograd.grad(value, (X1, X2), grad_outputs=ones)

        def fwd_batch():
            with torch.no_grad():
                return m1_loss(X1, X2, ops)

        def fwd_result(out):
            return out.numpy()

        return {"point": Case(vg_point, torch_result(NAMES), fwd_point, fwd_result),
                "batch": Case(vg_batch, torch_result(NAMES), fwd_batch, fwd_result)}

    def _casadi_functions(self):
        def make():
            ca = casadi_module()
            x1, x2 = ca.SX.sym("x1"), ca.SX.sym("x2")
            value = m1_loss(x1, x2, ops_of("casadi"))
            grad = ca.gradient(value, ca.vertcat(x1, x2))
            vg = ca.Function("m1_vg", [x1, x2], [value, grad])
            fwd = ca.Function("m1_fwd", [x1, x2], [value])
            return {"m1_vg": vg, "m1_fwd": fwd,
                    "m1_vg_map": vg.map("m1_vg_map", "serial", self.n, [], []),
                    "m1_fwd_map": fwd.map("m1_fwd_map", "serial", self.n, [], [])}

        return self.cached("casadi", make)

    def _casadi_cases(self, fs):
        ca = casadi_module()
        X1, X2 = ca.DM(self.X1.reshape(1, -1)), ca.DM(self.X2.reshape(1, -1))
        x1, x2 = POINT
        vg, fwd, vg_map, fwd_map = fs["m1_vg"], fs["m1_fwd"], fs["m1_vg_map"], fs["m1_fwd_map"]

        def vg_result(out):
            value, grad = to_numpy(out[0]), to_numpy(out[1])
            return value.reshape(-1) if value.size > 1 else value.item(), {"x1": grad[0], "x2": grad[1]}

        def fwd_result(out):
            value = to_numpy(out)
            return value.reshape(-1) if value.size > 1 else value.item()

        return {"point": Case(lambda: vg(x1, x2), vg_result, lambda: fwd(x1, x2), fwd_result),
                "batch": Case(lambda: vg_map(X1, X2), vg_result, lambda: fwd_map(X1, X2), fwd_result)}

    def build_casadi_sx(self):
        return self._casadi_cases(self._casadi_functions())

    def build_casadi_c(self):
        return self._casadi_cases(self.casadi_external(self._casadi_functions(), f"bench_m1_{self.n}"))

    def build_sympy(self):
        fs = self.sympy({"family": "m1"})
        vg, fwd = fs["vg"], fs["fwd"]
        x1, x2 = POINT
        X1, X2 = self.X1, self.X2
        return {"point": Case(lambda: vg(x1, x2), sympy_result(NAMES), lambda: fwd(x1, x2), float),
                "batch": Case(lambda: vg(X1, X2), sympy_result(NAMES, (self.n,)), lambda: fwd(X1, X2),
                              np.asarray)}
