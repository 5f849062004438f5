"""Declaring models and loading model files: every mistake gets an error that names it."""

import textwrap

import pytest
import sympy as sp

import symgrad as sg
from symgrad.errors import (
    ModelError,
    ModelFileError,
    ModelShapeError,
    UndeclaredSymbolError,
    UnsupportedFunctionError,
)

x, y, a, b = sp.symbols("x y a b")


def test_undeclared_symbol_is_named():
    with pytest.raises(UndeclaredSymbolError, match="symbol 'b' is used but not declared"):
        sg.Model("m", loss=a * x + b, params=[a], inputs=[x])


def test_symbol_with_other_assumptions_is_explained():
    positive = sp.Symbol("x", positive=True)
    with pytest.raises(UndeclaredSymbolError, match="a symbol named 'x' is declared, but this one differs"):
        sg.Model("m", loss=positive**2, inputs=[x])


def test_unsupported_function_is_named():
    with pytest.raises(UnsupportedFunctionError, match="unsupported function zeta"):
        sg.Model("m", loss=sp.zeta(x) * a, params=[a], inputs=[x])
    with pytest.raises(UnsupportedFunctionError, match="unsupported function besselj"):
        sg.Model("m", loss=sp.besselj(0, x), inputs=[x])


def test_complex_numbers_are_refused():
    with pytest.raises(UnsupportedFunctionError, match="complex"):
        sg.Model("m", loss=sp.I * x, inputs=[x])


@pytest.mark.parametrize("kwargs,message", [
    (dict(params=[a], inputs=[a], loss=a), "declared both as a param and as an input"),
    (dict(params=[a, a], loss=a), "declared twice"),
    (dict(params=[a], loss=a, reduce="median"), "reduce must be"),
    (dict(params=[a], loss=a, wrt=[b]), "not a declared param or input"),
    (dict(params=[a], loss=a, outputs={"loss": a}), "'loss' is reserved"),
    (dict(params=[a]), "neither a loss nor outputs"),
    (dict(params=[a * 2], loss=a), "must hold SymPy Symbols"),
])
def test_inconsistent_declarations(kwargs, message):
    with pytest.raises(ModelError, match=message):
        sg.Model("m", **kwargs)


@pytest.mark.parametrize("name", ["", "1abc", "has space", "class", None])
def test_model_name_must_be_an_identifier(name):
    with pytest.raises(ModelError, match="must be a Python identifier"):
        sg.Model(name, loss=a, params=[a])


def test_matrix_loss_must_be_scalar():
    v = sp.MatrixSymbol("v", 3, 1)
    with pytest.raises(ModelShapeError, match=r"loss must be a scalar.*\(3, 1\)"):
        sg.Model("m", loss=2 * v, inputs=[v])
    sg.Model("m", loss=v.T * v, inputs=[v])  # a 1x1 matrix is a scalar


def test_symbolic_matrix_shapes_are_refused():
    n = sp.Symbol("n", integer=True)
    with pytest.raises(ModelError, match="symbolic shape"):
        sg.Model("m", loss=a, params=[a], inputs=[sp.MatrixSymbol("v", n, 1)])


def _write(tmp_path, text, name="model.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_load_model_collects_models_in_order(tmp_path):
    path = _write(tmp_path, """
        import sympy as sp, symgrad as sg
        x = sp.Symbol("x")
        first = sg.Model("first", loss=x**2, inputs=[x], wrt=[x])
        models = [sg.Model(f"m{k}", loss=x**k, inputs=[x], wrt=[x]) for k in (3, 4)]
    """)
    models = sg.load_model(path)
    assert [m.name for m in models] == ["first", "m3", "m4"]
    assert all(m.source == str(path) for m in models)


@pytest.mark.parametrize("text,message", [
    ("x = (", "line 1: syntax error"),
    ("import sympy\nraise RuntimeError('boom')", "line 2: the model file raised RuntimeError: boom"),
    ("import sympy", "defines no model"),
    ("import sympy as sp, symgrad as sg\nx = sp.Symbol('x')\n"
     "sg.Model('m', loss=x, inputs=[x])\nsg.Model('m', loss=x, inputs=[x])", "two models named 'm'"),
])
def test_model_file_problems(tmp_path, text, message):
    with pytest.raises(ModelFileError, match=message):
        sg.load_model(_write(tmp_path, text))


def test_model_errors_in_a_file_carry_its_line(tmp_path):
    path = _write(tmp_path, "import sympy as sp, symgrad as sg\nx = sp.Symbol('x')\n\nsg.Model('m', loss=x * sp.Symbol('q'), inputs=[x])\n")
    with pytest.raises(UndeclaredSymbolError, match=r"model.py, line 4: symbol 'q'"):
        sg.load_model(path)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        sg.load_model(tmp_path / "nope.py")


def test_names_from_the_model_file_label_nodes():
    h = sp.tanh(a * x)
    out = h * b
    model = sg.Model("m", loss=out, params=[a, b], inputs=[x])
    labels = set(model.graph.labels.values())
    assert {"h", "out"} <= labels
