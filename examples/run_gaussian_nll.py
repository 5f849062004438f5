"""Fit examples/gaussian_nll.py to samples of a known Gaussian by gradient descent.

The fitted mean and covariance are the sample mean and NumPy's sample covariance
(np.cov with bias=True, the maximum-likelihood estimate).
"""

from pathlib import Path

import numpy as np

import symgrad as sg

here = Path(__file__).parent
(model,) = sg.load_model(here / "gaussian_nll.py")
module = sg.compile(model, out_dir=here.parent / "generated")

rng = np.random.default_rng(0)
true_cov = np.array([[2.0, 0.6, -0.4], [0.6, 1.0, 0.3], [-0.4, 0.3, 0.5]])
X = rng.multivariate_normal([1.0, -2.0, 0.5], true_cov, size=2000)

params = {"mu": np.zeros(3), "L": np.eye(3)}
for step in range(601):
    loss, grads = module.value_and_grad(x=X, **params)
    if step % 200 == 0:
        print(f"step {step:4d}: mean nll {loss:.6f}")
    for name in params:
        params[name] = params[name] - 0.1 * grads[name]

L = np.tril(params["L"])
fitted = L @ L.T
print("fitted mean      :", np.array2string(params["mu"], precision=4))
print("sample mean      :", np.array2string(X.mean(axis=0), precision=4))
print("fitted covariance:\n", np.array2string(fitted, precision=4))
print(f"max |mean - sample mean| = {np.max(np.abs(params['mu'] - X.mean(axis=0))):.2e}")
print(f"max |covariance - np.cov| = {np.max(np.abs(fitted - np.cov(X.T, bias=True))):.2e}")
