"""Train examples/xor.py by plain gradient descent from the textbook's starting weights."""

from pathlib import Path

import numpy as np

import symgrad as sg

here = Path(__file__).parent
(model,) = sg.load_model(here / "xor.py")
net = sg.compile(model, out_dir=here.parent / "generated")

X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
T = np.array([0.0, 1.0, 1.0, 0.0])
params = {
    "W1": np.array([[3.0, 2.0], [4.0, 3.0]]),
    "b1": np.array([-2.0, -4.0]),
    "W2": np.array([5.0, -5.0]),
    "b2": -2.0,
}
learning_rate = 0.1


def report(label):
    out = net.forward(x=X, t=T, **params)
    predictions = ", ".join(f"{v:.4f}" for v in out["y"])
    print(f"{label}: predictions [{predictions}], cost {out['loss']:.6f}")


def step():
    cost, grads = net.value_and_grad(x=X, t=T, **params)
    for name, g in grads.items():
        params[name] = params[name] - learning_rate * g
    return cost


report("before training")
step()
report("after one step ")
steps = 1
while net.forward(x=X, t=T, **params)["loss"] > 1e-3 and steps < 500_000:
    step()
    steps += 1
report(f"after {steps} steps")
print("weights:", {k: np.round(v, 3).tolist() for k, v in params.items()})
