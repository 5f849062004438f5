"""Fit examples/logistic_regression.py by gradient descent on a small data set.

The data: two clouds of 100 points each, labels 0 and 1. Each step is one
call of the compiled value_and_grad on the whole data set.
"""

from pathlib import Path

import numpy as np

import symgrad as sg

here = Path(__file__).parent
(model,) = sg.load_model(here / "logistic_regression.py")
module = sg.compile(model, out_dir=here.parent / "generated")

rng = np.random.default_rng(42)
n = 100
x1 = np.concatenate([rng.normal(-1.0, 1.0, n), rng.normal(1.5, 1.0, n)])
x2 = np.concatenate([rng.normal(-0.5, 1.0, n), rng.normal(1.0, 1.0, n)])
y = np.concatenate([np.zeros(n), np.ones(n)])

params = {"w1": 0.0, "w2": 0.0, "b": 0.0}
learning_rate = 0.5
for step in range(201):
    loss, grads = module.value_and_grad(x1=x1, x2=x2, y=y, **params)
    if step % 50 == 0:
        print(f"step {step:3d}: loss {loss:.4f}")
    for name in params:
        params[name] -= learning_rate * grads[name]

p = module.forward(x1=x1, x2=x2, y=y, **params)["p"]
accuracy = np.mean((p > 0.5) == (y == 1))
print(f"fitted: w1 = {params['w1']:.3f}, w2 = {params['w2']:.3f}, b = {params['b']:.3f}")
print(f"training accuracy: {accuracy:.1%}")
print()
for symbol, formula in model.gradients().items():
    print(f"d loss / d {symbol} = {formula}")
