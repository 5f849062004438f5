"""Timing a model's compiled kernels: ``symgrad bench``.

Times ``forward`` and ``value_and_grad`` on a random batch drawn from the
model's domain (as ``symgrad check`` draws its points), reusing the result
arrays between calls as a training loop would, and a one-example call. It
reports medians and the gradient/forward cost ratio. This measures; it
asserts nothing.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

from .check import random_point
from .errors import OptionError
from .model import Model


@dataclass
class BenchReport:
    """Median timings of one model. A model without a loss has no gradient timings (None);
    a model without inputs is timed per call, since a call is not a batch of examples."""

    model: str
    batch: int
    forward_ns: float  # per example (per call without inputs), median
    value_and_grad_ns: float | None
    single_call_us: float  # one example (value_and_grad, or forward without a loss), median
    has_inputs: bool = True

    @property
    def ratio(self) -> float | None:
        return None if self.value_and_grad_ns is None else self.value_and_grad_ns / self.forward_ns

    def lines(self) -> list:
        if not self.has_inputs:
            lines = [f"{self.model}: no inputs, so no batch: each call computes the whole model once",
                     f"  forward         {self.forward_ns / 1e3:10.2f} us per call"]
            if self.value_and_grad_ns is not None:
                lines.append(f"  value_and_grad  {self.value_and_grad_ns / 1e3:10.2f} us per call "
                             f"({self.ratio:.2f}x forward)")
            return lines
        per_call = f", {self.forward_ns * self.batch / 1e3:,.1f} us per call"
        lines = [f"{self.model}: batch of {self.batch:,}",
                 f"  forward         {self.forward_ns:10.2f} ns per example{per_call}"]
        if self.value_and_grad_ns is None:
            lines.append("  (no loss: the model has only forward, no value_and_grad to time)")
            lines.append(f"  one example     {self.single_call_us:10.2f} us per forward call")
        else:
            lines.append(f"  value_and_grad  {self.value_and_grad_ns:10.2f} ns per example "
                         f"({self.ratio:.2f}x forward), {self.value_and_grad_ns * self.batch / 1e3:,.1f} us per call")
            lines.append(f"  one example     {self.single_call_us:10.2f} us per value_and_grad call")
        return lines


def _median_seconds(call, budget: float = 0.5, repeats: int = 7) -> float:
    """Median time of one call, each sample long enough to measure (about budget / repeats)."""
    call()
    start = time.perf_counter()
    call()
    once = max(time.perf_counter() - start, 1e-7)
    number = max(1, int(budget / repeats / once))
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            call()
        samples.append((time.perf_counter() - start) / number)
    return statistics.median(samples)


def bench_model(model: Model, module, *, batch: int = 10_000, seed: int = 0) -> BenchReport:
    """Time ``module`` (the compiled ``model``) on ``batch`` random examples.

    A model without inputs has no batch: ``batch`` is ignored and each call is timed.
    """
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise OptionError(f"batch must be a whole number of examples, at least 1; got {batch!r}")
    rng = np.random.default_rng(seed)
    inputs = {str(s.name) for s in model.inputs}
    if not inputs:
        batch = 1
    try:
        values = random_point(model, rng, 0.3, 0.9, batch)
        single = random_point(model, rng, 0.3, 0.9, 1)
        single = {k: (v[0] if k in inputs else v) for k, v in single.items()}
        forward_out = module.forward(**values)
        forward = _median_seconds(lambda: module.forward(**values, out=forward_out))
        if model.loss is None:
            gradient = None
            one = _median_seconds(lambda: module.forward(**single), budget=0.2)
        else:
            gradient_out = module.value_and_grad(**values)
            gradient = _median_seconds(lambda: module.value_and_grad(**values, out=gradient_out)) / batch * 1e9
            one = _median_seconds(lambda: module.value_and_grad(**single), budget=0.2)
    except MemoryError:
        raise OptionError(f"a batch of {batch:,} examples of {model.name} does not fit in memory; "
                          f"choose a smaller --batch") from None
    return BenchReport(model.name, batch, forward / batch * 1e9, gradient, one * 1e6, has_inputs=bool(inputs))


def machine_line() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"{cpu}, {os.cpu_count()} cores, load {load}"
