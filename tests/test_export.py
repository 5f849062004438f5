"""symgrad export --c: the C library builds warning-free and computes what the Python module computes.

The comparison is to the last bit: the example program prints every result
with %.17g and the Python module is compiled with the same optimization
flags as the library's Makefile (``-O2 -fopenmp-simd``, no contraction into
fused multiply-adds, which ISO C mode implies), so the only thing that could
differ is the code, and it must not.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.cli import main
from symgrad.render import split_runtime
from symgrad.export import EXAMPLE_BATCH, example_inputs, export_c, library_files, runtime_header
from symgrad.model import load_model
from symgrad.pipeline import generate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: The Makefile's optimization flags, for the Python build it is compared with.
MATCHING_FLAGS = ("-O2", "-fopenmp-simd", "-ffp-contract=off")
PEDANTIC = "-std=c99 -O2 -fopenmp-simd -Wall -Wextra -pedantic"

needs_make = pytest.mark.skipif(shutil.which("make") is None or shutil.which("gcc") is None,
                                reason="needs make and gcc")


def _model(name):
    return load_model(str(EXAMPLES / f"{name}.py"))[0]


def _make(path: Path, *targets, cc="gcc", cflags=PEDANTIC) -> str:
    """Run the generated Makefile; returns the compiler's messages (warnings)."""
    subprocess.run(["make", "-s", "clean"], cwd=path, check=True, capture_output=True)
    done = subprocess.run(["make", "-s", f"CC={cc}", f"CFLAGS={cflags}", *targets], cwd=path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def _example_results(path: Path) -> list:
    done = subprocess.run(["./example"], cwd=path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return [line.split() for line in done.stdout.splitlines()]


def _python_results(module, generated) -> dict:
    """kernel kind -> C argument name -> the Python module's result for the example's inputs, flat."""
    inputs = example_inputs(generated)
    results = {"forward": module.forward(**inputs)}
    if generated.model.loss is not None:
        loss, grads = module.value_and_grad(**inputs)
        results["value_and_grad"] = {"loss": loss, **grads}
    by_c_name = {}
    for k in generated.package.spec.kernels:
        by_c_name[k.kind] = {a.c_name: np.asarray(results[k.kind][a.name], dtype=np.float64).reshape(-1)
                             for a in k.arguments if a.role == "output"}
    return by_c_name


def _assert_same_bits(printed: list, expected: dict) -> None:
    seen = set()
    for kind, c_name, index, text in printed:
        value = expected[kind][c_name][int(index)]
        c_value = float(text)
        assert c_value == value or (np.isnan(c_value) and np.isnan(value)), (kind, c_name, index, text, repr(value))
        seen.add((kind, c_name, int(index)))
    every = {(kind, c_name, i) for kind, arrays in expected.items() for c_name, a in arrays.items()
             for i in range(a.size)}
    assert seen == every, f"the example did not print {sorted(every - seen)[:5]}"


@needs_make
@pytest.mark.parametrize("name, dtype", [("logistic_regression", "float64"), ("digits_softmax", "float64"),
                                         ("logistic_regression", "float32")])
def test_example_prints_the_python_results_to_the_last_bit(name, dtype, tmp_path, build_dir):
    model = _model(name)
    generated = generate(model, dtype=dtype)
    path = export_c(model, tmp_path, dtype=dtype).path
    assert _make(path, "example") == ""  # warning-free with gcc
    module = sg.compile(model, out_dir=build_dir / f"export_{dtype}", dtype=dtype, flags=MATCHING_FLAGS)
    _assert_same_bits(_example_results(path), _python_results(module, generated))


@pytest.mark.skipif(shutil.which("clang") is None or shutil.which("make") is None, reason="needs clang and make")
def test_clang_builds_it_warning_free_and_computes_the_same(tmp_path, build_dir):
    model = _model("digits_softmax")  # matrix products, softmax, class indices
    path = export_c(model, tmp_path).path
    assert _make(path, "all", cc="clang") == ""
    assert _make(path, "all", cc="clang", cflags="-std=c99 -O2 -Wall -Wextra -pedantic") == ""
    module = sg.compile(model, out_dir=build_dir / "export_float64", flags=MATCHING_FLAGS)
    _assert_same_bits(_example_results(path), _python_results(module, generate(model)))


@needs_make
@pytest.mark.parametrize("name", ["affine_square", "digits_mlp", "quadratic_form", "xor"])
def test_every_example_model_builds_warning_free_without_simd_flags(name, tmp_path):
    """Plain -std=c99 -pedantic, no -fopenmp-simd: the kernels' SIMD pragmas draw no warning."""
    path = export_c(_model(name), tmp_path).path
    assert _make(path, "all", cflags="-std=c99 -O1 -Wall -Wextra -pedantic") == ""
    assert len(_example_results(path)) > 0


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None, reason="needs g++ and make")
def test_the_header_works_from_cpp(tmp_path):
    path = export_c(_model("logistic_regression"), tmp_path).path
    _make(path, "liblogistic_regression.a")
    (tmp_path / "use.cpp").write_text("""
#include "logistic_regression.h"
#include <cstdio>
#include <vector>
int main()
{
    const double x1[2] = {0.5, -1.0}, x2[2] = {2.0, 0.25}, y[2] = {1.0, 0.0};
    double loss, g1, g2, gb;
    std::vector<double> work(logistic_regression_value_and_grad_work_size() + 1);
    int status = logistic_regression_value_and_grad(2, 2, 0.1, -0.2, 0.3, x1, x2, y, &loss, &g1, &g2, &gb,
                                                    work.data());
    std::printf("%d %.17g %.17g %.17g %.17g\\n", status, loss, g1, g2, gb);
    return status == LOGISTIC_REGRESSION_OK ? 0 : 1;
}
""")
    compile_ = subprocess.run(["g++", "-std=c++11", "-Wall", "-Wextra", "-pedantic", f"-I{path}", "use.cpp",
                               str(path / "liblogistic_regression.a"), "-lm", "-o", "use"],
                              cwd=tmp_path, capture_output=True, text=True)
    assert compile_.returncode == 0 and compile_.stderr == "", compile_.stderr
    status, *values = subprocess.run(["./use"], cwd=tmp_path, capture_output=True, text=True,
                                     check=True).stdout.split()
    x1, x2, y = np.array([0.5, -1.0]), np.array([2.0, 0.25]), np.array([1.0, 0.0])
    p = 1 / (1 + np.exp(-(0.1 * x1 - 0.2 * x2 + 0.3)))
    expected = [np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))), np.mean((p - y) * x1),
                np.mean((p - y) * x2), np.mean(p - y)]
    assert status == "0"
    np.testing.assert_allclose([float(v) for v in values], expected, rtol=1e-14)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_cmake_builds_the_static_and_shared_library(tmp_path):
    path = export_c(_model("xor"), tmp_path / "src").path
    build = tmp_path / "build"
    subprocess.run(["cmake", "-S", str(path), "-B", str(build), "-DCMAKE_C_FLAGS=-Wall -Wextra -pedantic"],
                   check=True, capture_output=True)
    done = subprocess.run(["cmake", "--build", str(build)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "warning" not in done.stdout + done.stderr
    assert (build / "libxor.a").is_file() and (build / "libxor.so").is_file()
    assert subprocess.run([str(build / "xor_example")], capture_output=True, check=True).stdout


@needs_make
def test_every_exported_symbol_carries_the_model_prefix(tmp_path):
    path = export_c(_model("digits_softmax"), tmp_path).path
    _make(path, "libdigits_softmax.so")
    if shutil.which("nm") is None:
        pytest.skip("needs nm")
    table = subprocess.run(["nm", "-g", "--defined-only", str(path / "libdigits_softmax.so")],
                           capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1] for line in table.splitlines() if line.strip()]
    assert "digits_softmax_value_and_grad" in names and "digits_softmax_value_and_grad_work_size" in names
    assert all(n.startswith("digits_softmax_") for n in names if not n.startswith("_")), names


def test_the_library_needs_nothing_of_python_and_reuses_the_kernel_sources():
    generated = generate(_model("digits_softmax"))
    files = library_files(generated)
    package = generated.package
    assert set(files) == {"digits_softmax_forward.c", "digits_softmax_value_and_grad.c", "digits_softmax_info.c",
                          "digits_softmax.h", "symgrad_runtime.h", "example_main.c", "Makefile", "CMakeLists.txt"}
    for name in package.kernel_sources:
        assert files[name] == package.files[name]  # the Python build's kernels, as they are
    includes = set(re.findall(r"^\s*#\s*include\s*([<\"][^>\"]+[>\"])", "\n".join(files.values()), re.M))
    standard = {"<stdint.h>", "<math.h>", "<string.h>", "<stdio.h>", "<stdlib.h>"}
    assert includes <= standard | {f'"{name}"' for name in files}, includes
    runtime = files["symgrad_runtime.h"]
    assert not re.search(r"vector_size|target_clones|__attribute__\(\(target|__builtin_cpu", runtime)
    header = files["digits_softmax.h"]
    assert 'extern "C"' in header and "restrict" not in header.split("#ifndef")[1]
    assert "#define DIGITS_SOFTMAX_OK 0" in header and "#define DIGITS_SOFTMAX_ERROR_CLASS_INDEX 1" in header
    assert f"#define DIGITS_SOFTMAX_VALUE_AND_GRAD_WORK_SIZE {package.spec.kernels[1].work_size}" in header


def test_the_python_build_gets_its_runtime_header_unchanged():
    for name in ("logistic_regression", "digits_mlp"):
        for dtype in ("float64", "float32"):
            package = generate(_model(name), dtype=dtype).package
            header, source = split_runtime(runtime_header(package.spec, portable=False))
            assert (header, source) == (package.files["symgrad_runtime.h"], package.files["symgrad_runtime.c"])


def test_class_index_inputs_get_whole_numbers_in_range():
    values = example_inputs(generate(_model("digits_softmax")))
    assert values["c"].shape == (EXAMPLE_BATCH,)
    assert all(v == int(v) and 0 <= v < 10 for v in values["c"])
    assert values["x"].shape == (EXAMPLE_BATCH, 64, 1) and 0 < values["x"].min() and values["x"].max() < 1


def test_the_command_writes_one_library_per_model(tmp_path, capsys):
    assert main(["export", str(EXAMPLES / "fan_out.py"), "--c", str(tmp_path)]) == 0
    assert (tmp_path / "fan_out" / "fan_out.h").is_file() and (tmp_path / "fan_out" / "Makefile").is_file()
    assert "fan_out: C library in" in capsys.readouterr().out


def test_the_command_refuses_an_unwritable_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["export", str(EXAMPLES / "fan_out.py"), "--c", str(blocker)]) == 1
    err = capsys.readouterr().err
    assert "cannot write the C library" in err and str(blocker) in err


def test_the_command_needs_a_format(capsys):
    with pytest.raises(SystemExit):
        main(["export", str(EXAMPLES / "fan_out.py")])
    assert "--c" in capsys.readouterr().err


def test_a_model_without_a_loss_says_so():
    x = sp.Symbol("x")
    header = library_files(generate(sg.Model("no_loss", inputs=[x], outputs={"y": x**2})))["no_loss.h"]
    assert "This model has no loss" in header and "mean over the batch" not in header
