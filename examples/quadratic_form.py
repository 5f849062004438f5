"""The quadratic form f = x^T A x, with its matrix gradients.

By hand: df/dx = (A^T + A) x and df/dA = x x^T. SymPy's own matrix calculus
gets this wrong in places (sympy.diff((x.T*W.T*W*x)[0, 0], x) is 0 in
SymPy 1.14); symgrad derives matrix gradients itself.
"""

import sympy as sp

import symgrad as sg

n = 4
x = sp.MatrixSymbol("x", n, 1)
A = sp.MatrixSymbol("A", n, n)

quadratic_form = sg.Model("quadratic_form", loss=x.T * A * x, params=[A], inputs=[x], wrt=[x, A], reduce=None)
