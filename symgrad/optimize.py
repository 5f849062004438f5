"""Graph clean-up before code generation: keep only what the results need.

Constant folding, algebraic identities (``x*1``, ``x+0``, ``(x^T)^T``) and
the numerically stable rewrites (``log(sigmoid(z)) -> -softplus(-z)``,
``log(1 + exp(z)) -> softplus(z)``, ``log(softmax(z)) -> log_softmax(z)``)
happen as nodes are created, in the ops' ``simplify`` hooks, so they apply
before differentiation and the derivative is taken of the stable form. What
is left for a separate pass is dead-node removal, which depends on which
results a kernel computes.
"""

from __future__ import annotations

from .graph import Graph


def live_nodes(graph: Graph, results) -> list:
    """Ids of the nodes the ``results`` depend on, in topological order."""
    return graph.ancestors([r.node for r in results])
