"""Scaling of symgrad.dask.value_and_grad on a LocalCluster: writes benchmarks/DASK.md.

    .venv/bin/python -m benchmarks.dask_scaling            # about two minutes
    .venv/bin/python -m benchmarks.dask_scaling --quick    # small sizes, to check it works

For two workloads, logistic regression (a few nanoseconds per example) and
the digits MLP (64-128-10 tanh, microseconds per example), on data held in
the workers' memory (persisted Dask arrays):

* throughput of symgrad.dask.value_and_grad on 1 and 2 workers (one thread
  each) against one in-process call of the module on the same data, and,
  for logistic regression, against the same loss and gradients written by
  hand with dask.array and NumPy on the same cluster;
* where the time goes: the overhead per chunk (scheduling, the task's
  Python work, sending back its few numbers; measured as the time beyond
  the kernel's) and what a no-op task per chunk costs;
* the overhead against the kernel's time over a sweep of chunk sizes on one
  worker, and the smallest chunk size whose overhead is below 10% of the
  kernel time.

Medians of repeated runs; the machine and its load are recorded: on a
2-core machine shared with other work, two workers compete with everything
else.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import dask.array as da
from distributed import Client, LocalCluster, wait

import symgrad as sg
import symgrad.dask as sgd
from symgrad.bench import machine_line
from symgrad.model import load_model

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "dask"
#: The overhead a chunk may add, as a share of its kernel time.
BUDGET = 0.10


def logistic(n: int, chunk: int):
    model = load_model(str(ROOT / "examples" / "logistic_regression.py"))[0]
    rng = da.random.default_rng(0)
    x1, x2 = rng.standard_normal(n, chunks=chunk), rng.standard_normal(n, chunks=chunk)
    y = (rng.random(n, chunks=chunk) < 0.5).astype(np.float64)
    return model, {"w1": 0.3, "w2": -0.2, "b": 0.1}, {"x1": x1, "x2": x2, "y": y}


def mlp(n: int, chunk: int):
    model = load_model(str(ROOT / "examples" / "digits_mlp.py"))[0]
    rng = np.random.default_rng(0)
    params = {"W1": rng.normal(0, 0.1, (128, 64)), "b1": np.zeros((128, 1)),
              "W2": rng.normal(0, 0.1, (10, 128)), "b2": np.zeros((10, 1))}
    lazy = da.random.default_rng(1)
    x = lazy.random((n, 64), chunks=(chunk, 64))
    classes = lazy.integers(0, 10, n, chunks=chunk)
    target = (classes[:, None] == da.arange(10)[None, :]).astype(np.float64)
    return model, params, {"x": x, "target": target}


def logistic_by_hand(w1, w2, b, x1, x2, y):
    """The mean loss and gradients of logistic regression written with dask.array."""
    z = w1 * x1 + w2 * x2 + b
    p = 1 / (1 + da.exp(-z))
    loss = da.mean(da.logaddexp(0, z) - y * z)
    r = p - y
    return loss, da.mean(r * x1), da.mean(r * x2), da.mean(r)


def chunked_in_process(module, params, host, n, size):
    """The kernel work of a chunked run, in this process: one call per chunk, one after the other."""
    for start in range(0, n, size):
        module.value_and_grad(**params, **{k: v[start:start + size] for k, v in host.items()}, mean_over=n)


_steps = iter(range(1, 1 << 62))


def step(params: dict) -> dict:
    """The params moved by a negligible step, as in a training loop: each timed call is new work.
    (The same params again would be the same Dask keys, which the cluster may still hold.)"""
    k = next(_steps)
    return {name: value + k * 1e-12 for name, value in params.items()}


def median_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rechunk_persisted(client, data: dict, chunk: int) -> dict:
    arrays = {name: x.rechunk((chunk,) + x.shape[1:]) for name, x in data.items()}
    arrays = dict(zip(arrays, client.persist(list(arrays.values()))))
    wait(list(arrays.values()))
    return arrays


def noop(*chunks):
    return 0.0


def noop_per_chunk(client, data: dict) -> float:
    """Seconds per chunk of a task that reads its chunks and returns a number (no kernel)."""
    import dask

    pieces = [x.to_delayed().ravel() for x in data.values()]
    count = len(pieces[0])

    def run():  # new keys each time: a run never waits on the previous one's results
        client.gather(client.compute([dask.delayed(noop, pure=False)(*parts) for parts in zip(*pieces)]))

    return median_time(run, 5) / count


def measure(name, build, n, chunk, sweep, repeats, cluster_sizes, report):
    model, params, lazy = build(n, chunk)
    module = sg.compile(model, out_dir=WORK)
    host = {k: v.compute() for k, v in lazy.items()}  # the same data, in this process
    single = median_time(lambda: module.value_and_grad(**params, **host), repeats)
    per_example = single / n
    want_loss, _ = module.value_and_grad(**params, **host)
    rows = []
    by_hand = {}
    overheads = {}
    for workers in cluster_sizes:
        with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster) as client:
            data = rechunk_persisted(client, lazy, chunk)
            loss, _ = sgd.value_and_grad(module, client=client, **params, **data)  # ships the package
            assert abs(loss - want_loss) <= 1e-12 * abs(want_loss), (loss, want_loss)
            t = median_time(lambda: sgd.value_and_grad(module, client=client, **step(params), **data), repeats)
            rows.append((workers, t))
            if name == "logistic regression":
                by_hand[workers] = median_time(
                    lambda: client.compute(logistic_by_hand(**step(params), **data), sync=True), repeats)
            if workers == 1:
                overheads["noop"] = noop_per_chunk(client, data)
                for size in sweep:
                    swept = rechunk_persisted(client, lazy, size)
                    ts = median_time(lambda: sgd.value_and_grad(module, client=client, **step(params), **swept),
                                     repeats)
                    kernel = median_time(lambda: chunked_in_process(module, params, host, n, size), repeats)
                    overheads[size] = (ts, -(-n // size), kernel)
                    del swept
    report.append((name, n, chunk, single, per_example, rows, by_hand, overheads))


def overhead_fit(overheads):
    """(fixed seconds per call, seconds per chunk): a least-squares line through the sweep's
    time beyond the kernel calls' against the number of chunks."""
    points = [(value[1], value[0] - value[2]) for size, value in overheads.items() if size != "noop"]
    slope, intercept = np.polyfit([c for c, _ in points], [e for _, e in points], 1)
    return intercept, slope


def smallest_within_budget(overheads):
    """The smallest swept chunk size whose time beyond the kernel calls is within BUDGET of theirs."""
    sizes = sorted(size for size, (total, _, kernel) in ((k, v) for k, v in overheads.items() if k != "noop")
                   if total - kernel <= BUDGET * kernel)
    return sizes[0] if sizes else None


def write(report, path: Path, started: str) -> None:
    lines = ["# symgrad.dask scaling", "",
             f"Machine at the start: {started}", f"Machine at the end: {machine_line()}", "",
             "`python -m benchmarks.dask_scaling` (see its docstring). Data persisted in the workers' "
             "memory; LocalCluster workers are processes with one thread each. Medians.", ""]
    for name, n, chunk, single, per_example, rows, by_hand, overheads in report:
        lines += [f"## {name}: {n} examples, chunks of {chunk}", "",
                  "| run | seconds | examples/s | vs one in-process call |", "|---|---:|---:|---:|",
                  f"| one in-process call | {single:.4f} | {n / single:.3g} | 1.00 |"]
        base = None
        for workers, t in rows:
            base = base or t
            lines.append(f"| symgrad.dask, {workers} worker{'s' if workers > 1 else ''} | {t:.4f} | "
                         f"{n / t:.3g} | {single / t:.2f} |")
        for workers, t in by_hand.items():
            lines.append(f"| dask.array + NumPy by hand, {workers} worker{'s' if workers > 1 else ''} | {t:.4f} | "
                         f"{n / t:.3g} | {single / t:.2f} |")
        if len(rows) > 1:
            lines += ["", f"Scaling from 1 to {rows[-1][0]} workers: {rows[0][1] / rows[-1][1]:.2f}x."]
        fixed, per_chunk = overhead_fit(overheads)
        implied = per_chunk / (BUDGET * per_example)
        within = smallest_within_budget(overheads)
        lines += ["", f"Kernel time: {per_example * 1e9:.3g} ns per example (the in-process call). "
                      f"A no-op task per chunk (reads its chunks, returns a number): "
                      f"{overheads['noop'] * 1e3:.2f} ms per chunk.", "",
                  "Chunk sizes on 1 worker, against the same kernel calls one after the other in this "
                  "process (the kernel time of that chunking):", "",
                  "| chunk size | chunks | seconds, 1 worker | seconds, kernel calls | overhead | per chunk |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for size, (total, chunks, kernel) in sorted((k, v) for k, v in overheads.items() if k != "noop"):
            lines.append(f"| {size} | {chunks} | {total:.4f} | {kernel:.4f} | {total / kernel - 1:+.0%} | "
                         f"{(total - kernel) / chunks * 1e3:.2f} ms |")
        lines += ["", f"A line through the sweep: {fixed * 1e3:.1f} ms per call (building and sending the graph, "
                      f"the tree, the answer) plus {per_chunk * 1e3:.2f} ms per chunk (scheduling one task, "
                      f"its Python call, sending its result back). The overhead per chunk stays below "
                      f"{BUDGET:.0%} of the chunk's kernel time from chunks of about {implied:,.0f} examples "
                      f"({per_chunk * 1e3:.2f} ms / ({BUDGET:.0%} x {per_example * 1e9:.3g} ns)). Smallest swept size within "
                      f"{BUDGET:.0%}: {within if within is not None else 'none of those swept'}. The cost per call stays "
                      f"below {BUDGET:.0%} of the kernel time from about {max(fixed, 0) / (BUDGET * per_example):,.0f} "
                      f"examples per call.", ""]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the script works")
    args = parser.parse_args(argv)
    started = machine_line()
    report = []
    repeats = 3 if args.quick else 5
    if args.quick:
        measure("logistic regression", logistic, 200_000, 50_000, (10_000, 25_000, 50_000), repeats, (1, 2), report)
        measure("digits MLP", mlp, 8_000, 2_000, (500, 1_000, 2_000), repeats, (1, 2), report)
    else:
        measure("logistic regression", logistic, 8_000_000, 1_000_000,
                (20_000, 100_000, 500_000, 2_000_000), repeats, (1, 2), report)
        measure("digits MLP", mlp, 100_000, 12_500, (500, 2_000, 8_000, 25_000, 50_000), repeats, (1, 2), report)
    out = HERE / "DASK.md"
    write(report, out, started)
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
