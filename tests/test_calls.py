"""Calling a compiled module: batches, reductions, shapes, dtypes and errors."""

import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.errors import ArgumentDtypeError, ArgumentError, ArgumentShapeError

x, t, a, b = sp.symbols("x t a b")
y = a * x + b


def _fit(reduce="mean", wrt=None, name=None):
    return sg.Model(name or f"fit_{reduce}", loss=(y - t) ** 2, params=[a, b], inputs=[x, t],
                    outputs={"y": y}, reduce=reduce, wrt=wrt)


@pytest.fixture(scope="module")
def fit(compile_model):
    return compile_model(_fit(wrt=[a, b, x, t], name="fit_all"))


def _reference(av, bv, xv, tv):
    r = av * xv + bv - tv
    return r, 2 * r


def test_mean_loss_and_gradients_match_numpy(fit, rng):
    xv, tv = rng.normal(size=1000), rng.normal(size=1000)
    loss, g = fit.value_and_grad(a=0.7, b=-0.3, x=xv, t=tv)
    r, dr = _reference(0.7, -0.3, xv, tv)
    assert loss == pytest.approx(np.mean(r**2), rel=1e-13)
    assert g["a"] == pytest.approx(np.mean(dr * xv), rel=1e-12)
    assert g["b"] == pytest.approx(np.mean(dr), rel=1e-12)
    # Inputs get per-example gradients of the batch-mean loss, as jax.grad gives.
    np.testing.assert_allclose(g["x"], dr * 0.7 / len(xv), rtol=1e-13)
    np.testing.assert_allclose(g["t"], -dr / len(xv), rtol=1e-13)


def test_grad_is_the_second_half_of_value_and_grad(fit, rng):
    xv, tv = rng.normal(size=17), rng.normal(size=17)
    _, g = fit.value_and_grad(a=1.5, b=2.0, x=xv, t=tv)
    g2 = fit.grad(a=1.5, b=2.0, x=xv, t=tv)
    assert g2.keys() == g.keys()
    for k in g:
        np.testing.assert_array_equal(g[k], g2[k])


def test_forward_returns_outputs_per_example_and_the_reduced_loss(fit, rng):
    xv, tv = rng.normal(size=5), rng.normal(size=5)
    out = fit.forward(a=2.0, b=1.0, x=xv, t=tv)
    np.testing.assert_allclose(out["y"], 2 * xv + 1)
    assert out["loss"] == pytest.approx(np.mean((2 * xv + 1 - tv) ** 2))


def test_a_single_example_gives_floats(fit):
    loss, g = fit.value_and_grad(a=0.5, b=0.1, x=0.3, t=1.0)
    r = 0.5 * 0.3 + 0.1 - 1.0
    assert isinstance(loss, float) and loss == pytest.approx(r**2)
    assert isinstance(g["x"], float) and g["x"] == pytest.approx(2 * r * 0.5)
    out = fit.forward(a=0.5, b=0.1, x=0.3, t=1.0)
    assert isinstance(out["y"], float)


def test_reduce_sum_and_none(compile_model, rng):
    xv, tv = rng.normal(size=9), rng.normal(size=9)
    r, dr = _reference(0.2, 0.4, xv, tv)
    summed = compile_model(_fit("sum"))
    loss, g = summed.value_and_grad(a=0.2, b=0.4, x=xv, t=tv)
    assert loss == pytest.approx(np.sum(r**2))
    assert g["a"] == pytest.approx(np.sum(dr * xv))
    each = compile_model(_fit(None, wrt=[a, b, x]))
    loss, g = each.value_and_grad(a=0.2, b=0.4, x=xv, t=tv)
    np.testing.assert_allclose(loss, r**2)
    np.testing.assert_allclose(g["a"], dr * xv)  # one gradient per example
    np.testing.assert_allclose(g["b"], dr)
    np.testing.assert_allclose(g["x"], dr * 0.2)


def test_a_single_example_next_to_a_batch_is_repeated(fit, rng):
    xv = rng.normal(size=6)
    loss, g = fit.value_and_grad(a=1.0, b=0.0, x=xv, t=0.5)
    r, dr = _reference(1.0, 0.0, xv, 0.5)
    assert loss == pytest.approx(np.mean(r**2))
    # The gradient of a value given once sums over the examples it was used for.
    assert g["t"] == pytest.approx(np.sum(-dr / 6))


def test_awkward_memory_layouts_give_the_right_answer(fit, rng):
    base = rng.normal(size=(2, 20))
    strided = base[0, ::2]
    fortran = np.asfortranarray(rng.normal(size=(10, 1)))[:, 0]
    readonly = rng.normal(size=10)
    readonly.flags.writeable = False
    loss, g = fit.value_and_grad(a=0.3, b=0.2, x=strided, t=readonly)
    r, _ = _reference(0.3, 0.2, strided, readonly)
    assert loss == pytest.approx(np.mean(r**2))
    loss2, _ = fit.value_and_grad(a=0.3, b=0.2, x=fortran, t=readonly)
    assert loss2 == pytest.approx(np.mean((0.3 * fortran + 0.2 - readonly) ** 2))


def test_integer_and_float32_inputs_are_converted(fit):
    loss_int, _ = fit.value_and_grad(a=2, b=np.int32(1), x=np.arange(4), t=np.ones(4, dtype=np.float32))
    loss_float, _ = fit.value_and_grad(a=2.0, b=1.0, x=np.arange(4.0), t=np.ones(4))
    assert loss_int == loss_float


@pytest.mark.parametrize("call,error,message", [
    (dict(a=1.0, b=1.0, x=1.0), ArgumentError, "missing argument: 't'"),
    (dict(a=1.0, b=1.0, x=1.0, t=1.0, z=3.0), ArgumentError, "unknown argument 'z'"),
    (dict(a=np.ones(3), b=1.0, x=1.0, t=1.0), ArgumentShapeError, "param 'a' is one number"),
    (dict(a=1.0, b=1.0, x=np.ones(3), t=np.ones(4)), ArgumentShapeError, "batch sizes disagree"),
    (dict(a=1.0, b=1.0, x=np.ones((3, 2)), t=np.ones(3)), ArgumentShapeError, "input 'x' has shape (3, 2)"),
    (dict(a=1j, b=1.0, x=1.0, t=1.0), ArgumentDtypeError, "complex"),
    (dict(a=1.0, b=1.0, x=np.array(["1"]), t=1.0), ArgumentDtypeError, "dtype <U1"),
    (dict(a=1.0, b=1.0, x=np.array([1.0], dtype=object), t=1.0), ArgumentDtypeError, "dtype object"),
    (dict(a=1.0, b=1.0, x=np.ones(0), t=np.ones(0)), ArgumentShapeError, "0 examples"),
])
def test_bad_calls_get_specific_errors(fit, call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit.value_and_grad(**call)


def test_empty_batch_without_reduction_gives_empty_arrays(compile_model):
    each = compile_model(_fit(None))
    loss, g = each.value_and_grad(a=1.0, b=1.0, x=np.ones(0), t=np.ones(0))
    assert loss.shape == (0,) and g["a"].shape == (0,)


def test_nan_and_inf_propagate(fit):
    loss, g = fit.value_and_grad(a=1.0, b=0.0, x=np.array([np.nan, 1.0]), t=np.array([0.0, np.inf]))
    assert np.isnan(loss)
    assert np.isnan(g["x"][0]) and np.isinf(g["t"][1]) or np.isnan(g["t"][1])


def test_results_are_fresh_arrays(fit, rng):
    xv = rng.normal(size=3)
    first = fit.forward(a=1.0, b=0.0, x=xv, t=xv)["y"]
    second = fit.forward(a=2.0, b=0.0, x=xv, t=xv)["y"]
    np.testing.assert_allclose(first, xv)
    assert first is not second


def test_model_without_loss_has_forward_only(compile_model):
    module = compile_model(sg.Model("only_outputs", inputs=[x], params=[a], outputs={"ax": a * x}))
    np.testing.assert_allclose(module.forward(a=2.0, x=np.arange(3.0))["ax"], [0, 2, 4])
    with pytest.raises(ArgumentError, match="no loss"):
        module.value_and_grad(a=1.0, x=1.0)


def test_rebuilding_an_unchanged_model_is_a_cache_hit(build_dir):
    from symgrad.pipeline import build_model

    model = _fit(name="cache_probe")
    _, first = build_model(model, build_dir)
    _, second = build_model(model, build_dir)
    assert second.cached and second.key == first.key


def test_generated_module_imports_without_sympy(fit, build_dir):
    code = (
        "import sys; sys.modules['sympy'] = None; sys.modules['symgrad'] = None\n"
        f"sys.path.insert(0, {str(build_dir)!r})\n"
        "import fit_all, numpy as np\n"
        "loss, g = fit_all.value_and_grad(a=1.0, b=0.0, x=np.arange(3.0), t=np.zeros(3))\n"
        "assert abs(loss - 5 / 3) < 1e-12, loss\n"
        "assert fit_all.value_and_grad(a=1, b=0.0, x=[0, 1, 2], t=0.0)[0] == loss\n"
        "assert fit_all.forward(a=1.0, b=0.0, x=2.0, t=0.0)['loss'] == 4.0\n"
        "assert fit_all._runtime.__name__ == 'fit_all._runtime' and fit_all._runtime.callplan.__name__ == "
        "'fit_all._callplan'\n"
        "try:\n    fit_all.value_and_grad(a=1.0)\nexcept TypeError as e:\n    print('error', type(e).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "error ArgumentError" in done.stdout


def test_module_docstring_states_the_formulas(fit):
    assert "loss = (a*x + b - t)**2" in fit.__doc__
    assert "d loss / d a" in fit.value_and_grad.__doc__


def test_out_reuses_the_result_arrays(fit, rng):
    xv, tv = rng.normal(size=50), rng.normal(size=50)
    loss, g = fit.value_and_grad(a=0.5, b=0.1, x=xv, t=tv)
    memory = {k: v.__array_interface__["data"][0] for k, v in g.items() if isinstance(v, np.ndarray)}
    loss2, g2 = fit.value_and_grad(a=1.5, b=0.2, x=xv, t=tv, out=(loss, g))
    for name, address in memory.items():
        assert g2[name] is g[name] and g2[name].__array_interface__["data"][0] == address  # written in place
    r = 1.5 * xv + 0.2 - tv
    np.testing.assert_allclose(g2["x"], 2 * r * 1.5 / 50)
    assert loss2 == pytest.approx(np.mean(r**2))
    out = fit.forward(a=1.0, b=0.0, x=xv, t=tv)
    again = fit.forward(a=2.0, b=0.0, x=xv, t=tv, out=out)
    assert again["y"] is out["y"]
    np.testing.assert_allclose(again["y"], 2 * xv)
    with pytest.raises(ArgumentError, match="out: the array for 'x'"):
        fit.value_and_grad(a=1.0, b=0.0, x=xv, t=tv, out=(None, {"x": np.zeros(3)}))
    with pytest.raises(ArgumentError, match="earlier call"):
        fit.value_and_grad(a=1.0, b=0.0, x=xv, t=tv, out=42)


def test_a_symbol_named_out_is_an_argument(compile_model):
    out_symbol = sp.Symbol("out")
    module = compile_model(sg.Model("named_out", loss=out_symbol**2, inputs=[out_symbol], wrt=[out_symbol]))
    loss, g = module.value_and_grad(out=np.array([1.0, 3.0]))
    assert loss == pytest.approx(5.0)
    np.testing.assert_allclose(g["out"], [1.0, 3.0])


def test_threads_give_the_same_results_bit_for_bit(compile_model, rng):
    from symgrad.runtime import CHUNK

    model = sg.Model("chunked", loss=(sp.tanh(a * x) + b - t) ** 2, params=[a, b], inputs=[x, t],
                     outputs={"y": sp.tanh(a * x)}, wrt=[a, b, x])
    module = compile_model(model)
    n = 5 * CHUNK + 123  # several chunks and a short last one
    xv, tv = rng.normal(size=n), rng.normal(size=n)
    one = module.value_and_grad(a=0.7, b=0.1, x=xv, t=tv)
    for threads in (2, 3, 8):
        many = module.value_and_grad(a=0.7, b=0.1, x=xv, t=tv, threads=threads)
        assert many[0] == one[0]
        for name in one[1]:
            np.testing.assert_array_equal(many[1][name], one[1][name])
    r = np.tanh(0.7 * xv) + 0.1 - tv
    assert one[0] == pytest.approx(np.mean(r**2), rel=1e-12)
    assert one[1]["a"] == pytest.approx(np.mean(2 * r * (1 - np.tanh(0.7 * xv) ** 2) * xv), rel=1e-10)
    # The residual r cancels (tanh + 0.1 - t near 0 for some examples), so the few-ulp difference
    # between the vector tanh and NumPy's is compared against the gradient's scale, not r's.
    expected = 2 * r * (1 - np.tanh(0.7 * xv) ** 2) * 0.7 / n
    np.testing.assert_allclose(one[1]["x"], expected, rtol=1e-12, atol=1e-14 * np.abs(expected).max())
    np.testing.assert_allclose(module.forward(a=0.7, b=0.1, x=xv, t=tv, threads=2)["y"], np.tanh(0.7 * xv),
                               rtol=1e-14)
    with pytest.raises(ArgumentError, match="threads must be"):
        module.value_and_grad(a=0.7, b=0.1, x=xv, t=tv, threads=0)


def test_integers_beyond_exact_floats_are_refused(fit, compile_model):
    from symgrad.errors import ArgumentDtypeError

    assert fit.value_and_grad(a=2**53, b=0.0, x=np.array([1]), t=0.0)[0] == float(2**53) ** 2
    for call in (dict(a=2**53 + 1), dict(a=np.uint64(2**64 - 1)), dict(x=np.array([3, -(2**53) - 1]))):
        with pytest.raises(ArgumentDtypeError, match=r"cannot represent exactly \(its integers are exact up to 2\*\*53\)"):
            fit.value_and_grad(**{**dict(a=1.0, b=0.0, x=1.0, t=0.0), **call})
    single = compile_model(_fit(name="fit_float32"), dtype="float32")
    assert single.value_and_grad(a=2**24, b=0, x=1.0, t=0.0)[0] == float(2**24) ** 2
    with pytest.raises(ArgumentDtypeError, match=r"2\*\*24"):
        single.value_and_grad(a=1.0, b=0.0, x=np.array([2**24 + 1], dtype=np.int32), t=0.0)


def _built_package(tmp_path, name):
    from symgrad.pipeline import build_model

    _, result = build_model(_fit(name=name), tmp_path)
    return result.path


def _import_in_subprocess(path):
    code = f"import sys; sys.path.insert(0, {str(path.parent)!r})\nimport {path.name}\nprint('imported')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_a_truncated_extension_is_refused_with_the_rebuild_command(tmp_path):
    path = _built_package(tmp_path, "fit_truncated")
    extension = next(path.glob("_kernels_*"))
    extension.write_bytes(extension.read_bytes()[:4096])
    done = _import_in_subprocess(path)
    assert done.returncode == 1 and "imported" not in done.stdout, done.stderr
    assert "ImportError" in done.stderr and "truncated or corrupted" in done.stderr
    assert f"Rebuild it: symgrad.compile(model, out_dir={str(tmp_path)!r})" in done.stderr


def test_a_package_mixed_from_two_builds_is_refused(tmp_path):
    import json

    from symgrad.build import MANIFEST

    path = _built_package(tmp_path, "fit_mixed")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["init_sha256"] = "0" * 64  # the manifest of another build
    (path / MANIFEST).write_text(json.dumps(manifest))
    done = _import_in_subprocess(path)
    assert "come from different builds" in done.stderr and "imported" not in done.stdout
    (path / MANIFEST).unlink()
    assert "build manifest" in _import_in_subprocess(path).stderr
