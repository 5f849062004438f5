"""The optional peers: importing them with the benchmark settings, and their helpers.

Each peer is imported on first use; a missing one is reported (and skipped)
rather than failing the run. The CasADi helpers build a per-example SX
function, map it over a batch (summing the shared-parameter outputs for
mean-reduced losses), and compile its generated C with gcc for
``casadi.external``. The SymPy helper derives in a subprocess with a time
limit and brings back the source of the ``lambdify`` function.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .harness import CASADI_C, CASADI_SX, JAX, NUMPY, SYMGRAD, SYMPY, TORCH

ROOT = Path(__file__).resolve().parent.parent
INSTALL_HINT = {
    JAX: "pip install jax jaxlib",
    TORCH: "pip install torch==2.13.0",
    CASADI_SX: "pip install casadi",
    CASADI_C: "pip install casadi (and a gcc on PATH)",
}


class Unavailable(Exception):
    """A peer that cannot run here (not installed, no compiler)."""


@functools.lru_cache(maxsize=None)
def jax_modules():
    try:
        import jax
    except Exception as exc:
        raise Unavailable(f"jax is not importable ({type(exc).__name__}: {exc}); {INSTALL_HINT[JAX]}") from None
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_platforms", "cpu")
    import jax.numpy as jnp

    return jax, jnp


@functools.lru_cache(maxsize=None)
def torch_module():
    try:
        import torch
    except Exception as exc:
        raise Unavailable(f"torch is not importable ({type(exc).__name__}: {exc}); {INSTALL_HINT[TORCH]}") from None
    from ._threads import THREADS

    torch.set_num_threads(THREADS)
    try:
        torch.set_num_interop_threads(THREADS)
    except RuntimeError:  # already set (parallel work has started)
        pass
    torch.set_default_dtype(torch.float64)
    return torch


@functools.lru_cache(maxsize=None)
def casadi_module():
    try:
        import casadi
    except Exception as exc:
        raise Unavailable(f"casadi is not importable ({type(exc).__name__}: {exc}); {INSTALL_HINT[CASADI_SX]}") from None
    return casadi


def gcc() -> str:
    path = shutil.which(os.environ.get("BENCH_CC", "gcc"))
    if path is None:
        raise Unavailable("no gcc on PATH to compile CasADi's generated C")
    return path


def availability() -> dict:
    """{contender: None if it can run, else why not}."""
    out = {SYMGRAD: None, NUMPY: None, SYMPY: None}
    for name, probe in ((JAX, jax_modules), (TORCH, torch_module), (CASADI_SX, casadi_module)):
        try:
            probe()
            out[name] = None
        except Unavailable as exc:
            out[name] = str(exc)
    out[CASADI_C] = out[CASADI_SX]
    if out[CASADI_C] is None:
        try:
            gcc()
        except Unavailable as exc:
            out[CASADI_C] = str(exc)
    return out


def versions() -> dict:
    """Versions of everything that is timed, for RESULTS.md."""
    import platform

    import cffi
    import sympy

    import symgrad

    out = {"python": platform.python_version(), "numpy": np.__version__, "sympy": sympy.__version__,
           "cffi": cffi.__version__, "symgrad": symgrad.__version__ + _git_state()}
    for module in ("jax", "jaxlib", "torch", "casadi", "sklearn", "setuptools"):
        try:
            out[module] = importlib.import_module(module).__version__
        except Exception:
            out[module] = "not installed"
    for cc in ("gcc",):
        try:
            first = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
            out[cc] = first.splitlines()[0]
        except Exception:
            out[cc] = "not found"
    try:
        from symgrad.build import DEFAULT_FLAGS, compiler_command

        out["symgrad compiler"] = f"{compiler_command()} {' '.join(DEFAULT_FLAGS)}"
    except Exception:
        pass
    return out


def _git_state() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "symgrad"], cwd=ROOT,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return f" (git {commit}{', symgrad/ modified' if dirty else ''})" if commit else ""
    except Exception:
        return ""


# --- CasADi -------------------------------------------------------------------------------------


def casadi_compile(functions: list, name: str, work_dir: Path) -> dict:
    """Generate C for ``functions`` (CasADi Functions), gcc -O3 it, and load each with casadi.external.

    Returns {function name: external Function}. The shared library is cached
    by a hash of the generated source.
    """
    ca = casadi_module()
    cc = gcc()
    work_dir = Path(work_dir) / "casadi"
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        gen = ca.CodeGenerator(f"{name}.c", {"with_header": False})
        for f in functions:
            gen.add(f)
        gen.generate(tmp + os.sep)
        source = Path(tmp, f"{name}.c").read_text()
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    c_file = work_dir / f"{name}_{digest}.c"
    so_file = work_dir / f"{name}_{digest}.so"
    if not so_file.exists():
        c_file.write_text(source)
        tmp_so = so_file.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run([cc, "-O3", "-shared", "-fPIC", str(c_file), "-o", str(tmp_so), "-lm"], check=True,
                       capture_output=True, text=True)
        os.replace(tmp_so, so_file)
    return {f.name(): ca.external(f.name(), str(so_file)) for f in functions}


def to_numpy(dm) -> np.ndarray:
    return np.array(dm, dtype=np.float64)


# --- SymPy --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _lambdify_namespace() -> dict:
    import sympy as sp

    x = sp.Symbol("x")
    return dict(sp.lambdify([x], sp.sin(x), modules="numpy").__globals__)


def sympy_functions(spec: dict, cfg) -> dict:
    """Derive ``spec`` (see worker.sympy_lambdify) in a subprocess; return {name: function}, seconds.

    Raises TimeoutError when the derivation does not finish within
    ``cfg.sympy_derive_seconds``.
    """
    try:
        result = run_worker("sympy_lambdify", spec, cfg.sympy_derive_seconds, cfg.work_dir)
    except TimeoutError:
        raise TimeoutError(f"SymPy's diff + lambdify(cse=True) did not finish within "
                           f"{cfg.sympy_derive_seconds:.0f} s (a subprocess, stopped then)") from None
    functions = {}
    for name, source in result["sources"].items():
        namespace = dict(_lambdify_namespace())
        code = compile(source, f"<sympy lambdify {spec.get('family')} {name}>", "exec")
        exec(code, namespace)
        functions[name] = namespace["_lambdifygenerated"]
    return {"functions": functions, "seconds": result["seconds"]}


def run_worker(task: str, spec: dict, timeout: float, work_dir: Path) -> dict:
    """Run ``python -m benchmarks.worker task`` with ``spec``; its JSON result or an exception.

    The worker runs in its own process group so that a time-out ends it and
    anything it started (a compiler) together.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=work_dir, delete=False) as fh:
        json.dump(spec, fh)
        spec_path = fh.name
    out_path = spec_path[:-5] + ".out.json"
    command = [sys.executable, "-m", "benchmarks.worker", task, spec_path, out_path]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import signal

        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        _remove(spec_path, out_path)
        raise TimeoutError(f"did not finish within {timeout:.0f} s") from None
    elapsed = time.perf_counter() - start
    try:
        if proc.returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-6:])
            raise RuntimeError(f"worker {task} exited with {proc.returncode}: {tail}")
        with open(out_path) as fh:
            result = json.load(fh)
    finally:
        _remove(spec_path, out_path)
    result.setdefault("wall_seconds", elapsed)
    return result


def _remove(*paths) -> None:
    for p in paths:
        try:
            os.unlink(p)
        except OSError:
            pass
