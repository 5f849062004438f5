"""Minimize examples/rosenbrock.py with scipy.optimize's Newton-CG, using symgrad's hvp as hessp.

The same run with SciPy's own rosen, rosen_der and rosen_hess_prod takes the
same iterations from the same start (SciPy's documentation point, repeated
20 times): the derivatives agree to rounding, and on this path rounding does
not change a single step.
"""

from pathlib import Path

import numpy as np
import scipy.optimize as so

import symgrad as sg
from symgrad.scipy import Objective

here = Path(__file__).parent
(model,) = sg.load_model(here / "rosenbrock.py")
module = sg.compile(model, out_dir=here.parent / "generated")

x0 = np.tile([1.3, 0.7, 0.8, 1.9, 1.2], 20)
objective = Objective(module, params={"x": x0})
options = {"xtol": 1e-10}
ours = so.minimize(objective.fun, objective.x0, jac=objective.jac, hessp=objective.hessp, method="Newton-CG",
                   options=options)
scipys = so.minimize(so.rosen, x0, jac=so.rosen_der, hessp=so.rosen_hess_prod, method="Newton-CG", options=options)

print(f"symgrad: {ours.nit} iterations, {ours.nfev} function, {ours.njev} gradient and {ours.nhev} "
      f"Hessian-vector evaluations; f = {ours.fun:.3e}")
print(f"scipy:   {scipys.nit} iterations, {scipys.nfev} function, {scipys.njev} gradient and {scipys.nhev} "
      f"Hessian-vector evaluations; f = {scipys.fun:.3e}")
print(f"max |x - 1| = {np.max(np.abs(objective.unpack(ours.x)['x'] - 1)):.1e}")
print(f"max |x_symgrad - x_scipy| = {np.max(np.abs(ours.x - scipys.x)):.1e}")
