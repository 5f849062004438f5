"""y = 1/x^2 written as a chain through u = x^2: y = 1/u.

By the chain rule dy/dx = dy/du * du/dx = (-1/u^2)(2x) = -2/x^3. SymPy would
fold 1/(x**2) into x**-2 by itself; evaluate=False keeps the chain.
"""

import sympy as sp

import symgrad as sg

x = sp.Symbol("x")
u = x**2
y = sp.Pow(u, -1, evaluate=False)

inverse_square = sg.Model("inverse_square", loss=y, inputs=[x], wrt=[x], reduce=None)
