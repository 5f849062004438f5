"""Build examples/affine_square.py, evaluate f and its gradients, print the formulas."""

from pathlib import Path

import numpy as np

import symgrad as sg

here = Path(__file__).parent
(model,) = sg.load_model(here / "affine_square.py")
module = sg.compile(model, out_dir=here.parent / "generated")

a, b = 3.0, -1.0
x = np.array([0.0, 0.5, 2.0])
f, grads = module.value_and_grad(a=a, b=b, x=x)
print(f"a = {a}, b = {b}, x = {x}")
print(f"f      = {f}")
for name in ("x", "a", "b"):
    print(f"df/d{name}  = {grads[name]}")
print("by hand: df/dx = 2a(ax+b), df/da = 2x(ax+b), df/db = 2(ax+b)")
print(f"         {2 * a * (a * x + b)}, {2 * x * (a * x + b)}, {2 * (a * x + b)}")
print()
for symbol, formula in model.gradients().items():
    print(f"symbolic df/d{symbol} = {formula}")
