"""What the commands and the errors say: each names the real problem and the fix.

Every case here was first met as a new user meets it (a tiny model file, one
command); before, each ended in a traceback, a misleading message or a
silently wrong result.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import cli, runtime
from symgrad.build import MANIFEST, load
from symgrad.check import check_model
from symgrad.errors import BuildError, ModelError, OptionError, UnsupportedFunctionError
from symgrad.pipeline import build_model


def model_file(folder: Path, body: str, name: str = "m.py") -> str:
    path = folder / name
    path.write_text("import sympy as sp, symgrad as sg\n" + textwrap.dedent(body))
    return str(path)


def run_cli(capsys, *argv):
    """(exit code, stdout, stderr) of the symgrad command run in this process."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse refuses a flag value
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


# --- symgrad check ---------------------------------------------------------------------------


def test_check_differentiates_abs_and_sign_of_expressions(tmp_path, capsys):
    """L1 penalties and Huber losses: sympy.diff's reference of Abs(u) is sign(u)*u' (for real u)."""
    path = model_file(tmp_path, """
        w, b, x, y = sp.symbols("w b x y")
        r = w * x + b - y
        sg.Model("l1_penalty", loss=r**2 + sp.Abs(w - 1) + sp.sign(b) * b, params=[w, b], inputs=[x, y])
        sg.Model("huber", loss=sp.Piecewise((r**2 / 2, sp.Abs(r) <= 1), (sp.Abs(r) - sp.S.Half, True)),
                 params=[w, b], inputs=[x, y])
    """)
    code, out, err = run_cli(capsys, "check", path, "-o", str(tmp_path / "out"))
    assert code == 0, out + err
    for name in ("l1_penalty", "huber"):
        line = next(ln for ln in out.splitlines() if ln.startswith(f"{name}:"))
        assert ": ok:" in line and "vs sympy.diff skipped" not in line, line
    assert "Traceback" not in err


def test_check_skips_a_reference_sympy_cannot_evaluate(tmp_path, monkeypatch):
    x, w = sp.symbols("x w")
    model = sg.Model("unevaluable_reference", loss=(w * x - 1) ** 2, params=[w], inputs=[x])
    _, result = build_model(model, tmp_path)

    def refuse(*args, **kwargs):
        raise NotImplementedError("no printer for this")

    monkeypatch.setattr(sp, "lambdify", refuse)
    report = check_model(model, load(result.path))
    assert report.ok and report.sympy_error is None and report.directions > 0
    assert "SymPy could not evaluate it" in report.line()
    assert any("no printer for this" in note for note in report.notes)


@pytest.mark.parametrize("options", [{"points": 0}, {"batch": -1}, {"tolerance": 0.0}, {"tolerance": float("nan")}])
def test_check_model_refuses_options_it_cannot_take(options):
    a = sp.Symbol("a")
    with pytest.raises(OptionError):
        check_model(sg.Model("check_options", loss=a**2, params=[a]), module=None, **options)


@pytest.mark.parametrize("reduce", ["mean", "sum", None])
def test_check_compares_a_batch_of_several_kernel_calls(tmp_path, reduce):
    """A loss term of params only, counted once per example of the whole batch in each kernel
    call, gave right small batches and wrong large ones (issue 8, item 2): check now sees it."""
    w, x = sp.symbols("w x")
    model = sg.Model(f"param_term_check_{reduce}", loss=w**2 + w * x, params=[w], inputs=[x], reduce=reduce,
                     wrt=[w, x])
    _, result = build_model(model, tmp_path)
    module = load(result.path)
    report = check_model(model, module)
    assert report.ok and report.large_batch > 2 * runtime.CHUNK, report.line()
    assert report.large_batch_error < 1e-12 and "in a batch of" in report.line()

    class SlicesCountedTwice:  # what the bug did: parameter gradients scaled by the number of calls
        forward = staticmethod(module.forward)

        @staticmethod
        def value_and_grad(**values):
            loss, grads = module.value_and_grad(**values)
            calls = -(-np.size(values["x"]) // runtime.CHUNK)
            return loss, {**grads, "w": np.asarray(grads["w"]) * (calls if reduce is not None else 1)}

    if reduce is not None:
        broken = check_model(model, SlicesCountedTwice)
        assert not broken.ok and broken.large_batch_error > 0.5 and "MISMATCH" in broken.line()


def test_check_of_a_model_without_loss_has_nothing_to_check(tmp_path, capsys):
    path = model_file(tmp_path, """
        x = sp.Symbol("x")
        sg.Model("outputs_only", outputs={"y": sp.sin(x)}, inputs=[x])
    """)
    code, out, _ = run_cli(capsys, "check", path, "-o", str(tmp_path / "out"))
    assert code == 0
    assert "outputs_only: nothing to check: the model has no loss" in out
    assert "MISMATCH" not in out and "0 directions" not in out


def test_check_of_a_model_without_finite_points_says_so(tmp_path, capsys):
    path = model_file(tmp_path, """
        w, x = sp.symbols("w x")
        sg.Model("nowhere_finite", loss=sp.log(-w**2 - 1) * x, params=[w], inputs=[x])
    """)
    code, out, _ = run_cli(capsys, "check", path, "-o", str(tmp_path / "out"))
    assert code == 1
    assert "nowhere_finite: NOT CHECKED: no random point gave a finite loss and gradient" in out
    assert "log or sqrt of a negative value" in out
    assert "MISMATCH" not in out and "0 directions" not in out


def test_check_range_draws_points_where_the_model_is_defined(tmp_path, capsys):
    path = model_file(tmp_path, """
        w, x = sp.symbols("w x")
        sg.Model("shifted_log", loss=sp.log(w - 5) * x + sp.sqrt(w - 5), params=[w], inputs=[x])
    """)
    code, out, _ = run_cli(capsys, "check", path, "-o", str(tmp_path / "out"))
    assert code == 1 and "NOT CHECKED" in out and "symgrad check --range LOW:HIGH" in out
    code, out, _ = run_cli(capsys, "check", path, "-o", str(tmp_path / "out"), "--range", "-2:-1", "--range", "6:9")
    assert code == 0 and "shifted_log: ok:" in out, out


@pytest.mark.parametrize("argv, message", [
    (["check", "--points", "0"], "argument --points: expected a whole number of points, at least 1, got 0"),
    (["check", "--points", "two"], "argument --points: expected a whole number of points, at least 1, got 'two'"),
    (["check", "--seed", "-1"], "argument --seed: expected a whole number, 0 or more, got -1"),
    (["check", "--tolerance", "0"], "argument --tolerance: expected a relative error above 0"),
    (["check", "--tolerance", "nan"], "argument --tolerance: expected a relative error above 0"),
    (["check", "--tolerance", "tight"], "argument --tolerance: expected a relative error such as 1e-6"),
    (["check", "--range", "3:1"], "argument --range: expected finite LOW < HIGH, got '3:1'"),
    (["check", "--range", "five"], "argument --range: expected LOW:HIGH such as 5:10 or -2:-1"),
    (["check", "--range", "0:inf"], "argument --range: expected finite LOW < HIGH"),
    (["bench", "--batch", "0"], "argument --batch: expected a whole number of examples, at least 1, got 0"),
    (["bench", "--batch", "-5"], "argument --batch: expected a whole number of examples, at least 1, got -5"),
    (["bench", "--batch", "1e4"], "argument --batch: expected a whole number of examples"),
    (["build", "-o", ""], "argument -o/--output: expected a file or folder name, got an empty one"),
    (["check", "--model", ""], "argument --model: expected a model name, got an empty one"),
    (["show", "-o", " "], "argument -o/--output: expected a file or folder name"),
    (["build", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
    (["show", "--format", "html"], "argument --format: invalid choice: 'html'"),
])
def test_flag_values_are_checked_where_they_are_parsed(argv, message, capsys):
    code, _, err = run_cli(capsys, *argv, "model.py")
    assert code == 2 and message in err, err
    assert "Traceback" not in err


def test_check_output_folder_advice_names_the_command_run(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    path = model_file(tmp_path, """
        a, x = sp.symbols("a x")
        sg.Model("unwritable", loss=(a * x - 1)**2, params=[a], inputs=[x])
    """)
    code, _, err = run_cli(capsys, "check", path, "-o", str(blocker / "out"))
    assert code == 1
    assert "a file stands where a folder should be" in err and "symgrad check -o DIR" in err
    assert "symgrad build" not in err
    with pytest.raises(sg.errors.OutputDirectoryError, match=r"out_dir=") as info:
        build_model(sg.Model("unwritable", loss=sp.Symbol("a") ** 2, params=[sp.Symbol("a")]), blocker / "out")
    assert "symgrad build" not in str(info.value)


# --- symgrad bench ---------------------------------------------------------------------------


def test_bench_prints_only_what_a_model_has(tmp_path, capsys):
    path = model_file(tmp_path, """
        a, b, x = sp.symbols("a b x")
        sg.Model("outputs_only_bench", outputs={"y": sp.sin(x)}, inputs=[x])
        sg.Model("no_inputs_bench", loss=(1 - a)**2 + 100 * (b - a**2)**2, params=[a, b])
    """)
    code, out, err = run_cli(capsys, "bench", path, "-o", str(tmp_path / "out"), "--batch", "50")
    assert code == 0, err
    assert "nan" not in out
    assert "outputs_only_bench: batch of 50" in out and "no value_and_grad to time" in out
    assert "us per forward call" in out
    assert "no_inputs_bench: no inputs, so no batch" in out and "us per call" in out
    assert "note: --batch 50 ignored: no_inputs_bench has no inputs" in out


def test_bench_says_when_a_batch_does_not_fit_in_memory(tmp_path, capsys):
    path = model_file(tmp_path, """
        a, x = sp.symbols("a x")
        sg.Model("huge_batch", loss=(a * x - 1)**2, params=[a], inputs=[x])
    """)
    code, _, err = run_cli(capsys, "bench", path, "-o", str(tmp_path / "out"), "--batch", str(10**14))
    assert code == 1 and "does not fit in memory; choose a smaller --batch" in err


def test_bench_refuses_an_empty_batch_from_python():
    from symgrad.bench import bench_model

    a = sp.Symbol("a")
    with pytest.raises(OptionError, match="at least 1"):
        bench_model(sg.Model("empty_batch", loss=a**2, params=[a]), module=None, batch=0)


# --- what a model may not contain, named as written ------------------------------------------

X = sp.MatrixSymbol("X", 3, 3)
w, x, t = sp.symbols("w x t")
k = sp.Symbol("k", integer=True)


@pytest.mark.parametrize("loss, params, inputs, message", [
    (sg.sum(X[::2, :]), [X], [], "holds 2x3 elements, but SymPy gives it the shape 1x3"),
    (sg.sum(X[t, :]), [X], [t], "has symbolic bounds (an index given per example)"),
    (sp.Derivative(sp.sin(w * x), w), [w], [x], "the unevaluated derivative Derivative(sin(w*x), w)"),
    (sp.Integral(w * t, (t, 0, 1)), [w], [], "the integral Integral(t*w, (t, 0, 1)) cannot be read: "
                                             "symgrad does not integrate"),
    (sp.Subs(w * x, x, 2), [w], [], "the unevaluated substitution"),
    (sp.Limit(w * x, x, 2), [w], [], "the unevaluated limit"),
    (sp.Function("f")(w), [w], [], "the undefined function f(w) cannot be read: f was made with sp.Function('f')"),
    (sp.IndexedBase("A")[0] * w, [w], [], "declare a MatrixSymbol"),
    (sp.Tuple(w, w**2), [w], [], "the tuple (w, w**2) cannot be read"),
])
def test_constructs_are_named_as_the_user_wrote_them(loss, params, inputs, message):
    with pytest.raises(UnsupportedFunctionError) as info:
        sg.Model("construct", loss=loss, params=params, inputs=inputs)
    text = str(info.value)
    assert message in text, text
    assert "Tuple" not in text and "not declared" not in text


def test_an_undeclared_symbol_suggests_a_close_name():
    w1, W1 = sp.symbols("w1 W1")
    with pytest.raises(sg.errors.UndeclaredSymbolError, match=r"did you mean 'w1'"):
        sg.Model("typo", loss=W1**2, params=[w1])


@pytest.mark.parametrize("make", [
    lambda: sg.Model("relational", loss=sp.Eq(w, x), params=[w], inputs=[x]),
    lambda: sg.Model("relational", loss=w < x, params=[w], inputs=[x]),
    lambda: sg.Model("relational", loss=sp.And(w < x, w > 0), params=[w], inputs=[x]),
    lambda: sg.Model("relational", loss=True, params=[w]),
    lambda: sg.Model("relational", outputs={"same": sp.Eq(w, x)}, params=[w], inputs=[x]),
])
def test_a_condition_is_not_a_loss_or_an_output(make):
    with pytest.raises(ModelError, match=r"which is true or false, not a number.*sp.Piecewise"):
        make()


@pytest.mark.parametrize("make, message", [
    (lambda: sg.Model("shapes", loss=[w, x], params=[w], inputs=[x]), "got a list: [w, x]; several values go into outputs"),
    (lambda: sg.Model("shapes", loss="w**2", params=[w]), "got the string 'w**2': build it from the symbols"),
    (lambda: sg.Model("shapes", outputs=[w], params=[w]), "outputs must map names to expressions"),
    (lambda: sg.Model("shapes", loss=w, params=[w], wrt=5), "wrt must be a symbol, a name, or a list of them"),
])
def test_values_of_the_wrong_kind_are_named(make, message):
    with pytest.raises(ModelError) as info:
        make()
    assert message in str(info.value)


def test_a_symbol_is_still_a_valid_output():
    sg.Model("symbol_output", outputs={"w": w}, params=[w])  # SymPy's Symbol is also a Boolean


@pytest.mark.parametrize("name, clash", [
    ("numpy", "the module numpy, which generated packages import"),
    ("cffi", "the module cffi"),
    ("random", "the standard-library module random"),
    ("concurrent", "the standard-library module concurrent"),
    ("sys", "the standard-library module sys"),
    ("jinja2", "the installed module jinja2"),
])
def test_model_names_that_would_shadow_a_module_are_refused(name, clash):
    with pytest.raises(ModelError, match=rf"model name '{name}' is the name of {clash}.*choose another name"):
        sg.Model(name, loss=w**2, params=[w])


def test_a_folder_of_generated_packages_on_sys_path_is_no_clash(tmp_path, monkeypatch):
    model = sg.Model("on_the_path", loss=w**2, params=[w])
    build_model(model, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sg.Model("on_the_path", loss=w**2, params=[w])  # its own package is importable: fine


# --- builds that would replace or load the wrong thing ---------------------------------------


def test_a_build_of_the_other_precision_does_not_silently_replace_a_package(tmp_path):
    a = sp.Symbol("a")
    model = sg.Model("two_precisions", loss=(a * x - 1) ** 2, params=[a], inputs=[x])
    build_model(model, tmp_path)
    with pytest.raises(BuildError) as info:
        build_model(model, tmp_path, dtype="float32")
    message = str(info.value)
    assert "holds the float64 build of 'two_precisions'; the float32 build would replace it" in message
    assert "-o DIR" in message and "--force" in message
    assert '"dtype": "float64"' in (tmp_path / "two_precisions" / MANIFEST).read_text()
    _, other = build_model(model, tmp_path / "single", dtype="float32")  # another folder: fine
    assert load(other.path).DTYPE == "float32"
    _, replaced = build_model(model, tmp_path, dtype="float32", force=True)
    assert load(replaced.path).DTYPE == "float32"


def test_load_refuses_a_truncated_extension_instead_of_crashing(tmp_path):
    a = sp.Symbol("a")
    model = sg.Model("truncated", loss=(a * x - 1) ** 2, params=[a], inputs=[x])
    _, result = build_model(model, tmp_path)
    extension = next(result.path.glob("_kernels_*"))
    extension.write_bytes(extension.read_bytes()[:1000])
    with pytest.raises(BuildError, match=r"truncated or altered\); rebuild the package: symgrad build"):
        load(result.path)
    # Loading it anyway would kill the interpreter (a bus error); a rebuild makes it loadable.
    _, rebuilt = build_model(model, tmp_path)
    assert not rebuilt.cached
    assert load(rebuilt.path).value_and_grad(a=2.0, x=1.0)[0] == pytest.approx(1.0)


def test_load_names_a_missing_extension_and_an_incomplete_manifest(tmp_path):
    import json

    a = sp.Symbol("a")
    _, result = build_model(sg.Model("half_installed", loss=(a * x - 1) ** 2, params=[a], inputs=[x]), tmp_path)
    manifest = json.loads((result.path / MANIFEST).read_text())
    next(result.path.glob("_kernels_*")).unlink()
    with pytest.raises(BuildError, match=r"compiled extension of .* cannot be read .*rebuild the package"):
        load(result.path)
    del manifest["extension_sha256"]
    (result.path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BuildError, match=r"is incomplete \(no 'extension_sha256'\); rebuild the package"):
        load(result.path)


def test_importing_a_truncated_package_raises_instead_of_crashing(tmp_path):
    a = sp.Symbol("a")
    _, result = build_model(sg.Model("truncated_import", loss=(a * x - 1) ** 2, params=[a], inputs=[x]), tmp_path)
    extension = next(result.path.glob("_kernels_*"))
    extension.write_bytes(extension.read_bytes()[:1000])
    done = subprocess.run([sys.executable, "-c", "import truncated_import"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 1, (done.returncode, done.stderr)  # not -7 (SIGBUS)
    assert "ImportError" in done.stderr and "Rebuild it" in done.stderr


# --- build --flags and the help ----------------------------------------------------------------


def test_flags_values_may_start_with_a_dash(tmp_path, capsys):
    path = model_file(tmp_path, """
        a, x = sp.symbols("a x")
        sg.Model("own_flags", loss=(a * x - 1)**2, params=[a], inputs=[x])
    """)
    out_dir = str(tmp_path / "out")
    for flags in (["--flags", "-O0"], ["--flags", "-O0 -g"], ["--flags=-O1"]):
        code, out, err = run_cli(capsys, "build", path, "-o", out_dir, *flags)
        assert code == 0, err
        recorded = (tmp_path / "out" / "own_flags" / MANIFEST).read_text()
        for flag in flags[-1].split("=")[-1].split():
            assert f'"{flag}"' in recorded
    code, _, err = run_cli(capsys, "build", path, "-o", out_dir, "--flags", "")
    assert code == 1 and "--flags needs at least one compiler flag" in err
    code, _, err = run_cli(capsys, "build", path, "-o", out_dir, "--flags", "-O2", "--native")
    assert code == 1 and "--native would be ignored: add -march=native to --flags" in err
    code, _, err = run_cli(capsys, "build", path, "--flags", "-O0", "-g")  # unquoted: -g stands alone
    assert code == 2 and "unrecognized arguments: -g; several compiler flags go in one quoted value" in err
    # An option of symgrad's own after --flags is not taken as its value.
    code, _, err = run_cli(capsys, "build", path, "--flags", "--native")
    assert code == 2 and "argument --flags: expected one argument" in err


def test_every_argument_has_help(capsys):
    for command in ("build", "show", "check", "bench"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0
        assert "MODEL_FILE a Python file that creates symgrad.Model objects" in " ".join(out.split())
        assert "--debug" in out
    _, out, _ = run_cli(capsys, "show", "--help")
    assert "latex: the same as LaTeX" in " ".join(out.split())
    _, out, _ = run_cli(capsys, "build", "--help")
    assert "--flags='-O0 -g'" in " ".join(out.split())


def test_show_output_file_problems_are_named(tmp_path, capsys):
    path = model_file(tmp_path, """
        a, x = sp.symbols("a x")
        sg.Model("shown", loss=(a * x - 1)**2, params=[a], inputs=[x])
    """)
    code, _, err = run_cli(capsys, "show", path, "-o", str(tmp_path / "missing" / "g.txt"))
    assert code == 1 and "does not exist; create it" in err
    code, _, err = run_cli(capsys, "show", path, "--format", "text", "-o", str(tmp_path / "g.svg"))
    assert code == 1 and "draws a graph, which needs --format dot" in err
    code, out, _ = run_cli(capsys, "show", path, "-o", str(tmp_path / "g.dot"))  # the suffix chooses dot
    assert code == 0 and (tmp_path / "g.dot").read_text().startswith("digraph")
    code, _, err = run_cli(capsys, "show", path, "--model", "other")
    assert code == 1 and "has no model named 'other'; it defines 'shown'" in err
    with pytest.raises(OptionError):  # --debug after the command: the exception itself
        cli.main(["show", path, "--debug", "--model", "other"])
