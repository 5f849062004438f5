"""Formulas as people write them, at points where the textbook form over- or underflows.

Each row gives the true value and gradient, computed by mpmath at 50 digits from
the formula as written (the oracle knows nothing of symgrad's rewrites). The
compiled kernels must agree to a relative 1e-9 in float64. The same formulas on
ordinary inputs must stay as accurate as the textbook form (a rewrite may never
cost digits), and every spelling of one formula must reach the same node.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.frontend import build_graph

z, a, b, x, y, t = sp.symbols("z a b x y t", real=True)


def oracle(expr, symbols, point, dps=None):
    """(value, [d expr / d s for s in symbols]) at ``point``, by mpmath with enough digits
    that the textbook formula's own cancellations (1 - cos(1e-150)) cost nothing."""
    if dps is None:
        magnitudes = [5 * abs(mpmath.log10(abs(float(v)))) + (abs(float(v)) if abs(float(v)) < 1e4 else 0)
                      for v in point if v != 0]
        dps = 50 + int(max(magnitudes, default=0))
    with mpmath.workdps(dps):
        args = [mpmath.mpf(float(v)) for v in point]
        value = sp.lambdify(symbols, expr, "mpmath")(*args)
        grads = [sp.lambdify(symbols, sp.diff(expr, s), "mpmath")(*args) for s in symbols]
        return float(value), [float(g) for g in grads]


def assert_close(got, want, rtol, what=""):
    got, want = float(got), float(want)
    if np.isinf(want) and got == want:
        return
    if want == 0 or abs(want) < 1e-300:  # the true number underflows: so must the result
        assert abs(got) <= 1e-300, f"{what}: got {got!r}, want {want!r}"
        return
    assert abs(got - want) <= rtol * abs(want), \
        f"{what}: got {got!r}, want {want!r} (rel {abs(got - want) / abs(want):.2e})"


# The table of issue 8, item 4: formula, its symbols, extreme points, and ordinary points.
TABLE = [
    ("log_sigmoid", sp.log(1 / (1 + sp.exp(-z))), [z], [(-750,), (750,), (-40,)], [(-2.5,), (0.3,), (4.0,)]),
    ("sigmoid", 1 / (1 + sp.exp(-z)), [z], [(-708,), (-745,), (40,), (30,)], [(-3.0,), (0.0,), (2.2,)]),
    ("sigmoid_ratio", sp.exp(z) / (sp.exp(z) + 1), [z], [(750,), (-750,), (30,)], [(-1.5,), (0.7,)]),
    ("bce", -(t * sp.log(1 / (1 + sp.exp(-z))) + (1 - t) * sp.log(1 - 1 / (1 + sp.exp(-z)))), [z],
     [(45,), (-45,), (800,)], [(0.3,), (-1.7,)]),
    ("logaddexp", sp.log(sp.exp(a) + sp.exp(b)), [a, b], [(800, 801), (-800, -801), (1000, -1000)],
     [(0.3, -0.2), (1.5, 2.5), (-0.7, -0.7)]),
    ("softmax2", sp.exp(a) / (sp.exp(a) + sp.exp(b)), [a, b], [(800, 801), (-1000, -999)], [(0.3, -0.2)]),
    ("softmax3", sp.exp(a) / (sp.exp(a) + sp.exp(b) + sp.exp(x)), [a, b, x], [(800, 801, 799)],
     [(0.3, -0.2, 1.0)]),
    ("hypot", sp.sqrt(x**2 + y**2), [x, y], [(6e170, 8e170), (6e-170, 8e-170), (1e300, 1e300)],
     [(3.0, 4.0), (0.5, -1.25)]),
    ("norm3", sp.sqrt(x**2 + y**2 + a**2), [x, y, a], [(6e170, 8e170, 1e170), (2e-200, 1e-200, 2e-200)],
     [(1.0, 2.0, 2.0)]),
    ("log1p", sp.log(1 + x), [x], [(1e-17,), (-1e-300,), (3e-9,)], [(0.5,), (2.0,), (-0.3,)]),
    ("expm1", sp.exp(x) - 1, [x], [(3e-13,), (-1e-20,), (1e-300,)], [(0.5,), (-2.0,)]),
    ("one_minus_expm1", 1 - sp.exp(x), [x], [(1e-15,)], [(0.8,)]),
    ("one_minus_sigmoid", 1 - 1 / (1 + sp.exp(-z)), [z], [(40,), (-40,), (745,)], [(0.3,), (-2.0,)]),
    ("one_minus_cos", (1 - sp.cos(x)) / x**2, [x], [(5e-9,), (1e-150,), (-3e-5,)], [(0.5,), (2.0,), (-1.3,)]),
    ("sinc", sp.sin(x) / x, [x], [(1e-200,), (2e-8,)], [(0.9,), (-2.5,)]),
    ("log_reciprocal", sp.log(1 / x), [x], [(1e-310,), (1e300,)], [(0.5,), (3.0,)]),
    ("log_square", sp.log(x**2), [x], [(1e-200,), (-1e200,)], [(0.5,), (-3.0,)]),
]


def _own_symbols(name, expr, symbols):
    """The row's formula in symbols of its own, so that all rows share one build."""
    renamed = [sp.Symbol(f"{name}_{s}", real=True) for s in symbols]
    return expr.subs(t, 1).xreplace(dict(zip(symbols, renamed))), renamed


@pytest.fixture(scope="module")
def table_module(compile_model):
    rows = {name: _own_symbols(name, expr, symbols) for name, expr, symbols, *_ in TABLE}
    # evaluate=False: each row stays a term of its own (SymPy would cancel exp(x) - 1 + 1 - exp(y)).
    loss = sp.Add(*[expr for expr, _ in rows.values()], evaluate=False)
    params = [s for _, symbols in rows.values() for s in symbols]
    module = compile_model(sg.Model("stable_table", loss=loss, params=params,
                                    outputs={name: expr for name, (expr, _) in rows.items()}))
    return module, rows


@pytest.mark.parametrize("name,expr,symbols,extreme,ordinary", TABLE, ids=[row[0] for row in TABLE])
def test_formula_as_written_is_right_at_extremes_and_ordinary_points(table_module, name, expr, symbols, extreme,
                                                                      ordinary):
    module, rows = table_module
    expr, own = rows[name]
    others = {str(s): 0.5 for _, symbols in rows.values() for s in symbols}
    # Extreme points to 1e-9 of mpmath; ordinary ones as accurately as a double allows (a few ulp).
    for point, rtol in [(p, 1e-9) for p in extreme] + [(p, 1e-14) for p in ordinary]:
        values = {**others, **{str(s): v for s, v in zip(own, point)}}
        want, want_grads = oracle(expr, own, point)
        assert_close(module.forward(**values)[name], want, rtol, f"{expr} at {point}: value")
        _, grads = module.value_and_grad(**values)
        for s, g in zip(own, want_grads):
            assert_close(grads[str(s)], g, rtol, f"{expr} at {point}: d/d{s}")


def test_binary_cross_entropy_with_both_targets(compile_model):
    p = 1 / (1 + sp.exp(-z))
    expr = -(t * sp.log(p) + (1 - t) * sp.log(1 - p))
    module = compile_model(sg.Model("stable_bce_targets", loss=expr, params=[z], inputs=[t]))
    for zv in (45.0, -45.0, 700.0, -700.0, 0.4):
        for tv in (0.0, 1.0, 0.25):
            want, (grad,) = oracle(expr.subs(t, tv), [z], [zv])
            loss, got = module.value_and_grad(z=zv, t=np.array([tv]))
            assert_close(loss, want, 1e-9, f"bce z={zv} t={tv}")
            assert_close(got["z"], grad, 1e-9, f"bce' z={zv} t={tv}")


def test_log_of_a_matrix_sum_of_exponentials_is_logsumexp(compile_model):
    Z = sp.MatrixSymbol("Z", 3, 1)
    spellings = {
        "sum": sp.log(sg.sum(Z.applyfunc(sp.exp))),
        "ones": sp.log(sg.scalar(sp.OneMatrix(1, 3) * Z.applyfunc(sp.exp))),
        "ones_element": sp.log((sp.OneMatrix(1, 3) * Z.applyfunc(sp.exp))[0, 0]),
        "mean": sp.log(sg.sum(Z.applyfunc(sp.exp)) / 3) + sp.log(3),
    }
    reference = compile_model(sg.Model("stable_lse_ref", loss=sg.logsumexp(Z), params=[Z]))
    zv = np.array([[900.0], [901.5], [899.0]])
    want_loss, want_grad = reference.value_and_grad(Z=zv)
    assert np.isfinite(want_loss)
    for name, loss in spellings.items():
        module = compile_model(sg.Model(f"stable_lse_{name}", loss=loss, params=[Z]))
        got_loss, got = module.value_and_grad(Z=zv)
        np.testing.assert_allclose(got_loss, want_loss, rtol=1e-14, err_msg=name)
        np.testing.assert_allclose(got["Z"], want_grad["Z"], rtol=1e-13, err_msg=name)


def test_softmax_written_out_is_softmax(compile_model):
    Z = sp.MatrixSymbol("Z", 3, 1)
    c = sp.MatrixSymbol("c", 3, 1)
    written = Z.applyfunc(sp.exp) / sg.sum(Z.applyfunc(sp.exp))
    loss = sg.scalar(c.T * written)
    module = compile_model(sg.Model("stable_softmax_written", loss=loss, params=[Z], inputs=[c]))
    reference = compile_model(sg.Model("stable_softmax_ref", loss=sg.scalar(c.T * sg.softmax(Z)), params=[Z],
                                       inputs=[c]))
    for zv in (np.array([[800.0], [805.0], [790.0]]), np.array([[0.1], [-0.3], [0.7]])):
        cv = np.array([[1.0], [0.5], [-2.0]])
        got = module.value_and_grad(Z=zv, c=cv[None])
        want = reference.value_and_grad(Z=zv, c=cv[None])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-14)
        np.testing.assert_allclose(got[1]["Z"], want[1]["Z"], rtol=1e-12, atol=1e-300)


def _graph(expr, symbols):
    return build_graph(params=symbols, inputs=[], loss=expr, outputs=None, reduce="mean")


def _loss_node(graph):
    (result,) = graph.results["example_loss"]
    return graph.nodes[result.node]


@pytest.mark.parametrize("spellings,op", [
    ((1 / (1 + sp.exp(-z)), sp.exp(z) / (1 + sp.exp(z)), sp.exp(z) / (sp.exp(z) + 1), sg.sigmoid(z)), "sigmoid"),
    ((sp.log(1 + sp.exp(z)), sp.log(sp.exp(z) + 1), sg.softplus(z)), "softplus"),
    ((sp.log(1 + z), sp.log(z + 1)), "log1p"),
    ((sp.exp(z) - 1, -1 + sp.exp(z)), "expm1"),
    ((sp.sqrt(a**2 + b**2), sp.sqrt(b**2 + a**2), (a**2 + b**2) ** sp.Rational(1, 2)), "hypot"),
    ((sp.log(sp.exp(a) + sp.exp(b)), sp.log(sp.exp(b) + sp.exp(a))), "logaddexp"),
])
def test_every_spelling_reaches_the_same_stable_node(spellings, op):
    symbols = sorted({s for e in spellings for s in e.free_symbols}, key=str)
    nodes = set()
    for e in spellings:
        graph = _graph(e, symbols)
        node = _loss_node(graph)
        assert node.op == op, f"{e} became {node.op}"
        nodes.add((node.op, tuple(graph.nodes[i].op for i in node.args)))
    assert len(nodes) == 1


def test_rewrites_are_recorded_in_the_graph():
    graph = _graph(sp.log(1 + x) + sp.sqrt(x**2 + y**2) + 1 / (1 + sp.exp(-y)), [x, y])
    assert "log(1 + x) -> log1p(x)" in graph.rewrites
    assert any(r.startswith("sqrt(t1**2 + t2**2 + ...) -> hypot") for r in graph.rewrites)
    assert "1/(1 + exp(u)) -> sigmoid(-u)" in graph.rewrites
    assert _graph(x * y + sp.sin(x), [x, y]).rewrites == []


def test_rewrites_survive_differentiation_and_the_copy():
    from symgrad.autodiff import differentiate

    graph = _graph(sp.log(1 + x), [x])
    derived = differentiate(graph, ["x"], "mean")
    assert "log(1 + x) -> log1p(x)" in derived.rewrites
    assert derived.rewrites is not graph.rewrites


# --- float32 kernels at float32 accuracy --------------------------------------------------------


def test_float32_cross_entropy_at_large_logits(compile_model):
    """cross_entropy([800, 805], class 1) in float32: 1e-6 of mpmath, and a gradient that sums to 0."""
    logits = sp.MatrixSymbol("logits", 2, 1)
    k = sp.Symbol("k")
    model = sg.Model("ce_large_logits", loss=sg.cross_entropy(logits, k), params=[logits], inputs=[k])
    with mpmath.workdps(50):
        want = float(mpmath.log(mpmath.exp(800) + mpmath.exp(805)) - 805)
        p = [float(mpmath.exp(v - mpmath.log(mpmath.exp(800) + mpmath.exp(805)))) for v in (800, 805)]
    want_grad = np.array([[p[0]], [p[1] - 1]])
    for dtype, rtol in (("float32", 1e-6), ("float64", 1e-12)):
        module = compile_model(model, dtype=dtype)
        loss, grads = module.value_and_grad(logits=np.array([[800.0], [805.0]]), k=np.array([1.0]))
        assert abs(float(loss) - want) <= rtol * abs(want), (dtype, float(loss), want)
        np.testing.assert_allclose(grads["logits"], want_grad, rtol=rtol * 10, err_msg=dtype)
        assert abs(float(np.sum(grads["logits"], dtype=np.float64))) <= 4 * np.finfo(dtype).eps


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "logsumexp"])
def test_float32_softmax_family_at_large_logits(compile_model, op):
    Z = sp.MatrixSymbol("Z", 3, 1)
    c = sp.MatrixSymbol("c", 3, 1)
    head = getattr(sg, op)
    loss = head(Z) if op == "logsumexp" else sg.scalar(c.T * head(Z))
    model = sg.Model(f"f32_{op}", loss=loss, params=[Z], inputs=[c])
    zv = np.array([[800.0], [805.0], [803.5]])
    cv = np.array([[[0.5], [1.0], [-0.25]]])
    want = compile_model(model).value_and_grad(Z=zv, c=cv)
    got = compile_model(model, dtype="float32").value_and_grad(Z=zv, c=cv)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1]["Z"], want[1]["Z"], rtol=2e-6, atol=1e-7)


def test_float32_stable_forms_match_float64(compile_model):
    """The rewritten forms in float32 agree with the float64 build at float32 accuracy."""
    expr = (sp.log(1 + sp.exp(a)) + sp.log(sp.exp(a) + sp.exp(b)) + sp.sqrt(a**2 + b**2)
            + sp.exp(b) / (sp.exp(a) + sp.exp(b)) + sp.log(1 + b**2) + (sp.exp(b / 100) - 1))
    model = sg.Model("f32_stable_mix", loss=expr, params=[a, b])
    f64 = compile_model(model)
    f32 = compile_model(model, dtype="float32")
    for av, bv in ((0.3, -1.2), (80.0, 81.0), (-85.0, 2.0), (1e-3, 2e-3)):
        want = f64.value_and_grad(a=av, b=bv)
        got = f32.value_and_grad(a=np.float32(av), b=np.float32(bv))
        assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-6)
        for s in ("a", "b"):
            assert float(got[1][s]) == pytest.approx(float(want[1][s]), rel=2e-6, abs=1e-7)


def test_stable_forms_apply_element_by_element_to_matrices(compile_model):
    A, B = sp.MatrixSymbol("A", 2, 2), sp.MatrixSymbol("B", 2, 2)
    log_sum = (A.applyfunc(sp.exp) + B.applyfunc(sp.exp)).applyfunc(sp.log)
    norm = (sp.HadamardPower(A, 2) + sp.HadamardPower(B, 2)).applyfunc(sp.sqrt)
    module = compile_model(sg.Model("stable_matrices", loss=sg.sum(log_sum) + sg.sum(norm) / 1e300,
                                    params=[A, B]))
    av = np.array([[800.0, -750.0], [3e299, 0.5]])
    bv = np.array([[801.0, -751.0], [4e299, -0.25]])
    loss, grads = module.value_and_grad(A=av, B=bv)
    want = np.sum(np.logaddexp(av, bv)) + np.sum(np.hypot(av, bv)) / 1e300
    assert float(loss) == pytest.approx(want, rel=1e-14)
    sig = np.exp(-np.logaddexp(0, bv - av))  # sigmoid(a - b)
    np.testing.assert_allclose(grads["A"], sig + av / np.hypot(av, bv) / 1e300, rtol=1e-13)
    np.testing.assert_allclose(grads["B"], 1 - sig + bv / np.hypot(av, bv) / 1e300, rtol=1e-13)


def test_square_root_of_a_matrix_sum_of_squares_is_the_scaled_norm(compile_model):
    Z = sp.MatrixSymbol("Z", 3, 1)
    T = sp.MatrixSymbol("T", 3, 1)
    spellings = {
        "hadamard_power": sp.sqrt(sg.sum(sp.HadamardPower(Z, 2))),
        "hadamard_product": sp.sqrt(sg.sum(sp.HadamardProduct(Z, Z))),
        "inner_product": (Z.T * Z) ** sp.S.Half,
        "rmse": sp.sqrt(sg.mse(Z, T)) * sp.sqrt(3),
    }
    for name, loss in spellings.items():
        model = sg.Model(f"stable_norm_{name}", loss=loss, params=[Z], inputs=[T])
        assert any(node.op == "norm" for node in model.graph.nodes), name
        module = compile_model(model)
        for zv in ([6e200, 8e200, -1e200], [6e-200, -8e-200, 1e-200], [0.3, -1.2, 2.0]):
            zv = np.array(zv)[:, None]
            want = float(np.hypot.reduce(np.abs(zv[:, 0])))
            loss_value, grads = module.value_and_grad(Z=zv, T=np.zeros((1, 3, 1)))
            assert float(loss_value) == pytest.approx(want, rel=1e-15), name
            np.testing.assert_allclose(grads["Z"], zv / want, rtol=1e-15, err_msg=name)
