"""Fit logistic regression by gradient descent on data spread across a Dask cluster.

The data (two features and a label per example) is generated on the workers,
chunk by chunk, and stays there: no process ever holds all of it. Each epoch
is one symgrad.dask.value_and_grad: one kernel call per chunk on the workers,
the chunks' gradients added by a fixed tree, one step on the client.

    python examples/run_dask_logistic_regression.py                      # a LocalCluster of 2 workers
    python examples/run_dask_logistic_regression.py --scheduler tcp://host:8786   # a running cluster

Needs ``pip install 'symgrad[dask]'``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster, progress

import symgrad as sg
import symgrad.dask as sgd
from symgrad.model import load_model

HERE = Path(__file__).resolve().parent
TRUE = {"w1": 2.0, "w2": -1.0, "b": 0.5}  # the parameters the labels are drawn from


def synthetic_data(examples: int, chunk: int, seed: int = 0):
    """x1, x2 ~ N(0, 1) and y ~ Bernoulli(sigmoid(2 x1 - x2 + 0.5)), as lazy Dask arrays."""
    rng = da.random.default_rng(seed)
    x1 = rng.standard_normal(examples, chunks=chunk)
    x2 = rng.standard_normal(examples, chunks=chunk)
    p = 1 / (1 + da.exp(-(TRUE["w1"] * x1 + TRUE["w2"] * x2 + TRUE["b"])))
    y = (rng.random(examples, chunks=chunk) < p).astype(np.float64)
    return x1, x2, y


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="address of a running Dask scheduler (default: start a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2, help="LocalCluster workers (default: 2)")
    parser.add_argument("--examples", type=int, default=2_000_000, help="examples (default: 2000000)")
    parser.add_argument("--chunk", type=int, default=250_000, help="examples per chunk (default: 250000)")
    parser.add_argument("--epochs", type=int, default=20, help="gradient steps (default: 20)")
    parser.add_argument("--rate", type=float, default=5.0, help="learning rate (default: 5.0)")
    args = parser.parse_args(argv)
    for name in ("workers", "examples", "chunk", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")

    model = load_model(str(HERE / "logistic_regression.py"))[0]
    module = sg.compile(model, out_dir=HERE.parent / "generated")

    cluster = None
    if args.scheduler:
        client = Client(args.scheduler)
    else:
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, dashboard_address=None)
        client = Client(cluster)
    try:
        print(f"{args.examples} examples in chunks of {args.chunk}, on {len(client.scheduler_info()['workers'])} "
              f"workers; generating them on the workers:")
        x1, x2, y = client.persist(list(synthetic_data(args.examples, args.chunk)))
        progress(x1, x2, y)
        print()
        w = {"w1": 0.0, "w2": 0.0, "b": 0.0}
        for epoch in range(1, args.epochs + 1):
            loss, grads = sgd.value_and_grad(module, client=client, **w, x1=x1, x2=x2, y=y,
                                             progress=epoch == 1)
            if epoch == 1:
                print()
            print(f"epoch {epoch:3d}  loss {loss:.6f}  " + "  ".join(f"{k} {v:+.4f}" for k, v in w.items()))
            w = {k: w[k] - args.rate * grads[k] for k in w}
        print("fitted " + "  ".join(f"{k} {v:+.4f}" for k, v in w.items()) + "   (drawn from "
              + "  ".join(f"{k} {v:+.4f}" for k, v in TRUE.items()) + ")")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
