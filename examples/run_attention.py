"""Compile examples/attention.py, check its loss and gradients against PyTorch float64
(when PyTorch is installed), and take a few gradient steps."""

from pathlib import Path

import numpy as np

import symgrad as sg

here = Path(__file__).parent
(model,) = sg.load_model(here / "attention.py")
module = sg.compile(model, out_dir=here.parent / "generated")

rng = np.random.default_rng(0)
batch = 16
X = rng.normal(size=(batch, 6, 4))
target = rng.normal(size=(batch, 6, 4))
params = {name: rng.normal(scale=0.5, size=(4, 4)) for name in ("Wq", "Wk", "Wv")}

loss, grads = module.value_and_grad(X=X, target=target, **params)
weights = module.forward(X=X, target=target, **params)["weights"]
print(f"loss {loss:.10f}; every row of weights sums to 1: {np.allclose(weights.sum(axis=2), 1)}")

try:
    import torch
except ImportError:
    print("PyTorch is not installed: no comparison")
else:
    t = {name: torch.tensor(v, requires_grad=True) for name, v in params.items()}
    tx, tt = torch.tensor(X), torch.tensor(target)
    q, k, v = tx @ t["Wq"], tx @ t["Wk"], tx @ t["Wv"]
    out = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=2) @ v
    reference = ((out - tt) ** 2).mean(dim=(1, 2)).mean()
    reference.backward()
    worst = max(np.max(np.abs(grads[name] - t[name].grad.numpy())) for name in params)
    print(f"vs PyTorch float64: loss {abs(loss - reference.item()):.1e}, worst gradient difference {worst:.1e}")

for step in range(200):
    loss, grads = module.value_and_grad(X=X, target=target, **params)
    for name in params:
        params[name] = params[name] - 0.5 * grads[name]
print(f"after 200 steps: loss {loss:.6f}")
