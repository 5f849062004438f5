"""y = x^2 * 3x: one value, x, used on two paths whose gradients add.

dy/dx = (2x)(3x) + (x^2)(3) = 9x^2. SymPy folds x**2*(3*x) into 3*x**3 when
it builds the expression; evaluate=False keeps both paths visible, and the
backward pass shows x_bar summing the two contributions.
"""

import sympy as sp

import symgrad as sg

x = sp.Symbol("x")
square = x**2
triple = 3 * x
y = sp.Mul(square, triple, evaluate=False)

fan_out = sg.Model("fan_out", loss=y, inputs=[x], wrt=[x], reduce=None)
