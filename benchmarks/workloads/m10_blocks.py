"""M10: one training step of each building-block example, against PyTorch eager and JAX jit.

A step is the gradient of the loss on one minibatch and the SGD update
``p -= LEARNING_RATE * g`` of every trained param, in each library's own
arrays: symgrad's fused ``sgd_step(params, lr, **batch)`` (the gradient and
the update in one C call, the params updated in place), PyTorch's loss,
``torch.autograd.grad`` and in-place ``sub_`` under ``no_grad``, and one
jitted JAX function returning the loss and the new params. The timed calls
keep training from where the previous one left off, as a training loop
does; every contender starts from the same params.

The check: the first step of each contender, from the starting params,
gives the minibatch's loss and, as ``(p_before - p_after) / LEARNING_RATE``,
its gradient; both are compared with a reference. The reference is PyTorch
float64 autograd (run once, before any timing), itself checked against
central differences of its loss; writing a convolutional network and a
transformer block's backward pass by hand in NumPy would be a second
implementation to trust, not a better reference. (PyTorch's timed case runs
the same formulas, so its agreement is by construction; symgrad's and
JAX's are checks.)

The examples are the model files themselves (examples/digits_cnn.py,
karate_gcn.py, pairwise_ranking.py, transformer_block.py, skipgram.py);
the peers' losses are written the way those libraries are used: PyTorch's
``F.conv2d``, ``F.max_pool2d``, ``F.layer_norm`` and integer indexing into
embedding tables; JAX's ``lax.conv_general_dilated``, ``lax.reduce_window``,
a layer norm in ``jnp`` and integer indexing. symgrad's skip-gram picks
rows by one-hot inputs (it has no gather op), a product with the whole
table per lookup.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np

from ..harness import Case, Metric, finite_difference_check
from ..peers import jax_modules, torch_module
from .base import Workload
from .digits import load_digits_data

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LEARNING_RATE = 0.05


class Block:
    """One example: its model, starting params, minibatch and the peers' losses.

    ``params0``: {name: array} in symgrad's shapes (every param the model
    declares); ``trained``: the names updated by a step; ``batch``: the
    inputs as symgrad takes them; ``peer_batch``: {name: array} the peers'
    losses take (integer indices where they index). ``torch_loss(torch, p, b)``
    and ``jax_loss(jax, jnp, p, b)`` compute the minibatch's mean loss from
    dicts of tensors.
    """

    key = ""
    label = ""
    example = ""

    def __init__(self):
        self.namespace = runpy.run_path(str(EXAMPLES / self.example))
        self.model = self.namespace[self.example[:-3]]
        self.trained = list(self.model.wrt)  # the names of the trained params


class DigitsCNN(Block):
    key, example = "cnn", "digits_cnn.py"
    BATCH = 32

    def __init__(self):
        super().__init__()
        X, y = load_digits_data(self.BATCH)
        rng = np.random.default_rng(10)
        c = self.channels = self.namespace["CHANNELS"]
        self.label = f"digits CNN (examples/digits_cnn.py), batch of {self.BATCH} images"
        self.params0 = {"w1": rng.normal(0, 1 / 3, (c * 3, 3)), "b1": rng.normal(0, 0.1, (c, 1)),
                        "w2": rng.normal(0, 1 / np.sqrt(c * 16), (10 * c * 4, 4)), "b2": rng.normal(0, 0.1, (10, 1))}
        self.batch = {"x": X.reshape(-1, 8, 8), "target": np.eye(10)[y][:, :, None]}
        self.peer_batch = {"x": X.reshape(-1, 1, 8, 8), "target": np.eye(10)[y]}

    def torch_loss(self, torch, p, b):
        import torch.nn.functional as F

        c = self.channels
        h = torch.relu(F.conv2d(b["x"], p["w1"].reshape(c, 1, 3, 3), p["b1"].reshape(-1), padding=1))
        logits = F.conv2d(F.max_pool2d(h, 2), p["w2"].reshape(10, c, 4, 4), p["b2"].reshape(-1)).reshape(-1, 10)
        return F.cross_entropy(logits, b["target"])

    def jax_loss(self, jax, jnp, p, b):
        c, lax = self.channels, jax.lax
        dims = ("NCHW", "OIHW", "NCHW")
        h = lax.conv_general_dilated(b["x"], p["w1"].reshape(c, 1, 3, 3), (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=dims) + p["b1"].reshape(1, c, 1, 1)
        pooled = lax.reduce_window(jax.nn.relu(h), -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
        logits = lax.conv_general_dilated(pooled, p["w2"].reshape(10, c, 4, 4), (1, 1), "VALID",
                                          dimension_numbers=dims).reshape(-1, 10) + p["b2"].reshape(1, 10)
        return -jnp.mean(jnp.sum(b["target"] * jax.nn.log_softmax(logits, axis=1), axis=1))


class KarateGCN(Block):
    key, example = "gcn", "karate_gcn.py"

    def __init__(self):
        super().__init__()
        ns = self.namespace
        nodes, hidden = len(ns["FACTION"]), ns["HIDDEN"]
        self.label = f"karate GCN (examples/karate_gcn.py), the whole graph of {nodes} nodes"
        labels = np.zeros((nodes, 2))
        for k in ns["LABELED"]:
            labels[k, ns["FACTION"][k]] = 1
        self.labeled = len(ns["LABELED"])
        rng = np.random.default_rng(11)
        self.params0 = {"W1": rng.normal(0, 1, (nodes, hidden)), "W2": rng.normal(0, 1, (hidden, 2)),
                        "labels": labels}
        self.batch = {}
        self.peer_batch = {"A_hat": np.array(ns["A_hat"], dtype=float), "labels": labels}

    def torch_loss(self, torch, p, b):
        z = b["A_hat"] @ torch.relu(b["A_hat"] @ p["W1"]) @ p["W2"]
        return -(b["labels"] * torch.log_softmax(z, dim=1)).sum() / self.labeled

    def jax_loss(self, jax, jnp, p, b):
        z = b["A_hat"] @ jax.nn.relu(b["A_hat"] @ p["W1"]) @ p["W2"]
        return -jnp.sum(b["labels"] * jax.nn.log_softmax(z, axis=1)) / self.labeled


class PairwiseRanking(Block):
    key, example = "ranking", "pairwise_ranking.py"
    BATCH = 32

    def __init__(self):
        super().__init__()
        ns = self.namespace
        self.positive, negative, features = ns["POSITIVE"], ns["NEGATIVE"], ns["FEATURES"]
        self.label = (f"pairwise ranking (examples/pairwise_ranking.py), batch of {self.BATCH} queries "
                      f"of {self.positive} x {negative} pairs")
        rng = np.random.default_rng(12)
        X = rng.standard_normal((self.BATCH, self.positive + negative, features))
        X[:, :self.positive] += 0.8 * rng.standard_normal(features)
        self.params0 = {"w": 0.1 * rng.standard_normal((features, 1))}
        self.batch = {"X": X}
        self.peer_batch = {"X": X}

    def torch_loss(self, torch, p, b):
        s = (b["X"] @ p["w"])[:, :, 0]
        P = self.positive
        return torch.clamp(1 - s[:, :P, None] + s[:, None, P:], min=0).mean()

    def jax_loss(self, jax, jnp, p, b):
        s = (b["X"] @ p["w"])[:, :, 0]
        P = self.positive
        return jnp.mean(jnp.maximum(0.0, 1 - s[:, :P, None] + s[:, None, P:]))


class TransformerBlock(Block):
    key, example = "transformer", "transformer_block.py"
    BATCH = 32

    def __init__(self):
        super().__init__()
        ns = self.namespace
        L, V, W, H, F, C = (ns[k] for k in ("LENGTH", "VOCAB", "WIDTH", "HEADS", "HIDDEN", "CLASSES"))
        self.length, self.width, self.heads, self.head = L, W, H, W // H
        self.eps = float(ns["EPS"])
        self.label = (f"transformer block (examples/transformer_block.py: {H} heads, width {W}, "
                      f"length {L}), batch of {self.BATCH} sequences")
        rng = np.random.default_rng(13)
        shapes = {s.name: tuple(int(d) for d in s.shape) for s in self.model.params}
        self.params0 = {name: (np.ones(shape) + 0.1 * rng.standard_normal(shape) if name.startswith("gain")
                               else rng.normal(0, 1 / np.sqrt(shape[0]), shape)) for name, shape in shapes.items()}
        ids = rng.integers(0, V, (self.BATCH, L))
        classes = rng.integers(0, C, self.BATCH)
        self.batch = {"tokens": np.eye(V)[ids], "target": np.eye(C)[classes][:, None, :]}
        self.peer_batch = {"tokens": np.eye(V)[ids], "target": np.eye(C)[classes]}

    def _block(self, p, b, softmax, relu, concat, sqrt):
        def layer_norm(Z, gain, bias):
            mean = Z.mean(-1, keepdims=True)
            var = ((Z - mean) ** 2).mean(-1, keepdims=True)
            return (Z - mean) / sqrt(var + self.eps) * gain + bias

        X = b["tokens"] @ p["E"] + p["P"]
        heads = [softmax((X @ p[f"Wq{h}"]) @ (X @ p[f"Wk{h}"]).swapaxes(1, 2) / np.sqrt(self.head))
                 @ (X @ p[f"Wv{h}"]) for h in range(self.heads)]
        A = layer_norm(X + concat(heads) @ p["Wo"] + p["bo"], p["gain1"], p["bias1"])
        Hm = layer_norm(A + relu(A @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"], p["gain2"], p["bias2"])
        return Hm.mean(1) @ p["Wc"] + p["bc"]

    def torch_loss(self, torch, p, b):
        import torch.nn.functional as F

        X = b["tokens"] @ p["E"] + p["P"]
        heads = [torch.softmax((X @ p[f"Wq{h}"]) @ (X @ p[f"Wk{h}"]).transpose(1, 2) / np.sqrt(self.head), dim=2)
                 @ (X @ p[f"Wv{h}"]) for h in range(self.heads)]
        W = self.width
        A = F.layer_norm(X + torch.cat(heads, dim=2) @ p["Wo"] + p["bo"], (W,), p["gain1"][0], p["bias1"][0],
                         eps=self.eps)
        Hm = F.layer_norm(A + torch.relu(A @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"], (W,), p["gain2"][0],
                          p["bias2"][0], eps=self.eps)
        return F.cross_entropy(Hm.mean(1) @ p["Wc"] + p["bc"][0], b["target"])

    def jax_loss(self, jax, jnp, p, b):
        logits = self._block(p, b, lambda s: jax.nn.softmax(s, axis=-1), jax.nn.relu,
                             lambda hs: jnp.concatenate(hs, axis=-1), jnp.sqrt)
        return -jnp.mean(jnp.sum(b["target"] * jax.nn.log_softmax(logits, axis=-1), axis=-1))


class SkipGram(Block):
    key, example = "skipgram", "skipgram.py"
    BATCH = 64

    def __init__(self):
        super().__init__()
        ns = self.namespace
        V, D, K = ns["VOCAB"], ns["DIM"], ns["NEGATIVE"]
        self.label = (f"skip-gram (examples/skipgram.py: {V} words, {D} dimensions, {K} negatives), "
                      f"batch of {self.BATCH} pairs")
        rng = np.random.default_rng(14)
        self.params0 = {"V_in": rng.normal(0, 0.5, (V, D)), "U_out": rng.normal(0, 0.5, (V, D))}
        center, context = rng.integers(0, V, self.BATCH), rng.integers(0, V, self.BATCH)
        noise = rng.integers(0, V, (self.BATCH, K))
        eye = np.eye(V)
        self.batch = {"center": eye[center][:, :, None], "context": eye[context][:, :, None],
                      "negatives": np.ascontiguousarray(eye[noise].transpose(0, 2, 1))}
        self.peer_batch = {"center": center, "context": context, "noise": noise}

    def torch_loss(self, torch, p, b):
        import torch.nn.functional as F

        v_c, u_o, u_k = p["V_in"][b["center"]], p["U_out"][b["context"]], p["U_out"][b["noise"]]
        return -(F.logsigmoid((u_o * v_c).sum(1)) + F.logsigmoid(-(u_k @ v_c[:, :, None])[:, :, 0]).sum(1)).mean()

    def jax_loss(self, jax, jnp, p, b):
        v_c, u_o, u_k = p["V_in"][b["center"]], p["U_out"][b["context"]], p["U_out"][b["noise"]]
        positive = jax.nn.log_sigmoid(jnp.sum(u_o * v_c, axis=1))
        negative = jnp.sum(jax.nn.log_sigmoid(-jnp.einsum("nkd,nd->nk", u_k, v_c)), axis=1)
        return -jnp.mean(positive + negative)


BLOCKS = (DigitsCNN, KarateGCN, PairwiseRanking, TransformerBlock, SkipGram)


class M10(Workload):
    id = "M10"
    title = "training steps of the building-block examples"

    def __init__(self, cfg, available):
        super().__init__(cfg, available)
        self.blocks = [make() for make in BLOCKS]

    def description(self):
        return (f"One training step (the minibatch's gradient and the SGD update p -= {LEARNING_RATE} g) of each "
                f"example: symgrad's fused sgd_step, PyTorch's autograd.grad and in-place sub_, one jitted JAX "
                f"function; the timed steps keep training from the params the previous one left. Checked on the "
                f"first step (the loss, and the gradient as (p_before - p_after) / lr) against PyTorch float64 "
                f"autograd, itself checked against central differences (so PyTorch agrees by construction). The "
                f"peers index embedding tables by integers; symgrad's skip-gram takes one-hot inputs.")

    def metrics(self):
        return [Metric(b.key, f"one SGD step: {b.label}", "µs/step", 1e6, has_forward=False) for b in self.blocks]

    # --- the reference: PyTorch float64 autograd, checked against central differences ---

    def _torch_value_and_grad(self, block, params):
        torch = torch_module()
        p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in block.trained) for k, v in params.items()}
        b = {k: torch.from_numpy(np.asarray(v)) for k, v in block.peer_batch.items()}
        value = block.torch_loss(torch, p, b)
        grads = torch.autograd.grad(value, [p[k] for k in block.trained])
        return value.item(), {k: g.numpy() for k, g in zip(block.trained, grads)}

    def references(self):
        return {b.key: (self._torch_value_and_grad(b, b.params0), None) for b in self.blocks}

    def self_check(self):
        for block in self.blocks:
            fixed = {k: v for k, v in block.params0.items() if k not in block.trained}
            _, grads = self._torch_value_and_grad(block, block.params0)
            finite_difference_check(lambda p, block=block, fixed=fixed: self._torch_value_and_grad(block,
                                                                                                {**fixed, **p})[0],
                                    grads, {k: block.params0[k] for k in block.trained})

    # --- contenders: each case is one step; its result is (loss, gradient recovered from the update) ---

    @staticmethod
    def _step_result(block, current):
        def result(out):
            loss, params = out
            return float(loss), {k: (block.params0[k] - current(params[k])) / LEARNING_RATE for k in block.trained}

        return result

    def build_symgrad(self):
        cases = {}
        for block in self.blocks:
            module = self.symgrad_module(block.model)
            params = {k: np.array(v, dtype=np.float64, copy=True) for k, v in block.params0.items()}
            batch = block.batch

            def step(module=module, params=params, batch=batch):
                return module.sgd_step(params, LEARNING_RATE, **batch), params

            cases[block.key] = Case(step, self._step_result(block, np.array))
        return cases

    def build_torch(self):
        torch = torch_module()
        cases = {}
        for block in self.blocks:
            p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in block.trained)
                 for k, v in block.params0.items()}
            leaves = [p[k] for k in block.trained]
            b = {k: torch.from_numpy(np.asarray(v)) for k, v in block.peer_batch.items()}

            def step(block=block, p=p, leaves=leaves, b=b):
                value = block.torch_loss(torch, p, b)
                grads = torch.autograd.grad(value, leaves)
                with torch.no_grad():
                    for leaf, g in zip(leaves, grads):
                        leaf.sub_(LEARNING_RATE * g)
                return value.detach(), p

            cases[block.key] = Case(step, self._step_result(block, lambda t: t.detach().numpy().copy()))
        return cases

    def build_jax(self):
        jax, jnp = jax_modules()
        cases = {}
        for block in self.blocks:
            trained = {k: jnp.asarray(v) for k, v in block.params0.items() if k in block.trained}
            fixed = {k: jnp.asarray(v) for k, v in block.params0.items() if k not in block.trained}
            b = {k: jnp.asarray(v) for k, v in block.peer_batch.items()}

            def loss(trained, fixed, b, block=block):
                return block.jax_loss(jax, jnp, {**trained, **fixed}, b)

            @jax.jit
            def jit_step(trained, fixed, b, loss=loss):
                value, grads = jax.value_and_grad(loss)(trained, fixed, b)
                return value, jax.tree_util.tree_map(lambda p, g: p - LEARNING_RATE * g, trained, grads)

            state = {"params": trained}

            def step(state=state, fixed=fixed, b=b, jit_step=jit_step):
                value, state["params"] = jax.block_until_ready(jit_step(state["params"], fixed, b))
                return value, state["params"]

            cases[block.key] = Case(step, self._step_result(block, np.asarray))
        return cases
