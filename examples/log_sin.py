"""f(x1, x2) = ln(x1) + x1*x2 - sin(x2), the classic reverse-mode example.

By hand: df/dx1 = 1/x1 + x2 and df/dx2 = x1 - cos(x2). At (x1, x2) = (2, 5):
f = 11.652, df/dx1 = 5.5, df/dx2 = 1.716.
"""

import sympy as sp

import symgrad as sg

x1, x2 = sp.symbols("x1 x2")
f = sp.log(x1) + x1 * x2 - sp.sin(x2)

log_sin = sg.Model("log_sin", loss=f, inputs=[x1, x2], wrt=[x1, x2], reduce=None)
