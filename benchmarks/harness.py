"""Timing, correctness checks and the result records shared by every workload.

A workload builds, for each contender, a set of :class:`Case` objects (one
per metric): zero-argument callables for ``value_and_grad`` and, where the
contender has one, ``forward``, plus converters that turn what they return
into NumPy for the check. :func:`run_metric` checks every case against the
NumPy reference, then times the ones that agree, interleaving the contenders
repeat by repeat so a burst of load on the (shared, noisy) machine hits all
of them alike.
"""

from __future__ import annotations

import gc
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

TOLERANCE = 1e-9  # relative error allowed against the NumPy reference (float64)

SYMGRAD = "symgrad"
NUMPY = "numpy (by hand)"
JAX = "jax (jit)"
TORCH = "torch (eager)"
CASADI_SX = "casadi SX"
CASADI_C = "casadi C (external)"
SYMPY = "sympy lambdify"
HAND_C = "C by hand (cffi)"  # only in the workloads that write one (the flat-vector calls)
CONTENDERS = (SYMGRAD, NUMPY, JAX, TORCH, CASADI_SX, CASADI_C, SYMPY, HAND_C)
PEERS = CONTENDERS[1:]


@dataclass
class Config:
    quick: bool = False
    target_seconds: float = 0.2  # one measurement lasts at least this long
    repeats: int = 5  # measurements per case; the median is reported
    max_case_seconds: float = 6.0  # fewer repeats (at least 3) for very slow calls
    sympy_derive_seconds: float = 40.0  # SymPy derivation limit for the runtime workloads
    codegen_seconds: float = 300.0  # M7 limit per tool and size
    work_dir: Any = None  # pathlib.Path of benchmarks/.work
    check_only: bool = False  # build and check every contender, time nothing
    m7_sizes: dict | None = None  # {"m2": (10, ...), "m3": (...)} to override M7's sizes
    previous_codegen: list = field(default_factory=list)  # M7 rows of an earlier run (--merge)
    log: Callable[[str], None] = print

    @classmethod
    def make(cls, quick: bool, work_dir, log=print) -> "Config":
        if quick:
            return cls(quick=True, target_seconds=0.005, repeats=3, max_case_seconds=0.2,
                       sympy_derive_seconds=5.0, codegen_seconds=30.0, work_dir=work_dir, log=log)
        return cls(quick=False, work_dir=work_dir, log=log)


# --- records ----------------------------------------------------------------------------


@dataclass
class Stats:
    """Seconds per call (or per unit of work): median, min and max over the repeats."""

    median: float
    low: float
    high: float
    repeats: int
    loops: int

    def to_dict(self) -> dict:
        return dict(median=self.median, min=self.low, max=self.high, repeats=self.repeats, loops=self.loops)


@dataclass
class Entry:
    """One contender on one metric."""

    contender: str
    status: str  # ok | mismatch | error | skipped | unavailable
    error: float | None = None  # max relative error of value_and_grad vs the reference
    forward_error: float | None = None
    vg: Stats | None = None
    fwd: Stats | None = None
    note: str = ""

    def to_dict(self) -> dict:
        return dict(contender=self.contender, status=self.status, error=self.error,
                    forward_error=self.forward_error, note=self.note,
                    vg=self.vg.to_dict() if self.vg else None, fwd=self.fwd.to_dict() if self.fwd else None)


@dataclass
class Metric:
    key: str  # e.g. "point"
    label: str  # e.g. "1 point per call"
    unit: str  # e.g. "µs/call"
    scale: float  # seconds per call -> unit
    entries: dict = field(default_factory=dict)  # contender -> Entry
    has_forward: bool = True

    def to_dict(self) -> dict:
        return dict(key=self.key, label=self.label, unit=self.unit, scale=self.scale,
                    entries={k: e.to_dict() for k, e in self.entries.items()})


@dataclass
class WorkloadResult:
    id: str
    title: str
    description: str
    metrics: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # automatic notes (skips, failures)
    extra: dict = field(default_factory=dict)  # e.g. the code-generation table of M7
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(id=self.id, title=self.title, description=self.description, notes=self.notes,
                    metrics=[m.to_dict() for m in self.metrics], extra=self.extra, seconds=self.seconds)


@dataclass
class Case:
    """What one contender runs for one metric.

    ``vg`` and ``fwd`` are timed as they are. ``vg_result`` turns a return value
    of ``vg`` into ``(value, {name: ndarray})`` in the reference's layout;
    ``fwd_result`` turns one of ``fwd`` into the value. For cases whose work is
    not a single value_and_grad (an SGD epoch) ``vg`` is that work and its
    result is compared the same way (the parameters after the epoch).
    """

    vg: Callable[[], Any]
    vg_result: Callable[[Any], tuple]
    fwd: Callable[[], Any] | None = None
    fwd_result: Callable[[Any], Any] | None = None


# --- correctness --------------------------------------------------------------------------


def relative_error(got, want) -> float:
    """max |got - want| / max |want| (the infinity norms), after matching shapes."""
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if got.shape != want.shape:
        if got.size != want.size:
            raise ValueError(f"shape {got.shape} where {want.shape} was expected")
        got = got.reshape(want.shape)
    if not np.all(np.isfinite(got)):
        return math.inf
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    return diff / scale if scale > 0 else diff


def compare(result: tuple, reference: tuple) -> float:
    """The worst relative error over the value and every gradient."""
    value, grads = result
    ref_value, ref_grads = reference
    missing = set(ref_grads) - set(grads)
    if missing:
        raise ValueError(f"gradients missing for {sorted(missing)}")
    worst = relative_error(value, ref_value)
    for name, ref in ref_grads.items():
        worst = max(worst, relative_error(grads[name], ref))
    return worst


def finite_difference_check(loss: Callable[[dict], float], grads: dict, point: dict, seed=0,
                            directions=3, tolerance=1e-6) -> float:
    """Check a reference gradient against central differences of its loss, along random directions.

    ``loss(point)`` is a scalar (the sum over examples for per-example losses);
    ``grads`` the gradient at ``point`` with the same keys. Raises if the worst
    relative error exceeds ``tolerance``; returns it.
    """
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(directions):
        direction = {k: rng.standard_normal(np.shape(v)) for k, v in point.items()}
        scale = max(max(float(np.max(np.abs(v))) for v in point.values()), 1.0)
        h = 1e-6 * scale
        plus = {k: np.asarray(v, dtype=np.float64) + h * direction[k] for k, v in point.items()}
        minus = {k: np.asarray(v, dtype=np.float64) - h * direction[k] for k, v in point.items()}
        numeric = (loss(plus) - loss(minus)) / (2 * h)
        exact = sum(float(np.sum(np.asarray(grads[k]) * direction[k])) for k in point)
        err = abs(numeric - exact) / max(abs(exact), 1e-8)
        worst = max(worst, err)
    if worst > tolerance:
        raise AssertionError(f"the NumPy reference gradient disagrees with finite differences: {worst:.2e}")
    return worst


# --- timing ---------------------------------------------------------------------------------


def _run_loops(fn, loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    return time.perf_counter() - start


class _Timer:
    """Adaptive timing of one callable: calibrate loops so one measurement lasts >= target."""

    def __init__(self, fn, cfg: Config):
        self.fn = fn
        self.cfg = cfg
        self.samples: list = []
        self.loops = 1
        self.wanted = cfg.repeats

    def calibrate(self) -> None:
        fn, target = self.fn, self.cfg.target_seconds
        fn()  # warm-up: JIT compilation, caches, first allocation
        fn()
        loops = 1
        while True:
            elapsed = _run_loops(fn, loops)
            if elapsed >= target or elapsed * 2 >= self.cfg.max_case_seconds:
                break
            grow = target / max(elapsed, 1e-9) * 1.2
            loops = int(min(max(loops * 2, math.ceil(loops * grow)), loops * 100))
        self.loops = loops
        per_call = elapsed / loops
        affordable = int(self.cfg.max_case_seconds / max(per_call * loops, 1e-9))
        self.wanted = max(3, min(self.cfg.repeats, affordable))
        if loops == 1 and elapsed >= target:
            self.samples.append(per_call)  # a slow call: its calibration run is a sample

    def measure(self) -> None:
        if len(self.samples) < self.wanted:
            self.samples.append(_run_loops(self.fn, self.loops) / self.loops)

    def stats(self) -> Stats:
        s = sorted(self.samples)
        return Stats(float(np.median(s)), s[0], s[-1], len(s), self.loops)


def run_metric(metric: Metric, cases: dict, reference: tuple, reference_value, cfg: Config) -> None:
    """Check then time ``cases`` ({contender: Case}) and fill ``metric.entries``."""
    timers = {}
    for name, case in cases.items():
        entry = metric.entries.setdefault(name, Entry(name, "ok"))
        try:
            entry.error = compare(case.vg_result(case.vg()), reference)
        except Exception as exc:  # a contender that crashes is reported, not timed
            entry.status, entry.note = "error", _describe(exc)
            cfg.log(f"    {name}: value_and_grad failed: {entry.note}")
            continue
        if not entry.error <= TOLERANCE:
            entry.status = "mismatch"
            entry.note = f"value/gradient relative error {entry.error:.2e} > {TOLERANCE:.0e}; not timed"
            cfg.log(f"    {name}: MISMATCH {entry.error:.3e}")
            continue
        timers[(name, "vg")] = _Timer(case.vg, cfg)
        if case.fwd is not None and metric.has_forward:
            try:
                entry.forward_error = relative_error(case.fwd_result(case.fwd()), reference_value)
            except Exception as exc:
                entry.note = f"forward failed: {_describe(exc)}"
                continue
            if entry.forward_error <= TOLERANCE:
                timers[(name, "fwd")] = _Timer(case.fwd, cfg)
            else:
                entry.note = f"forward relative error {entry.forward_error:.2e}; forward not timed"
    if cfg.check_only:
        return
    # Collect once and freeze what the set-up allocated, so that the collections
    # between measurements stay cheap; the collector is off during a measurement
    # (as in timeit) and on between them.
    gc.collect()
    gc.freeze()
    gc_was_enabled = gc.isenabled()
    try:
        for key, timer in list(timers.items()):
            gc.disable()
            try:
                timer.calibrate()
            except Exception as exc:
                metric.entries[key[0]].status = "error"
                metric.entries[key[0]].note = f"failed while timing: {_describe(exc)}"
                del timers[key]
            finally:
                if gc_was_enabled:
                    gc.enable()
        for _ in range(cfg.repeats):  # round robin over the contenders
            for timer in timers.values():
                gc.disable()
                try:
                    timer.measure()
                finally:
                    if gc_was_enabled:
                        gc.enable()
    finally:
        if gc_was_enabled:
            gc.enable()
        gc.unfreeze()
    for (name, kind), timer in timers.items():
        stats = timer.stats()
        stats = Stats(stats.median * metric.scale, stats.low * metric.scale, stats.high * metric.scale,
                      stats.repeats, stats.loops)
        setattr(metric.entries[name], kind, stats)
        cfg.log(f"    {name:22s} {kind:3s} {stats.median:12.4g} {metric.unit} "
                f"[{stats.low:.4g}-{stats.high:.4g}] x{stats.loops}x{stats.repeats}")


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    text = " ".join(text.split())
    return text[:400] + ("..." if len(text) > 400 else "")


def describe_exception(exc: BaseException) -> str:
    return _describe(exc)


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
