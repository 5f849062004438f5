"""Train examples/digits_softmax.py by minibatch SGD and report test accuracy."""

import time
from pathlib import Path

import numpy as np

import symgrad as sg
from _digits_data import digits, minibatches

here = Path(__file__).parent
(model,) = sg.load_model(here / "digits_softmax.py")
net = sg.compile(model, out_dir=here.parent / "generated")

X_train, X_test, y_train, y_test = digits()
rng = np.random.default_rng(0)
params = {"W": np.zeros((10, 64)), "b": np.zeros((10, 1))}
learning_rate, epochs, batch_size = 0.5, 30, 32

start = time.perf_counter()
for epoch in range(epochs):
    for idx in minibatches(len(X_train), batch_size, rng):
        _, grads = net.value_and_grad(x=X_train[idx], c=y_train[idx], **params)
        for name in params:
            params[name] -= learning_rate * grads[name]
    if epoch % 10 == 9:
        loss = net.forward(x=X_train, c=y_train, **params)["loss"]
        print(f"epoch {epoch + 1:2d}: training loss {loss:.4f}")
seconds = (time.perf_counter() - start) / epochs

probabilities = net.forward(x=X_test, c=y_test, **params)["probabilities"]
accuracy = np.mean(probabilities[:, :, 0].argmax(axis=1) == y_test)
print(f"test accuracy: {accuracy:.2%} on {len(y_test)} images")
print(f"one epoch of batch-{batch_size} SGD: {seconds * 1e3:.2f} ms")
