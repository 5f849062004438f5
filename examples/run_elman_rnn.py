"""Train examples/elman_rnn.py to predict a function of a sequence, after checking its
gradients against PyTorch float64 (when PyTorch is installed)."""

from pathlib import Path

import numpy as np

import symgrad as sg

here = Path(__file__).parent
(model,) = sg.load_model(here / "elman_rnn.py")
module = sg.compile(model, out_dir=here.parent / "generated")

rng = np.random.default_rng(0)
N = 256
X = rng.uniform(-1, 1, size=(N, 2, 20))
y = 0.5 * X[:, 0, -5:].mean(axis=1) - 0.3 * X[:, 1, -1]  # depends on the last steps
params = {"W": rng.normal(scale=0.3, size=(6, 8)), "b": np.zeros(6), "w_out": rng.normal(scale=0.3, size=6),
          "c": 0.0}

loss, grads = module.value_and_grad(X=X, y=y, **params)
try:
    import torch
except ImportError:
    print("PyTorch is not installed: no comparison")
else:
    t = {name: torch.tensor(np.asarray(v, float), requires_grad=True) for name, v in params.items()}
    h = torch.zeros(N, 6, 1, dtype=torch.float64)
    tx = torch.tensor(X)
    for step in range(20):
        h = torch.tanh(t["W"] @ torch.cat([h, tx[:, :, step:step + 1]], dim=1) + t["b"][:, None])
    prediction = (t["w_out"].reshape(1, 6) @ h)[:, 0, 0] + t["c"]
    reference = ((prediction - torch.tensor(y)) ** 2).mean()
    reference.backward()
    worst = max(np.max(np.abs(np.asarray(grads[name]) - t[name].grad.numpy())) for name in params)
    print(f"vs PyTorch float64: loss {abs(loss - reference.item()):.1e}, worst gradient difference {worst:.1e}")

print(f"step    0: loss {loss:.6f}")
for step in range(1, 401):
    loss, grads = module.value_and_grad(X=X, y=y, **params)
    for name in params:
        params[name] = params[name] - 0.2 * grads[name]
    if step % 200 == 0:
        print(f"step {step:4d}: loss {loss:.6f}")
