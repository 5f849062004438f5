"""Build examples/log_sin.py, evaluate at the textbook point (2, 5) and on a batch."""

from pathlib import Path

import numpy as np

import symgrad as sg
from symgrad.pipeline import show_text

here = Path(__file__).parent
(model,) = sg.load_model(here / "log_sin.py")
module = sg.compile(model, out_dir=here.parent / "generated")

f, grads = module.value_and_grad(x1=2.0, x2=5.0)
print(f"f(2, 5)      = {f:.4f}")
print(f"df/dx1(2, 5) = {grads['x1']:.4f}   (1/x1 + x2 = {1 / 2 + 5:.4f})")
print(f"df/dx2(2, 5) = {grads['x2']:.4f}   (x1 - cos x2 = {2 - np.cos(5):.4f})")

rng = np.random.default_rng(0)
x1 = rng.uniform(0.5, 3.0, 1_000_000)
x2 = rng.uniform(-3.0, 3.0, 1_000_000)
f, grads = module.value_and_grad(x1=x1, x2=x2)
print(f"a batch of {len(x1):,} points: worst error of df/dx1 = "
      f"{np.max(np.abs(grads['x1'] - (1 / x1 + x2))):.2e}")
print()
print(show_text(model))
