"""Train examples/digits_mlp.py with minibatch SGD, a progress bar and a loss-curve plot.

Each epoch is one call of the generated train_epoch: the shuffled minibatches,
their gradients and the updates run in C, the params updated in place. It
gives the params of the Python loop over value_and_grad written at the end,
to the bit (the script checks one epoch of it). Writes digits_mlp_loss.png
next to this script (or to the path given as the first argument).
"""

import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import symgrad as sg  # noqa: E402
from _digits_data import digits, minibatches, one_hot  # noqa: E402

here = Path(__file__).parent
plot_path = Path(sys.argv[1]) if len(sys.argv) > 1 else here / "digits_mlp_loss.png"
(model,) = sg.load_model(here / "digits_mlp.py")
net = sg.compile(model, out_dir=here.parent / "generated")

X_train, X_test, y_train, y_test = digits()
T_train = one_hot(y_train)
rng = np.random.default_rng(0)
hidden = 128
params = {
    "W1": rng.normal(0, 1 / np.sqrt(64), (hidden, 64)),
    "b1": np.zeros((hidden, 1)),
    "W2": rng.normal(0, 1 / np.sqrt(hidden), (10, hidden)),
    "b2": np.zeros((10, 1)),
}
learning_rate, epochs, batch_size = 0.1, 40, 32

data = {"x": X_train, "target": T_train}

losses = []
epoch_seconds = []
for epoch in tqdm(range(epochs), desc="training", unit="epoch"):
    start = time.perf_counter()
    net.train_epoch(params, data, batch_size, learning_rate, shuffle=rng)  # a new order from rng each epoch
    epoch_seconds.append(time.perf_counter() - start)
    losses.append(net.forward(x=X_train, target=T_train, **params)["loss"])

logits = net.forward(x=X_test, target=one_hot(y_test), **params)["logits"]
accuracy = np.mean(logits[:, :, 0].argmax(axis=1) == y_test)
print(f"final training loss {losses[-1]:.4f}")
print(f"test accuracy: {accuracy:.2%} on {len(y_test)} images")
print(f"one epoch of batch-{batch_size} SGD: {np.median(epoch_seconds) * 1e3:.2f} ms (median, train_epoch)")

# The same epoch as a Python loop over value_and_grad: the same order, the same params to the bit.
fused, looped = ({k: v.copy() for k, v in params.items()} for _ in range(2))
start = time.perf_counter()
net.train_epoch(fused, data, batch_size, learning_rate, shuffle=np.random.default_rng(1))
fused_seconds = time.perf_counter() - start
start = time.perf_counter()
for idx in minibatches(len(X_train), batch_size, np.random.default_rng(1)):
    _, grads = net.value_and_grad(x=X_train[idx], target=T_train[idx], **looped)
    for name in looped:
        looped[name] -= learning_rate * grads[name]
loop_seconds = time.perf_counter() - start
assert all(np.array_equal(fused[k], looped[k]) for k in params)
print(f"the same epoch as a Python loop over value_and_grad: {loop_seconds * 1e3:.2f} ms "
      f"(train_epoch: {fused_seconds * 1e3:.2f} ms), the same params to the bit")

plt.figure(figsize=(6, 4))
plt.plot(np.arange(1, epochs + 1), losses, marker=".")
plt.xlabel("epoch")
plt.ylabel("training cross-entropy")
plt.yscale("log")
plt.title("64-128-10 tanh MLP on the digits, symgrad kernels")
plt.grid(True, alpha=0.3)
plt.tight_layout()
plt.savefig(plot_path, dpi=100)
print(f"wrote {plot_path}")
