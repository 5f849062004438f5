"""Hock-Schittkowski problem 71, the example of IPOPT's documentation.

minimize   x1*x4*(x1 + x2 + x3) + x3
subject to x1*x2*x3*x4 >= 25,  x1**2 + x2**2 + x3**2 + x4**2 = 40,  1 <= x <= 5,

starting from (1, 5, 5, 1); the optimum is f* = 17.0140173 at about
(1, 4.743, 3.821, 1.379). Two models: the objective, with its Hessian, and
the constraints (symgrad.scipy.constraint_model), whose loss is v·c with the
multipliers v as data, so that their Hessian is the one of v·c(x) that
trust-constr asks for, and whose Jacobian kernel gives the constraint Jacobian.
"""

import sympy as sp

import symgrad as sg
from symgrad.scipy import constraint_model

x = sp.MatrixSymbol("x", 4, 1)
x1, x2, x3, x4 = (x[i, 0] for i in range(4))

hs71 = sg.Model("hs71", params=[x], loss=x1 * x4 * (x1 + x2 + x3) + x3, kernels=("hessian",))
hs71_constraints = constraint_model("hs71_constraints", [x1 * x2 * x3 * x4, x1**2 + x2**2 + x3**2 + x4**2],
                                    params=[x])
