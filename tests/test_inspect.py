"""Reading derived gradients: symbolic formulas, node-by-node passes, LaTeX, DOT, op counts,
in one display dialect, from one derivation per reduction."""

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
import symgrad.autodiff
from symgrad import views
from symgrad.cli import main
from symgrad.ops.text import ATOM, COMPARISON, NEGATION, POWER, PRODUCT, SUM, binding
from symgrad.pipeline import derived, generate
from symgrad.pipeline import show_dot as format_dot
from symgrad.pipeline import show_latex as format_latex
from symgrad.pipeline import show_stats as format_stats
from symgrad.pipeline import show_text as format_text
from symgrad.symbolic import simplify_for_display

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
    s = views.stats(model, derived(model, model.reduce))
    assert s["ratio"] <= 4.0, s
    assert s["forward_ops"] < 64 * 8
    text = format_text(model)  # node by node: linear in the graph
    assert "too large to write out" in text
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


# --- one display dialect ------------------------------------------------------------------


def test_the_dialect_tells_how_tightly_a_text_binds():
    assert binding("x > y") == COMPARISON
    assert binding("t - y") == SUM and binding("-y + 1") == SUM
    assert binding("-y") == NEGATION and binding("-2*v15") == NEGATION
    assert binding("h_bar.*v37") == PRODUCT and binding("1/x") == PRODUCT
    assert binding("x**2") == POWER
    for atom in ("x", "2", "0.25", "1e-05", "sigmoid(b1 + x*W1)", "(h*W2)[0, 0]", "x.T", "[[v11_bar]]"):
        assert binding(atom) == ATOM, atom


def _xor():
    x, W1, b1 = sp.MatrixSymbol("x", 1, 2), sp.MatrixSymbol("W1", 2, 2), sp.MatrixSymbol("b1", 1, 2)
    W2, b2, t = sp.MatrixSymbol("W2", 2, 1), sp.Symbol("b2"), sp.Symbol("t")
    h = sg.sigmoid(x * W1 + b1)
    y = sg.sigmoid(sg.scalar(h * W2) + b2)
    return sg.Model("xor_view", loss=(t - y) ** 2, params=[W1, b1, W2, b2], inputs=[x, t], outputs={"y": y})


def test_show_comments_and_docstrings_speak_one_dialect():
    model = _xor()
    text = format_text(model)
    assert "v7_bar = h_bar.*(h.*" in text  # not HadamardProduct(h_bar, HadamardProduct(...))
    package = generate(model).package
    c_source = "\n".join(package.files[name] for name in package.c_sources)
    assert "(v7_bar) = h_bar.*v" in c_source and "(v9_bar) = [[v11_bar]] */" in c_source
    doc = package.spec.gradient_doc
    for rendering in (text, c_source, doc):
        assert "Hadamard" not in rendering and "Matrix([[" not in rendering
    # A value the gradients share is named once, in the docstring as in show.
    assert "        d loss / d W1 = x.T*v7_bar" in doc and "        where" in doc
    assert doc.count("b1 + x*W1") == 1 and text.count("b1 + x*W1") == 1


def test_class_index_reads_in_the_dialect_in_c_comments():
    z, c = sp.MatrixSymbol("z", 4, 1), sp.Symbol("c")
    W = sp.MatrixSymbol("W", 4, 4)
    model = sg.Model("pick", loss=sg.cross_entropy(W * z, c), params=[W], inputs=[z, c], wrt=[W])
    package = generate(model).package
    c_source = "\n".join(package.files[name] for name in package.c_sources)
    assert "KroneckerDelta" not in c_source
    assert "one_hot(c, 4x1)" in c_source and "[c] */" in c_source


_NUMERIC_NAMES = {
    "log": np.log, "sin": np.sin, "cos": np.cos, "tan": np.tan, "tanh": np.tanh, "sinh": np.sinh,
    "cosh": np.cosh, "exp": np.exp, "atan": np.arctan, "asin": np.arcsin, "acos": np.arccos, "sqrt": np.sqrt,
    "abs": abs, "sign": np.sign, "max": max, "min": min, "pi": math.pi, "E": math.e,
    "sigmoid": lambda v: 1 / (1 + math.exp(-v)), "softplus": lambda v: math.log1p(math.exp(v)),
    "relu": lambda v: max(v, 0.0), "heaviside": lambda v, at0: float(np.heaviside(v, at0)),
    "select": lambda *args: next((args[k + 1] for k in range(0, len(args) - 1, 2) if args[k]), args[-1]),
}


@pytest.mark.parametrize("name", sorted(SCALAR_MODELS))
def test_gradient_formulas_in_the_dialect_compute_the_gradient(name, rng):
    """The text of the shown formulas, evaluated as Python, equals sympy.diff: the dialect
    parenthesizes wherever the meaning needs it."""
    loss, params, inputs = SCALAR_MODELS[name]
    model = sg.Model(name, loss=loss, params=params, inputs=inputs, wrt=params + inputs)
    formulas, where = views.gradient_formulas(derived(model, None))
    for _ in range(3):
        point = {str(s): rng.uniform(0.3, 1.7) for s in params + inputs}
        scope = dict(_NUMERIC_NAMES, **point)
        for value_name, text in where:
            scope[value_name] = eval(text, {"__builtins__": {}}, scope)
        for wrt, text in formulas.items():
            ours = eval(text, {"__builtins__": {}}, scope)
            reference = sp.diff(loss, sp.Symbol(wrt, real=True)).subs({sp.Symbol(k, real=True): v for k, v in point.items()})
            assert ours == pytest.approx(float(reference.rewrite(sp.Piecewise).evalf()), rel=1e-9, abs=1e-12), (wrt, text)


def test_show_says_which_derivatives_are_zero_almost_everywhere_and_which_forms_were_rewritten():
    model = sg.Model("steps", loss=sp.sign(x) * a + a**2, params=[a], inputs=[x], wrt=[a, x])
    graph = derived(model, None)
    assert "Derivative taken as zero almost everywhere" in views.format_text(model, graph)
    assert "sign(x)" in views.format_text(model, graph)
    graph.rewrites = [("log(sigmoid(z))", "-softplus(-z)")]
    assert "log(sigmoid(z)) -> -softplus(-z)" in views.format_text(model, graph)


# --- one derivation per reduction --------------------------------------------------------


@pytest.fixture
def reverse_passes(monkeypatch):
    """A list that records the reduction of every reverse pass run."""
    calls = []
    differentiate = symgrad.autodiff.differentiate

    def counted(graph, wrt, reduce):
        calls.append(reduce)
        return differentiate(graph, wrt, reduce)

    monkeypatch.setattr(symgrad.autodiff, "differentiate", counted)
    return calls


_MODEL_FILE = """
import sympy as sp
import symgrad as sg

a, x, t = sp.symbols("a x t")
passes = sg.Model("passes", loss=(sg.sigmoid(a * x) - t) ** 2, params=[a], inputs=[x, t], reduce={reduce!r})
"""


@pytest.mark.parametrize("reduce", ["mean", None])
@pytest.mark.parametrize("command", [["show"], ["show", "--stats"], ["show", "--format", "latex"],
                                     ["show", "--format", "dot"], ["build"]])
def test_each_command_runs_the_reverse_pass_once_per_reduction(command, reduce, reverse_passes, tmp_path, capsys):
    path = tmp_path / "passes_model.py"
    path.write_text(_MODEL_FILE.format(reduce=reduce))
    if command == ["build"]:
        if reduce is None:
            pytest.skip("one build is enough to count")
        command = ["build", "-o", str(tmp_path / "out")]
    assert main([command[0], str(path)] + command[1:]) == 0
    needs = {None} if command[:2] != ["show", "--stats"] and command[0] != "build" else {None, reduce}
    assert sorted(reverse_passes, key=str) == sorted(needs, key=str)


@pytest.mark.parametrize("reduce", ["mean", None])
def test_generate_and_gradients_run_the_reverse_pass_once_per_reduction(reduce, reverse_passes):
    model = sg.Model("once", loss=(a * x - y) ** 2, params=[a], inputs=[x, y], reduce=reduce)
    generate(model)
    assert sorted(reverse_passes, key=str) == sorted({reduce, None}, key=str)
    model.gradients()
    model._repr_latex_()
    assert len(reverse_passes) == len({reduce, None})
    fresh = sg.Model("once", loss=(a * x - y) ** 2, params=[a], inputs=[x, y], reduce=reduce)
    reverse_passes.clear()
    fresh.gradients()
    assert reverse_passes == [None]


def test_no_module_imports_one_that_imports_it_back():
    """Module-level and in-function imports between symgrad's modules form no circle
    (imports only for type annotations do not count)."""
    package = Path(sg.__file__).parent
    edges: dict = {}
    for path in package.rglob("*.py"):
        module = ".".join(path.relative_to(package.parent).with_suffix("").parts).removesuffix(".__init__")
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and id(node) not in typing_only:
                target = base[:len(base) - node.level + 1] + ([node.module] if node.module else [])
                names = [".".join(target)] if node.module else [".".join(target + [a.name]) for a in node.names]
                edges.setdefault(module, set()).update(names)
    for start in edges:
        stack, seen = [(start, (start,))], set()
        while stack:
            module, path = stack.pop()
            for target in edges.get(module, ()):
                assert target != start, " -> ".join(path + (start,))
                if target not in seen:
                    seen.add(target)
                    stack.append((target, path + (target,)))
