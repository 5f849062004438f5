"""Train examples/transformer_block.py on its synthetic task; check it against PyTorch float64.

The task: is the first token of a sequence repeated later in it? Half the
sequences are. The loss and every gradient on a few sequences are compared
with the same block written with PyTorch's own ``F.layer_norm`` and
``torch.softmax``; then the block trains with Adam through the fused
``train_epoch`` and its test accuracy is printed (a model that cannot
compare positions is left at chance, 50%).
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import symgrad as sg

here = Path(__file__).parent
(model,) = sg.load_model(here / "transformer_block.py")
start = time.perf_counter()
net = sg.compile(model, out_dir=here.parent / "generated")
print(f"built in {time.perf_counter() - start:.2f} s")
namespace = {}
exec((here / "transformer_block.py").read_text(), namespace)  # the sizes, as the model file has them
LENGTH, VOCAB, WIDTH, HEADS, HIDDEN, CLASSES = (namespace[k] for k in
                                                ("LENGTH", "VOCAB", "WIDTH", "HEADS", "HIDDEN", "CLASSES"))
HEAD = WIDTH // HEADS


def sequences(n, rng):
    """n sequences (one-hot, n x LENGTH x VOCAB), their classes and one-hot targets (n x 1 x CLASSES)."""
    ids = rng.integers(0, VOCAB, (n, LENGTH))
    label = rng.integers(0, 2, n)
    for k in range(n):
        later = ids[k, 1:]
        if label[k]:
            if not np.any(later == ids[k, 0]):
                later[rng.integers(0, LENGTH - 1)] = ids[k, 0]
        else:
            clash = later == ids[k, 0]
            later[clash] = (ids[k, 0] + rng.integers(1, VOCAB, clash.sum())) % VOCAB
    return np.eye(VOCAB)[ids], label, np.eye(CLASSES)[label][:, None, :]


def initial_params(rng):
    def normal(rows, cols):
        return rng.normal(0, 1 / np.sqrt(rows), (rows, cols))

    p = {"E": rng.normal(0, 1, (VOCAB, WIDTH)), "P": rng.normal(0, 1, (LENGTH, WIDTH))}
    for kind in ("Wq", "Wk", "Wv"):
        for h in range(HEADS):
            p[f"{kind}{h}"] = normal(WIDTH, HEAD)
    p.update(Wo=normal(WIDTH, WIDTH), bo=np.zeros((1, WIDTH)), gain1=np.ones((1, WIDTH)), bias1=np.zeros((1, WIDTH)),
             W1=normal(WIDTH, HIDDEN), b1=np.zeros((1, HIDDEN)), W2=normal(HIDDEN, WIDTH), b2=np.zeros((1, WIDTH)),
             gain2=np.ones((1, WIDTH)), bias2=np.zeros((1, WIDTH)), Wc=normal(WIDTH, CLASSES),
             bc=np.zeros((1, CLASSES)))
    return p


def torch_loss_and_grads(tokens, label, p):
    """The block in PyTorch float64 (F.layer_norm, torch.softmax), its mean loss and gradients."""
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    X = torch.tensor(tokens) @ t["E"] + t["P"]
    heads = []
    for h in range(HEADS):
        q, k, v = X @ t[f"Wq{h}"], X @ t[f"Wk{h}"], X @ t[f"Wv{h}"]
        heads.append(torch.softmax(q @ k.transpose(1, 2) / np.sqrt(HEAD), dim=2) @ v)
    A = F.layer_norm(X + torch.cat(heads, dim=2) @ t["Wo"] + t["bo"], (WIDTH,), t["gain1"][0], t["bias1"][0],
                     eps=1e-5)
    H = F.layer_norm(A + torch.relu(A @ t["W1"] + t["b1"]) @ t["W2"] + t["b2"], (WIDTH,), t["gain2"][0],
                     t["bias2"][0], eps=1e-5)
    logits = H.mean(dim=1) @ t["Wc"] + t["bc"]
    loss = F.cross_entropy(logits, torch.tensor(label))
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in t.items()}


rng = np.random.default_rng(0)
params = initial_params(rng)
tokens, label, target = sequences(8, rng)
loss, grads = net.value_and_grad(tokens=tokens, target=target, **params)
t_loss, t_grads = torch_loss_and_grads(tokens, label, params)
worst = max(np.max(np.abs(grads[k] - t_grads[k])) for k in params)
print(f"vs PyTorch float64 on 8 sequences: loss {abs(loss - t_loss):.1e}, worst gradient difference {worst:.1e}")

tokens_train, label_train, target_train = sequences(2000, rng)
tokens_test, label_test, target_test = sequences(1000, rng)


def accuracy(tokens, label, target):
    logits = net.forward(tokens=tokens, target=target, **params)["logits"]
    return np.mean(logits[:, 0, :].argmax(axis=1) == label)


data = {"tokens": tokens_train, "target": target_train}
print(f"before training: test accuracy {accuracy(tokens_test, label_test, target_test):.1%}")
state, start = None, time.perf_counter()
for epoch in range(1, 31):
    losses, state = net.train_epoch(params, data, 32, 3e-3, "adam", shuffle=rng, state=state)
    if epoch % 10 == 0:
        print(f"epoch {epoch:3d}: mean training loss {np.mean(losses):.4f}")
seconds = time.perf_counter() - start
print(f"30 epochs in {seconds:.2f} s; test accuracy {accuracy(tokens_test, label_test, target_test):.1%} "
      f"on {len(label_test)} sequences")
