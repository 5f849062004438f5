"""Binary logistic regression written with scalars.

p = sigmoid(w1*x1 + w2*x2 + b) is the probability that label y is 1; the
loss is the cross-entropy -(y log p + (1 - y) log(1 - p)), averaged over the
batch. symgrad rewrites log(sigmoid(z)) and log(1 - sigmoid(z)) into
softplus forms, so the loss stays finite for confident predictions. The
gradient is the familiar (p - y) * x.
"""

import sympy as sp

import symgrad as sg

x1, x2, y = sp.symbols("x1 x2 y")
w1, w2, b = sp.symbols("w1 w2 b")
z = w1 * x1 + w2 * x2 + b
p = sg.sigmoid(z)
loss = -(y * sp.log(p) + (1 - y) * sp.log(1 - p))

logistic_regression = sg.Model(
    "logistic_regression",
    loss=loss,
    params=[w1, w2, b],
    inputs=[x1, x2, y],
    outputs={"p": p},
)
