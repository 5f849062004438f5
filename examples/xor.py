"""The 2-2-1 sigmoid network learning XOR, as in the textbook worked example.

One example is a row x = [x1, x2] and its target t. The hidden layer is
h = sigmoid(x W1 + b1) with W1 2x2 and b1 a row; the output is
y = sigmoid(h W2 + b2) with W2 a column and b2 a number. The cost is the
mean over the points of (t - y)^2.

sg.scalar(h * W2) is the number in the 1x1 product; (h * W2)[0, 0] would
make SymPy write the product out element by element.
"""

import sympy as sp

import symgrad as sg

x = sp.MatrixSymbol("x", 1, 2)
t = sp.Symbol("t")
W1 = sp.MatrixSymbol("W1", 2, 2)
b1 = sp.MatrixSymbol("b1", 1, 2)
W2 = sp.MatrixSymbol("W2", 2, 1)
b2 = sp.Symbol("b2")

h = sg.sigmoid(x * W1 + b1)
y = sg.sigmoid(sg.scalar(h * W2) + b2)
cost = (t - y) ** 2

xor = sg.Model("xor", loss=cost, params=[W1, b1, W2, b2], inputs=[x, t], outputs={"y": y})
