"""M5 (softmax regression) and M6 (64-H-10 tanh MLP) on scikit-learn's digits.

Two metrics each: value_and_grad over the full data set (1797 images, with a
forward for the cheap-gradient ratio), and one epoch of batch-32 SGD (fixed
shuffled order, learning rate 0.5, from the same starting parameters). For
the peers the minibatches are sliced once before timing, into each library's
array type, so an epoch times the gradients and the updates, not the
slicing; symgrad runs the epoch with its fused training kernel,
``train_epoch(params, data, 32, 0.5, shuffle=SHUFFLE_SEED)``, which makes the
same order (NumPy's permutation of that seed) and gathers each minibatch in
C, inside the timing. The SGD check compares the parameters after the epoch
(and the last batch's loss) with the NumPy reference.
"""

from __future__ import annotations

import numpy as np

from ..harness import Case, Metric
from ..models import symgrad_model
from ..peers import Unavailable, casadi_module, jax_modules, to_numpy, torch_module
from .base import Workload

LEARNING_RATE = 0.5
BATCH = 32
SHUFFLE_SEED = 5  # the epoch's order: np.random.default_rng(SHUFFLE_SEED).permutation(n)


def load_digits_data(rows: int | None):
    try:
        from sklearn.datasets import load_digits
    except Exception as exc:
        raise Unavailable(f"scikit-learn is needed for the digits data ({exc}); pip install scikit-learn") from None
    data = load_digits()
    X, y = data.data / 16.0, data.target.astype(np.int64)
    if rows is not None:
        X, y = X[:rows], y[:rows]
    return np.ascontiguousarray(X), y


class Data:
    """One batch in every form a contender wants it, sliced once."""

    def __init__(self, X, y):
        self.X = np.ascontiguousarray(X)
        self.y = np.ascontiguousarray(y)
        self.c = y.astype(np.float64)
        self.T = np.eye(10)[y]
        self.n = len(y)


class DigitsWorkload(Workload):
    family = ""
    param_names: tuple = ()

    def __init__(self, cfg, available):
        super().__init__(cfg, available)
        X, y = load_digits_data(256 if cfg.quick else None)
        self.full = Data(X, y)
        order = np.random.default_rng(SHUFFLE_SEED).permutation(len(y))
        self.batches = [Data(X[order[i:i + BATCH]], y[order[i:i + BATCH]]) for i in range(0, len(y), BATCH)]
        self.params0 = self.initial_params(np.random.default_rng(6))

    def metrics(self):
        return [Metric("full", f"value_and_grad, full batch of {self.full.n}", "ms/call", 1e3),
                Metric("sgd", f"one epoch of batch-{BATCH} SGD ({len(self.batches)} steps)", "ms/epoch", 1e3,
                       has_forward=False)]

    def references(self):
        return {"full": (self.np_value_and_grad(self.params0, self.full), self.np_forward(self.params0, self.full)),
                "sgd": (self._epoch(self._numpy_step)(), None)}

    def self_check(self):
        from ..harness import finite_difference_check

        part = Data(self.full.X[:64], self.full.y[:64])
        _, grads = self.np_value_and_grad(self.params0, part)
        finite_difference_check(lambda p: float(self.np_forward(p, part)), grads, dict(self.params0))

    # --- SGD driver: ``step(params, batch) -> (loss, params)`` per contender ---

    def _epoch(self, step, batches=None, params0=None):
        batches = self.batches if batches is None else batches
        start = self.params0 if params0 is None else params0

        def epoch():
            params = start
            loss = None
            for batch in batches:
                loss, params = step(params, batch)
            return loss, params

        return epoch

    def _numpy_step(self, params, batch):
        value, grads = self.np_value_and_grad(params, batch)
        return value, {k: params[k] - LEARNING_RATE * grads[k] for k in params}

    # --- contenders ---

    def build_numpy(self):
        p, full = self.params0, self.full
        return {"full": Case(lambda: self.np_value_and_grad(p, full), lambda out: out,
                             lambda: self.np_forward(p, full), float),
                "sgd": Case(self._epoch(self._numpy_step), lambda out: out)}

    def build_symgrad(self):
        mod = self.symgrad_module(self.symgrad_model())
        args = self.symgrad_args

        full_args = args(self.params0, self.full)
        data = {k: v for k, v in full_args.items() if k not in self.params0}

        def epoch():
            # The fused epoch: the minibatches (shuffled by the same seed), the gradients and the
            # updates in one C call; the params, fresh copies, updated in place.
            params = {k: np.array(v, copy=True) for k, v in self.params0.items()}
            losses, _ = mod.train_epoch(params, data, BATCH, LEARNING_RATE, shuffle=SHUFFLE_SEED)
            return float(losses[-1]), params

        return {"full": Case(lambda: mod.value_and_grad(**full_args), lambda out: out,
                             lambda: mod.forward(**full_args), lambda out: out["loss"]),
                "sgd": Case(epoch, lambda out: out)}

    def build_jax(self):
        jax, jnp = jax_modules()
        loss = self.jax_loss(jax, jnp)
        vg = jax.jit(jax.value_and_grad(loss))
        fwd = jax.jit(loss)

        @jax.jit
        def jit_step(params, X, y, T):
            value, grads = jax.value_and_grad(loss)(params, X, y, T)
            return value, jax.tree_util.tree_map(lambda p, g: p - LEARNING_RATE * g, params, grads)

        def as_jax(d):
            return jnp.asarray(d.X), jnp.asarray(d.y), jnp.asarray(d.T)

        full = as_jax(self.full)
        batches = [as_jax(b) for b in self.batches]
        p0 = {k: jnp.asarray(v) for k, v in self.params0.items()}
        ready = jax.block_until_ready

        def epoch():
            params, value = p0, None
            for X, y, T in batches:
                value, params = jit_step(params, X, y, T)
            return ready((value, params))

        def result(out):
            return np.asarray(out[0]), {k: np.asarray(v) for k, v in out[1].items()}

        return {"full": Case(lambda: ready(vg(p0, *full)), result, lambda: ready(fwd(p0, *full)), np.asarray),
                "sgd": Case(epoch, result)}

    def build_torch(self):
        torch = torch_module()
        loss = self.torch_loss(torch)

        def as_torch(d):
            return torch.from_numpy(d.X), torch.from_numpy(d.y), torch.from_numpy(d.T)

        full = as_torch(self.full)
        batches = [as_torch(b) for b in self.batches]
        names = self.param_names
        p0 = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in self.params0.items()}
        leaves = [p0[k] for k in names]

        def vg():
            value = loss(p0, *full)
            return value, torch.autograd.grad(value, leaves)

        def fwd():
            with torch.no_grad():
                return loss(p0, *full)

        def epoch():
            params = {k: v.detach().clone().requires_grad_() for k, v in p0.items()}
            ps = [params[k] for k in names]
            value = None
            for X, y, T in batches:
                value = loss(params, X, y, T)
                grads = torch.autograd.grad(value, ps)
                with torch.no_grad():
                    for p, g in zip(ps, grads):
                        p.sub_(LEARNING_RATE * g)
            return value, params

        def vg_result(out):
            return out[0].item(), {k: g.numpy() for k, g in zip(names, out[1])}

        def epoch_result(out):
            return out[0].item(), {k: v.detach().numpy() for k, v in out[1].items()}

        return {"full": Case(vg, vg_result, fwd, lambda out: out.item()), "sgd": Case(epoch, epoch_result)}

    def _casadi_functions(self):
        def make():
            ca = casadi_module()
            params, x, t, loss = self.casadi_example(ca)
            s = ca.SX.sym("s")
            inputs = [*params, x, t, s]
            shared = list(range(len(params))) + [len(inputs) - 1]
            grads = [s * ca.gradient(loss, p) for p in params]
            vg = ca.Function(f"{self.family}_vg", inputs, [s * loss, *grads])
            fwd = ca.Function(f"{self.family}_fwd", inputs, [s * loss])
            out = {}
            for n in sorted({self.full.n, *(b.n for b in self.batches)}):
                out[f"{self.family}_vg_{n}"] = vg.map(f"{self.family}_vg_{n}", "serial", n, shared,
                                                      list(range(1 + len(params))))
            out[f"{self.family}_fwd_{self.full.n}"] = fwd.map(f"{self.family}_fwd_{self.full.n}", "serial",
                                                             self.full.n, shared, [0])
            return out

        return self.cached("casadi", make)

    def _casadi_cases(self, fs):
        ca = casadi_module()
        names = self.param_names

        def as_casadi(d):
            return ca.DM(d.X.T), ca.DM(d.T.T), 1.0 / d.n

        full = as_casadi(self.full)
        batches = [(fs[f"{self.family}_vg_{b.n}"], as_casadi(b)) for b in self.batches]
        p0 = [ca.DM(self.params0[k]) for k in names]
        vg, fwd = fs[f"{self.family}_vg_{self.full.n}"], fs[f"{self.family}_fwd_{self.full.n}"]

        def epoch():
            params, value = list(p0), None
            for f, data in batches:
                out = f(*params, *data)
                value = out[0]
                params = [p - LEARNING_RATE * g for p, g in zip(params, out[1:])]
            return value, params

        def shaped(name, dm):
            return to_numpy(dm).reshape(np.shape(self.params0[name]))

        def vg_result(out):
            return to_numpy(out[0]).item(), {k: shaped(k, g) for k, g in zip(names, out[1:])}

        def epoch_result(out):
            return to_numpy(out[0]).item(), {k: shaped(k, p) for k, p in zip(names, out[1])}

        return {"full": Case(lambda: vg(*p0, *full), vg_result, lambda: fwd(*p0, *full),
                             lambda out: to_numpy(out).item()),
                "sgd": Case(epoch, epoch_result)}

    def build_casadi_sx(self):
        return self._casadi_cases(self._casadi_functions())

    def build_casadi_c(self):
        return self._casadi_cases(self.casadi_external(self._casadi_functions(),
                                                       f"bench_{self.family}_{self.size_tag()}"))

    def build_sympy(self):
        fs = self.sympy(self.sympy_spec())
        vg, fwd = fs["vg"], fs["fwd"]
        names = self.param_names
        shapes = [np.shape(self.params0[k]) for k in names]
        sizes = [int(np.prod(s)) for s in shapes]

        def columns(d):  # per-example inputs: one array per pixel and per one-hot class
            return tuple(np.ascontiguousarray(d.X.T)) + tuple(np.ascontiguousarray(d.T.T))

        def flat(params):
            return [float(v) for k in names for v in np.ravel(params[k])]

        def value_and_grad(params, cols, n):
            out = vg(*flat(params), *cols)
            means = np.array([np.mean(np.broadcast_to(v, (n,))) for v in out])
            grads, at = {}, 1
            for k, shape, size in zip(names, shapes, sizes):
                grads[k] = means[at:at + size].reshape(shape)
                at += size
            return means[0], grads

        full_cols = columns(self.full)
        batches = [(columns(b), b.n) for b in self.batches]
        p0 = self.params0
        p0_flat = flat(p0)

        def epoch():
            params, value = p0, None
            for cols, n in batches:
                value, grads = value_and_grad(params, cols, n)
                params = {k: params[k] - LEARNING_RATE * grads[k] for k in names}
            return value, params

        return {"full": Case(lambda: value_and_grad(p0, full_cols, self.full.n), lambda out: out,
                             lambda: np.mean(fwd(*p0_flat, *full_cols)), float),
                "sgd": Case(epoch, lambda out: out)}


class M5(DigitsWorkload):
    id = "M5"
    title = "softmax regression on digits"
    family = "m5"
    param_names = ("W", "b")

    def description(self):
        return (f"examples/digits_softmax.py: logits = W x + b (W 10x64), cross-entropy of softmax(logits) "
                f"against the class, averaged; scikit-learn's digits ({self.full.n} images x 64 pixels scaled "
                f"to [0, 1]); W, b drawn from N(0, 0.1^2). symgrad and NumPy take the class index (symgrad as "
                f"float64), JAX and torch an int64 index, CasADi and SymPy a one-hot target.")

    def size_tag(self):
        return f"{self.full.n}"

    def initial_params(self, rng):
        return {"W": rng.normal(0.0, 0.1, (10, 64)), "b": rng.normal(0.0, 0.1, 10)}

    @staticmethod
    def np_forward(p, d):
        Z = d.X @ p["W"].T + p["b"]
        m = Z.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(Z - m).sum(axis=1))
        return np.mean(lse - Z[np.arange(d.n), d.y])

    @staticmethod
    def np_value_and_grad(p, d):
        Z = d.X @ p["W"].T + p["b"]
        m = Z.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(Z - m).sum(axis=1))
        rows = np.arange(d.n)
        value = np.mean(lse - Z[rows, d.y])
        P = np.exp(Z - lse[:, None])
        P[rows, d.y] -= 1.0
        P /= d.n
        return value, {"W": P.T @ d.X, "b": P.sum(axis=0)}

    def symgrad_model(self):
        return symgrad_model("m5")

    @staticmethod
    def symgrad_args(params, d):
        return {"x": d.X, "c": d.c, "W": params["W"], "b": params["b"]}

    @staticmethod
    def jax_loss(jax, jnp):
        def loss(p, X, y, T):
            logp = jax.nn.log_softmax(X @ p["W"].T + p["b"], axis=1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        return loss

    @staticmethod
    def torch_loss(torch):
        import torch.nn.functional as F

        def loss(p, X, y, T):
            return F.cross_entropy(X @ p["W"].T + p["b"], y)

        return loss

    @staticmethod
    def casadi_example(ca):
        W, b, x, t = ca.SX.sym("W", 10, 64), ca.SX.sym("b", 10), ca.SX.sym("x", 64), ca.SX.sym("t", 10)
        z = ca.mtimes(W, x) + b
        return [W, b], x, t, ca.log(ca.sum1(ca.exp(z))) - ca.dot(t, z)

    def sympy_spec(self):
        return {"family": "m5"}


class M6(DigitsWorkload):
    id = "M6"
    title = "MLP 64-128-10 (tanh) on digits"
    family = "m6"
    param_names = ("W1", "b1", "W2", "b2")

    def __init__(self, cfg, available):
        self.hidden = 16 if cfg.quick else 128
        super().__init__(cfg, available)
        self.title = f"MLP 64-{self.hidden}-10 (tanh) on digits"

    def description(self):
        return (f"examples/digits_mlp.py with {self.hidden} hidden units: h = tanh(W1 x + b1), logits = "
                f"W2 h + b2, softmax cross-entropy against a one-hot target, averaged; scikit-learn's digits "
                f"({self.full.n} images x 64 pixels scaled to [0, 1]); weights drawn from N(0, 0.1^2). "
                f"Every contender takes the one-hot target.")

    def size_tag(self):
        return f"h{self.hidden}_{self.full.n}"

    def initial_params(self, rng):
        H = self.hidden
        return {"W1": rng.normal(0.0, 0.1, (H, 64)), "b1": rng.normal(0.0, 0.1, H),
                "W2": rng.normal(0.0, 0.1, (10, H)), "b2": rng.normal(0.0, 0.1, 10)}

    @staticmethod
    def np_forward(p, d):
        H = np.tanh(d.X @ p["W1"].T + p["b1"])
        Z = H @ p["W2"].T + p["b2"]
        m = Z.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(Z - m).sum(axis=1))
        return np.mean(lse - np.sum(d.T * Z, axis=1))

    @staticmethod
    def np_value_and_grad(p, d):
        H = np.tanh(d.X @ p["W1"].T + p["b1"])
        Z = H @ p["W2"].T + p["b2"]
        m = Z.max(axis=1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(Z - m).sum(axis=1))
        value = np.mean(lse - np.sum(d.T * Z, axis=1))
        dZ = (np.exp(Z - lse[:, None]) - d.T) / d.n
        dA = (dZ @ p["W2"]) * (1.0 - H * H)
        return value, {"W1": dA.T @ d.X, "b1": dA.sum(axis=0), "W2": dZ.T @ H, "b2": dZ.sum(axis=0)}

    def symgrad_model(self):
        return symgrad_model("m6", self.hidden)

    @staticmethod
    def symgrad_args(params, d):
        return {"x": d.X, "target": d.T, **params}

    @staticmethod
    def jax_loss(jax, jnp):
        def loss(p, X, y, T):
            h = jnp.tanh(X @ p["W1"].T + p["b1"])
            logp = jax.nn.log_softmax(h @ p["W2"].T + p["b2"], axis=1)
            return -jnp.mean(jnp.sum(T * logp, axis=1))

        return loss

    @staticmethod
    def torch_loss(torch):
        import torch.nn.functional as F

        def loss(p, X, y, T):
            h = torch.tanh(X @ p["W1"].T + p["b1"])
            return F.cross_entropy(h @ p["W2"].T + p["b2"], T)

        return loss

    def casadi_example(self, ca):
        H = self.hidden
        W1, b1 = ca.SX.sym("W1", H, 64), ca.SX.sym("b1", H)
        W2, b2 = ca.SX.sym("W2", 10, H), ca.SX.sym("b2", 10)
        x, t = ca.SX.sym("x", 64), ca.SX.sym("t", 10)
        z = ca.mtimes(W2, ca.tanh(ca.mtimes(W1, x) + b1)) + b2
        return [W1, b1, W2, b2], x, t, ca.log(ca.sum1(ca.exp(z))) - ca.dot(t, z)

    def sympy_spec(self):
        return {"family": "m6", "size": self.hidden}
