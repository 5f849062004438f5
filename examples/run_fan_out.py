"""Build examples/fan_out.py and show gradients adding where a value fans out."""

from pathlib import Path

import numpy as np

import symgrad as sg
from symgrad.pipeline import show_text

here = Path(__file__).parent
(model,) = sg.load_model(here / "fan_out.py")
module = sg.compile(model, out_dir=here.parent / "generated")

x = np.array([-1.0, 0.5, 2.0])
y, grads = module.value_and_grad(x=x)
print(f"x      = {x}")
print(f"y      = {y}   (3x^3 = {3 * x**3})")
print(f"dy/dx  = {grads['x']}   (9x^2 = {9 * x**2})")
print()
print(show_text(model))
