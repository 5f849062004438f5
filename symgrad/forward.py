"""Forward mode and the derivative kernels built on it: JVPs, Hessian-vector products, Jacobians.

:func:`push_forward` carries tangents through a graph in topological order:
each node's registry entry turns its args' tangents into its own (its
``jvp``: a sum of partial times tangent for element-wise ops, the op itself
applied to the tangents for linear ones). Tangents are graph nodes built by
the same hash-consing builder, so they share the forward values and the
partial derivatives the reverse pass already made.

Tangent inputs are symbol leaves added to the graph (``tangents[x]`` for
``jvp``, ``v[x]`` for ``hvp``, ``cotangents[r]`` for the rows of a reverse
Jacobian): the kernel planner turns them into kernel arguments like any
declared symbol, uniform for a param and per example for an input.

The graphs of the extra kernel kinds:

* ``jvp``: the outputs and the loss, and their tangents (:func:`jvp_graph`);
* ``hvp``: the tangent of the gradient graph, forward over reverse: the
  Hessian of the reduced loss times ``v``, reduced over the batch as the
  gradient is (:func:`hvp_graph`);
* ``jacobian``: per example, the tangents of the outputs and of the loss for
  tangents the caller sets to unit vectors (forward sweeps, one per element
  of the ``wrt`` symbols), or the gradients of the outputs weighted by
  cotangents set to unit vectors (reverse sweeps, one per element of the
  outputs and the loss), whichever takes fewer sweeps (:func:`jacobian_graph`);
* ``hessian``, for a model without inputs: every column of the Hessian in
  one call, the unit vectors as the examples of a batch
  (:func:`hessian_columns_graph`). A model with inputs has its Hessian from
  ``hvp`` sweeps, one call each.

Without inputs a model's batch axis is free, so its Jacobian sweeps run as
the examples of one call too.
"""

from __future__ import annotations

from typing import Sequence

import sympy as sp

from . import ops
from .autodiff import backpropagate
from .errors import ModelError
from .graph import Builder, Graph, Result
from .ops import size_of

#: The extra kernels a Model may request, in the order the package declares them.
EXTRA_KERNELS = ("jacobian", "jvp", "hvp", "hessian")


def transposed_vjp(b: Builder, node_id: int, tangents: list):
    """A JVP for an op without one, from its VJP: the VJP is linear in the adjoint ``g``, so
    ``J t`` is the gradient with respect to ``g`` of ``sum_i <vjp_i(g), t_i>``. Raises a
    ModelError naming the op when the result still depends on ``g`` (a VJP that is not linear)."""
    node = b.node(node_id)
    op = ops.get(node.op)
    if op.vjp is None:
        raise ModelError(f"op {node.op!r} has no forward-mode (jvp) rule and no vjp to derive one from")
    name = f"cotangent of node {node_id}"
    shape = node.shape
    g = b.apply("symbol", attrs=(name, "param", shape, sp.MatrixSymbol(name, *shape) if shape else sp.Symbol(name)))
    terms = []
    for arg, contribution, t in zip(node.args, op.vjp(b, node_id, g), tangents):
        if contribution is None or t is None:
            continue
        contribution = b.sum_to(contribution, b.shape(arg))
        terms.append(b.sum(b.mul(contribution, t)))
    if not terms:
        return None
    inner = b.add(*terms)
    result = backpropagate(b, {inner: b.const(1)}, [g], None).get(g)
    if result is not None and g in b.graph.ancestors([result]):
        raise ModelError(f"op {node.op!r}: its vjp is not linear in the adjoint, so no jvp can be derived "
                         f"from it; give the op a jvp rule")
    return result


def push_forward(b: Builder, seeds: dict, roots: Sequence[int]) -> dict:
    """Tangents (node -> tangent node) of the nodes ``roots`` depend on, given the tangents
    ``seeds`` of some nodes (symbols); a node without an entry has a zero tangent."""
    g = b.graph
    tangent = dict(seeds)
    for nid in g.ancestors(list(roots)):
        if nid in tangent:
            continue
        node = g.nodes[nid]
        arg_tangents = [tangent.get(a) for a in node.args]
        if all(t is None for t in arg_tangents):
            continue
        op = ops.get(node.op)
        if not op.differentiable:
            continue
        rule = op.jvp if op.jvp is not None else transposed_vjp
        t = rule(b, nid, arg_tangents)
        if t is not None:
            tangent[nid] = b.broadcast(t, node.shape) if b.shape(t) != node.shape else t
    return tangent


def _leaf(b: Builder, name: str, like: int, role: str | None = None) -> int:
    """A new symbol leaf ``name`` of the shape of the node ``like``, and of its role (param or
    input) unless ``role`` is given."""
    g = b.graph
    if name in g.symbols:
        raise ModelError(f"the symbol name {name!r} is taken by the model; symgrad names the tangent "
                         f"arguments of its derivative kernels so: rename that symbol")
    node = g.nodes[like]
    shape = node.shape
    symbol = sp.MatrixSymbol(name, *shape) if shape else sp.Symbol(name, real=True)
    role = role or ("input" if node.varying else "param")
    leaf = b.apply("symbol", attrs=(name, role, shape, symbol))
    g.symbols[name] = leaf
    return leaf


def _zero(b: Builder, shape) -> int:
    return b.broadcast(b.const(0), shape)


def tangent_name(prefix: str, name: str) -> str:
    """The name of the tangent argument of symbol (or output) ``name``: ``v[x]``."""
    return f"{prefix}[{name}]"


def _seed(b: Builder, wrt: Sequence[str], prefix: str) -> dict:
    g = b.graph
    return {g.symbols[name]: _leaf(b, tangent_name(prefix, name), g.symbols[name]) for name in wrt}


def jvp_graph(graph: Graph, wrt: Sequence[str]) -> Graph:
    """A copy of the model's ``graph`` with the group ``"tangents"``: the directional derivative of
    each output and of the loss (reduced as the model says) along tangents ``tangents[x]`` of the
    ``wrt`` symbols."""
    g = graph.copy()
    b = Builder(g)
    primal = list(g.results.get("outputs", ())) + list(g.results.get("loss", ()))
    tangent = push_forward(b, _seed(b, wrt, "tangents"), [r.node for r in primal])
    g.results["tangents"] = tuple(Result(r.name, tangent.get(r.node) or _zero(b, g.nodes[r.node].shape),
                                         r.per_example) for r in primal)
    return g


def hvp_graph(gradient_graph: Graph, wrt: Sequence[str]) -> Graph:
    """A copy of the gradient graph with the group ``"hvp"``: the tangent of each gradient along
    ``v[x]`` for every ``wrt`` symbol x, which is the Hessian of the reduced loss times v."""
    return second_order(gradient_graph, wrt)[0]


def second_order(gradient_graph: Graph, wrt: Sequence[str]) -> tuple:
    """(:func:`hvp_graph`, its tangents: node -> tangent node), for the views that name the
    tangents after the values they belong to (``h_dot``, ``h_bar_dot``)."""
    g = gradient_graph.copy()
    b = Builder(g)
    gradients = g.results["gradients"]
    tangent = push_forward(b, _seed(b, wrt, "v"), [r.node for r in gradients])
    g.results["hvp"] = tuple(Result(r.name, tangent.get(r.node) or _zero(b, g.nodes[r.node].shape), r.per_example)
                             for r in gradients)
    return g, tangent


def has_inputs(graph: Graph) -> bool:
    """Whether any declared symbol of ``graph`` is per example (an input)."""
    return any(graph.nodes[n].varying for n in graph.symbols.values())


def hessian_columns_graph(example_graph: Graph, wrt: Sequence[str]) -> Graph:
    """For a model without inputs: the hvp graph of one example with the tangents ``v[x]`` per
    example, so that one kernel call over a "batch" of unit vectors computes every column of the
    Hessian (group ``"hessian_columns"``). The forward and backward passes, shared by all
    columns, are computed once per call; only the tangents run per column."""
    g = example_graph.copy()
    b = Builder(g)
    gradients = g.results["gradients"]
    seeds = {g.symbols[name]: _leaf(b, tangent_name("v", name), g.symbols[name], role="input") for name in wrt}
    tangent = push_forward(b, seeds, [r.node for r in gradients])
    g.results["hessian_columns"] = tuple(Result(r.name, tangent.get(r.node) or _zero(b, g.nodes[r.node].shape), True)
                                         for r in gradients)
    return g


def hessian_graph(gradient_graph: Graph, wrt: Sequence[str], shapes: dict) -> Graph:
    """The hvp graph with v set to each unit vector in turn, folded: the group ``"hessian"``
    holds H[a][b] element by element (``Result`` names ``(a, i, b, j)`` with flat indices),
    for the SymPy formulas of small models (:meth:`symgrad.Model.hessian`)."""
    g = gradient_graph.copy()
    b = Builder(g)
    gradients = g.results["gradients"]
    results = []
    for column in wrt:
        for j in range(size_of(shapes[column])):
            leaf = g.symbols[column]
            shape = g.nodes[leaf].shape
            unit = b.const(1) if shape == () else b.apply("assemble", b.const(1),
                                                          attrs=(shape, ((j // shape[1], j % shape[1]),)))
            seeds = {leaf: unit}
            tangent = push_forward(b, seeds, [r.node for r in gradients])
            for r in gradients:
                value = tangent.get(r.node) or _zero(b, g.nodes[r.node].shape)
                for i in range(size_of(shapes[r.name])):
                    shape = g.nodes[r.node].shape
                    element = value if shape == () else b.apply("index", value, attrs=(i // shape[1], i % shape[1]))
                    results.append(Result((r.name, i, column, j), element, True))
    g.results["hessian"] = tuple(results)
    return g


def _jacobian_rows(graph: Graph) -> list:
    """The results a Jacobian differentiates: the outputs and the per-example loss."""
    return list(graph.results.get("outputs", ())) + list(graph.results.get("example_loss", ()))


def jacobian_mode(graph: Graph, wrt: Sequence[str]) -> str:
    """``"forward"`` (one sweep per element of the wrt symbols) or ``"reverse"`` (one per
    element of the outputs and the loss), whichever takes fewer sweeps; forward on a tie, as a
    tangent sweep costs less than a reverse one."""
    inputs = sum(size_of(graph.nodes[graph.symbols[name]].shape) for name in wrt)
    outputs = sum(size_of(graph.nodes[r.node].shape) for r in _jacobian_rows(graph))
    return "forward" if inputs <= outputs else "reverse"


def jacobian_sweeps(graph: Graph, wrt: Sequence[str]) -> int:
    """How many kernel sweeps a Jacobian takes in the mode :func:`jacobian_mode` picks."""
    inputs = sum(size_of(graph.nodes[graph.symbols[name]].shape) for name in wrt)
    outputs = sum(size_of(graph.nodes[r.node].shape) for r in _jacobian_rows(graph))
    return min(inputs, outputs)


def jacobian_graph(graph: Graph, wrt: Sequence[str]) -> Graph:
    """A copy of the model's ``graph`` with the Jacobian's results, per example: the group
    ``"jacobian"`` (forward) or ``"jacobian_rows"`` (reverse).

    Forward mode: the tangents of the outputs and of the loss along tangents
    ``tangents[x]``; the caller sets them to unit vectors, one column per sweep.
    Reverse mode: the gradients with respect to the ``wrt`` symbols of the outputs
    and the loss weighted by cotangents ``cotangents[r]`` (one row per sweep).
    """
    g = graph.copy()
    b = Builder(g)
    rows = _jacobian_rows(g)
    if jacobian_mode(graph, wrt) == "forward":
        # Without inputs the batch axis is free: tangents per example, one call for every sweep.
        role = None if has_inputs(graph) else "input"
        seeds = {g.symbols[name]: _leaf(b, tangent_name("tangents", name), g.symbols[name], role=role) for name in wrt}
        tangent = push_forward(b, seeds, [r.node for r in rows])
        g.results["jacobian"] = tuple(Result(r.name, tangent.get(r.node) or _zero(b, g.nodes[r.node].shape), True)
                                      for r in rows)
        return g
    seeds = {}
    for r in rows:
        # per example, even for an output of params alone: each example has its own row
        cotangent = _leaf(b, tangent_name("cotangents", r.name), r.node, role="input")
        seeds[r.node] = b.add(seeds[r.node], cotangent) if r.node in seeds else cotangent
    targets = [g.symbols[name] for name in wrt]
    adjoints = backpropagate(b, seeds, targets, None)
    g.results["jacobian_rows"] = tuple(Result(name, adjoints.get(leaf) or _zero(b, g.nodes[leaf].shape), True)
                                       for name, leaf in zip(wrt, targets))
    return g
