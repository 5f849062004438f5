"""Build examples/inverse_square.py and show the chain rule through u = x^2."""

from pathlib import Path

import numpy as np

import symgrad as sg
from symgrad.pipeline import show_text

here = Path(__file__).parent
(model,) = sg.load_model(here / "inverse_square.py")
module = sg.compile(model, out_dir=here.parent / "generated")

x = np.array([0.5, 1.0, 2.0])
y, grads = module.value_and_grad(x=x)
print(f"x       = {x}")
print(f"y       = {y}          (1/x^2 = {1 / x**2})")
print(f"dy/dx   = {grads['x']}   (-2/x^3 = {-2 / x**3})")
print()
print(show_text(model))
