"""M4: the 2-2-1 sigmoid XOR network of examples/xor.py on its four points."""

from __future__ import annotations

import numpy as np

from ..harness import Case, Metric
from ..models import symgrad_model
from ..peers import casadi_module, jax_modules, to_numpy, torch_module
from .base import Workload

X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
T = np.array([0.0, 1.0, 1.0, 0.0])
PARAMS = {  # the textbook's starting weights, as in examples/run_xor.py
    "W1": np.array([[3.0, 2.0], [4.0, 3.0]]),
    "b1": np.array([-2.0, -4.0]),
    "W2": np.array([5.0, -5.0]),
    "b2": -2.0,
}
NAMES = ("W1", "b1", "W2", "b2")


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_forward(p, X, T):
    h = _sigmoid(X @ p["W1"] + p["b1"])
    y = _sigmoid(h @ p["W2"] + p["b2"])
    return np.mean((T - y) ** 2)


def np_value_and_grad(p, X, T):
    h = _sigmoid(X @ p["W1"] + p["b1"])
    y = _sigmoid(h @ p["W2"] + p["b2"])
    e = y - T
    value = np.mean(e * e)
    dz2 = (2.0 / len(T)) * e * y * (1.0 - y)
    dz1 = np.outer(dz2, p["W2"]) * h * (1.0 - h)
    return value, {"W1": X.T @ dz1, "b1": dz1.sum(axis=0), "W2": h.T @ dz2, "b2": dz2.sum()}


class M4(Workload):
    id = "M4"
    title = "XOR 2-2-1 sigmoid network"

    def description(self):
        return ("examples/xor.py: h = sigmoid(x W1 + b1), y = sigmoid(h W2 + b2), cost = mean over the four "
                "XOR points of (t - y)^2, at the textbook's starting weights; value_and_grad with respect to "
                "W1, b1, W2, b2 per call from Python, the four points passed on every call.")

    def metrics(self):
        return [Metric("call", "value_and_grad, 4 points", "µs/call", 1e6)]

    def references(self):
        return {"call": (np_value_and_grad(PARAMS, X, T), np_forward(PARAMS, X, T))}

    def self_check(self):
        from ..harness import finite_difference_check

        _, grads = np_value_and_grad(PARAMS, X, T)
        finite_difference_check(lambda p: float(np_forward(p, X, T)), grads,
                                {k: np.asarray(v, dtype=float) for k, v in PARAMS.items()})

    # --- contenders ---

    def build_numpy(self):
        p = dict(PARAMS)
        return {"call": Case(lambda: np_value_and_grad(p, X, T), lambda out: out, lambda: np_forward(p, X, T),
                             float)}

    def build_symgrad(self):
        mod = self.symgrad_module(symgrad_model("m4"))
        args = dict(PARAMS, x=X, t=T)
        return {"call": Case(lambda: mod.value_and_grad(**args), lambda out: out, lambda: mod.forward(**args),
                             lambda out: out["loss"])}

    def build_jax(self):
        jax, jnp = jax_modules()

        def loss(p, x, t):
            h = jax.nn.sigmoid(x @ p["W1"] + p["b1"])
            y = jax.nn.sigmoid(h @ p["W2"] + p["b2"])
            return jnp.mean((t - y) ** 2)

        vg = jax.jit(jax.value_and_grad(loss))
        fwd = jax.jit(loss)
        p = {k: jnp.asarray(v) for k, v in PARAMS.items()}
        x, t = jnp.asarray(X), jnp.asarray(T)
        ready = jax.block_until_ready

        def vg_result(out):
            return np.asarray(out[0]), {k: np.asarray(v) for k, v in out[1].items()}

        return {"call": Case(lambda: ready(vg(p, x, t)), vg_result, lambda: ready(fwd(p, x, t)), np.asarray)}

    def build_torch(self):
        torch = torch_module()
        p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in PARAMS.items()}
        params = [p[k] for k in NAMES]
        x, t = torch.from_numpy(X), torch.from_numpy(T)

        def loss():
            h = torch.sigmoid(x @ p["W1"] + p["b1"])
            y = torch.sigmoid(h @ p["W2"] + p["b2"])
            return ((t - y) ** 2).mean()

        def vg():
            value = loss()
            return value, torch.autograd.grad(value, params)

        def fwd():
            with torch.no_grad():
                return loss()

        def vg_result(out):
            return out[0].item(), {k: g.numpy() for k, g in zip(NAMES, out[1])}

        return {"call": Case(vg, vg_result, fwd, lambda out: out.item())}

    def _casadi_functions(self):
        def make():
            ca = casadi_module()
            W1, b1, W2, b2 = ca.SX.sym("W1", 2, 2), ca.SX.sym("b1", 2), ca.SX.sym("W2", 2), ca.SX.sym("b2")
            x, t, s = ca.SX.sym("x", 2), ca.SX.sym("t"), ca.SX.sym("s")

            def sigmoid(z):
                return 1 / (1 + ca.exp(-z))

            h = sigmoid(ca.mtimes(W1.T, x) + b1)  # the column form of x W1 + b1
            y = sigmoid(ca.dot(h, W2) + b2)
            cost = (t - y) ** 2
            grads = [s * ca.gradient(cost, v) for v in (W1, b1, W2, b2)]
            inputs = [W1, b1, W2, b2, x, t, s]
            vg = ca.Function("m4_vg", inputs, [s * cost, *grads])
            fwd = ca.Function("m4_fwd", inputs, [s * cost])
            return {"m4_vg_map": vg.map("m4_vg_map", "serial", len(T), [0, 1, 2, 3, 6], [0, 1, 2, 3, 4]),
                    "m4_fwd_map": fwd.map("m4_fwd_map", "serial", len(T), [0, 1, 2, 3, 6], [0])}

        return self.cached("casadi", make)

    def _casadi_cases(self, fs):
        ca = casadi_module()
        args = [ca.DM(PARAMS["W1"]), ca.DM(PARAMS["b1"]), ca.DM(PARAMS["W2"]), PARAMS["b2"], ca.DM(X.T),
                ca.DM(T.reshape(1, -1)), 1.0 / len(T)]
        vg, fwd = fs["m4_vg_map"], fs["m4_fwd_map"]

        def vg_result(out):
            value, gW1, gb1, gW2, gb2 = (to_numpy(v) for v in out)
            return value.item(), {"W1": gW1, "b1": gb1.reshape(-1), "W2": gW2.reshape(-1), "b2": gb2.item()}

        return {"call": Case(lambda: vg(*args), vg_result, lambda: fwd(*args), lambda out: to_numpy(out).item())}

    def build_casadi_sx(self):
        return self._casadi_cases(self._casadi_functions())

    def build_casadi_c(self):
        return self._casadi_cases(self.casadi_external(self._casadi_functions(), "bench_m4"))

    def build_sympy(self):
        fs = self.sympy({"family": "m4"})
        vg, fwd = fs["vg"], fs["fwd"]
        params = (*PARAMS["W1"].ravel(), *PARAMS["b1"], *PARAMS["W2"], PARAMS["b2"])
        args = tuple(float(v) for v in params) + (X[:, 0].copy(), X[:, 1].copy(), T)
        shape = T.shape

        def vg_case():
            out = vg(*args)  # per-example cost and gradients; the mean over the points is ours
            return [np.mean(np.broadcast_to(v, shape)) for v in out]

        def vg_result(out):
            return out[0], {"W1": np.array(out[1:5]).reshape(2, 2), "b1": np.array(out[5:7]),
                            "W2": np.array(out[7:9]), "b2": out[9]}

        return {"call": Case(vg_case, vg_result, lambda: np.mean(fwd(*args)), float)}
