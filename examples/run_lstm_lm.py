"""Train examples/lstm_lm.py on the text of scikit-learn's bundled dataset descriptions,
after checking its gradients against PyTorch float64 (when PyTorch is installed).

Sentences of different lengths are cut into chunks of 16 characters; each epoch runs the
chunks of every sentence in order, carrying the LSTM state from one chunk to the next
(truncated backpropagation through time), with Adam on the summed loss."""

import re
import sys
from pathlib import Path

import numpy as np
from sklearn import datasets

import symgrad as sg

here = Path(__file__).parent
sys.path.insert(0, str(here))
from lstm_lm import ALPHABET  # noqa: E402

(model,) = sg.load_model(here / "lstm_lm.py")
module = sg.compile(model, out_dir=here.parent / "generated")
V, H, T = len(ALPHABET), 24, 16
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 8

text = " ".join(getattr(datasets, f"load_{name}")().DESCR for name in ("iris", "wine", "breast_cancer", "diabetes"))
text = re.sub(" +", " ", re.sub(r"[^a-z. ]", " ", text.lower()))
sentences = [s.strip() + "." for s in text.split(".") if len(s.strip()) > 8]
codes = [np.array([ALPHABET.index(ch) for ch in s]) for s in sentences]
chunks = max(-(-(len(s) - 1) // T) for s in codes)  # the longest sentence's number of chunks
S = len(codes)
# X[k, s]: chunk k of sentence s (one-hot rows, zero past the end), Y the next characters, n their count
X, Y, lengths = np.zeros((chunks, S, T, V)), np.zeros((chunks, S, T, V)), np.zeros((chunks, S))
eye = np.eye(V)
for s, code in enumerate(codes):
    for k in range(chunks):
        part = code[k * T:(k + 1) * T + 1]
        m = max(len(part) - 1, 0)
        lengths[k, s] = m
        X[k, s, :m], Y[k, s, :m] = eye[part[:m]], eye[part[1:m + 1]]
characters = lengths.sum()

rng = np.random.default_rng(0)
params = {"W": rng.normal(scale=0.2, size=(4 * H, H + V)), "b": np.zeros((4 * H, 1)),
          "U": rng.normal(scale=0.2, size=(V, H)), "d": np.zeros((V, 1))}
params["b"][H:2 * H] = 1.0  # forget gates open at the start

try:
    import torch
except ImportError:
    print("PyTorch is not installed: no comparison")
else:  # the gradient of chunk 1 of a few sentences, from the state chunk 0 ended in
    few = slice(0, 6)
    state = module.forward(X=X[0, few], Y=Y[0, few], n=lengths[0, few], h0=np.zeros((6, H, 1)),
                           c0=np.zeros((6, H, 1)), **params)
    loss, grads = module.value_and_grad(X=X[1, few], Y=Y[1, few], n=lengths[1, few], h0=state["h"],
                                        c0=state["c"], **params)
    t = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    total = 0
    for e in range(6):
        h, c = torch.tensor(state["h"][e]), torch.tensor(state["c"][e])
        for step in range(int(lengths[1, e])):
            z = t["W"] @ torch.cat([h, torch.tensor(X[1, e, step, :, None])]) + t["b"]
            i, f = torch.sigmoid(z[:H]), torch.sigmoid(z[H:2 * H])
            g, o = torch.tanh(z[2 * H:3 * H]), torch.sigmoid(z[3 * H:])
            c = f * c + i * g
            h = o * torch.tanh(c)
            logits = (t["U"] @ h + t["d"])[:, 0]
            total = total - (torch.tensor(Y[1, e, step]) * torch.log_softmax(logits, 0)).sum()
    total.backward()
    worst = max(np.max(np.abs(grads[k] - t[k].grad.numpy())) for k in params)
    print(f"vs PyTorch float64: loss {abs(loss - total.item()):.1e}, worst gradient difference {worst:.1e}")

moments = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
updates = 0
for epoch in range(epochs + 1):
    h, c = np.zeros((S, H, 1)), np.zeros((S, H, 1))
    total = 0.0
    for k in range(chunks):
        if epoch == 0:  # the loss before training
            out = module.forward(X=X[k], Y=Y[k], n=lengths[k], h0=h, c0=c, **params)
            total += out["loss"]
        else:
            out = module.forward(X=X[k], Y=Y[k], n=lengths[k], h0=h, c0=c, **params)
            loss, grads = module.value_and_grad(X=X[k], Y=Y[k], n=lengths[k], h0=h, c0=c, **params)
            total += loss
            updates += 1
            for name, grad in grads.items():
                m, v = moments[name]
                m[:] = 0.9 * m + 0.1 * grad
                v[:] = 0.999 * v + 0.001 * grad ** 2
                params[name] = params[name] - 0.03 * (m / (1 - 0.9 ** updates)) / (
                    np.sqrt(v / (1 - 0.999 ** updates)) + 1e-8)
        h, c = out["h"], out["c"]
    print(f"epoch {epoch}: loss {total / characters:.4f} per character ({S} sentences, {int(characters)} characters)")
