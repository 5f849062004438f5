"""Multiclass logistic (softmax) regression on the 8x8 digits.

logits = W x + b for one image x (64x1); the loss is the cross-entropy of
softmax(logits) against the class index c, averaged over a minibatch.
"""

import sympy as sp

import symgrad as sg

x = sp.MatrixSymbol("x", 64, 1)
c = sp.Symbol("c")  # the class, 0..9
W = sp.MatrixSymbol("W", 10, 64)
b = sp.MatrixSymbol("b", 10, 1)

logits = W * x + b
digits_softmax = sg.Model(
    "digits_softmax",
    loss=sg.cross_entropy(logits, c),
    params=[W, b],
    inputs=[x, c],
    outputs={"probabilities": sg.softmax(logits)},
)
