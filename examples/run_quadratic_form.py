"""Build examples/quadratic_form.py, print its gradient formulas and check them numerically."""

from pathlib import Path

import numpy as np

import symgrad as sg

here = Path(__file__).parent
(model,) = sg.load_model(here / "quadratic_form.py")
module = sg.compile(model, out_dir=here.parent / "generated")

for symbol, formula in model.gradients().items():
    print(f"d f / d {symbol} = {formula}")

rng = np.random.default_rng(0)
A = rng.normal(size=(4, 4))
x = rng.normal(size=(3, 4, 1))  # three examples
f, grads = module.value_and_grad(A=A, x=x)
print(f"f = {f}")
print("worst error of df/dx against (A^T + A) x:", np.max(np.abs(grads["x"] - (A.T + A) @ x)))
print("worst error of df/dA against x x^T:      ", np.max(np.abs(grads["A"] - x @ x.transpose(0, 2, 1))))
