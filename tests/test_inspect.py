"""Reading derived gradients: symbolic formulas, node-by-node passes, LaTeX, DOT, op counts."""

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.inspect import format_dot, format_latex, format_stats, format_text, simplify_for_display, stats

x, y, a, b, c = sp.symbols("x y a b c", real=True)

SCALAR_MODELS = {
    "poly": (a * x**3 + b * sp.sqrt(x) / (1 + y**2), [a, b], [x, y]),
    "logsin": (sp.log(x) + x * y - sp.sin(y), [], [x, y]),
    "nested": (sp.exp(sp.tanh(a * x) * sp.cos(b + x)) + sp.atan(x * y) ** 2, [a, b], [x, y]),
    "activations": (sg.sigmoid(a * x) + sg.softplus(b * y) + sg.relu(x - y) + sp.Abs(a - y), [a, b], [x, y]),
    "piecewise": (sp.Piecewise((a * x**2, x > y), (b * sp.sinh(y), True)) + sp.Max(a, x) * sp.Min(b, y), [a, b], [x, y]),
    "powers": (x**a + (x + 2) ** sp.Rational(3, 2) + x ** (-2) + sp.asin(y / 4) * sp.acos(y / 5), [a], [x, y]),
}


@pytest.mark.parametrize("name", sorted(SCALAR_MODELS))
def test_gradients_equal_sympy_diff(name, rng):
    loss, params, inputs = SCALAR_MODELS[name]
    model = sg.Model(name, loss=loss, params=params, inputs=inputs, wrt=params + inputs)
    gradients = model.gradients()
    for symbol, expr in gradients.items():
        reference = sp.diff(loss, symbol)
        for _ in range(4):
            point = {s: rng.uniform(0.3, 1.7) for s in params + inputs}
            ours = complex(expr.subs(point).evalf())
            theirs = complex(reference.subs(point).evalf().rewrite(sp.Piecewise).evalf())
            assert ours == pytest.approx(theirs, rel=1e-10, abs=1e-12), (name, symbol)


def test_quadratic_form_gradients_read_as_a_user_writes_them():
    v = sp.MatrixSymbol("x", 4, 1)
    A = sp.MatrixSymbol("A", 4, 4)
    model = sg.Model("quad", loss=v.T * A * v, params=[A], inputs=[v], wrt=[v, A])
    g = model.gradients()
    assert str(g[v]) in ("(A + A.T)*x", "(A.T + A)*x")
    assert str(g[A]) == "x*x.T"
    rng = np.random.default_rng(0)
    values = {A: sp.ImmutableMatrix(rng.normal(size=(4, 4))), v: sp.ImmutableMatrix(rng.normal(size=(4, 1)))}
    a, x_ = (np.array(values[s], dtype=float) for s in (A, v))
    np.testing.assert_allclose(np.array(g[v].subs(values).doit(), dtype=float), (a.T + a) @ x_)
    np.testing.assert_allclose(np.array(g[A].subs(values).doit(), dtype=float), x_ @ x_.T)


def test_mlp_backward_pass_is_at_tensor_level():
    W1, b1 = sp.MatrixSymbol("W1", 128, 64), sp.MatrixSymbol("b1", 128, 1)
    W2, b2 = sp.MatrixSymbol("W2", 10, 128), sp.MatrixSymbol("b2", 10, 1)
    xi, target = sp.MatrixSymbol("xi", 64, 1), sp.MatrixSymbol("target", 10, 1)
    h = sg.sigmoid(W1 * xi + b1)
    logits = W2 * h + b2
    model = sg.Model("mlp", loss=sg.cross_entropy(logits, target), params=[W1, b1, W2, b2],
                     inputs=[xi, target])
    text = format_text(model)
    assert "W2_bar = logits_bar*h.T" in text
    assert "W1_bar" in text and "xi.T" in text
    assert len(text.splitlines()) < 60  # one line per node, not per element


def _deep_chain(depth):
    x0 = sp.Symbol("x")
    ks = sp.symbols(f"a0:{depth}"), sp.symbols(f"b0:{depth}")
    value = x0
    for k in range(depth):
        value = sp.tanh(ks[0][k] * value + ks[1][k]) * value + sp.sin(value)
    params = list(ks[0]) + list(ks[1])
    return sg.Model(f"deep{depth}", loss=value, params=params, inputs=[x0], wrt=params + [x0])


def test_deep_composition_has_no_expression_swell():
    model = _deep_chain(64)
    s = stats(model)
    assert s["ratio"] <= 4.0, s
    assert s["forward_ops"] < 64 * 8
    text = format_text(model)  # node by node: linear in the graph
    assert "more than 400 terms" in text
    assert len(text.splitlines()) < 3000


def test_show_formats(rng):
    model = sg.Model("fmt", loss=sp.log(x) + x * y - sp.sin(y), inputs=[x, y], wrt=[x, y])
    text = format_text(model)
    assert "Forward pass" in text and "Backward pass" in text
    assert "d loss / d x = y + 1/x" in text
    latex = format_latex(model)
    assert r"\frac{\partial \ell}{\partial x}" in latex and r"\begin{aligned}" in latex
    dot = format_dot(model)
    assert dot.startswith('digraph "fmt"') and "->" in dot and dot.rstrip().endswith("}")
    assert "gradient cost ratio" in format_stats(model)


def test_notebook_display_is_latex():
    model = sg.Model("nb", loss=(a * x - y) ** 2, params=[a], inputs=[x, y])
    rendered = model._repr_latex_()
    assert rendered.startswith("$") and r"\frac{\partial \ell}{\partial a}" in rendered


def test_symgrad_functions_print_as_themselves():
    assert str(sg.sigmoid(x)) == "sigmoid(x)"
    assert sp.latex(sg.sigmoid(x)) == r"\sigma\left(x\right)"
    assert sp.latex(sg.relu(x)) == r"\operatorname{relu}\left(x\right)"
    assert str(sg.softplus(x)) == "softplus(x)"
    M = sp.MatrixSymbol("M", 2, 2)
    assert str(sg.sigmoid(M)) == "sigmoid(M)"
    assert sg.sigmoid(M).shape == (2, 2)
    assert sp.diff(sg.sigmoid(x), x) == sg.sigmoid(x) * (1 - sg.sigmoid(x))
    assert float(sg.softplus(0).evalf()) == pytest.approx(np.log(2))


def test_display_factors_a_shared_matrix_out_of_a_sum():
    a, b = sp.symbols("a b")
    X, A = sp.MatrixSymbol("X", 2, 2), sp.MatrixSymbol("A", 2, 2)
    scalars = simplify_for_display(sp.MatAdd(sp.MatMul(a, X), sp.MatMul(b, X)))
    assert scalars == sp.MatMul(a + b, X)
    matrices = simplify_for_display(sp.MatAdd(sp.MatMul(A, X), sp.MatMul(A.T, X)))
    assert matrices == sp.MatMul(sp.MatAdd(A, A.T), X)
    mixed = sp.MatAdd(sp.MatMul(A, X), sp.MatMul(a, X))  # A + a is no sum: kept as it is
    assert simplify_for_display(mixed) == mixed
