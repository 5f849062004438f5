"""f(x; a, b) = (a*x + b)^2, with gradients for x, a and b, plus a least-squares fit.

Two models from one file: ``square_affine`` is the textbook function whose
gradients are d/da = 2x(ax + b), d/db = 2(ax + b), d/dx = 2a(ax + b);
``linear_fit`` is the same line fitted to targets t by mean squared error.
"""

import sympy as sp

import symgrad as sg

x, t, a, b = sp.symbols("x t a b")
y = a * x + b

square_affine = sg.Model("square_affine", loss=y**2, params=[a, b], inputs=[x], wrt=[x, a, b],
                         reduce=None, outputs={"y": y})
linear_fit = sg.Model("linear_fit", loss=(y - t) ** 2, params=[a, b], inputs=[x, t], outputs={"y": y})
