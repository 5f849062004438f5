"""The symgrad command end to end, in a temporary folder."""

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import symgrad

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args, cwd):
    return subprocess.run([sys.executable, "-m", "symgrad", *args], cwd=cwd, capture_output=True, text=True)


def test_version_and_help(tmp_path):
    done = run("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"symgrad {symgrad.__version__}"
    done = run("--help", cwd=tmp_path)
    assert done.returncode == 0
    for command in ("build", "show", "check"):
        assert command in done.stdout


def test_build_then_cache_hit_then_import(tmp_path):
    model = EXAMPLES / "log_sin.py"
    first = run("build", str(model), "-o", "out", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "log_sin: built in" in first.stdout and "stages:" in first.stdout
    assert "wrote" in first.stdout and "compile" in first.stdout
    second = run("build", str(model), "-o", "out", cwd=tmp_path)
    assert "up to date (cache hit)" in second.stdout
    code = "import sys; sys.path.insert(0, 'out'); import log_sin; print(log_sin.value_and_grad(x1=2.0, x2=5.0)[1]['x1'])"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) == pytest.approx(5.5)


def test_default_output_folder_is_generated(tmp_path):
    done = run("build", str(EXAMPLES / "fan_out.py"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "generated" / "fan_out" / "fan_out_value_and_grad.c").is_file()
    assert (tmp_path / "generated" / "fan_out" / "__init__.py").is_file()


def test_show_formats_and_output_file(tmp_path):
    model = str(EXAMPLES / "fan_out.py")
    text = run("show", model, "--stats", cwd=tmp_path)
    assert text.returncode == 0
    assert "Backward pass" in text.stdout and "x_bar = " in text.stdout
    assert "gradient cost ratio" in text.stdout
    latex = run("show", model, "--format", "latex", cwd=tmp_path)
    assert r"\begin{aligned}" in latex.stdout
    dot = run("show", model, "--format", "dot", "-o", "graph.dot", cwd=tmp_path)
    assert dot.returncode == 0 and (tmp_path / "graph.dot").read_text().startswith("digraph")


def test_check_passes_on_the_examples(tmp_path):
    for name in ("affine_square", "logistic_regression"):
        done = run("check", str(EXAMPLES / f"{name}.py"), "-o", "out", cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert ": ok:" in done.stdout


def test_errors_are_one_line_and_exit_nonzero(tmp_path):
    done = run("build", "missing.py", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("symgrad: error: model file missing.py does not exist")
    assert "Traceback" not in done.stderr
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""
        import sympy as sp, symgrad as sg
        x = sp.Symbol("x")
        sg.Model("bad", loss=sp.Function("f")(x), inputs=[x])
    """))
    done = run("show", str(bad), cwd=tmp_path)
    assert done.returncode == 1 and "the undefined function f(x)" in done.stderr
    assert "line 4" in done.stderr and "Traceback" not in done.stderr
    debug = run("--debug", "show", str(bad), cwd=tmp_path)
    assert "Traceback" in debug.stderr


def test_check_reports_a_mismatch(tmp_path, monkeypatch):
    """A wrong gradient must make check fail: break a derivative rule and run it in-process."""
    from symgrad import cli, ops
    from symgrad.ops import elementwise

    op = ops.REGISTRY["sin"]
    broken = type(op)(**{**op.__dict__, "vjp": lambda b, n, g: [b.mul(g, b.const(2))]})
    monkeypatch.setitem(ops.REGISTRY, "sin", broken)
    model = tmp_path / "m.py"
    model.write_text("import sympy as sp, symgrad as sg\nx = sp.Symbol('x')\nsg.Model('wrong', loss=sp.sin(x), inputs=[x], wrt=[x])\n")
    assert cli.main(["check", str(model), "-o", str(tmp_path / "out")]) == 1
    assert elementwise  # the registry module stays imported


def test_bench_times_a_model(tmp_path):
    done = run("bench", str(EXAMPLES / "log_sin.py"), "-o", "out", "--batch", "2000", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "machine:" in done.stdout and "log_sin: batch of 2,000" in done.stdout
    ratio = float(re.search(r"\((\d+\.\d+)x forward\)", done.stdout).group(1))
    assert 0 < ratio < 50
    assert "us per value_and_grad call" in done.stdout


def test_build_options_enter_the_cache_key(tmp_path):
    model = str(EXAMPLES / "fan_out.py")
    first = run("build", model, "-o", "out", cwd=tmp_path)
    native = run("build", model, "-o", "out", "--native", cwd=tmp_path)
    assert "built in" in first.stdout and "built in" in native.stdout  # a different key: rebuilt
    again = run("build", model, "-o", "out", "--native", cwd=tmp_path)
    assert "cache hit" in again.stdout
    single = run("build", model, "-o", "out32", "--dtype", "float32", cwd=tmp_path)
    assert single.returncode == 0 and "float" in (tmp_path / "out32" / "fan_out" / "fan_out_forward.c").read_text()


def test_show_draws_an_svg_with_graphviz(tmp_path):
    import shutil

    if shutil.which("dot") is None:
        done = run("show", str(EXAMPLES / "xor.py"), "--format", "dot", "-o", "g.svg", cwd=tmp_path)
        assert done.returncode == 1 and "needs Graphviz" in done.stderr
        return
    done = run("show", str(EXAMPLES / "xor.py"), "--format", "dot", "-o", "g.svg", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    svg = (tmp_path / "g.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "W2_bar" in svg
