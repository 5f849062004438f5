"""Thread scaling of symgrad's kernels: writes benchmarks/THREADS.md.

    .venv/bin/python -m benchmarks.threads            # full sizes
    .venv/bin/python -m benchmarks.threads --quick    # small sizes, to check it works

Two ways to use several cores on one large batch, each timed against one
thread doing the same work:

* two Python threads, each calling value_and_grad on its own batch at the
  same time (kernels release the GIL while they run);
* one call with ``threads=2``, which runs the fixed slices of the batch on a
  pool of threads (the results are the same bit for bit as with one thread).

Workloads: the deep chain (depth 64) and the digits MLP (64-128-10 tanh),
each on a large batch. Median of repeated runs; the machine line and load are
recorded, since other processes on a 2-core machine change the answer.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import sympy as sp

import symgrad as sg
from symgrad.bench import machine_line

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work" / "threads"


def deep_chain(depth: int):
    x = sp.Symbol("x")
    a, b = sp.symbols(f"a0:{depth}"), sp.symbols(f"b0:{depth}")
    y = x
    for k in range(depth):
        y = sp.tanh(a[k] * y + b[k]) * y + sp.sin(y)
    model = sg.Model(f"threads_chain_{depth}", loss=y, params=[*a, *b], inputs=[x])
    rng = np.random.default_rng(0)
    params = {str(s): float(rng.uniform(0.3, 0.9)) for s in (*a, *b)}
    return model, params, lambda n: {"x": rng.uniform(0.3, 0.9, n)}


def mlp(hidden: int):
    x, t = sp.MatrixSymbol("x", 64, 1), sp.MatrixSymbol("t", 10, 1)
    W1, b1 = sp.MatrixSymbol("W1", hidden, 64), sp.MatrixSymbol("b1", hidden, 1)
    W2, b2 = sp.MatrixSymbol("W2", 10, hidden), sp.MatrixSymbol("b2", 10, 1)
    logits = W2 * (W1 * x + b1).applyfunc(sp.tanh) + b2
    model = sg.Model(f"threads_mlp_{hidden}", loss=sg.cross_entropy(logits, t), params=[W1, b1, W2, b2],
                     inputs=[x, t])
    rng = np.random.default_rng(0)
    params = {"W1": rng.normal(0, 0.1, (hidden, 64)), "b1": np.zeros((hidden, 1)),
              "W2": rng.normal(0, 0.1, (10, hidden)), "b2": np.zeros((10, 1))}
    return model, params, lambda n: {"x": rng.uniform(0, 1, (n, 64)), "t": np.eye(10)[rng.integers(0, 10, n)]}


def _median(run, repeats: int) -> float:
    run()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(label, model, params, data, n, repeats):
    module = sg.compile(model, out_dir=WORK)
    first, second = data(n), data(n)
    call = module.value_and_grad

    def one_thread_two_batches():
        call(**params, **first)
        call(**params, **second)

    def two_threads_two_batches():
        workers = [threading.Thread(target=call, kwargs={**params, **batch}) for batch in (first, second)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    both = {k: np.concatenate([first[k], second[k]]) for k in first}
    one_call = _median(lambda: call(**params, **both), repeats)
    pool_call = _median(lambda: call(**params, **both, threads=2), repeats)
    sequential = _median(one_thread_two_batches, repeats)
    concurrent = _median(two_threads_two_batches, repeats)
    same = module.value_and_grad(**params, **both)[1]
    pooled = module.value_and_grad(**params, **both, threads=2)[1]
    identical = all(np.array_equal(same[k], pooled[k]) for k in same)
    return [
        (label, f"2 x {n:,} examples", "two Python threads, one batch each", sequential, concurrent, "-"),
        (label, f"{2 * n:,} examples", "one call, threads=2", one_call, pool_call,
         "yes" if identical else "NO"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check that it works")
    parser.add_argument("--output", default=str(HERE / "THREADS.md"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    repeats = 3 if args.quick else 7
    rows = []
    chain = deep_chain(8 if args.quick else 64)
    rows += measure("deep chain, depth 64" if not args.quick else "deep chain, depth 8", *chain,
                    2_000 if args.quick else 100_000, repeats)
    net = mlp(16 if args.quick else 128)
    rows += measure("MLP 64-128-10" if not args.quick else "MLP 64-16-10", *net,
                    2_000 if args.quick else 50_000, repeats)
    load_after = os.getloadavg()
    lines = [
        "# symgrad thread scaling",
        "",
        f"Written by `python -m benchmarks.threads{' --quick' if args.quick else ''}`. "
        f"Machine: {machine_line()}; {platform.platform()}. Load average (1 min) "
        f"{load_before[0]:.2f} at the start, {load_after[0]:.2f} at the end. Median of {repeats} runs.",
        "",
        "| workload | work | how | one thread (s) | two threads (s) | speedup | same results |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, work, how, one, two, same in rows:
        lines.append(f"| {label} | {work} | {how} | {one:.4f} | {two:.4f} | {one / two:.2f}x | {same} |")
    lines += ["", "One thread: the same calls one after the other. Kernels release the GIL, so "
              "Python threads calling them run on separate cores; `threads=2` splits one call's batch "
              "into fixed slices whose sums are added in the same order for any thread count."]
    Path(args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
