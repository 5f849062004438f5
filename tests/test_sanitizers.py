"""The example models built with AddressSanitizer and UndefinedBehaviorSanitizer, called through every path.

``SYMGRAD_SANITIZE=1`` adds ``-fsanitize=address,undefined`` to a build.
Such an extension loads only into a Python with the sanitizer runtimes
preloaded, so the calls run in a subprocess with ``LD_PRELOAD`` of GCC's
libasan and libubsan: any read or write outside the memory a call owns
(arguments, results, the workspace, the one-example entry's struct) and any
undefined behaviour in the kernels stops it with a report.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import runtime
from symgrad.check import random_point
from symgrad.pipeline import build_model

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith(("run_", "_")))


def _gcc_library(name):
    try:
        found = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return found if os.path.isabs(found) and os.path.exists(found) else None


LIBRARIES = [_gcc_library("libasan.so"), _gcc_library("libubsan.so")]
pytestmark = pytest.mark.skipif(None in LIBRARIES or (os.environ.get("CC") or "gcc") != "gcc",
                                reason="needs gcc with libasan and libubsan")


def _wide(width=129):
    s = sp.symbols(f"v0:{width}")
    return sg.Model(f"sanitized_wide{width}", loss=sum(s[k] * sp.sin(s[(k + 1) % width]) for k in range(width)),
                    params=list(s[1::2]), inputs=list(s[::2]), wrt=list(s))


def _sanitized_env():
    env = dict(os.environ)
    env.update(LD_PRELOAD=" ".join(LIBRARIES), ASAN_OPTIONS="detect_leaks=0", PYTHONMALLOC="malloc",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    return env


def _run(code, *args):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], capture_output=True,
                          text=True, env=_sanitized_env(), timeout=600)


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """(build folder, {model name: file of the calls' arguments}) for the examples and a wide model."""
    folder = tmp_path_factory.mktemp("sanitized")
    models = [m for path in EXAMPLES for m in sg.load_model(path)] + [_wide()]
    rng = np.random.default_rng(7)
    cases = {}
    previous = os.environ.get("SYMGRAD_SANITIZE")
    os.environ["SYMGRAD_SANITIZE"] = "1"
    try:
        for model in models:
            build_model(model, folder)
            arrays = {}
            for case, batch in (("one", 1), ("few", 5), ("slices", runtime.CHUNK + 3)):
                point = random_point(model, rng, 0.2, 0.9, batch)
                if case == "one":  # one example: inputs without the batch axis
                    inputs = {str(s.name) for s in model.inputs}
                    point = {k: (v[0] if k in inputs else v) for k, v in point.items()}
                    point = {k: float(v) if np.ndim(v) == 0 else v for k, v in point.items()}
                arrays.update({f"{case}/{k}": np.asarray(v) for k, v in point.items()})
            cases[model.name] = folder / f"{model.name}.npz"
            np.savez(cases[model.name], **arrays)
    finally:
        if previous is None:
            del os.environ["SYMGRAD_SANITIZE"]
        else:
            os.environ["SYMGRAD_SANITIZE"] = previous
    return folder, cases


CALLS = """
    import importlib, sys
    import numpy as np
    folder = sys.argv[1]
    sys.path.insert(0, folder)
    for name in sys.argv[2:]:
        module = importlib.import_module(name)
        data = np.load(f"{folder}/{name}.npz")
        for case in ("one", "few", "slices"):
            arrays = {k.split("/")[1]: v for k, v in data.items() if k.startswith(case + "/")}
            numbers = {k: (float(v) if v.ndim == 0 else v) for k, v in arrays.items()}
            lists = {k: v.tolist() for k, v in arrays.items()}
            threads = 2 if case == "slices" else 1
            for call in (module.forward, module.value_and_grad, module.grad):
                try:
                    first = call(**numbers, threads=threads)
                except Exception as exc:
                    if "no loss" in str(exc):
                        continue
                    raise
                call(**numbers, out=first, threads=threads)
                call(**numbers, out=first)
                if case != "slices":
                    call(**lists)
                    call(**arrays)
            trainer = getattr(module, "_trainer", None)  # the fused training kernel, where the model has one
            if trainer is not None and case != "one":
                params = {p: np.array(arrays[p], dtype=float) for p, _, _ in trainer.params}
                examples = {a.name: arrays[a.name] for a in trainer.inputs}
                n = len(next(iter(examples.values()))) if examples else 1  # a model without inputs: one example
                for optimizer in ("sgd", "momentum", "adam"):  # one minibatch (sliced when large), then shuffled ones
                    module.train_epoch(params, examples, n, 1e-3, optimizer)
                    module.train_epoch(params, examples, 2 if case == "few" else 4097, 1e-3, optimizer, shuffle=0)
                module.sgd_step(params, 1e-3, **examples)
        print("called", name)
    print("ok")
"""


def test_examples_run_clean_under_the_sanitizers(sanitized):
    folder, cases = sanitized
    done = _run(CALLS, folder, *cases)
    assert "ERROR: AddressSanitizer" not in done.stderr and "runtime error" not in done.stderr, done.stderr[-4000:]
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("called") == len(cases)


def test_the_sanitizers_are_live(sanitized):
    """A kernel told to read ten examples from arrays of one is caught (so the clean run above means something)."""
    folder, _ = sanitized
    done = _run("""
        import sys
        import numpy as np
        sys.path.insert(0, sys.argv[1])
        import logistic_regression as m
        ffi, lib = m._ffi, m._lib
        one = np.ones(1)
        pointers = [ffi.from_buffer("double *", np.ones(1)) for _ in range(5)]
        lib.logistic_regression_forward(10, 10, 0.1, 0.2, 0.3, *pointers, ffi.from_buffer("double *", one))
        print("not caught")
    """, folder)
    assert "heap-buffer-overflow" in done.stderr, done.stdout + done.stderr[-2000:]
    assert "not caught" not in done.stdout
