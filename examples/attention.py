"""A single-head self-attention layer: softmax(Q K^T / sqrt(d)) row by row, times V.

One example is a sequence of n tokens, the rows of X; the queries, keys and
values are linear maps of them. ``sg.softmax(S, axis=1)`` normalizes each row
of the scores (each query's weights over the keys), shifted by the row's
maximum. The loss is the mean squared error against a target sequence.
"""

import sympy as sp

import symgrad as sg

n, d_model, d = 6, 4, 4
X = sp.MatrixSymbol("X", n, d_model)
target = sp.MatrixSymbol("target", n, d)
Wq, Wk, Wv = (sp.MatrixSymbol(name, d_model, d) for name in ("Wq", "Wk", "Wv"))

Q, K, V = X * Wq, X * Wk, X * Wv
weights = sg.softmax(Q * K.T / sp.sqrt(d), axis=1)
attended = weights * V

attention = sg.Model("attention", loss=sg.mse(attended, target), params=[Wq, Wk, Wv], inputs=[X, target],
                     outputs={"weights": weights, "attended": attended})
