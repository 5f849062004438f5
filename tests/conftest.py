"""Shared fixtures: one build folder per test session, so identical models compile once."""

from __future__ import annotations

import numpy as np
import pytest

import symgrad as sg


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("generated")


@pytest.fixture(scope="session")
def compile_model(build_dir):
    """compile_model(model, **options) -> the generated module, built in the session's folder."""

    def compile_(model, **options):
        # A folder holds one build per model name: float32 builds get their own folder.
        dtype = options.get("dtype", "float64")
        return sg.compile(model, out_dir=build_dir if dtype == "float64" else build_dir / dtype, **options)

    return compile_


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def central_difference(f, x, h=1e-6):
    """Gradient of scalar f at array x by central differences, element by element."""
    x = np.array(x, dtype=float)
    grad = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[k] = h
        grad[k] = (f(x + step) - f(x - step)) / (2 * h)
    return grad
