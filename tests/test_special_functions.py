"""Functions beyond the elementary ones: SymPy's C-function heads, gamma relatives,
inverse reciprocal functions, floor and friends, 1x1 matrix powers.

Values and derivatives of the compiled kernels are compared with mpmath at 100
digits or more (derivatives by mpmath's own numerical differentiation of the SymPy
formula, so nothing of symgrad's rules is reused), in float64 and float32.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp
from sympy.codegen import cfunctions as cf

import symgrad as sg
from symgrad.errors import ModelError, UnsupportedFunctionError

# name, f(symbol), points (inside the domain, at large and small magnitudes), relative tolerance
FUNCTIONS = [
    ("log1p", cf.log1p, [1e-17, -0.5, 3.0, 1e300], 1e-14),
    ("expm1", cf.expm1, [3e-13, -2.0, 1.5, -40.0], 1e-14),
    ("exp2", cf.exp2, [0.3, -5.0, 1000.0], 1e-14),
    ("log2", cf.log2, [0.7, 1e-300, 1e300], 1e-14),
    ("log10", cf.log10, [0.7, 1e-300, 1e300], 1e-14),
    ("cbrt", cf.Cbrt, [0.7, 27.0, 1e-300, 1e300], 1e-14),
    ("log_base", lambda v: sp.log(v, 3), [0.7, 81.0], 1e-14),
    ("root", lambda v: sp.root(v, 5), [0.7, 32.0], 1e-14),
    ("sinc", sp.sinc, [0.7, 1e-9, -2.5, 0.999, 1.001, 40.0], 1e-13),
    ("loggamma", sp.loggamma, [0.7, 2.5, 30.0, 1e5], 1e-13),
    ("digamma", sp.digamma, [0.7, 2.5, 30.0, 1e6, -0.5], 1e-13),
    ("trigamma", lambda v: sp.polygamma(1, v), [0.7, 2.5, 30.0, -1.5], 1e-13),
    ("tetragamma", lambda v: sp.polygamma(2, v), [0.7, 2.5, 30.0], 1e-13),
    ("acoth", sp.acoth, [1.5, -3.0, 1e10, 1 + 1e-10, 1e200], 1e-14),
    ("asec", sp.asec, [1.5, 3.0, 1e10, -1 - 1e-10, 1 + 1e-12], 1e-13),
    ("acsc", sp.acsc, [1.5, -3.0, 1e10, 1 + 1e-10], 1e-13),
    ("asech", sp.asech, [0.3, 0.9, 1e-10, 1 - 1e-10], 1e-13),
    ("acsch", sp.acsch, [0.3, -2.0, 1e10, 1e-200, 1e150], 1e-14),
    # the older inverse functions, near the ends of their domains and at large magnitudes
    ("asin", sp.asin, [0.3, 1 - 1e-10, -1 + 1e-12, 1e-300], 1e-13),
    ("acos", sp.acos, [0.3, 1 - 1e-10, -1 + 1e-12], 1e-13),
    ("atanh", sp.atanh, [0.3, 1 - 1e-10, -1 + 1e-13, 1e-300], 1e-13),
    ("asinh", sp.asinh, [0.7, 1e150, -1e300, 1e-300], 1e-14),
    ("acosh", sp.acosh, [1.5, 1 + 1e-10, 1e150, 1e300], 1e-13),
    ("frac", sp.frac, [0.7, 2.25, -1.75], 1e-14),
    ("mod3", lambda v: sp.Mod(v, 3), [0.7, 7.25, -1.75], 1e-14),
    ("hypot2", lambda v: cf.hypot(v, 2), [0.7, 1e200, 1e-200], 1e-14),
]


def _true_value_and_derivative(f, v):
    symbol = sp.Symbol("v", real=True)
    expr = sp.expand_func(f(symbol))
    digits = 100 + (3 * int(abs(mpmath.log10(abs(v)))) if v != 0 else 0)  # hypot(1e-200, 2) cancels
    with mpmath.workdps(digits):
        g = sp.lambdify(symbol, expr, "mpmath")
        point = mpmath.mpf(v)
        step = mpmath.mpf(10) ** (-40) * (abs(point) if point != 0 else 1)
        value = g(point)
        slope = (g(point + step) - g(point - step)) / (2 * step)
        return float(mpmath.re(value)), float(mpmath.re(slope))


@pytest.fixture(scope="module")
def models():
    symbols = {name: sp.Symbol(f"v_{name}", real=True) for name, *_ in FUNCTIONS}
    terms = {name: f(symbols[name]) for name, f, *_ in FUNCTIONS}
    return sg.Model("special_functions", loss=sp.Add(*terms.values()), params=list(symbols.values()),
                    outputs=terms)


def _points(k):
    return {f"v_{name}": points[min(k, len(points) - 1)] for name, _, points, _ in FUNCTIONS}


@pytest.mark.parametrize("k", range(max(len(points) for _, _, points, _ in FUNCTIONS)))
def test_values_and_derivatives_match_mpmath(compile_model, models, k):
    module = compile_model(models)
    point = _points(k)
    _, grads = module.value_and_grad(**point)
    outputs = module.forward(**point)
    for name, f, points, rtol in FUNCTIONS:
        v = points[min(k, len(points) - 1)]
        value, slope = _true_value_and_derivative(f, v)
        got_value, got_slope = float(outputs[name]), float(grads[f"v_{name}"])
        assert got_value == pytest.approx(value, rel=rtol, abs=1e-300), f"{name}({v})"
        assert got_slope == pytest.approx(slope, rel=max(rtol, 1e-12), abs=1e-300), f"{name}'({v})"


def test_float32_builds_match_float64(compile_model, models):
    f64 = compile_model(models)
    f32 = compile_model(models, dtype="float32")
    names = [name for name, *_ in FUNCTIONS]
    rng = np.random.default_rng(7)
    for _ in range(3):
        point = {f"v_{name}": float(np.float32(v * (1 + 0.1 * rng.uniform())))
                 for name, v in zip(names, [p[0] for _, _, p, _ in FUNCTIONS])}
        want_grads = f64.value_and_grad(**point)[1]
        got_grads = f32.value_and_grad(**point)[1]
        want, got = f64.forward(**point), f32.forward(**point)
        for name in names:
            assert float(got[name]) == pytest.approx(float(want[name]), rel=1e-6, abs=1e-7), name
            assert float(got_grads[f"v_{name}"]) == pytest.approx(float(want_grads[f"v_{name}"]), rel=2e-6,
                                                                   abs=1e-7), name


def test_real_cube_root_of_negative_numbers(compile_model):
    x = sp.Symbol("x", real=True)
    for name, expr in (("cbrt", cf.Cbrt(x)), ("real_root", sp.real_root(x, 3))):
        module = compile_model(sg.Model(f"neg_{name}", loss=expr, params=[x]))
        for v in (-8.0, -0.3, 5.0):
            loss, grads = module.value_and_grad(x=v)
            assert loss == pytest.approx(np.cbrt(v), rel=1e-15), name
            assert grads["x"] == pytest.approx(1 / (3 * np.cbrt(v) ** 2), rel=1e-14), name


def test_floor_and_ceiling_have_derivative_zero_and_say_so(compile_model):
    x, c = sp.symbols("x c", real=True)
    model = sg.Model("steps", loss=sp.floor(x) * x + sp.ceiling(x / 2) + sp.Mod(x, c) + sp.frac(3 * x),
                     params=[x, c])
    module = compile_model(model)
    xv, cv = 2.7, 1.25
    loss, grads = module.value_and_grad(x=xv, c=cv)
    assert loss == pytest.approx(2 * xv + 2 + (xv % cv) + (3 * xv) % 1, rel=1e-14)
    assert grads["x"] == pytest.approx(2 + 1 + 3, rel=1e-14)  # floor(x) + d Mod/dx + d frac(3x)/dx
    assert grads["c"] == pytest.approx(-np.floor(xv / cv), rel=1e-14)
    notes = " ".join(model.graph.rewrites)
    for head in ("Mod", "frac"):  # derivatives between the jumps that are not 0
        assert head in notes
    from symgrad import ops

    for name in ("floor", "ceiling"):  # listed by symgrad show as taken to be 0
        assert not ops.get(name).differentiable


def test_mod_has_the_sign_of_the_divisor(compile_model):
    x, c = sp.symbols("x c", real=True)
    module = compile_model(sg.Model("mod_signs", loss=sp.Mod(x, c), params=[x, c]))
    for xv, cv in ((7.5, 2.0), (-7.5, 2.0), (7.5, -2.0), (-7.5, -2.0), (1e17 + 3, 7.0)):
        loss, _ = module.value_and_grad(x=xv, c=cv)
        assert loss == np.mod(xv, cv), (xv, cv)


def test_polygamma_needs_a_whole_constant_order():
    x = sp.Symbol("x", positive=True)
    with pytest.raises(UnsupportedFunctionError, match="order must be a whole number"):
        sg.Model("bad_order", loss=sp.polygamma(sp.Rational(1, 2), x), params=[x]).graph


def test_fractional_power_of_a_one_by_one_product(compile_model):
    """(x.T*y)**S.Half, as SymPy's matrix-derivative tests write it, is a scalar."""
    x, y = sp.MatrixSymbol("x", 3, 1), sp.MatrixSymbol("y", 3, 1)
    module = compile_model(sg.Model("matpow_half", loss=(x.T * y) ** sp.S.Half, params=[x, y]))
    xv, yv = np.array([[1.0], [2.0], [0.5]]), np.array([[0.3], [1.0], [4.0]])
    loss, grads = module.value_and_grad(x=xv, y=yv)
    s = (xv.T @ yv).item()
    assert float(loss) == pytest.approx(np.sqrt(s), rel=1e-15)
    np.testing.assert_allclose(grads["x"], yv / (2 * np.sqrt(s)), rtol=1e-14)
    np.testing.assert_allclose(grads["y"], xv / (2 * np.sqrt(s)), rtol=1e-14)


def test_functions_without_a_derivative_convention_are_still_refused():
    x = sp.Symbol("x", real=True)
    with pytest.raises(ModelError, match="zeta"):
        sg.Model("no_rule", loss=sp.zeta(x), params=[x]).graph


def test_atan2_gradient_at_extreme_magnitudes(compile_model):
    """x/(x**2 + y**2) overflowed to 0 at x = 1e300; the true gradient is 1e-300."""
    y, x = sp.symbols("y x", real=True)
    module = compile_model(sg.Model("atan2_extremes", loss=sp.atan2(y, x), params=[y, x]))
    for yv, xv in ((1e-300, 1e300), (3e200, -4e200), (-2e-200, 1e-200), (0.3, -1.2)):
        with mpmath.workdps(60):
            r2 = mpmath.mpf(xv) ** 2 + mpmath.mpf(yv) ** 2
            want = (float(mpmath.atan2(yv, xv)), float(mpmath.mpf(xv) / r2), float(-mpmath.mpf(yv) / r2))
        loss, grads = module.value_and_grad(y=yv, x=xv)
        assert float(loss) == pytest.approx(want[0], rel=1e-15)
        assert grads["y"] == pytest.approx(want[1], rel=1e-14, abs=1e-320), (yv, xv)
        assert grads["x"] == pytest.approx(want[2], rel=1e-14, abs=1e-320), (yv, xv)
