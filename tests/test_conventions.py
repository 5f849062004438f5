"""Values and gradients exactly on domain edges, against PyTorch float64 autograd.

At a zero base of a power, a kink (abs, relu, max on a tie), the end of a domain
(asin at 1, log at 0), symgrad follows the conventions PyTorch and JAX share
(README, "Conventions at edges"). Each case here is one term of a model, so one
build checks them all; the displayed gradient formula is checked to give the
same numbers as the kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symgrad as sg

torch = pytest.importorskip("torch")


def torch_value_and_grad(f, *point):
    args = [torch.tensor(float(v), dtype=torch.float64, requires_grad=True) for v in point]
    out = f(*args)
    grads = torch.autograd.grad(out, args, allow_unused=True)
    return out.item(), [0.0 if g is None else float(g) for g in grads]


def assert_same(got, want, what):
    np.testing.assert_allclose(np.float64(got), np.float64(want), rtol=1e-15, atol=0, equal_nan=True,
                               err_msg=what)


# --- powers with a variable exponent: x**y at (x, y) ---------------------------------------------

POW_POINTS = [(0.0, 2.0), (0.0, 1.0), (0.0, 0.5), (0.0, 1.5), (0.0, 3.0), (0.0, 0.0), (0.0, -1.0), (0.0, -0.5),
              (0.0, -2.0), (-0.0, 0.5), (-2.0, 2.0), (-2.0, 3.0), (-2.0, -1.0), (-2.0, 0.0), (-2.0, 0.5),
              (2.0, 0.0), (3.0, 2.5), (0.5, -1.5)]


@pytest.fixture(scope="module")
def power_module(compile_model):
    x, y = sp.symbols("x y", real=True)
    return compile_model(sg.Model("edge_pow", loss=x**y, params=[x, y]))


@pytest.mark.parametrize("point", POW_POINTS, ids=[f"{p[0]}**{p[1]}" for p in POW_POINTS])
def test_power_with_variable_exponent_follows_pytorch(power_module, point):
    want_value, (want_dx, want_dy) = torch_value_and_grad(lambda x, y: x**y, *point)
    loss, grads = power_module.value_and_grad(x=point[0], y=point[1])
    assert_same(loss, want_value, f"{point}: value")
    assert_same(grads["x"], want_dx, f"{point}: d/dx")
    assert_same(grads["y"], want_dy, f"{point}: d/dy")


def test_displayed_power_gradient_is_the_kernels_formula():
    """The formulas ``model.gradients()`` prints give the kernel's numbers at the edges too."""
    x, y = sp.symbols("x y", real=True)
    formulas = sg.Model("edge_pow_display", loss=x**y, params=[x, y]).gradients()
    for point in [(0.0, 0.0), (0.0, 2.0), (0.0, 1.0)]:
        _, want = torch_value_and_grad(lambda a, b: a**b, *point)
        for symbol, expected in zip((x, y), want):
            shown = formulas[symbol].subs({x: sp.Float(point[0]), y: sp.Float(point[1])})
            assert float(shown) == expected, (symbol, point, formulas[symbol])


# --- powers with a constant exponent: x**c -------------------------------------------------------

EXPONENTS = [sp.Integer(0), sp.Float(0.0), sp.Rational(1, 2), sp.Float(0.5), sp.Rational(3, 2), sp.Float(1.5),
             sp.Integer(2), sp.Float(2.0), sp.Integer(1), sp.Float(1.0), sp.Integer(3), sp.Integer(-1),
             sp.Integer(-2), sp.Rational(-1, 2), sp.Float(0.3), sp.Float(2.5), sp.Rational(1, 3)]


@pytest.fixture(scope="module")
def constant_powers(compile_model):
    xs = sp.symbols(f"x0:{len(EXPONENTS)}", real=True)
    terms = {f"t{k}": sp.Pow(s, c) for k, (s, c) in enumerate(zip(xs, EXPONENTS))}
    model = sg.Model("edge_const_pow", loss=sp.Add(*terms.values()), params=list(xs), outputs=terms)
    return compile_model(model), model


@pytest.mark.parametrize("base", [0.0, -0.0, -2.0, 2.0])
def test_power_with_constant_exponent_follows_pytorch(constant_powers, base):
    module, _ = constant_powers
    point = {f"x{k}": base for k in range(len(EXPONENTS))}
    _, grads = module.value_and_grad(**point)
    outputs = module.forward(**point)
    for k, c in enumerate(EXPONENTS):
        want_value, (want_grad,) = torch_value_and_grad(lambda x: x ** float(c), base)
        assert_same(outputs[f"t{k}"], want_value, f"{base}**{c}: value")
        assert_same(grads[f"x{k}"], want_grad, f"{base}**{c}: gradient")


def test_float_zero_exponent_folds_like_integer_zero(constant_powers):
    """x**0.0 is 1 with gradient 0 in the graph itself: nothing left for the kernel to compute."""
    _, model = constant_powers
    graph = model.graph
    for node in graph.nodes:
        if node.op == "pow":
            exponent = graph.nodes[node.args[1]].attrs[0]
            assert exponent not in (0, 1) and float(exponent) not in (0.0, 1.0), exponent
    gradients = model.gradients()
    x1 = sp.Symbol("x1", real=True)
    assert gradients[x1] == 0


def test_float_constants_fold_like_integers():
    """0.0*x is 0, 1.0*x and x**1.0 are x, x + 0.0 is x: as for Integer 0 and 1."""
    from symgrad.graph import Builder, Graph

    b = Builder(Graph())
    x = b.apply("symbol", attrs=("x", "param", (), sp.Symbol("x")))
    zero, one = b.const(sp.Float(0.0)), b.const(sp.Float(1.0))
    assert b.const_value(b.mul(zero, x)) == 0
    assert b.mul(one, x) == x
    assert b.apply("pow", x, one) == x
    assert b.add(x, zero) == x
    assert b.is_const(one, 1)


# --- functions at the ends of their domains and at kinks -------------------------------------------

EDGES = [
    ("sqrt", sp.sqrt, torch.sqrt, [0.0, -0.0]),
    ("abs", sp.Abs, torch.abs, [0.0, -0.0]),
    ("relu", sg.relu, torch.relu, [0.0, -0.0]),
    ("sign", sp.sign, torch.sign, [0.0]),
    ("asin", sp.asin, torch.asin, [1.0, -1.0]),
    ("acos", sp.acos, torch.acos, [1.0, -1.0]),
    ("log", sp.log, torch.log, [0.0, -0.0]),
    ("atanh", sp.atanh, torch.atanh, [1.0, -1.0]),
    ("acosh", sp.acosh, torch.acosh, [1.0]),
    ("log1p", lambda v: sp.log(1 + v), torch.log1p, [-1.0]),
    ("sigmoid", sg.sigmoid, torch.sigmoid, [0.0, 800.0, -800.0]),
    ("softplus", sg.softplus, torch.nn.functional.softplus, [0.0, 800.0, -800.0]),
    ("sinc", lambda v: sp.sin(v) / v, lambda v: torch.sinc(v / torch.pi), [0.0]),
    ("floor", sp.floor, torch.floor, [1.0, 1.5]),
    ("ceiling", sp.ceiling, torch.ceil, [1.0, 1.5]),
    ("frac", sp.frac, torch.frac, [1.5]),
]


@pytest.fixture(scope="module")
def edge_module(compile_model):
    symbols = {name: sp.Symbol(f"v_{name}", real=True) for name, *_ in EDGES}
    terms = {name: f(symbols[name]) for name, f, *_ in EDGES}
    model = sg.Model("edge_functions", loss=sp.Add(*terms.values()), params=list(symbols.values()),
                     outputs=terms)
    return compile_model(model)


@pytest.mark.parametrize("k", range(max(len(points) for *_, points in EDGES)))
def test_functions_at_edges_follow_pytorch(edge_module, k):
    point = {f"v_{name}": points[min(k, len(points) - 1)] for name, _, _, points in EDGES}
    _, grads = edge_module.value_and_grad(**point)
    outputs = edge_module.forward(**point)
    for name, _, torch_f, points in EDGES:
        v = points[min(k, len(points) - 1)]
        want_value, (want_grad,) = torch_value_and_grad(torch_f, v)
        if name == "sinc":  # torch.sinc is normalized: d/dv sinc(v/pi)
            want_value = 1.0
        assert_same(outputs[name], want_value, f"{name}({v}): value")
        assert_same(grads[f"v_{name}"], want_grad, f"{name}({v}): gradient")


@pytest.mark.parametrize("head,torch_f", [(sp.Max, torch.maximum), (sp.Min, torch.minimum)])
def test_max_and_min_split_a_tie_half_each(compile_model, head, torch_f):
    a, b = sp.symbols("a b", real=True)
    module = compile_model(sg.Model(f"edge_{head.__name__}", loss=head(a, b), params=[a, b]))
    for point in [(1.0, 1.0), (0.0, -0.0), (2.0, 1.0), (-1.0, 3.0)]:
        args = [torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in point]
        out = torch_f(*args)
        out.backward()
        loss, grads = module.value_and_grad(a=point[0], b=point[1])
        assert_same(loss, out.item(), f"{head.__name__}{point}")
        assert_same(grads["a"], float(args[0].grad), f"{head.__name__}{point}: d/da")
        assert_same(grads["b"], float(args[1].grad), f"{head.__name__}{point}: d/db")


@pytest.mark.parametrize("head,torch_f", [(sp.Max, torch.amax), (sp.Min, torch.amin)])
def test_max_and_min_of_several_split_a_tie_evenly_like_a_reduction(compile_model, head, torch_f):
    a, b, c = sp.symbols("a b c", real=True)
    module = compile_model(sg.Model(f"edge_{head.__name__}3", loss=head(a, b, c, evaluate=False),
                                    params=[a, b, c]))
    for point in [(1.0, 1.0, 1.0), (2.0, 2.0, -1.0), (0.5, -3.0, 0.5), (1.0, 2.0, 3.0)]:
        values = torch.tensor(point, dtype=torch.float64, requires_grad=True)
        out = torch_f(values, 0)
        out.backward()
        loss, grads = module.value_and_grad(a=point[0], b=point[1], c=point[2])
        assert_same(loss, out.item(), f"{head.__name__}{point}")
        for name, want in zip("abc", values.grad.tolist()):
            assert_same(grads[name], want, f"{head.__name__}{point}: d/d{name}")


def test_displayed_gradient_of_a_three_way_min():
    """The tie indicators are numbers in the displayed formula (a sum of Eq(...) failed in SymPy)."""
    a, b, c = sp.symbols("a b c", real=True)
    formulas = sg.Model("edge_min3_display", loss=sp.Min(a, b**2, c), params=[a, b, c]).gradients()
    at = {a: sp.Integer(1), b: sp.Integer(-1), c: sp.Integer(1)}
    assert [formulas[s].subs(at) for s in (a, b, c)] == [sp.Rational(1, 3), sp.Rational(-2, 3), sp.Rational(1, 3)]


def test_heaviside_at_zero_takes_its_stated_value(compile_model):
    x = sp.Symbol("x", real=True)
    module = compile_model(sg.Model("edge_heaviside", loss=sp.Heaviside(x) + 3 * sp.Heaviside(x, 1), params=[x]))
    loss, grads = module.value_and_grad(x=0.0)
    assert loss == 0.5 + 3.0
    assert grads["x"] == 0.0


def test_hypot_at_the_origin_is_nan_like_torch_hypot(compile_model):
    x, y = sp.symbols("x y", real=True)
    module = compile_model(sg.Model("edge_hypot", loss=sp.sqrt(x**2 + y**2), params=[x, y]))
    want_value, want = torch_value_and_grad(torch.hypot, 0.0, 0.0)
    loss, grads = module.value_and_grad(x=0.0, y=0.0)
    assert_same(loss, want_value, "hypot(0, 0)")
    assert_same(grads["x"], want[0], "d/dx hypot(0, 0)")
    assert_same(grads["y"], want[1], "d/dy hypot(0, 0)")
