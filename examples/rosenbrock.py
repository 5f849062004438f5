"""The Rosenbrock function in 100 dimensions, for Newton's method with Hessian-vector products.

f(x) = sum over i < 99 of 100*(x[i+1] - x[i]**2)**2 + (1 - x[i])**2, one
MatrixSymbol x of 100x1 as the unknowns (no data). Its minimum is 0 at
x = (1, ..., 1). kernels=("hvp",) adds the Hessian-vector product (forward
over reverse), which scipy.optimize's Newton-CG takes as hessp.
"""

import sympy as sp

import symgrad as sg

x = sp.MatrixSymbol("x", 100, 1)
rosen = sum(100 * (x[i + 1, 0] - x[i, 0] ** 2) ** 2 + (1 - x[i, 0]) ** 2 for i in range(99))

rosenbrock = sg.Model("rosenbrock", params=[x], loss=rosen, kernels=("hvp",))
