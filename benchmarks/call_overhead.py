"""The Python-side cost of one call of a generated module: ``python -m benchmarks.call_overhead``.

Times calls whose kernels do little work, so what is measured is the call
path itself (argument checks, the plan lookup, cffi, building results):

* one-example calls with Python floats (logistic regression; the Rosenbrock
  function of 100 scalar symbols), which run the one-example entry point;
* batch-32 calls with arrays of the kernel's layout, fresh results and with
  ``out=`` (the digits MLP, 64-128-10; Rosenbrock of 100 symbols, reduce=None);
* a batch of 10,000 Rosenbrock points held in one (N, 100) array: as 100
  strided columns by name, and as ``inputs=`` (one transposing copy).

Each case reports the median over ``--repeats`` runs of the time per call
(each run loops long enough to take about 20 ms), in the CPU time of the
calling thread (``time.thread_time``: a call runs on that thread, and on a
shared machine wall-clock time counts the other processes too). The
machine's load average is recorded next to the numbers: on a busy machine
they are still somewhat slower (shared caches). Writes
``benchmarks/CALLS.md`` (``--output`` elsewhere). Builds go to
``benchmarks/.work/calls/``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _modules(work: Path) -> dict:
    import symgrad as sg

    from .models import symgrad_model

    def example(name):
        return sg.load_model(ROOT / "examples" / f"{name}.py")[0]

    models = {"logistic_regression": example("logistic_regression"), "digits_mlp": example("digits_mlp"),
              "rosenbrock100": symgrad_model("m2", 100, name="calls_rosenbrock100")}
    return {key: sg.compile(model, out_dir=work) for key, model in models.items()}


def _cases(modules: dict) -> list:
    """(name, function of no arguments) per case."""
    rng = np.random.default_rng(0)
    lr, mlp, rb = modules["logistic_regression"], modules["digits_mlp"], modules["rosenbrock100"]
    lr_point = dict(w1=0.1, w2=-0.2, b=0.05, x1=0.3, x2=0.7, y=1.0)
    rb_point = {f"x{i}": float(v) for i, v in enumerate(rng.uniform(-1.5, 1.5, 100))}
    rb_batch = {f"x{i}": rng.uniform(-1.5, 1.5, 32) for i in range(100)}
    target = np.zeros((32, 10, 1))
    target[np.arange(32), rng.integers(0, 10, 32), 0] = 1.0
    mlp_batch = dict(W1=rng.normal(0, 0.1, (128, 64)), b1=np.zeros((128, 1)), W2=rng.normal(0, 0.1, (10, 128)),
                     b2=np.zeros((10, 1)), x=rng.uniform(0, 1, (32, 64, 1)), target=target)
    mlp_out = mlp.value_and_grad(**mlp_batch)
    rb_out = rb.value_and_grad(**rb_batch)
    table = rng.uniform(-1.5, 1.5, (10_000, 100))
    columns = {f"x{i}": table[:, i] for i in range(100)}
    return [
        ("logistic_regression value_and_grad, one example (6 floats)", lambda: lr.value_and_grad(**lr_point)),
        ("Rosenbrock n=100 value_and_grad, one point (100 floats)", lambda: rb.value_and_grad(**rb_point)),
        ("Rosenbrock n=100 value_and_grad, batch 32, fresh results", lambda: rb.value_and_grad(**rb_batch)),
        ("Rosenbrock n=100 value_and_grad, batch 32, out=", lambda: rb.value_and_grad(**rb_batch, out=rb_out)),
        ("digits_mlp value_and_grad, batch 32, fresh results", lambda: mlp.value_and_grad(**mlp_batch)),
        ("digits_mlp value_and_grad, batch 32, out=", lambda: mlp.value_and_grad(**mlp_batch, out=mlp_out)),
        ("Rosenbrock n=100 value_and_grad, batch 10,000 of an (N, 100) array, 100 strided columns",
         lambda: rb.value_and_grad(**columns)),
        ("Rosenbrock n=100 value_and_grad, batch 10,000 of an (N, 100) array, inputs=",
         lambda: rb.value_and_grad(inputs=table)),
    ]


def _per_call(function, repeats: int) -> float:
    """Median seconds per call over ``repeats`` runs of about 20 ms each."""
    clock = time.thread_time
    function()
    number, start = 1, clock()
    while True:  # calls per run
        for _ in range(number):
            function()
        if clock() - start > 0.02:
            break
        number *= 2
        start = clock()
    times = []
    for _ in range(repeats):
        start = clock()
        for _ in range(number):
            function()
        times.append((clock() - start) / number)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=25, help="runs per case (default: 25)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "CALLS.md")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    modules = _modules(ROOT / "benchmarks" / ".work" / "calls")
    load_before = os.getloadavg()
    rows = [(name, _per_call(function, args.repeats)) for name, function in _cases(modules)]
    load_after = os.getloadavg()
    lines = [
        "# Per-call time of generated modules",
        "",
        "Written by `python -m benchmarks.call_overhead` (see its docstring). Median time per call over "
        f"{args.repeats} runs, in CPU time of the calling thread.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, NumPy {np.__version__}; 1-minute load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after.",
        "",
        "| call | µs per call |",
        "|---|---:|",
        *(f"| {name} | {seconds * 1e6:.2f} |" for name, seconds in rows),
        "",
    ]
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
