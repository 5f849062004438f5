"""f(x; a, b) = (a*x + b)^2, with gradients for x, a and b.

By hand: df/dx = 2a(ax + b), df/da = 2x(ax + b), df/db = 2(ax + b).
``reduce=None`` keeps one value and one gradient per point, so a batch call
evaluates the function and its gradient at many points at once.
"""

import sympy as sp

import symgrad as sg

x, a, b = sp.symbols("x a b")
u = a * x + b
f = u**2

affine_square = sg.Model("affine_square", loss=f, params=[a, b], inputs=[x], wrt=[x, a, b], reduce=None)
