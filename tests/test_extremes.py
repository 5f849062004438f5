"""Every element-wise function of the registry at extreme magnitudes, against mpmath.

At 1e±300, ±1000, ±30 and ±1e-8, wherever the true value and derivative are
real and finite (or underflow), the compiled kernel must give them to a
relative 1e-9 in float64. The registry drives the list, so a new function is
checked the moment it is registered. The true numbers are computed by mpmath
from the SymPy formula alone, with enough digits for the point's magnitude.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import ops

POINTS = [1e300, -1e300, 1e-300, -1e-300, 1000.0, -1000.0, 30.5, -30.5, 1e-8, -1e-8]

#: Functions read one-to-one from a SymPy head, of one argument, with a derivative or none.
FUNCTIONS = sorted(
    (name, op.sympy_heads[0]) for name, op in ops.REGISTRY.items()
    if op.kind == "elementwise" and op.arity == 1 and len(op.sympy_heads) == 1 and op.from_sympy is None
    and not issubclass(op.sympy_heads[0], sp.logic.boolalg.Boolean)
)
#: Documented conventions (README, "Conventions at edges"): 1 - y**2 is right to 1e-16 absolutely.
ABSOLUTE = {"tanh": 2e-16, "coth": 2e-16}


def truth(head, v):
    """(value, derivative) of head at v by mpmath, or None where either is not a real number."""
    x = sp.Symbol("x", real=True)
    # symgrad's own functions by their textbook formula (sigmoid: 1/(1 + exp(-x)))
    expr = head._numeric_form(x) if hasattr(head, "_numeric_form") else sp.expand_func(head(x))
    digits = 60 + 3 * int(abs(math.log10(abs(v))))
    with mpmath.workdps(digits):
        f = sp.lambdify(x, expr, "mpmath")
        p = mpmath.mpf(v)
        step = mpmath.mpf(10) ** -30 * min(1, abs(p))
        try:
            value, ahead, behind = f(p), f(p + step), f(p - step)
        except (ValueError, ZeroDivisionError, TypeError):
            return None
        values = [mpmath.mpmathify(w) for w in (value, ahead, behind)]
        if any(mpmath.im(w) != 0 or not mpmath.isfinite(w) for w in values):
            return None
        derivative = (values[1] - values[2]) / (2 * step)
        return float(mpmath.re(values[0])), float(mpmath.re(derivative))


def close(got, want, rtol, atol):
    if abs(want) < 1e-300:
        return abs(got) <= max(1e-300, atol)
    if not math.isfinite(want):
        return got == want
    return abs(got - want) <= rtol * abs(want) + atol


@pytest.fixture(scope="module")
def module(compile_model):
    symbols = {name: sp.Symbol(f"v_{name}", real=True) for name, _ in FUNCTIONS}
    terms = {name: head(symbols[name]) for name, head in FUNCTIONS}
    model = sg.Model("extremes", loss=sp.Add(*terms.values(), evaluate=False), params=list(symbols.values()),
                     outputs=terms)
    return compile_model(model)


@pytest.mark.parametrize("v", POINTS)
def test_every_function_at_extreme_magnitudes_matches_mpmath(module, v):
    point = {f"v_{name}": v for name, _ in FUNCTIONS}
    with np.errstate(all="ignore"):
        outputs = module.forward(**point)
        _, grads = module.value_and_grad(**point)
    checked, wrong = 0, []
    for name, head in FUNCTIONS:
        if name in ("floor", "ceiling", "frac") and float(v).is_integer():
            continue  # a jump
        want = truth(head, v)
        if want is None:
            continue
        checked += 1
        got = float(outputs[name]), float(grads[f"v_{name}"])
        atol = ABSOLUTE.get(name, 0.0)
        if not (close(got[0], want[0], 1e-9, 0.0) and close(got[1], want[1], 1e-9, atol)):
            wrong.append(f"{name}({v}): got {got}, want {want}")
    assert not wrong, "\n".join(wrong)
    assert checked >= 10


@pytest.fixture(scope="module")
def both_precisions(compile_model):
    symbols = {name: sp.Symbol(f"v_{name}", real=True) for name, _ in FUNCTIONS}
    terms = {name: head(symbols[name]) for name, head in FUNCTIONS}
    model = sg.Model("precisions", loss=sp.Add(*terms.values(), evaluate=False), params=list(symbols.values()),
                     outputs=terms)
    return compile_model(model), compile_model(model, dtype="float32")


def test_float32_kernels_match_float64_on_every_function_domain(both_precisions):
    """Each function at points of its registry domain: float32 within 1e-6 of float64 (a few float32 ulp
    of the value's scale, where the value crosses zero)."""
    f64, f32 = both_precisions
    rng = np.random.default_rng(3)
    for _ in range(4):
        point = {f"v_{name}": float(np.float32(rng.uniform(*ops.get(name).domain[0]))) for name, _ in FUNCTIONS}
        want, got = f64.forward(**point), f32.forward(**point)
        want_grads, got_grads = f64.value_and_grad(**point)[1], f32.value_and_grad(**point)[1]
        for name, _ in FUNCTIONS:
            for a, b, what in ((got[name], want[name], "value"),
                               (got_grads[f"v_{name}"], want_grads[f"v_{name}"], "derivative")):
                a, b = float(a), float(b)
                assert abs(a - b) <= 1e-6 * max(abs(b), 1.0), f"{name} {what} at {point[f'v_{name}']}: {a} vs {b}"
