"""The computation graph: a hash-consed DAG of ops with shapes.

A :class:`Graph` holds :class:`Node` records in a list; a node's id is its
position, and every node's args come before it, so the list is a topological
order by construction. Nodes are hash-consed: asking for a node that already
exists returns the existing id, which makes every structurally equal
subexpression one value, computed once, in the forward and in the backward
code alike.

Each node describes one example. A node is *varying* when its value differs
from example to example (it depends on an input) and *uniform* otherwise (it
depends on params and constants only). The ``reduce_batch`` op turns a varying
value into a uniform one by summing it over the batch; that is how parameter
gradients are accumulated.

:class:`Builder` is the only way nodes are made. Its constructors run each
op's simplification (constant folding, identities such as ``x*1 -> x``,
numerically stable rewrites) before hash-consing, so the frontend, the
derivative rules and every rewrite produce the same canonical graph. The
numerically stable rewrites (``log(sigmoid(z)) -> -softplus(-z)``...) happen
there too, before differentiation, so the derivative is taken of the stable
form. What is left for later is dead-node removal, which depends on which
results a kernel computes: :func:`live_nodes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import sympy as sp

from . import ops
from .ops import Shape, size_of


@dataclass(frozen=True, slots=True)
class Node:
    """One value of the graph: ``op(*args; attrs)`` with a per-example ``shape``."""

    op: str
    args: tuple
    attrs: tuple
    shape: Shape
    varying: bool

    @property
    def size(self) -> int:
        return size_of(self.shape)


@dataclass(frozen=True)
class Result:
    """A value a kernel hands back: ``node`` under ``name``.

    ``per_example`` results have one value per example of the batch (outputs,
    per-example losses, gradients with respect to inputs); the others are one
    value per call (reduced losses, parameter gradients).
    """

    name: str
    node: int
    per_example: bool


@dataclass
class Graph:
    """A hash-consed DAG whose node list is in topological order.

    Attributes:
        nodes: the nodes; a node's id is its index.
        symbols: declared symbol name -> leaf node id, in declaration order.
        labels: node id -> a display name taken from the model file (``h``, ``y``).
        results: result group -> results. The frontend fills ``"outputs"`` and
            ``"loss"``; :func:`symgrad.autodiff.differentiate` adds ``"gradients"``.
        adjoints: forward node id -> the node holding its adjoint (set by
            differentiation; used to display the backward pass).
        rewrites: what the ops' simplifications changed in the formulas as written
            (numerically stable forms, derivative conventions), one line each, in the
            order first applied; ``symgrad show`` lists them.
    """

    nodes: list = field(default_factory=list)
    symbols: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    adjoints: dict = field(default_factory=dict)
    rewrites: list = field(default_factory=list)
    _index: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.nodes)

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def copy(self) -> "Graph":
        """A new graph with the same nodes; adding to it leaves this one as it is."""
        return Graph(
            nodes=list(self.nodes),
            symbols=dict(self.symbols),
            labels=dict(self.labels),
            results={k: tuple(v) for k, v in self.results.items()},
            adjoints=dict(self.adjoints),
            rewrites=list(self.rewrites),
            _index=dict(self._index),
        )

    def intern(self, node: Node) -> int:
        """The id of ``node``, adding it if no equal node exists yet."""
        key = (node.op, node.args, node.attrs)
        found = self._index.get(key)
        if found is not None:
            return found
        self.nodes.append(node)
        self._index[key] = len(self.nodes) - 1
        return len(self.nodes) - 1

    def ancestors(self, roots) -> list:
        """Ids of ``roots`` and every node they depend on, in topological order."""
        seen = set()
        stack = [r for r in roots]
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            stack.extend(self.nodes[n].args)
        return sorted(seen)

    def consumers(self, among=None) -> dict:
        """node id -> ids of the nodes (from ``among``, default all) that use it."""
        users: dict = {}
        for n in (range(len(self.nodes)) if among is None else among):
            for a in self.nodes[n].args:
                users.setdefault(a, []).append(n)
        return users

    def all_results(self) -> list:
        return [r for group in self.results.values() for r in group]


def live_nodes(graph: Graph, results) -> list:
    """Ids of the nodes the ``results`` depend on, in topological order."""
    return graph.ancestors([r.node for r in results])


def reduce_over_batch(b: "Builder", value: int, reduce) -> int:
    """``value`` (one per example) averaged or summed over the batch, or as it is for None."""
    if reduce is None:
        return value
    total = b.apply("reduce_batch", value)
    if reduce == "mean":
        total = b.mul(b.recip(b.apply("batch_size")), total)
    return total


def _is_number(value) -> bool:
    return isinstance(value, sp.Basic) and (value.is_Number or value.is_NumberSymbol)


def as_sympy_number(value) -> sp.Basic:
    """A SymPy number for a Python or SymPy numeric constant."""
    if isinstance(value, sp.Basic):
        return value
    if isinstance(value, Fraction):
        return sp.Rational(value.numerator, value.denominator)
    if isinstance(value, int):
        return sp.Integer(value)
    return sp.Float(value)


class Builder:
    """Creates nodes in a graph, applying each op's simplifications first."""

    def __init__(self, graph: Graph):
        self.graph = graph

    # --- core ---------------------------------------------------------------

    def node(self, node_id: int) -> Node:
        return self.graph.nodes[node_id]

    def shape(self, node_id: int) -> Shape:
        return self.graph.nodes[node_id].shape

    def apply(self, op_name: str, *args: int, attrs: tuple = ()) -> int:
        """The node ``op_name(*args; attrs)``, simplified and hash-consed."""
        op = ops.get(op_name)
        if op.commutative:
            args = tuple(sorted(args))
        if op.simplify is not None:
            rewritten = op.simplify(self, args, attrs)
            if rewritten is not None:
                return rewritten
        nodes = self.graph.nodes
        if op.kind == "elementwise" and args and all(nodes[a].op == "const" for a in args):
            folded = op.to_sympy([nodes[a].attrs[0] for a in args], attrs)
            if _is_number(folded) and folded.is_real and folded.is_finite:
                return self.const(folded)
        shape = op.shape([nodes[a].shape for a in args], attrs)
        flags = [nodes[a].varying for a in args]
        varying = op.varying(flags, attrs) if op.varying is not None else any(flags)
        return self.graph.intern(Node(op_name, tuple(args), attrs, shape, varying))

    # --- leaves ---------------------------------------------------------------

    def const(self, value) -> int:
        value = as_sympy_number(value)
        return self.graph.intern(Node("const", (), (value,), (), False))

    def const_value(self, node_id: int):
        """The SymPy number held by a ``const`` node, else ``None``."""
        node = self.graph.nodes[node_id]
        return node.attrs[0] if node.op == "const" else None

    def is_const(self, node_id: int, value=None) -> bool:
        """Whether the node is a constant (equal to ``value`` as a number, if given: a
        ``Float(1.0)`` is 1, although SymPy's ``Float(1.0) == 1`` is False)."""
        v = self.const_value(node_id)
        if v is None:
            return False
        return value is None or v == value or (v.is_Number and (v - value).is_zero is True)

    def note_rewrite(self, text: str) -> None:
        """Record that a simplification ``text`` (``"log(1 + x) -> log1p(x)"``) was applied."""
        if text not in self.graph.rewrites:
            self.graph.rewrites.append(text)

    # --- arithmetic conveniences used by derivative rules ---------------------

    def add(self, *xs: int) -> int:
        return self.apply("add", *xs)

    def mul(self, *xs: int) -> int:
        return self.apply("mul", *xs)

    def neg(self, x: int) -> int:
        return self.mul(self.const(-1), x)

    def sub(self, x: int, y: int) -> int:
        return self.add(x, self.neg(y))

    def powc(self, x: int, exponent) -> int:
        """``x ** exponent`` for a numeric exponent."""
        return self.apply("pow", x, self.const(exponent))

    def recip(self, x: int) -> int:
        return self.powc(x, -1)

    def div(self, x: int, y: int) -> int:
        return self.mul(x, self.recip(y))

    def call(self, name: str, *xs: int) -> int:
        return self.apply(name, *xs)

    # --- shape conveniences ------------------------------------------------------

    def broadcast(self, x: int, shape: Shape) -> int:
        """``x`` repeated to ``shape`` (a no-op when it has that shape already)."""
        if self.shape(x) == tuple(shape):
            return x
        return self.apply("broadcast", x, attrs=(tuple(shape),))

    def sum_to(self, x: int, shape: Shape) -> int:
        """``x`` summed over the axes along which ``shape`` was broadcast."""
        if self.shape(x) == tuple(shape):
            return x
        return self.apply("sum_to", x, attrs=(tuple(shape),))

    def transpose(self, x: int) -> int:
        return self.apply("transpose", x)

    def matmul(self, x: int, y: int) -> int:
        return self.apply("matmul", x, y)

    def sum(self, x: int) -> int:
        return self.apply("sum", x)
