"""The negative log-likelihood of a multivariate Gaussian, with a learnable mean and covariance.

The covariance is parametrized by its Cholesky factor, Sigma = L L^T with L
lower triangular (``sg.tril``), so every value of the parameters is a valid
covariance. ``sg.spd`` declares Sigma symmetric positive definite: its
log-determinant and the solve Sigma^-1 (x - mu) are computed from one
Cholesky factorization per call (Sigma depends on parameters only), never
from an explicit inverse. Per example:

    nll = (log det Sigma + (x - mu)^T Sigma^-1 (x - mu) + d log(2 pi)) / 2

The mean over a batch is minimized by mu = the sample mean and Sigma = the
sample covariance (with 1/N): run_gaussian_nll.py fits it by gradient descent.
"""

import sympy as sp

import symgrad as sg

d = 3
x = sp.MatrixSymbol("x", d, 1)
mu = sp.MatrixSymbol("mu", d, 1)
L = sp.MatrixSymbol("L", d, d)

Sigma = sg.spd(sg.tril(L) * sg.tril(L).T)
r = x - mu
nll = (sg.logdet(Sigma) + sg.scalar(r.T * Sigma.inv() * r) + d * sp.log(2 * sp.pi)) / 2

gaussian_nll = sg.Model("gaussian_nll", loss=nll, params=[mu, L], inputs=[x])
