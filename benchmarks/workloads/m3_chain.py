"""M3: a deep chain y_{k+1} = tanh(a_k*y_k + b_k)*y_k + sin(y_k), mean over a batch of x."""

from __future__ import annotations

import numpy as np

from ..harness import Case, Metric
from ..models import chain, ops_of, symgrad_model
from ..peers import casadi_module, jax_modules, to_numpy, torch_module
from .base import Workload


def np_forward(a, b, x):
    y = x
    for k in range(len(a)):
        y = np.tanh(a[k] * y + b[k]) * y + np.sin(y)
    return np.mean(y)


def np_value_and_grad(a, b, x):
    ys, ts = [], []
    y = x
    for k in range(len(a)):
        t = np.tanh(a[k] * y + b[k])
        ys.append(y)
        ts.append(t)
        y = t * y + np.sin(y)
    value = np.mean(y)
    y_bar = np.full(x.shape, 1.0 / x.size)
    ga, gb = np.empty(len(a)), np.empty(len(b))
    for k in reversed(range(len(a))):
        y, t = ys[k], ts[k]
        s = y_bar * y * (1.0 - t * t)  # d loss / d (a_k*y_k + b_k)
        ga[k] = np.dot(s, y)
        gb[k] = np.sum(s)
        y_bar = y_bar * (t + np.cos(y)) + s * a[k]
    return value, {"a": ga, "b": gb, "x": y_bar}


class M3(Workload):
    id = "M3"
    title = "deep chain"

    def __init__(self, cfg, available):
        super().__init__(cfg, available)
        self.depth = 3 if cfg.quick else 64
        self.n = 100 if cfg.quick else 10**5
        self.title = f"deep chain, depth {self.depth}"
        rng = np.random.default_rng(3)
        self.a = rng.uniform(-0.5, 0.5, self.depth)
        self.b = rng.uniform(-0.5, 0.5, self.depth)
        self.x = rng.uniform(-1.0, 1.0, self.n)

    def description(self):
        return (f"y0 = x; y_(k+1) = tanh(a_k*y_k + b_k)*y_k + sin(y_k) for k < {self.depth}; loss = mean over a "
                f"batch of {self.n:,} x in [-1, 1] of y_{self.depth} (symgrad reduce=\"mean\"), gradient with "
                f"respect to every a_k and b_k (shared, a_k, b_k in [-0.5, 0.5]) and every x (per example). "
                f"symgrad's a_k, b_k are {2 * self.depth} scalar params passed as floats; the peers get two "
                f"length-{self.depth} vectors.")

    def metrics(self):
        return [Metric("batch", f"batch of {self.n:,} points", "ns/point", 1e9 / self.n)]

    def references(self):
        value, grads = np_value_and_grad(self.a, self.b, self.x)
        return {"batch": ((value, grads), np_forward(self.a, self.b, self.x))}

    def self_check(self):
        from ..harness import finite_difference_check

        x = self.x[:50]
        _, grads = np_value_and_grad(self.a, self.b, x)
        finite_difference_check(lambda p: float(np_forward(p["a"], p["b"], p["x"])), grads,
                                {"a": self.a, "b": self.b, "x": x})

    # --- contenders ---

    def build_numpy(self):
        a, b, x = self.a, self.b, self.x
        return {"batch": Case(lambda: np_value_and_grad(a, b, x), lambda out: out, lambda: np_forward(a, b, x),
                              float)}

    def build_symgrad(self):
        mod = self.symgrad_module(symgrad_model("m3", self.depth))
        D = self.depth
        args = {f"a{k}": float(v) for k, v in enumerate(self.a)}
        args.update({f"b{k}": float(v) for k, v in enumerate(self.b)})
        args["x"] = self.x

        def vg_result(out):
            value, grads = out
            return value, {"a": np.array([grads[f"a{k}"] for k in range(D)]),
                           "b": np.array([grads[f"b{k}"] for k in range(D)]), "x": grads["x"]}

        return {"batch": Case(lambda: mod.value_and_grad(**args), vg_result, lambda: mod.forward(**args),
                              lambda out: out["loss"])}

    def build_jax(self):
        """``lax.scan`` over the layers, the JAX idiom for a deep chain.

        The same loop written in Python and unrolled into the jit (as the other
        peers write it) has a pathological backward pass under XLA on the CPU
        (tens of times its forward at depth 64; XLA's fusion recomputes the
        forward chain inside the backward): it is measured once and reported in
        a note.
        """
        import time

        jax, jnp = jax_modules()
        ops = ops_of("jax")

        def loss(a, b, x):
            def layer(y, ab):
                return jnp.tanh(ab[0] * y + ab[1]) * y + jnp.sin(y), None

            y, _ = jax.lax.scan(layer, x, (a, b))
            return jnp.mean(y)

        def unrolled(a, b, x):
            return jnp.mean(chain(x, a, b, ops))

        vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        fwd = jax.jit(loss)
        a, b, x = jnp.asarray(self.a), jnp.asarray(self.b), jnp.asarray(self.x)
        ready = jax.block_until_ready
        if not self.cfg.quick and not self.cfg.check_only:
            vg_unrolled = jax.jit(jax.value_and_grad(unrolled, argnums=(0, 1, 2)))
            fwd_unrolled = jax.jit(unrolled)
            seconds = {}
            for kind, f in (("value_and_grad", vg_unrolled), ("forward", fwd_unrolled)):
                ready(f(a, b, x))  # compile
                start = time.perf_counter()
                ready(f(a, b, x))
                seconds[kind] = time.perf_counter() - start
            self.notes.append(
                f"JAX is timed with jax.lax.scan over the layers. The same chain as a Python loop unrolled "
                f"inside jit: value_and_grad {seconds['value_and_grad'] * 1e9 / self.n:,.0f} ns/point, forward "
                f"{seconds['forward'] * 1e9 / self.n:,.0f} ns/point (one call each after compilation).")

        def vg_result(out):
            value, (ga, gb, gx) = out
            return np.asarray(value), {"a": np.asarray(ga), "b": np.asarray(gb), "x": np.asarray(gx)}

        return {"batch": Case(lambda: ready(vg(a, b, x)), vg_result, lambda: ready(fwd(a, b, x)), np.asarray)}

    def build_torch(self):
        torch = torch_module()
        ops = ops_of("torch")
        a = torch.from_numpy(self.a).requires_grad_()
        b = torch.from_numpy(self.b).requires_grad_()
        x = torch.from_numpy(self.x).requires_grad_()

        def vg():
            value = chain(x, a, b, ops).mean()
            return value, torch.autograd.grad(value, (a, b, x))

        def fwd():
            with torch.no_grad():
                return chain(x, a, b, ops).mean()

        def vg_result(out):
            value, (ga, gb, gx) = out
            return value.item(), {"a": ga.numpy(), "b": gb.numpy(), "x": gx.numpy()}

        return {"batch": Case(vg, vg_result, fwd, lambda out: out.item())}

    def _casadi_functions(self):
        def make():
            ca = casadi_module()
            D = self.depth
            a, b, x, s = ca.SX.sym("a", D), ca.SX.sym("b", D), ca.SX.sym("x"), ca.SX.sym("s")
            y = chain(x, [a[k] for k in range(D)], [b[k] for k in range(D)], ops_of("casadi"))
            g = ca.gradient(y, ca.vertcat(a, b, x))
            # s = 1/N: the mean is the sum over the batch of s*y (shared inputs a, b, s; summed outputs).
            vg = ca.Function("m3_vg", [a, b, x, s], [s * y, s * g[:D], s * g[D:2 * D], s * g[2 * D]])
            fwd = ca.Function("m3_fwd", [a, b, x, s], [s * y])
            return {"m3_vg_map": vg.map("m3_vg_map", "serial", self.n, [0, 1, 3], [0, 1, 2]),
                    "m3_fwd_map": fwd.map("m3_fwd_map", "serial", self.n, [0, 1, 3], [0])}

        return self.cached("casadi", make)

    def _casadi_cases(self, fs):
        ca = casadi_module()
        a, b, x, s = ca.DM(self.a), ca.DM(self.b), ca.DM(self.x.reshape(1, -1)), 1.0 / self.n
        vg, fwd = fs["m3_vg_map"], fs["m3_fwd_map"]

        def vg_result(out):
            value, ga, gb, gx = (to_numpy(v) for v in out)
            return value.item(), {"a": ga.reshape(-1), "b": gb.reshape(-1), "x": gx.reshape(-1)}

        return {"batch": Case(lambda: vg(a, b, x, s), vg_result, lambda: fwd(a, b, x, s),
                              lambda out: to_numpy(out).item())}

    def build_casadi_sx(self):
        return self._casadi_cases(self._casadi_functions())

    def build_casadi_c(self):
        return self._casadi_cases(self.casadi_external(self._casadi_functions(),
                                                       f"bench_m3_{self.depth}_{self.n}"))

    def build_sympy(self):
        fs = self.sympy({"family": "m3", "size": self.depth})
        vg, fwd = fs["vg"], fs["fwd"]
        args = (*(float(v) for v in self.a), *(float(v) for v in self.b), self.x)
        D, shape = self.depth, (self.n,)

        def vg_case():
            out = vg(*args)  # per-example loss and gradients; the mean over the batch is ours
            return np.mean(out[0]), [np.mean(np.broadcast_to(g, shape)) for g in out[1:-1]], out[-1] / shape[0]

        def vg_result(out):
            value, shared, gx = out
            return value, {"a": np.array(shared[:D]), "b": np.array(shared[D:]), "x": np.broadcast_to(gx, shape)}

        return {"batch": Case(vg_case, vg_result, lambda: np.mean(fwd(*args)), float)}
