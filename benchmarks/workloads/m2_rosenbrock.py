"""M2: the Rosenbrock function of n scalar symbols, one point per call and a batch of points."""

from __future__ import annotations

import numpy as np

from ..harness import Case, Metric
from ..models import rosenbrock, symgrad_model
from ..peers import casadi_module, jax_modules, to_numpy, torch_module
from .base import Workload


def np_forward(X):
    """X: (n,) or (n, N) with the points along the columns."""
    a = X[:-1]
    d = X[1:] - a * a
    e = 1.0 - a
    return np.sum(100.0 * d * d + e * e, axis=0)


def np_value_and_grad(X):
    a = X[:-1]
    d = X[1:] - a * a
    e = 1.0 - a
    value = np.sum(100.0 * d * d + e * e, axis=0)
    grad = np.zeros_like(X)
    grad[:-1] = -400.0 * a * d - 2.0 * e
    grad[1:] += 200.0 * d
    return value, grad


def _vector_rosenbrock(x, total):
    """The same function on a vector (first axis = the n coordinates), for JAX and torch."""
    d = x[1:] - x[:-1] ** 2
    return total(100 * d ** 2 + (1 - x[:-1]) ** 2)


class M2(Workload):
    id = "M2"
    title = "Rosenbrock, n scalar symbols"

    def __init__(self, cfg, available):
        super().__init__(cfg, available)
        self.dim = 10 if cfg.quick else 100
        self.n = 100 if cfg.quick else 10**4
        self.title = f"Rosenbrock, n = {self.dim} scalar symbols"
        rng = np.random.default_rng(2)
        self.point = rng.uniform(-1.5, 1.5, self.dim)
        self.X = np.ascontiguousarray(rng.uniform(-1.5, 1.5, (self.dim, self.n)))  # points in columns
        self.names = [f"x{i}" for i in range(self.dim)]

    def description(self):
        return (f"f(x) = sum_i 100*(x_(i+1) - x_i^2)^2 + (1 - x_i)^2 over {self.dim} scalar SymPy symbols "
                f"x0..x{self.dim - 1}, reduce=None. One point per call (the point held in each library's "
                f"natural form, prepared once: a dict of floats for symgrad, a tuple of floats for SymPy, "
                f"an array or tensor otherwise), and a batch of {self.n:,} points in [-1.5, 1.5]: one "
                f"{self.dim}x{self.n} float64 array (points along columns, so symgrad gets contiguous "
                f"rows as x0..x{self.dim - 1}), the same layout for every contender.")

    def metrics(self):
        return [Metric("point", "1 point per call", "µs/call", 1e6),
                Metric("batch", f"batch of {self.n:,} points", "ns/point", 1e9 / self.n)]

    def references(self):
        out = {}
        for key, X in (("point", self.point), ("batch", self.X)):
            value, grad = np_value_and_grad(X)
            out[key] = ((value, {"x": grad}), np_forward(X))
        return out

    def self_check(self):
        from ..harness import finite_difference_check

        X = self.X[:, :20]
        _, grad = np_value_and_grad(X)
        finite_difference_check(lambda p: float(np.sum(np_forward(p["x"]))), {"x": grad}, {"x": X})

    # --- contenders ---

    def build_numpy(self):
        point, X = self.point, self.X
        return {"point": Case(lambda: np_value_and_grad(point), _stacked, lambda: np_forward(point), float),
                "batch": Case(lambda: np_value_and_grad(X), _stacked, lambda: np_forward(X), np.asarray)}

    def build_symgrad(self):
        mod = self.symgrad_module(symgrad_model("m2", self.dim))
        names = self.names
        point = {n: float(v) for n, v in zip(names, self.point)}
        batch = {n: row for n, row in zip(names, self.X)}

        def vg_result(out):
            return out[0], {"x": np.array([out[1][n] for n in names])}

        def fwd_result(out):
            return out["loss"]

        return {"point": Case(lambda: mod.value_and_grad(**point), vg_result, lambda: mod.forward(**point),
                              fwd_result),
                "batch": Case(lambda: mod.value_and_grad(**batch), vg_result, lambda: mod.forward(**batch),
                              fwd_result)}

    def build_jax(self):
        jax, jnp = jax_modules()

        def f(x):
            return _vector_rosenbrock(x, jnp.sum)

        vg = jax.jit(jax.value_and_grad(f))
        fwd = jax.jit(f)
        vg_batch = jax.jit(jax.vmap(jax.value_and_grad(f), in_axes=1, out_axes=(0, 1)))
        fwd_batch = jax.jit(jax.vmap(f, in_axes=1))
        point, X = jnp.asarray(self.point), jnp.asarray(self.X)
        ready = jax.block_until_ready
        return {"point": Case(lambda: ready(vg(point)), _stacked, lambda: ready(fwd(point)), np.asarray),
                "batch": Case(lambda: ready(vg_batch(X)), _stacked, lambda: ready(fwd_batch(X)), np.asarray)}

    def build_torch(self):
        torch = torch_module()
        point = torch.from_numpy(self.point)

        def total(v):
            return v.sum(0)

        def vg_point():
            x = point.detach().requires_grad_()
            value = _vector_rosenbrock(x, total)
            return value, torch.autograd.grad(value, x)

        def fwd_point():
            with torch.no_grad():
                return _vector_rosenbrock(point, total)

        X = torch.from_numpy(self.X).requires_grad_()
        ones = torch.ones(self.n, dtype=torch.float64)

        def vg_batch():
            value = _vector_rosenbrock(X, total)
            return value, torch.autograd.grad(value, X, grad_outputs=ones)

        def fwd_batch():
            with torch.no_grad():
                return _vector_rosenbrock(X, total)

        def vg_result(out):
            return out[0].detach().numpy(), {"x": out[1][0].numpy()}

        def fwd_result(out):
            return out.numpy()

        return {"point": Case(vg_point, vg_result, fwd_point, fwd_result),
                "batch": Case(vg_batch, vg_result, fwd_batch, fwd_result)}

    def _casadi_functions(self):
        def make():
            ca = casadi_module()
            x = ca.SX.sym("x", self.dim)
            value = rosenbrock([x[i] for i in range(self.dim)])
            vg = ca.Function("m2_vg", [x], [value, ca.gradient(value, x)])
            fwd = ca.Function("m2_fwd", [x], [value])
            return {"m2_vg": vg, "m2_fwd": fwd,
                    "m2_vg_map": vg.map("m2_vg_map", "serial", self.n, [], []),
                    "m2_fwd_map": fwd.map("m2_fwd_map", "serial", self.n, [], [])}

        return self.cached("casadi", make)

    def _casadi_cases(self, fs):
        ca = casadi_module()
        point, X = ca.DM(self.point), ca.DM(self.X)
        vg, fwd, vg_map, fwd_map = fs["m2_vg"], fs["m2_fwd"], fs["m2_vg_map"], fs["m2_fwd_map"]

        def vg_result(out):
            value = to_numpy(out[0])
            return value.reshape(-1) if value.size > 1 else value.item(), {"x": to_numpy(out[1])}

        def fwd_result(out):
            value = to_numpy(out)
            return value.reshape(-1) if value.size > 1 else value.item()

        return {"point": Case(lambda: vg(point), vg_result, lambda: fwd(point), fwd_result),
                "batch": Case(lambda: vg_map(X), vg_result, lambda: fwd_map(X), fwd_result)}

    def build_casadi_sx(self):
        return self._casadi_cases(self._casadi_functions())

    def build_casadi_c(self):
        return self._casadi_cases(self.casadi_external(self._casadi_functions(), f"bench_m2_{self.dim}_{self.n}"))

    def build_sympy(self):
        fs = self.sympy({"family": "m2", "size": self.dim})
        vg, fwd = fs["vg"], fs["fwd"]
        point = tuple(float(v) for v in self.point)
        rows = tuple(self.X)
        shape = (self.n,)

        def vg_result_point(out):
            return out[0], {"x": np.array(out[1:], dtype=float)}

        def vg_result_batch(out):
            return (np.broadcast_to(out[0], shape),
                    {"x": np.array([np.broadcast_to(g, shape) for g in out[1:]], dtype=float)})

        return {"point": Case(lambda: vg(*point), vg_result_point, lambda: fwd(*point), float),
                "batch": Case(lambda: vg(*rows), vg_result_batch, lambda: fwd(*rows), np.asarray)}


def _stacked(out):
    """(value, gradient array) -> (value, {"x": gradient})."""
    value, grad = out
    return np.asarray(value), {"x": np.asarray(grad)}
