"""A 64-128-10 perceptron with tanh hidden units on the 8x8 digits.

h = tanh(W1 x + b1), logits = W2 h + b2; the loss is the cross-entropy of
softmax(logits) against a one-hot target. The backward pass is a handful of
matrix nodes (W2_bar = logits_bar * h^T ...), and the C loops over buffers,
so the generated code is the same size whatever the hidden width.
"""

import sympy as sp

import symgrad as sg

HIDDEN = 128

x = sp.MatrixSymbol("x", 64, 1)
target = sp.MatrixSymbol("target", 10, 1)
W1 = sp.MatrixSymbol("W1", HIDDEN, 64)
b1 = sp.MatrixSymbol("b1", HIDDEN, 1)
W2 = sp.MatrixSymbol("W2", 10, HIDDEN)
b2 = sp.MatrixSymbol("b2", 10, 1)

h = (W1 * x + b1).applyfunc(sp.tanh)
logits = W2 * h + b2
digits_mlp = sg.Model(
    "digits_mlp",
    loss=sg.cross_entropy(logits, target),
    params=[W1, b1, W2, b2],
    inputs=[x, target],
    outputs={"logits": logits},
)
