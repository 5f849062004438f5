"""Fit examples/pairwise_ranking.py to synthetic queries and check it against PyTorch float64.

Relevant items score higher along a hidden direction; gradient descent on the
pairwise hinge loss finds a w that ranks them first. The loss and gradient of
a few queries are compared with PyTorch's first.
"""

from pathlib import Path

import numpy as np
import torch

import symgrad as sg

here = Path(__file__).parent
(model,) = sg.load_model(here / "pairwise_ranking.py")
net = sg.compile(model, out_dir=here.parent / "generated")
P, Q, D = 5, 20, 6

rng = np.random.default_rng(0)
direction = rng.standard_normal(D)


def queries(n):
    X = rng.standard_normal((n, P + Q, D))
    X[:, :P] += 0.8 * direction  # the relevant items lean along the hidden direction
    return X


def torch_loss(X, w):
    tw = torch.tensor(w, requires_grad=True)
    s = torch.tensor(X) @ tw
    hinge = torch.clamp(1 - s[:, :P, None, 0] + s[:, None, P:, 0], min=0)
    loss = hinge.mean(dim=(1, 2)).mean()
    loss.backward()
    return loss.item(), tw.grad.numpy()


w = 0.1 * rng.standard_normal((D, 1))
X_check = queries(4)
loss, grads = net.value_and_grad(w=w, X=X_check)
t_loss, t_grad = torch_loss(X_check, w)
assert abs(loss - t_loss) < 1e-13 and np.max(np.abs(grads["w"] - t_grad)) < 1e-13, (loss, t_loss)
print(f"4 queries: loss {loss:.6f} and its gradient as PyTorch float64's")

X_train, X_test = queries(2000), queries(500)
for step in range(200):
    loss, grads = net.value_and_grad(w=w, X=X_train)
    w -= 0.5 * grads["w"]
scores = net.forward(w=w, X=X_test)["scores"][:, :, 0]
correct = np.mean(scores[:, :P, None] > scores[:, None, P:])
print(f"training loss {loss:.4f}; test pairs ranked right: {correct:.1%}")
