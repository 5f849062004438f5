"""Train examples/digits_cnn.py with minibatch SGD and compare it with PyTorch float64.

Checks the loss and every gradient against PyTorch's conv2d / max_pool2d on a
few images first, then trains with the fused train_epoch and prints the test
accuracy (the MLP of digits_mlp.py reaches 97%).
"""

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import symgrad as sg
from _digits_data import digits, one_hot

here = Path(__file__).parent
(model,) = sg.load_model(here / "digits_cnn.py")
start = time.perf_counter()
net = sg.compile(model, out_dir=here.parent / "generated")
print(f"built in {time.perf_counter() - start:.2f} s")

X_train, X_test, y_train, y_test = digits()
images_train, images_test = X_train.reshape(-1, 8, 8), X_test.reshape(-1, 8, 8)
T_train = one_hot(y_train)
rng = np.random.default_rng(0)
channels = int(model.params[1].shape[0])  # b1: one bias per channel
params = {
    "w1": rng.normal(0, 1 / 3, (channels * 3, 3)),
    "b1": np.zeros((channels, 1)),
    "w2": rng.normal(0, 1 / np.sqrt(channels * 16), (10 * channels * 4, 4)),
    "b2": np.zeros((10, 1)),
}


def torch_loss_and_grads(images, targets, p):
    t = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    x = torch.tensor(images).reshape(-1, 1, 8, 8)
    h = torch.relu(F.conv2d(x, t["w1"].reshape(channels, 1, 3, 3), t["b1"].reshape(-1), padding=1))
    logits = F.conv2d(F.max_pool2d(h, 2), t["w2"].reshape(10, channels, 4, 4), t["b2"].reshape(-1)).reshape(-1, 10)
    loss = F.cross_entropy(logits, torch.tensor(targets).argmax(1))
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in t.items()}


loss, grads = net.value_and_grad(x=images_train[:5], target=T_train[:5], **params)
t_loss, t_grads = torch_loss_and_grads(images_train[:5], T_train[:5], params)
worst = max(np.max(np.abs(grads[k] - t_grads[k])) / np.max(np.abs(t_grads[k])) for k in params)
assert abs(loss - t_loss) < 1e-12 * abs(t_loss) and worst < 1e-10, (loss, t_loss, worst)
print(f"5 images: loss {loss:.6f} as PyTorch float64's; gradients agree to {worst:.1e} (relative)")

learning_rate, epochs, batch_size = 0.1, 40, 32
data = {"x": images_train, "target": T_train}
start = time.perf_counter()
for epoch in range(epochs):
    net.train_epoch(params, data, batch_size, learning_rate, shuffle=rng)
seconds = time.perf_counter() - start
logits = net.forward(x=images_test, target=one_hot(y_test), **params)["logits"]
accuracy = np.mean(logits[:, :, 0].argmax(axis=1) == y_test)
train_loss = net.forward(x=images_train, target=T_train, **params)["loss"]
print(f"{epochs} epochs in {seconds:.2f} s; final training loss {train_loss:.4f}")
print(f"test accuracy: {accuracy:.2%} on {len(y_test)} images")
