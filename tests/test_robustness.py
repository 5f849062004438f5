"""Untrusted names, broken builds and caches, concurrency, threads and memory."""

import json
import multiprocessing
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.build import MANIFEST, build, load
from symgrad.errors import CompileError, CompilerNotFoundError, OutputDirectoryError
from symgrad.pipeline import build_model, generate

# --- untrusted names ----------------------------------------------------------------------

HOSTILE_NAMES = [
    "int", "double", "return", "sin", "exp", "main", "n", "nt", "work", "e", "k", "t0",
    "lambda", "class", "α", "é", "x\u0301", "x_1", "x1", "x.1", "x 1",
    "very_" * 30 + "long", 'quo"te', "back\\slash", "end*/comment", "new\nline", "#include <stdio.h>",
    "??/", "", "v1", "p_x", "out_loss", "grad_a",
]


def test_hostile_symbol_names_build_and_map_back(compile_model):
    symbols = [sp.Symbol(name) for name in HOSTILE_NAMES]
    # Each symbol gets its own weight, so every gradient has a distinct, known value.
    loss = sum((k + 1) * s for k, s in enumerate(symbols)) + symbols[0] * symbols[1]
    outputs = {name: (k + 1) * s for k, (name, s) in enumerate(zip(HOSTILE_NAMES, symbols)) if name}
    half = len(symbols) // 2
    model = sg.Model("hostile_names", loss=loss, params=symbols[:half], inputs=symbols[half:],
                     wrt=symbols, outputs=outputs)
    files = generate(model).package.files
    source = files["hostile_names_forward.c"] + files["hostile_names_value_and_grad.c"]
    assert source.isascii()
    code = re.sub(r"/\*.*?\*/", "", source, flags=re.S)  # user text may appear in comments only
    assert "/*" not in code and "*/" not in code
    assert "<stdio" not in code and "??" not in code and "\\" not in code
    quoted = [line for line in code.splitlines() if '"' in line]
    assert all(line.startswith("#include") for line in quoted)
    module = compile_model(model)
    values = {name: float(k + 10) for k, name in enumerate(HOSTILE_NAMES)}
    loss_value, grads = module.value_and_grad(**values)
    expected = sum((k + 1) * (k + 10) for k in range(len(HOSTILE_NAMES))) + 10.0 * 11.0
    assert loss_value == pytest.approx(expected)
    for k, name in enumerate(HOSTILE_NAMES):
        extra = 11.0 if k == 0 else 10.0 if k == 1 else 0.0
        assert grads[name] == pytest.approx(k + 1 + extra), name
    forward = module.forward(**values)
    for k, name in enumerate(HOSTILE_NAMES):
        if name:
            assert forward[name] == pytest.approx((k + 1) * (k + 10)), name


def test_hostile_output_and_matrix_names(compile_model):
    M = sp.MatrixSymbol('m"*/\n', 2, 2)
    v = sp.MatrixSymbol("main", 2, 1)
    model = sg.Model("hostile_matrices", loss=v.T * M * v, params=[M],
                     inputs=[v], wrt=[M, v], outputs={"*/ #define x": M * v, "return": v.T * v})
    module = compile_model(model)
    Mv = np.array([[1.0, 2.0], [3.0, 4.0]])
    vv = np.array([[1.0], [-1.0]])
    loss, g = module.value_and_grad(**{'m"*/\n': Mv, "main": vv})
    assert loss == pytest.approx((vv.T @ Mv @ vv).item())
    np.testing.assert_allclose(g['m"*/\n'], vv @ vv.T)
    out = module.forward(**{'m"*/\n': Mv, "main": vv})
    np.testing.assert_allclose(out["*/ #define x"], Mv @ vv)


def test_unicode_model_name(compile_model):
    x = sp.Symbol("x")
    module = compile_model(sg.Model("modèle_α", loss=x**2, inputs=[x], wrt=[x], reduce=None))
    assert module.value_and_grad(x=3.0) == (9.0, {"x": 6.0})


# --- builds ---------------------------------------------------------------------------------


def _tiny(name="tiny"):
    x, a = sp.symbols("x a")
    return sg.Model(name, loss=(a * x - 1) ** 2, params=[a], inputs=[x])


def test_missing_compiler_says_how_to_install_one(tmp_path, monkeypatch):
    from symgrad import build as build_module

    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    build_module.compiler_version.cache_clear()
    try:
        with pytest.raises(CompilerNotFoundError, match="apt-get install gcc"):
            build_model(_tiny(), tmp_path)
    finally:
        build_module.compiler_version.cache_clear()


def test_compiler_errors_show_the_message_and_the_c_file(tmp_path):
    with pytest.raises(CompileError) as info:
        build_model(_tiny("bad_flags"), tmp_path, flags=("-O3", "-fno-such-option-at-all"))
    message = str(info.value)
    assert "-fno-such-option-at-all" in message
    kept = Path(re.search(r"C source: (\S+)", message).group(1))
    assert kept.is_file() and kept.name.startswith("bad_flags")
    assert not (tmp_path / "bad_flags" / MANIFEST).exists()


def test_output_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputDirectoryError, match="cannot write the generated package"):
        build_model(_tiny(), blocker / "out")


def test_full_disk_is_reported(tmp_path, monkeypatch):
    import errno

    original = Path.write_text

    def full(self, *args, **kwargs):
        if ".build-" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OutputDirectoryError, match="the disk is full"):
        build_model(_tiny("full_disk"), tmp_path)


def test_corrupted_extension_is_detected_and_rebuilt(tmp_path):
    _, first = build_model(_tiny("corrupt"), tmp_path)
    extension = next(first.path.glob("_kernels_*"))
    extension.write_bytes(extension.read_bytes()[:1000])  # truncated
    _, second = build_model(_tiny("corrupt"), tmp_path)
    assert not second.cached
    module = load(second.path)
    assert module.value_and_grad(a=2.0, x=1.0)[0] == pytest.approx(1.0)


def test_package_from_another_symgrad_version_is_rebuilt(tmp_path):
    _, first = build_model(_tiny("old"), tmp_path)
    manifest = json.loads((first.path / MANIFEST).read_text())
    manifest["key"] = "0" * 64
    manifest["symgrad"] = "0.0.1"
    (first.path / MANIFEST).write_text(json.dumps(manifest))
    _, second = build_model(_tiny("old"), tmp_path)
    assert not second.cached and second.key == first.key


def test_a_build_killed_half_way_leaves_nothing_loadable(tmp_path):
    generated = generate(_tiny("killed"))
    # What a killed build leaves: a staging folder with partial files, and no package.
    staging = tmp_path / ".killed.build-12345-deadbeef"
    staging.mkdir(parents=True)
    (staging / "killed.c").write_text("int half")
    with pytest.raises(sg.errors.BuildError):
        load(tmp_path / "killed")
    result = build(generated.package, tmp_path)
    assert not staging.exists()
    assert load(result.path).value_and_grad(a=1.0, x=1.0)[0] == 0.0


def test_a_build_interrupted_while_installing_is_redone(tmp_path):
    _, first = build_model(_tiny("interrupted"), tmp_path)
    (first.path / MANIFEST).unlink()  # the manifest is written last
    _, second = build_model(_tiny("interrupted"), tmp_path)
    assert not second.cached


def _build_in_process(args):
    out_dir, index = args
    model = _tiny("concurrent_builds")
    _, result = build_model(model, out_dir)
    module = load(result.path)
    return result.key, module.value_and_grad(a=0.5, x=np.arange(4.0))[0], result.cached


def test_eight_processes_building_the_same_model_at_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Pool(8) as pool:
        results = pool.map(_build_in_process, [(str(tmp_path), k) for k in range(8)])
    keys = {key for key, _, _ in results}
    losses = {loss for _, loss, _ in results}
    assert len(keys) == 1 and len(losses) == 1
    assert sum(not cached for _, _, cached in results) == 1  # one compiled, seven found it built
    assert not list(tmp_path.glob(".concurrent_builds.build-*"))


# --- running ----------------------------------------------------------------------------------


def test_threads_share_a_module_safely(compile_model, rng):
    x, t, a, b = sp.symbols("x t a b")
    module = compile_model(sg.Model("threaded", loss=(sp.tanh(a * x) + b - t) ** 2, params=[a, b], inputs=[x, t]))
    jobs = [(float(k) / 10, rng.normal(size=5000), rng.normal(size=5000)) for k in range(16)]
    expected = [module.value_and_grad(a=av, b=0.3, x=xv, t=tv)[1]["a"] for av, xv, tv in jobs]
    results = [None] * len(jobs)

    def work(k):
        for _ in range(20):
            av, xv, tv = jobs[k]
            results[k] = module.value_and_grad(a=av, b=0.3, x=xv, t=tv)[1]["a"]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert results == expected


def test_generated_c_has_no_mutable_static_state_and_uses_64_bit_indices(compile_model):
    sources = generate(_tiny("static_check")).package.files
    for name in ("static_check_forward.c", "static_check_value_and_grad.c", "symgrad_runtime.h",
                 "symgrad_runtime.c"):
        code_only = re.sub(r"/\*.*?\*/", "", sources[name], flags=re.S)
        for line in code_only.splitlines():
            code = line
            if re.search(r"\bstatic\b", code) and "(" not in code:  # a static variable, not a function
                assert re.search(r"\bstatic const\b", code), line
            # Loops over data count in 64 bits; the runtime header's scalar functions may count
            # series terms or a function's order with an int.
            if name.endswith(".c") and not name.startswith("symgrad_runtime"):
                assert not re.search(r"for \(int ", code), line


def test_repeated_calls_do_not_grow_memory(compile_model):
    x, a = sp.symbols("x a")
    module = compile_model(sg.Model("leak_probe", loss=sp.sin(a * x) ** 2, params=[a], inputs=[x]))
    data = np.linspace(0, 1, 64)

    def rss_kib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    for _ in range(2000):  # warm up allocators and caches
        module.value_and_grad(a=0.5, x=data)
    before = rss_kib()
    for _ in range(100_000):
        module.value_and_grad(a=0.5, x=data)
    assert rss_kib() - before < 2048  # KiB


def test_cpu_level_versions_are_compiled_where_they_pay():
    """Small kernels, and kernels calling SIMD math functions up to a limit, get versions for
    several CPU levels; large arithmetic-only kernels and huge ones are compiled once."""
    from symgrad.build import DISPATCH_SMALL_SOURCE, DISPATCH_SOURCE_LIMIT, compiler_flags

    def dispatched(size, vector_math):
        return "-DSG_DISPATCH_KERNELS" in compiler_flags(source_size=size, vector_math=vector_math)

    assert dispatched(DISPATCH_SMALL_SOURCE, False)
    assert not dispatched(DISPATCH_SMALL_SOURCE + 1, False)
    assert dispatched(DISPATCH_SOURCE_LIMIT, True)
    assert not dispatched(DISPATCH_SOURCE_LIMIT + 1, True)
    assert "-DSG_DISPATCH_KERNELS" not in compiler_flags(native=True, source_size=100)
    x, a = sp.symbols("x a")
    for loss, calls in ((a * x**2, False), (sp.tanh(a * x), True), (sp.exp(a) * x, True)):
        package = generate(sg.Model("m", loss=loss, params=[a], inputs=[x])).package
        assert package.calls_vector_math() is calls, loss
