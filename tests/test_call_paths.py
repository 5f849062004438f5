"""Every way of calling a module gives the same numbers, and the right ones.

A call runs the plan of its signature: the one-example entry point (every
argument a number), the exact layout (arrays as the kernel reads them) or
the general case (lists, other dtypes and layouts, broadcast examples),
with or without ``out=`` and ``threads=``. These tests call each path on
models with 1 to 1000 scalar arguments and on a model with matrix
arguments, require bit-identical results across the paths, and compare
them with NumPy written by hand. CI also runs them under
``PYTHONMALLOC=debug``, where memory read after it is freed is garbage at
once (the one-example entry once read its results from a freed struct).
"""

import inspect
import pickle

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import runtime
from symgrad.errors import ArgumentDtypeError, ArgumentError

WIDTHS = (1, 8, 64, 129, 300, 1000)
#: The wide models only test the call path: compile them quickly (-O0; at -O3 the
#: 1000-argument model takes half a minute, mostly in cffi's wrapper).
QUICK_FLAGS = ("-O0",)


def _wide_model(width):
    """s_k for k < width: even k inputs, odd k params; loss = sum_k s_k sin(s_(k+1 mod width))."""
    s = sp.symbols(f"s0:{width}")
    loss = sum(s[k] * sp.sin(s[(k + 1) % width]) for k in range(width))
    return sg.Model(f"paths_wide{width}", loss=loss, params=[v for k, v in enumerate(s) if k % 2],
                    inputs=[v for k, v in enumerate(s) if not k % 2], wrt=list(s), outputs={"y": s[0] * s[-1]})


def _wide_reference(values):
    """(per-example loss, {name: per-example gradient}, y) by hand; values: (width, N)."""
    s = np.asarray(values, dtype=float)
    following = np.roll(s, -1, axis=0)
    preceding = np.roll(s, 1, axis=0)
    loss = np.sum(s * np.sin(following), axis=0)
    grads = np.sin(following) + preceding * np.cos(s)
    return loss, {f"s{k}": grads[k] for k in range(len(s))}, s[0] * s[-1]


@pytest.fixture(scope="module", params=WIDTHS, ids=lambda w: f"width{w}")
def wide(request, compile_model):
    flags = QUICK_FLAGS if request.param > 64 else None
    return request.param, compile_model(_wide_model(request.param), flags=flags)


def _point(width, rng):
    return {f"s{k}": float(v) for k, v in enumerate(rng.uniform(-1.5, 1.5, width))}


def _same(a, b):
    """Bit-identical results: the same keys, types and numbers."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, tuple):
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert type(a) is type(b)
        np.testing.assert_array_equal(a, b)


def test_one_example_through_every_path(wide, rng):
    width, module = wide
    kernel = module._value_and_grad
    point = _point(width, rng)
    assert kernel.plan(point).branch == "point"
    fast = module.value_and_grad(**point)
    loss, grads, y = _wide_reference([[v] for v in point.values()])
    assert fast[0] == pytest.approx(loss[0], rel=1e-13)
    for name, value in fast[1].items():
        assert value == pytest.approx(grads[name][0], rel=1e-12, abs=1e-14)
    # The same example through the kernel: numbers as 0-d arrays (params: the general branch) ...
    zero_d = {k: np.array(v) for k, v in point.items()}
    assert kernel.plan(zero_d).branch == ("exact" if width == 1 else "general")
    _same(module.value_and_grad(**zero_d), fast)
    # ... inputs as batches of one (the exact layout), params as numbers ...
    batch_of_one = {k: np.array([v]) if int(k[1:]) % 2 == 0 else v for k, v in point.items()}
    assert kernel.plan(batch_of_one).branch == "exact"
    loss1, grads1 = module.value_and_grad(**batch_of_one)
    assert loss1 == fast[0] and all(np.asarray(grads1[k]).reshape(()) == fast[1][k] for k in fast[1])
    # ... with threads= and mean_over= (both run the kernel), and with out= (numbers are returned anew).
    _same(module.value_and_grad(**point, threads=2), fast)
    _same(module.value_and_grad(**point, mean_over=1), fast)
    _same(module.value_and_grad(**point, out=fast), fast)
    _same(module.grad(**point), fast[1])
    forward = module.forward(**point)
    assert forward["loss"] == fast[0] and forward["y"] == pytest.approx(y[0], rel=1e-15)
    _same(module.forward(**zero_d), forward)


def test_a_batch_through_every_path(wide, rng):
    width, module = wide
    n = 7
    values = rng.uniform(-1.5, 1.5, (width, n))
    params = {f"s{k}": float(values[k, 0]) for k in range(1, width, 2)}
    values[1::2] = values[1::2, :1]  # params are shared by the batch
    inputs = {f"s{k}": np.ascontiguousarray(values[k]) for k in range(0, width, 2)}
    exact = {**params, **inputs}
    kernel = module._value_and_grad
    assert kernel.plan(exact).branch == "exact"
    loss, grads = module.value_and_grad(**exact)
    ref_loss, ref_grads, ref_y = _wide_reference(values)
    assert loss == pytest.approx(np.mean(ref_loss), rel=1e-13)
    for k in range(width):
        name = f"s{k}"
        if k % 2:  # a param: the mean of its per-example gradients
            assert grads[name] == pytest.approx(np.mean(ref_grads[name]), rel=1e-12, abs=1e-14)
        else:  # an input: the gradient of the mean loss with respect to each example
            np.testing.assert_allclose(grads[name], ref_grads[name] / n, rtol=1e-12, atol=1e-15)
    # The general branch: a strided view, a list, a 0-d param.
    general = dict(exact)
    general["s0"] = np.repeat(inputs["s0"], 2)[::2]
    if width > 2:
        general["s2"] = list(inputs["s2"])
    if width > 1:
        general["s1"] = np.array(params["s1"])
    assert kernel.plan(general).branch == "general"
    _same(module.value_and_grad(**general), (loss, grads))
    # out=: the very arrays of an earlier call come back, rewritten.
    out = module.value_and_grad(**exact)
    again = module.value_and_grad(**exact, out=out)
    _same(again, (loss, grads))
    for name, value in again[1].items():
        if isinstance(value, np.ndarray):
            assert value is out[1][name]
    _same(module.value_and_grad(**exact, threads=3), (loss, grads))
    forward = module.forward(**exact)
    np.testing.assert_allclose(forward["y"], ref_y, rtol=1e-15)
    _same(module.forward(**exact, out=forward), module.forward(**general))


@pytest.mark.parametrize("width", [1, 8])
def test_batches_past_one_slice_and_the_thread_chunks(width, compile_model, rng):
    module = compile_model(_wide_model(width))
    for n in (runtime.CHUNK + 1, runtime.CHUNK * runtime.MAX_CHUNKS + 21):
        values = rng.uniform(-1.5, 1.5, (width, n))
        values[1::2] = values[1::2, :1]
        arrays = {f"s{k}": values[k] if k % 2 == 0 else float(values[k, 0]) for k in range(width)}
        one = module.value_and_grad(**arrays)
        _same(module.value_and_grad(**arrays, threads=2), one)
        _same(module.value_and_grad(**arrays, threads=5, out=module.value_and_grad(**arrays)), one)
        ref_loss, ref_grads, _ = _wide_reference(values)
        assert one[0] == pytest.approx(np.mean(ref_loss), rel=1e-12)
        for k in range(width):
            name = f"s{k}"
            if k % 2:
                assert one[1][name] == pytest.approx(np.mean(ref_grads[name]), rel=1e-10, abs=1e-14)
            else:
                np.testing.assert_allclose(one[1][name], ref_grads[name] / n, rtol=1e-12, atol=1e-18)


def _matrix_model():
    W, x = sp.MatrixSymbol("W", 3, 2), sp.MatrixSymbol("x", 2, 1)
    b, t = sp.symbols("b t")
    h = (W * x).applyfunc(sp.tanh)
    r = sg.sum(h) + b - t
    return sg.Model("paths_matrix", loss=r**2, params=[W, b], inputs=[x, t], wrt=[W, b, x, t], outputs={"h": h})


def _matrix_reference(W, b, x, t):
    """Per-example loss and gradients by hand; x: (N, 2), t: (N,)."""
    z = x @ W.T
    h = np.tanh(z)
    r = h.sum(axis=1) + b - t
    dz = 2 * r[:, None] * (1 - h**2)
    return r**2, {"W": dz[:, :, None] * x[:, None, :], "b": 2 * r, "x": dz @ W, "t": -2 * r}, h


@pytest.fixture(scope="module")
def matrix(compile_model):
    return compile_model(_matrix_model())


@pytest.mark.parametrize("n", [1, 5, runtime.CHUNK + 3, runtime.CHUNK * runtime.MAX_CHUNKS + 40])
def test_matrix_arguments_through_every_path(matrix, n, rng):
    W, b = rng.normal(size=(3, 2)), 0.3
    x, t = rng.normal(size=(n, 2)), rng.normal(size=n)
    exact = dict(W=W, b=b, x=x.reshape(n, 2, 1), t=t)
    kernel = matrix._value_and_grad
    assert kernel.plan(exact).branch == "exact"
    loss, grads = matrix.value_and_grad(**exact)
    ref_loss, ref, ref_h = _matrix_reference(W, b, x, t)
    assert loss == pytest.approx(ref_loss.mean(), rel=1e-12)
    np.testing.assert_allclose(grads["W"], ref["W"].mean(axis=0), rtol=1e-10)
    assert grads["b"] == pytest.approx(ref["b"].mean(), rel=1e-10)
    np.testing.assert_allclose(grads["x"], ref["x"].reshape(n, 2, 1) / n, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(grads["t"], ref["t"] / n, rtol=1e-10)
    # Rows of vectors as (N, 2), W in Fortran order, t as float32 values held in float64: the general branch.
    general = dict(W=np.asfortranarray(W), b=np.float64(b), x=x, t=t.tolist() if n < 10 else t[::-1][::-1].copy())
    assert kernel.plan(general).branch == "general"
    loss2, grads2 = matrix.value_and_grad(**general)
    assert loss2 == loss and grads2["x"].shape == (n, 2)
    for name in ("W", "b", "t"):
        np.testing.assert_array_equal(grads2[name], grads[name])
    np.testing.assert_array_equal(grads2["x"], grads["x"].reshape(n, 2))
    out = matrix.value_and_grad(**exact)
    again = matrix.value_and_grad(**exact, out=out, threads=2)
    _same(again, (loss, grads))
    assert all(again[1][k] is out[1][k] for k in ("W", "x", "t"))
    forward = matrix.forward(**exact, threads=2)
    np.testing.assert_allclose(forward["h"], ref_h.reshape(n, 3, 1), rtol=1e-14)
    # One t for the whole batch: it is repeated, and its gradient sums over the batch.
    loss3, grads3 = matrix.value_and_grad(W=W, b=b, x=x, t=0.25)
    ref_loss3, ref3, _ = _matrix_reference(W, b, x, np.full(n, 0.25))
    assert loss3 == pytest.approx(ref_loss3.mean(), rel=1e-12)
    assert grads3["t"] == pytest.approx(ref3["t"].sum() / n, rel=1e-10)


def test_one_matrix_example_is_one_example(matrix, rng):
    W, x = rng.normal(size=(3, 2)), rng.normal(size=2)
    loss, grads = matrix.value_and_grad(W=W, b=0.1, x=x, t=0.5)
    ref_loss, ref, _ = _matrix_reference(W, 0.1, x[None, :], np.array([0.5]))
    assert isinstance(loss, float) and loss == pytest.approx(ref_loss[0], rel=1e-13)
    assert grads["x"].shape == (2,) and isinstance(grads["t"], float)
    np.testing.assert_allclose(grads["x"], ref["x"][0], rtol=1e-12)
    _same(matrix.value_and_grad(W=W, b=0.1, x=x.reshape(2, 1), t=0.5)[1]["W"], grads["W"])


def test_mean_over_lets_parts_of_a_batch_add_up(matrix, rng):
    n = 1000
    W, b, x, t = rng.normal(size=(3, 2)), -0.2, rng.normal(size=(n, 2)), rng.normal(size=n)
    whole = matrix.value_and_grad(W=W, b=b, x=x, t=t)
    parts = [matrix.value_and_grad(W=W, b=b, x=x[a:e], t=t[a:e], mean_over=n) for a, e in ((0, 300), (300, 1000))]
    assert parts[0][0] + parts[1][0] == pytest.approx(whole[0], rel=1e-13)
    np.testing.assert_allclose(parts[0][1]["W"] + parts[1][1]["W"], whole[1]["W"], rtol=1e-12)
    np.testing.assert_allclose(np.concatenate([p[1]["t"] for p in parts]), whole[1]["t"], rtol=1e-13)
    forward = [matrix.forward(W=W, b=b, x=x[a:e], t=t[a:e], mean_over=n)["loss"] for a, e in ((0, 300), (300, 1000))]
    assert sum(forward) == pytest.approx(whole[0], rel=1e-13)
    empty = matrix.value_and_grad(W=W, b=b, x=x[:0], t=t[:0], mean_over=n)  # an empty part adds nothing
    assert empty[0] == 0.0 and not empty[1]["W"].any()
    for bad in (999, 0, True, 2.5, "10"):
        with pytest.raises(ArgumentError, match="mean_over must be"):
            matrix.value_and_grad(W=W, b=b, x=x, t=t, mean_over=bad)


def test_mean_over_is_for_mean_models_and_yields_to_a_symbol(compile_model):
    x, w, mean_over = sp.symbols("x w mean_over")
    summed = compile_model(sg.Model("paths_summed", loss=w * x, params=[w], inputs=[x], reduce="sum"))
    with pytest.raises(ArgumentError, match="reduce='mean'"):
        summed.value_and_grad(w=1.0, x=np.ones(3), mean_over=3)
    named = compile_model(sg.Model("paths_named_mean_over", loss=mean_over * x, params=[mean_over], inputs=[x]))
    loss, grads = named.value_and_grad(mean_over=2.0, x=np.array([1.0, 3.0]))
    assert loss == 4.0 and grads["mean_over"] == 2.0


def test_out_must_match_the_results(matrix, rng):
    W, x, t = rng.normal(size=(3, 2)), rng.normal(size=(4, 2)), rng.normal(size=4)
    loss, grads = matrix.value_and_grad(W=W, b=0.0, x=x, t=t)
    for bad in (grads["W"].T, grads["W"].astype(np.float32), grads["W"].reshape(6), np.ones((3, 2), dtype=int)):
        with pytest.raises(ArgumentError, match="out: the array for 'W'"):
            matrix.value_and_grad(W=W, b=0.0, x=x, t=t, out=(loss, {**grads, "W": bad}))
    frozen = grads["W"].copy()
    frozen.flags.writeable = False
    with pytest.raises(ArgumentError, match="writable"):
        matrix.value_and_grad(W=W, b=0.0, x=x, t=t, out=(loss, {**grads, "W": frozen}))
    with pytest.raises(ArgumentError, match="out: the array for 'loss'"):
        matrix.value_and_grad(W=W, b=0.0, x=x, t=t, out=("no", grads))


def test_integers_are_converted_only_when_exact(matrix):
    x = np.array([[1, 2], [3, 4]])
    ok = matrix.value_and_grad(W=np.ones((3, 2)), b=2**53, x=x, t=np.array([2**53, -2**53]))
    assert np.isfinite(ok[0])
    for call in (dict(b=2**53 + 1), dict(b=np.int64(2**60)), dict(t=np.array([1, 2**53 + 1])),
                 dict(t=np.array([0, 2**64 - 1], dtype=np.uint64)), dict(W=np.full((3, 2), -2**62))):
        arguments = {**dict(W=np.ones((3, 2)), b=0.0, x=x, t=np.zeros(2)), **call}
        with pytest.raises(ArgumentDtypeError, match="cannot represent exactly"):
            matrix.value_and_grad(**arguments)


def _generic_functions(module, monkeypatch):
    """The module's value_and_grad and forward as the generic function (one keyword dict)
    builds them, for kernels that got a parameter per symbol."""
    monkeypatch.setattr(runtime.Kernel, "_keyword_function", lambda self, form, returned: None)
    monkeypatch.setattr(runtime.Kernel, "_entry_function", lambda self, form, general: None)
    stub = lambda **arrays: None  # noqa: E731
    return module._value_and_grad.function("loss_and_dict")(stub), module._forward.function("dict")(stub)


def _python_function(function):
    """The Python function of a module function (the general path behind a CPython entry point)."""
    return getattr(function, "__wrapped__", function)


def _outcome(function, arrays):
    try:
        return function(**arrays)
    except Exception as exc:  # the same error, word for word
        return type(exc), str(exc)


@pytest.mark.parametrize("width", [1, 8, runtime.KEYWORD_LIMIT + 1])
def test_keyword_parameters_and_the_keyword_dict_agree(width, compile_model, rng, monkeypatch):
    module = compile_model(_wide_model(width))
    keyword = width <= runtime.KEYWORD_LIMIT  # a function with a parameter per symbol
    assert ("s0" in _python_function(module.value_and_grad).__code__.co_varnames) == keyword
    generic_vag, generic_forward = _generic_functions(module, monkeypatch)
    point = _point(width, rng)
    batch = {k: (rng.uniform(-1, 1, 5) if int(k[1:]) % 2 == 0 else v) for k, v in point.items()}
    calls = [point, {k: np.float64(v) for k, v in point.items()}, {**point, "s0": 1}, {**point, "s0": True},
             {**point, "s0": 2 ** 60}, {k: np.array(v) for k, v in point.items()}, batch,
             {**batch, "threads": 2}, {**point, "mean_over": 3}, {**point, "s0": [0.5, 0.25]},
             {k: v for k, v in point.items() if k != "s0"}, {**point, "unknown": 1.0}, {**point, "s0": "text"}]
    for arrays in calls:
        _same_outcome(_outcome(module.value_and_grad, arrays), _outcome(generic_vag, arrays))
        _same_outcome(_outcome(module.forward, arrays), _outcome(generic_forward, arrays))
    out = module.value_and_grad(**batch)
    again = module.value_and_grad(**batch, out=out)
    _same(again, generic_vag(**batch))
    assert all(again[1][k] is out[1][k] for k in out[1] if isinstance(out[1][k], np.ndarray))
    with pytest.raises(TypeError):
        module.value_and_grad(*point.values())  # by name only, as before


def _same_outcome(a, b):
    if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], type):
        assert a == b
    else:
        _same(a, b)


def test_names_that_cannot_be_parameters_keep_the_keyword_dict(compile_model):
    names = ["lambda", "x.1", "_sg_v", "ﬁ"]  # a keyword, not an identifier, the reserved prefix, NFKC-changed
    symbols = sp.symbols(names)
    model = sg.Model("paths_odd_names", loss=sum((k + 1) * s**2 for k, s in enumerate(symbols)), inputs=symbols,
                     wrt=symbols)
    module = compile_model(model)
    assert "arrays" in _python_function(module.value_and_grad).__code__.co_varnames
    values = {name: float(k) for k, name in enumerate(names)}
    loss, grads = module.value_and_grad(**values)
    assert loss == sum((k + 1) * k**2 for k in range(4)) and grads == {n: 2.0 * (k + 1) * k for k, n in
                                                                       enumerate(names)}


def test_fresh_results_share_one_block_and_out_arrays_are_kept(matrix, rng):
    exact = dict(W=rng.normal(size=(3, 2)), b=0.3, x=rng.normal(size=(6, 2, 1)), t=rng.normal(size=6))
    loss, grads = matrix.value_and_grad(**exact)
    arrays = [grads[k] for k in ("W", "x", "t")]
    assert all(a.flags.c_contiguous and a.flags.writeable for a in arrays)
    assert arrays[0].base is not None and all(a.base is arrays[0].base for a in arrays)  # one allocation
    out = matrix.value_and_grad(**exact)
    out[1]["x"] = None  # a result left out of out= is fresh; the others are written in place
    again = matrix.value_and_grad(**exact, out=out)
    assert again[1]["W"] is out[1]["W"] and again[1]["t"] is out[1]["t"] and again[1]["x"] is not None
    _same(again, (loss, grads))


def test_scalar_inputs_as_the_columns_of_one_array(compile_model, matrix, rng):
    module = compile_model(_wide_model(8))  # inputs s0, s2, s4, s6; params s1, s3, s5, s7
    params = {f"s{k}": float(v) for k, v in zip(range(1, 8, 2), rng.uniform(-1, 1, 4))}
    for n in (1, 7, runtime.CHUNK + 5):
        columns = rng.uniform(-1.5, 1.5, (n, 4))
        by_name = {f"s{2 * j}": columns[:, j] for j in range(4)}  # strided columns, converted one by one
        expected = module.value_and_grad(**params, **by_name)
        _same(module.value_and_grad(**params, inputs=columns), expected)
        _same(module.value_and_grad(**params, inputs=np.asfortranarray(columns)), expected)  # read in place
        _same(module.value_and_grad(**params, inputs=columns.tolist(), threads=2), expected)
        _same(module.forward(**params, inputs=columns), module.forward(**params, **by_name))
    one = rng.uniform(-1, 1, 4)
    _same(module.value_and_grad(**params, inputs=one),
          module.value_and_grad(**params, **{f"s{2 * j}": float(one[j]) for j in range(4)}))
    with pytest.raises(ArgumentError, match=r"columns of one array of shape \(N, 4\) or \(4,\); got shape \(3, 5\)"):
        module.value_and_grad(**params, inputs=np.zeros((3, 5)))
    with pytest.raises(ArgumentError, match="'s0' is given twice"):
        module.value_and_grad(**params, inputs=np.zeros((3, 4)), s0=np.zeros(3))
    with pytest.raises(ArgumentDtypeError, match="2\\*\\*53"):
        module.value_and_grad(**params, inputs=np.full((2, 4), 2 ** 60))
    # Matrix inputs stay by name; the scalar ones (here t) may come as columns.
    W, x, t = rng.normal(size=(3, 2)), rng.normal(size=(5, 2)), rng.normal(size=5)
    _same(matrix.value_and_grad(W=W, b=0.1, x=x, inputs=t[:, None]), matrix.value_and_grad(W=W, b=0.1, x=x, t=t))


def test_a_symbol_named_inputs_takes_the_name(compile_model):
    inputs, x = sp.symbols("inputs x")
    module = compile_model(sg.Model("paths_inputs_symbol", loss=inputs * x**2, inputs=[inputs, x], wrt=[x]))
    loss, grads = module.value_and_grad(inputs=np.array([1.0, 2.0]), x=np.array([3.0, 4.0]))
    assert loss == pytest.approx((9 + 32) / 2) and grads["x"].tolist() == [3.0, 8.0]


def test_a_param_array_passed_again_is_read_again(matrix, rng):
    """Its pointer is reused, never its values: changes in place between calls count."""
    W, x, t = rng.normal(size=(3, 2)), rng.normal(size=(4, 2)), rng.normal(size=4)
    first = matrix.value_and_grad(W=W, b=0.1, x=x, t=t)
    _same(matrix.value_and_grad(W=W, b=0.1, x=x, t=t), first)
    W *= 2.0  # the same array, new values
    _same(matrix.value_and_grad(W=W, b=0.1, x=x, t=t), matrix.value_and_grad(W=W.copy(), b=0.1, x=x, t=t))
    with pytest.raises(AssertionError):
        _same(matrix.value_and_grad(W=W, b=0.1, x=x, t=t), first)
    _same(matrix.value_and_grad(W=W, b=0.1, x=x, t=t, threads=2), matrix.value_and_grad(W=W.copy(), b=0.1, x=x, t=t))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_cpython_entry_point_and_the_python_function_agree(dtype, compile_model, rng):
    """forward, value_and_grad and grad of a kernel with a one-example entry are CPython entry
    points (templates/python.c.j2): calls of floats and booleans by name run in C; every other
    call is handed to the Python function behind it. Both give the same bits, and the same
    error word for word, on every kind of argument."""
    module = compile_model(_wide_model(8), dtype=dtype)
    point = _point(8, rng)
    reordered = dict(reversed(list(point.items())))
    built = {"".join(["s", str(k)]): v for k, v in enumerate(point.values())}  # names that are not interned
    assert all(a is not b for a, b in zip(built, point))
    calls = [point, reordered, built, {**point, "s0": True}, {**point, "s1": False},
             {k: np.float64(v) for k, v in point.items()}, {k: np.float32(v) for k, v in point.items()},
             {**point, "s0": 3}, {**point, "s0": 2 ** 60}, {**point, "s0": np.array(0.5)},
             {**point, "s0": np.array([0.5, 0.25])}, {**point, "s0": [0.5, 0.25]}, {**point, "s0": "text"},
             {**point, "s0": None}, {**point, "s0": 1 + 2j}, {**point, "threads": 1}, {**point, "mean_over": 2},
             {k: v for k, v in point.items() if k != "s3"}, {**point, "unknown": 1.0}, {}]
    for name in ("forward", "value_and_grad", "grad"):
        entry = getattr(module, name)
        assert type(entry).__name__ == "compiled_function"
        python = entry.__wrapped__
        assert entry.__doc__ == python.__doc__ and entry.__name__ == name and entry.__module__ == module.__name__
        assert "s0" in str(inspect.signature(entry))  # the parameters of the Python function
        assert pickle.loads(pickle.dumps(entry)) is entry and name in repr(entry)
        for arrays in calls:
            _same_outcome(_outcome(entry, arrays), _outcome(python, arrays))
        values = list(point.values())
        _same_outcome(_outcome(lambda: entry(*values), {}), _outcome(lambda: python(*values), {}))  # by position
        _same(entry(**point), entry(**reordered))
        _same(entry(**point), entry(**point, out=entry(**point)))  # out= takes the Python path
    loss, grads = module.value_and_grad(**point)
    assert type(loss) is float and all(type(g) is float for g in grads.values())
    assert module.grad(**point) == grads and module.forward(**point)["loss"] == loss


def test_kernels_of_many_numbers_keep_the_python_function(wide):
    """A one-example entry writes its numbers on the C stack (256 at most): a kernel of more
    symbols and results keeps the Python function (same results, the cffi entry point)."""
    width, module = wide
    fits = width + (1 + width) <= 256  # the symbols, then the loss and a gradient per symbol
    assert (type(module.value_and_grad).__name__ == "compiled_function") == fits
