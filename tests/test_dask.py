"""symgrad.dask on a LocalCluster of two worker processes (one thread each).

Each chunk is one kernel call on a worker; the results must equal one call
of the module on all the data (to 1e-12 relative) and be the same, bit for
bit, on every run. The package must reach the workers by itself, and a
worker that cannot load it must say which worker and why.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import symgrad as sg  # noqa: E402
import symgrad.dask as sgd  # noqa: E402
from symgrad.errors import ArgumentError  # noqa: E402
from symgrad.model import load_model  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=40)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _module(name, build_dir):
    return sg.compile(load_model(str(EXAMPLES / f"{name}.py"))[0], out_dir=build_dir)


def _logistic_data(n, chunks):
    rng = np.random.default_rng(7)
    x1, x2 = rng.normal(size=(2, n))
    y = (rng.random(n) < 1 / (1 + np.exp(-x1))).astype(float)
    arrays = dict(x1=x1, x2=x2, y=y)
    return arrays, {k: da.from_array(v, chunks=chunks) for k, v in arrays.items()}


def _assert_close(got, want):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12, atol=0)


def test_value_and_grad_equals_one_call_and_is_the_same_on_every_run(client, build_dir):
    module = _module("logistic_regression", build_dir)
    data, lazy = _logistic_data(30_011, chunks=(7_000, 3_011, 9_000, 11_000))  # uneven chunks, 4 of them
    params = dict(w1=0.3, w2=-0.2, b=0.1)
    loss, grads = sgd.value_and_grad(module, client=client, **params, **lazy)
    want_loss, want = module.value_and_grad(**params, **data)
    _assert_close(loss, want_loss)
    for name in want:
        _assert_close(grads[name], want[name])
    again = sgd.value_and_grad(module, client=client, **params, **lazy)
    assert again[0] == loss and all(again[1][k] == grads[k] for k in grads)
    assert sgd.grad(module, client=client, **params, **lazy) == grads


def test_matrix_params_and_per_example_outputs(client, build_dir):
    module = _module("digits_softmax", build_dir)
    rng = np.random.default_rng(3)
    n = 2_500
    x = rng.random((n, 64))
    c = rng.integers(0, 10, n).astype(float)
    W, b = rng.normal(size=(10, 64)) * 0.1, rng.normal(size=(10, 1))
    X, C = da.from_array(x, chunks=(700, 16)), da.from_array(c, chunks=1_000)  # other chunks: rechunked
    loss, grads = sgd.value_and_grad(module, client=client, W=W, b=b, x=X, c=C)
    want_loss, want = module.value_and_grad(W=W, b=b, x=x, c=c)
    _assert_close(loss, want_loss)
    _assert_close(grads["W"], want["W"])
    _assert_close(grads["b"], want["b"])
    out = sgd.forward(module, client=client, W=W, b=b, x=X, c=C)
    expected = module.forward(W=W, b=b, x=x, c=c)
    assert isinstance(out["probabilities"], da.Array) and out["probabilities"].chunks[0] == (700, 700, 700, 400)
    np.testing.assert_array_equal(out["probabilities"].compute(), expected["probabilities"])
    _assert_close(out["loss"], expected["loss"])


def test_per_example_gradients_come_back_as_dask_arrays(client, build_dir):
    module = _module("affine_square", build_dir)  # reduce=None, gradients with respect to x, a and b
    x = np.linspace(-2, 3, 1_001)
    loss, grads = sgd.value_and_grad(module, client=client, a=1.5, b=-0.5, x=da.from_array(x, chunks=300))
    assert all(isinstance(v, da.Array) for v in (loss, *grads.values()))
    u = 1.5 * x - 0.5
    np.testing.assert_allclose(loss.compute(), u**2, rtol=1e-15)
    np.testing.assert_allclose(grads["x"].compute(), 3 * u, rtol=1e-15)
    np.testing.assert_allclose(grads["a"].compute(), 2 * x * u, rtol=1e-15)


def test_the_package_is_loaded_from_each_workers_own_folder(client, build_dir):
    module = _module("logistic_regression", build_dir)
    _, lazy = _logistic_data(1_000, chunks=250)
    sgd.value_and_grad(module, client=client, w1=0.1, w2=0.2, b=0.3, **lazy)
    key = module.BUILD_KEY[:16]

    def where(dask_worker):
        found = [m.__file__ for name, m in sys.modules.items() if name.endswith(key) and hasattr(m, "BUILD_KEY")]
        return found, dask_worker.local_directory

    for files, local in client.run(where).values():
        assert files and all(os.path.realpath(f).startswith(os.path.realpath(local)) for f in files)


def test_a_worker_that_cannot_load_the_package_names_itself_and_the_cause(client, tmp_path):
    z = sp.Symbol("z")
    model = sg.Model("dask_unloadable", loss=z**2 + 1, inputs=[z])
    module = sg.compile(model, out_dir=tmp_path)
    folder = Path(module.__file__).parent
    extension = next(folder.glob("_kernels_*.so"))
    damaged = folder / "damaged.tmp"
    damaged.write_bytes(b"not an ELF file")
    os.replace(damaged, extension)  # the client keeps its loaded copy; the workers get the damaged one
    with pytest.raises(sgd.WorkerLoadError) as caught:
        sgd.value_and_grad(module, client=client, z=da.from_array(np.arange(10.0), chunks=5))
    message = str(caught.value)
    assert "worker tcp://" in message and "'dask_unloadable'" in message
    assert "SHA-256" in message or "ELF" in message or "extension" in message, message


def test_arguments_that_cannot_be_split_are_refused(client, build_dir):
    module = _module("logistic_regression", build_dir)
    data, lazy = _logistic_data(100, chunks=50)
    with pytest.raises(ArgumentError, match="at least one input as a Dask array"):
        sgd.value_and_grad(module, client=client, w1=0.1, w2=0.2, b=0.3, **data)
    with pytest.raises(ArgumentError, match="param 'w1' is a Dask array"):
        sgd.value_and_grad(module, client=client, w1=da.ones(3), w2=0.2, b=0.3, **lazy)
    with pytest.raises(ArgumentError, match="batch sizes disagree"):
        sgd.value_and_grad(module, client=client, w1=0.1, w2=0.2, b=0.3, x1=lazy["x1"], x2=lazy["x2"],
                           y=da.ones(99, chunks=50))


def test_the_example_fits_logistic_regression_on_data_made_on_the_workers():
    import subprocess

    script = EXAMPLES / "run_dask_logistic_regression.py"
    done = subprocess.run([sys.executable, str(script), "--examples", "40000", "--chunk", "10000", "--epochs", "4"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    losses = [float(line.split()[3]) for line in done.stdout.splitlines() if line.startswith("epoch")]
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:]))
    assert abs(losses[0] - np.log(2)) < 1e-6  # all parameters start at 0 (printed to 6 decimals)
