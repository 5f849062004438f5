"""Evaluating a graph with NumPy, one example at a time.

This is the reference the tests compare compiled kernels and derivative rules
against: it runs each op's NumPy implementation in topological order. It is
slow and simple on purpose.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .graph import Graph


def evaluate(graph: Graph, values: dict, roots=None, batch_size: int = 1) -> dict:
    """Node id -> value for ``roots`` (default: every result) and what they depend on.

    ``values`` maps symbol names to NumPy arrays (scalars or matrices of the
    declared shape) for one example. ``reduce_batch`` sums over a batch of one.
    """
    if roots is None:
        roots = [r.node for r in graph.all_results()]
    out: dict = {}
    for node_id in graph.ancestors(roots):
        node = graph.nodes[node_id]
        if node.op == "symbol":
            value = np.asarray(values[node.attrs[0]], dtype=float)
            if value.shape != node.shape:
                value = value.reshape(node.shape)
        elif node.op in ("batch_size", "call_size"):
            value = np.asarray(float(batch_size))
        else:
            args = [out[a] for a in node.args]
            value = ops.get(node.op).numpy(args, node.attrs)
        out[node_id] = np.asarray(value, dtype=float)
    return out
