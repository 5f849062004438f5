"""What every workload shares: building each contender's cases, then checking and timing them."""

from __future__ import annotations

import time

import numpy as np

from ..harness import (CASADI_C, CASADI_SX, CONTENDERS, HAND_C, JAX, NUMPY, SYMGRAD, SYMPY, TORCH, Config, Entry,
                       WorkloadResult, describe_exception, run_metric)
from ..peers import Unavailable, casadi_compile, sympy_functions, to_numpy

BUILDERS = {SYMGRAD: "build_symgrad", NUMPY: "build_numpy", JAX: "build_jax", TORCH: "build_torch",
            CASADI_SX: "build_casadi_sx", CASADI_C: "build_casadi_c", SYMPY: "build_sympy", HAND_C: "build_hand_c"}


class Workload:
    """Subclasses set ``id``, ``title``, and define ``metrics``, ``references`` and ``build_*``.

    ``build_<contender>()`` returns ``{metric key: Case}``; a contender that
    does not apply to the workload has no builder. ``references()`` returns
    ``{metric key: ((value, {name: gradient}), forward value)}`` from the
    NumPy code written by hand, and ``self_check()`` checks that code against
    finite differences before anything is compared with it.
    """

    id = "M?"
    title = ""

    def __init__(self, cfg: Config, available: dict):
        self.cfg = cfg
        self.available = available
        self._cache = {}

    # --- to be defined by workloads ---

    def description(self) -> str:
        raise NotImplementedError

    def metrics(self) -> list:
        raise NotImplementedError

    def references(self) -> dict:
        raise NotImplementedError

    def self_check(self) -> None:
        raise NotImplementedError

    # --- shared helpers ---

    def log(self, text: str) -> None:
        self.cfg.log(text)

    def cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def symgrad_module(self, model):
        import symgrad as sg

        return sg.compile(model, out_dir=self.cfg.work_dir / "generated")

    def sympy(self, spec: dict) -> dict:
        """The lambdified value-and-gradient and forward functions of ``spec`` (cached per workload)."""
        return self.cached(("sympy", tuple(sorted(spec.items()))), lambda: self._sympy(spec))

    def _sympy(self, spec):
        result = sympy_functions(spec, self.cfg)
        seconds = result["seconds"]
        self.log(f"    sympy: diff {seconds['diff']:.2f} s, lambdify {seconds['lambdify']:.2f} s")
        self.notes.append(f"SymPy derivation time: diff {seconds['diff']:.2f} s, "
                          f"lambdify(cse=True) {seconds['lambdify']:.2f} s.")
        return result["functions"]

    def casadi_external(self, functions: dict, name: str) -> dict:
        """{name: external Function} for the CasADi functions ``functions`` ({name: Function})."""
        start = time.perf_counter()
        compiled = casadi_compile(list(functions.values()), name, self.cfg.work_dir)
        self.log(f"    casadi: generated C and gcc -O3 in {time.perf_counter() - start:.2f} s")
        return compiled

    # --- the run ---

    def run(self) -> WorkloadResult:
        start = time.perf_counter()
        self.notes: list = []
        result = WorkloadResult(self.id, self.title, self.description(), notes=self.notes)
        metrics = self.metrics()
        result.metrics = metrics
        self.log(f"{self.id}: {self.title}")
        self.self_check()
        references = self.references()
        cases = {m.key: {} for m in metrics}
        for contender in CONTENDERS:
            reason = self.available.get(contender)
            builder = getattr(self, BUILDERS[contender], None)
            if reason is not None:
                for m in metrics:
                    m.entries[contender] = Entry(contender, "unavailable", note=reason)
                continue
            if builder is None and contender == HAND_C:  # a row only where a workload writes the C
                continue
            if builder is None:
                for m in metrics:
                    m.entries[contender] = Entry(contender, "skipped", note="not applicable")
                continue
            self.log(f"  building {contender}")
            try:
                built = builder()
            except Unavailable as exc:
                built, status, note = {}, "unavailable", str(exc)
            except TimeoutError as exc:
                built, status, note = {}, "skipped", f"not timed: {exc}"
            except Exception as exc:
                built, status, note = {}, "error", f"setup failed: {describe_exception(exc)}"
            else:
                status, note = "skipped", "no case for this metric"
            if not built:
                self.notes.append(f"{contender}: {note}")
                self.log(f"    {contender}: {note}")
            for m in metrics:
                if m.key in built:
                    cases[m.key][contender] = built[m.key]
                else:
                    m.entries[contender] = Entry(contender, status, note=note)
        for m in metrics:
            self.log(f"  metric {m.label} ({m.unit})")
            (vg_ref, fwd_ref) = references[m.key]
            run_metric(m, cases[m.key], vg_ref, fwd_ref, self.cfg)
        self._cache.clear()
        result.seconds = time.perf_counter() - start
        return result


# --- converters shared by the workloads ----------------------------------------------------------


def jax_result(names):
    """(value, grads tuple) from JAX -> (ndarray, {name: ndarray})."""

    def convert(out):
        value, grads = out
        return np.asarray(value), {n: np.asarray(g) for n, g in zip(names, grads)}

    return convert


def torch_result(names):
    def convert(out):
        value, grads = out
        return value.detach().numpy(), {n: g.detach().numpy() for n, g in zip(names, grads)}

    return convert


def sympy_result(names, shape=()):
    """[value, grad...] from a lambdified function -> (value, {name: grad}), broadcast to ``shape``."""

    def convert(out):
        value, *grads = out
        return (np.broadcast_to(np.asarray(value, dtype=float), shape),
                {n: np.broadcast_to(np.asarray(g, dtype=float), shape) for n, g in zip(names, grads)})

    return convert


def identity(x):
    return x


def dm_value(dm):
    return to_numpy(dm).reshape(-1) if dm.numel() > 1 else float(dm)
