"""Fit examples/exp_decay.py to noisy measurements with scipy.optimize.least_squares.

The data: 50 measurements of 2.5*exp(-1.3*t) + 0.5 on [0, 4] with noise of
standard deviation 0.02. The residuals and their Jacobian come from the
compiled module (Objective(..., residual="r")); the same fit with SciPy's
finite-difference Jacobian finds the same parameters.
"""

from pathlib import Path

import numpy as np
import scipy.optimize as so

import symgrad as sg
from symgrad.scipy import Objective

here = Path(__file__).parent
(model,) = sg.load_model(here / "exp_decay.py")
module = sg.compile(model, out_dir=here.parent / "generated")

rng = np.random.default_rng(7)
t = np.linspace(0.0, 4.0, 50)
y = 2.5 * np.exp(-1.3 * t) + 0.5 + 0.02 * rng.standard_normal(t.size)

objective = Objective(module, data={"t": t, "y": y}, params={"A": 1.0, "k": 0.5, "c": 0.0}, residual="r")
fit = so.least_squares(objective.residuals, objective.x0, jac=objective.residual_jacobian, xtol=1e-12)
numeric = so.least_squares(objective.residuals, objective.x0, jac="2-point", xtol=1e-12)
found = objective.unpack(fit.x)

print("fitted: " + ", ".join(f"{name} = {value:.4f}" for name, value in found.items()))
print(f"cost = {fit.cost:.6f} (sum of r**2 / 2 = {objective.fun(fit.x):.6f}); {fit.nfev} residual and "
      f"{fit.njev} Jacobian evaluations")
print(f"max |theta - theta with finite differences| = {np.max(np.abs(fit.x - numeric.x)):.1e}")
