"""Batches cut into several kernel calls give the numbers of one call.

A batch larger than ``runtime.CHUNK`` examples runs as several kernel calls
(one after the other, or on threads) whose batch sums are added. A loss term
that depends on params only (an L2 penalty inside the loss, the ``log sigma``
of a Gaussian likelihood) contributes the same value for every example: each
call must add it once per example *of that call*, not once per example of
the whole batch. These tests cross the slice and thread thresholds with such
terms and compare with NumPy written by hand.
"""

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import runtime

w, x, mu, sigma = sp.symbols("w x mu sigma")
SIZES = (1, runtime.CHUNK, runtime.CHUNK + 1, 3 * runtime.CHUNK + 7, runtime.CHUNK * runtime.MAX_CHUNKS + 5)


@pytest.fixture(scope="module")
def penalized(compile_model):
    return {reduce: compile_model(sg.Model(f"param_term_{reduce}", loss=w**2 + w * x, params=[w], inputs=[x],
                                           reduce=reduce))
            for reduce in ("mean", "sum")}


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("threads", [1, 2])
def test_parameter_only_terms_count_each_example_once(penalized, n, reduce, threads, rng):
    xv = rng.normal(size=n)
    loss, g = penalized[reduce].value_and_grad(w=1.5, x=xv, threads=threads)
    per_example_loss = 1.5**2 + 1.5 * xv
    per_example_grad = 2 * 1.5 + xv
    combine = np.mean if reduce == "mean" else np.sum
    assert loss == pytest.approx(combine(per_example_loss), rel=1e-12)
    assert g["w"] == pytest.approx(combine(per_example_grad), rel=1e-12)


def test_the_zero_input_example_of_the_report(penalized):
    for n in (16384, 16385, 100000):
        assert penalized["mean"].grad(w=1.0, x=np.zeros(n))["w"] == 2.0


def test_float32_kernels_count_each_example_once(compile_model, rng):
    module = compile_model(sg.Model("param_term_f32", loss=w**2 + w * x, params=[w], inputs=[x]), dtype="float32")
    xv = rng.normal(size=3 * runtime.CHUNK + 1).astype(np.float32)
    for threads in (1, 2):
        g = module.grad(w=1.5, x=xv, threads=threads)["w"]
        assert g == pytest.approx(3.0 + np.mean(xv.astype(np.float64)), rel=1e-6)


def test_gaussian_sigma_fit_on_a_large_batch(compile_model, rng):
    """The maximum-likelihood sigma of 100,000 normal samples is their standard deviation."""
    nll = sp.log(sigma) + (x - mu) ** 2 / (2 * sigma**2)
    module = compile_model(sg.Model("gaussian_nll_slices", loss=nll, params=[mu, sigma], inputs=[x]))
    data = rng.normal(0.2, 0.5, size=100_000)
    g = module.grad(mu=0.2, sigma=0.5, x=data)
    expected_sigma = 1 / 0.5 - np.mean((data - 0.2) ** 2) / 0.5**3
    expected_mu = -np.mean(data - 0.2) / 0.5**2
    assert g["sigma"] == pytest.approx(expected_sigma, rel=1e-9, abs=1e-12)
    assert g["mu"] == pytest.approx(expected_mu, rel=1e-9, abs=1e-12)
    m, s = 0.0, 1.0
    for _ in range(300):
        g = module.grad(mu=m, sigma=s, x=data)
        m, s = m - 0.1 * g["mu"], s - 0.1 * g["sigma"]
    assert s == pytest.approx(np.std(data), rel=1e-6)
    assert m == pytest.approx(np.mean(data), rel=1e-6)


def test_matrix_parameter_penalty_over_slices(compile_model, rng):
    """An L2 penalty on a weight matrix inside the loss of a matrix model."""
    W = sp.MatrixSymbol("W", 2, 3)
    v = sp.MatrixSymbol("v", 3, 1)
    loss = sg.sum((W * v).applyfunc(sp.tanh)) + sg.sum(sp.HadamardProduct(W, W))
    module = compile_model(sg.Model("matrix_penalty_slices", loss=loss, params=[W], inputs=[v]))
    Wv = rng.normal(size=(2, 3))
    vs = rng.normal(size=(runtime.CHUNK + 3, 3, 1))
    h = np.tanh(np.einsum("ij,njk->nik", Wv, vs))
    expected = np.mean(np.einsum("nik,njk->nij", 1 - h**2, vs), axis=0) + 2 * Wv
    for threads in (1, 2):
        g = module.grad(W=Wv, v=vs, threads=threads)["W"]
        np.testing.assert_allclose(g, expected, rtol=1e-11)
