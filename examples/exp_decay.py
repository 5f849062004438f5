"""An exponential decay y = A*exp(-k*t) + c, fitted by least squares.

Per example (one measurement (t, y)) the residual r = A*exp(-k*t) + c - y is an
output; the loss, summed over the data, is r**2 / 2 (what least_squares
minimizes). kernels=("jacobian",) adds the Jacobian of the residuals with
respect to A, k and c, which scipy.optimize.least_squares takes as jac.
"""

import sympy as sp

import symgrad as sg

A, k, c = sp.symbols("A k c")  # the unknowns
t, y = sp.symbols("t y")  # one measurement
r = A * sp.exp(-k * t) + c - y

exp_decay = sg.Model("exp_decay", params=[A, k, c], inputs=[t, y], outputs={"r": r}, loss=r**2 / 2,
                     reduce="sum", kernels=("jacobian",))
