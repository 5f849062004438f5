"""Solve examples/hs71.py with scipy.optimize's trust-constr.

The objective's gradient and Hessian, the constraints' Jacobian and the
Hessian of v·c(x) all come from the compiled modules.
"""

from pathlib import Path

import numpy as np
import scipy.optimize as so

import symgrad as sg
from symgrad.scipy import Constraint, Objective

here = Path(__file__).parent
objective_model, constraints_model = sg.load_model(here / "hs71.py")
out = here.parent / "generated"
objective = Objective(sg.compile(objective_model, out_dir=out), params={"x": [1.0, 5.0, 5.0, 1.0]})
constraints = Constraint(sg.compile(constraints_model, out_dir=out), lb=[25.0, 40.0], ub=[np.inf, 40.0])

result = so.minimize(objective.fun, objective.x0, jac=objective.jac, hess=objective.hess, constraints=[constraints],
                     bounds=so.Bounds(1.0, 5.0), method="trust-constr",
                     options={"gtol": 1e-12, "xtol": 1e-14, "barrier_tol": 1e-12, "initial_barrier_parameter": 1e-3,
                              "maxiter": 1000})
x = objective.unpack(result.x)["x"].ravel()
product, squares = constraints.fun(result.x)
print(f"f* = {result.fun:.7f} after {result.nit} iterations")
print("x* = [" + ", ".join(f"{v:.6f}" for v in x) + "]")
print(f"x1*x2*x3*x4 = {product:.6f} (>= 25), sum of squares = {squares:.6f} (= 40)")
