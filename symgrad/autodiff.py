"""Reverse-mode differentiation over a graph.

:func:`differentiate` visits the nodes between the loss and the chosen
symbols in reverse topological order. Each node's adjoint is the sum of the
contributions its consumers sent it; the node's registry entry turns that
adjoint into contributions for its own args (its vector-Jacobian product).
Contributions are ordinary graph nodes, built through the same hash-consing
builder as the forward pass, so the backward code reuses forward values and
shares its own subexpressions. Nothing is expanded: the cost is a small
constant times the forward graph.

Batches: the graph describes one example. When the loss is reduced over the
batch, a contribution that a per-example (varying) node sends to a shared
(uniform) node is summed over the batch right there (``reduce_batch``), so
everything upstream of a parameter is computed once per call, not once per
example. The ``mean`` scale ``1/N`` is applied to the final gradients.
"""

from __future__ import annotations

from typing import Sequence

from . import ops
from .errors import ModelError
from .graph import Builder, Graph, Result, reduce_over_batch


def derive(graph: Graph, wrt: Sequence[str], reduce) -> Graph:
    """The gradient graph of a model's graph for one reduction of its loss.

    ``reduce`` is the model's reduction for the kernels (``"mean"``,
    ``"sum"``) or ``None`` for one example's gradients, the form the
    displays show. A graph without a loss has nothing to differentiate and is
    returned as it is. Every stage and view reads the graph this returns, so
    a command runs the reverse pass once per reduction it needs.
    """
    if "example_loss" not in graph.results:
        return graph
    return differentiate(graph, wrt, reduce)


def differentiate(graph: Graph, wrt: Sequence[str], reduce) -> Graph:
    """A copy of ``graph`` with the gradient of its loss with respect to ``wrt``.

    Adds the result group ``"gradients"``: one result per name in ``wrt``,
    the gradient of the reduced loss (per example for inputs, and for
    everything when ``reduce`` is None), and fills ``graph.adjoints``.
    """
    if "example_loss" not in graph.results:
        raise ModelError("the model has no loss to differentiate")
    g = graph.copy()
    b = Builder(g)
    (loss,) = g.results["example_loss"]
    targets = [g.symbols[name] for name in wrt]
    # The seed comes from every example.
    g.adjoints.update(backpropagate(b, {loss.node: b.const(1)}, targets, reduce))

    results = []
    for name, leaf in zip(wrt, targets):
        per_example = reduce is None or g.nodes[leaf].varying
        gradient = g.adjoints.get(leaf)
        if gradient is None:
            gradient = b.broadcast(b.const(0), g.nodes[leaf].shape)
        if reduce == "mean":
            gradient = b.mul(b.recip(b.apply("batch_size")), gradient)
        results.append(Result(name, gradient, per_example))
    g.results["gradients"] = tuple(results)
    return g


def backpropagate(b: Builder, seeds: dict, targets: list, reduce) -> dict:
    """Adjoints of the nodes between ``seeds`` and ``targets``.

    ``seeds`` maps nodes to their adjoints' seeds (1 for a loss, a cotangent
    symbol for the rows of a Jacobian); the contributions of per-example nodes
    to shared ones are summed over the batch when ``reduce`` is not None.
    Returns the adjoints (node -> adjoint node).
    """
    g = b.graph
    on_path: set = set()
    for root in seeds:
        on_path |= _between(g, root, targets)
    # node -> [(contribution, sent by a per-example node)]
    pending: dict = {node: [(seed, True)] for node, seed in seeds.items()}
    adjoints = {}
    for node_id in sorted(on_path, reverse=True):
        parts = pending.pop(node_id, None)
        if not parts:
            continue
        adjoint = _accumulate(b, node_id, parts, reduce)
        adjoints[node_id] = adjoint
        node = g.nodes[node_id]
        wanted = [a in on_path for a in node.args]
        if not any(wanted):
            continue
        op = ops.get(node.op)
        if op.vjp is None:
            if op.differentiable:
                raise ModelError(f"op {node.op!r} has no derivative rule")
            continue
        for arg, contribution, want in zip(node.args, op.vjp(b, node_id, adjoint), wanted):
            if contribution is None or not want:
                continue
            contribution = b.sum_to(contribution, g.nodes[arg].shape)
            pending.setdefault(arg, []).append((contribution, node.varying))
    return adjoints


def _between(g: Graph, root: int, targets: list) -> set:
    """Nodes that ``root`` depends on and that depend on one of ``targets``."""
    above = set(g.ancestors([root]))
    depends = set(targets)
    for node_id in sorted(above):
        if node_id not in depends and any(a in depends for a in g.nodes[node_id].args):
            depends.add(node_id)
    return above & depends


def _accumulate(b: Builder, node_id: int, parts: list, reduce) -> int:
    """The adjoint of ``node_id``: the sum of its contributions.

    Single-element contributions (from ``M[i, j]``) are merged into one
    ``assemble`` node, so n element reads cost O(n), not n full matrices.
    Contributions that varying nodes send to a uniform node are summed over
    the batch when the loss is reduced.
    """
    node = b.node(node_id)
    to_batch_sum = reduce is not None and not node.varying
    groups: dict = {}
    for contribution, from_varying in parts:
        groups.setdefault(from_varying and to_batch_sum, []).append(contribution)
    terms = []
    for batch_sum in sorted(groups):
        for term in _merge_assembles(b, groups[batch_sum]):
            terms.append(_sum_over_batch(b, term) if batch_sum else term)
    return b.add(*terms)


def _merge_assembles(b: Builder, contributions: list) -> list:
    assembles = [c for c in contributions if b.node(c).op == "assemble"]
    if len(assembles) < 2:
        return contributions
    shape = b.node(assembles[0]).attrs[0]
    args, positions = [], []
    for c in assembles:
        node = b.node(c)
        args.extend(node.args)
        positions.extend(node.attrs[1])
    merged = b.apply("assemble", *args, attrs=(shape, tuple(positions)))
    return [c for c in contributions if b.node(c).op != "assemble"] + [merged]


def _sum_over_batch(b: Builder, value: int) -> int:
    """Sum over the examples of a kernel call of a per-example contribution.

    A contribution that is the same for every example (from a loss term of
    params only) sums to the number of examples of the call times it: a
    batch run as several calls adds the calls' sums, so it must not be the
    whole batch's N.
    """
    if b.node(value).varying:
        return reduce_over_batch(b, value, "sum")
    return b.mul(b.apply("call_size"), value)
