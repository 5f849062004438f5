"""Names: how nodes are called in displays and comments, and how user names become C identifiers.

Display names come from the model (symbol names, and the variable names the
model file gave intermediate expressions), then ``<name>_bar`` for adjoints,
then ``v<id>`` for everything else; ``v<id>`` is also the node's C variable,
so a line of ``symgrad show`` and the C statement for it carry the same name.
A node reads as text through its op's ``text`` form (:func:`formula_text`),
the same in C comments, ``symgrad show`` and docstrings.

User text never reaches C as it is: :func:`c_identifiers` turns any string
into a distinct, prefix-safe identifier fragment.
"""

from __future__ import annotations

import hashlib
import re

import sympy as sp

from . import ops
from .graph import Graph
from .ops.text import Text, render

_IDENTIFIER_CHAR = re.compile(r"[A-Za-z0-9]")
_MAX_IDENTIFIER = 40


def node_var(node_id: int) -> str:
    """The C variable of a node."""
    return f"v{node_id}"


def display_names(graph: Graph) -> dict:
    """Node id -> display name for every node that has one (others use ``v<id>``).

    An adjoint that is also a value of the forward pass (the adjoint of ``a``
    in ``a*b`` is ``b``) keeps its forward name.
    """
    names: dict = {}
    for name, node in graph.symbols.items():
        names[node] = name
    for node, label in graph.labels.items():
        names.setdefault(node, label)
    if graph.adjoints:
        roots = [r.node for group in ("outputs", "example_loss") for r in graph.results.get(group, ())]
        forward_values = set(graph.ancestors(roots))
        for forward in sorted(graph.adjoints, reverse=True):
            adjoint = graph.adjoints[forward]
            if graph.nodes[adjoint].op not in ("const", "symbol") and adjoint not in forward_values:
                names.setdefault(adjoint, f"{names.get(forward, node_var(forward))}_bar")
    return names


def name_of(names: dict, node_id: int) -> str:
    return names.get(node_id, node_var(node_id))


def placeholder(graph: Graph, node_id: int, names: dict):
    """The SymPy stand-in for a node inside another node's formula.

    Leaves stand for themselves, views (``W.T``, ``M[0, 1]``) are written out,
    other nodes appear under their names.
    """
    node = graph.nodes[node_id]
    if ops.get(node.op).kind == "leaf":
        return ops.get(node.op).to_sympy([], node.attrs)
    if ops.get(node.op).kind == "view" and node_id not in names:
        return ops.get(node.op).to_sympy([placeholder(graph, node.args[0], names)], node.attrs)
    name = name_of(names, node_id)
    return sp.Symbol(name) if node.shape == () else sp.MatrixSymbol(name, *node.shape)


def formula(graph: Graph, node_id: int, names: dict):
    """A node's own operation as a SymPy expression of its args' names: ``a*x + b``."""
    node = graph.nodes[node_id]
    args = [placeholder(graph, a, names) for a in node.args]
    return ops.get(node.op).to_sympy(args, node.attrs)


def node_text(graph: Graph, node_id: int, arg_texts) -> str:
    """A node's op in the display dialect (:mod:`symgrad.ops.text`) applied to texts of its args."""
    node = graph.nodes[node_id]
    args = []
    for arg, text in zip(node.args, arg_texts):
        a = graph.nodes[arg]
        args.append(Text(text, a.shape, a.attrs[0] if a.op == "const" else None))
    return render(ops.get(node.op), args, node.attrs)


def operand_text(graph: Graph, node_id: int, names: dict) -> str:
    """A node as it reads inside another node's text: leaves as themselves
    (``x``, ``2``, ``N``), views of unnamed nodes written out (``W.T``,
    ``M[0, 1]``), every other node under its name."""
    node = graph.nodes[node_id]
    kind = ops.get(node.op).kind
    if kind == "leaf":
        return node_text(graph, node_id, ())
    if kind == "view" and node_id not in names:
        return node_text(graph, node_id, [operand_text(graph, node.args[0], names)])
    return name_of(names, node_id)


def formula_text(graph: Graph, node_id: int, names: dict) -> str:
    """A node's operation as one line of text of its args' names: ``b + v4``, ``h_bar.*v37``.

    The one notation of C comments, ``symgrad show`` and docstrings, written
    directly from each op's ``text`` form: printing through SymPy costs far
    too much per node for the C of a large model.
    """
    node = graph.nodes[node_id]
    return node_text(graph, node_id, [operand_text(graph, a, names) for a in node.args])


def inline_text(graph: Graph, node_id: int, names: dict, stop, limit: int | None = None):
    """A node's formula with what it depends on written out in place, down to
    leaves and to the nodes in ``stop``, which appear under their names; None
    as soon as a part of it is longer than ``limit`` characters."""
    texts: dict = {}
    stack = [node_id]
    while stack:
        nid = stack[-1]
        if nid in texts:
            stack.pop()
            continue
        if nid != node_id and nid in stop and ops.get(graph.nodes[nid].op).kind != "leaf":
            texts[stack.pop()] = name_of(names, nid)
            continue
        args = graph.nodes[nid].args
        missing = [a for a in args if a not in texts]
        if missing:
            stack.extend(missing)
            continue
        text = texts[stack.pop()] = node_text(graph, nid, [texts[a] for a in args])
        if limit is not None and len(text) > limit:
            return None
    return texts[node_id]


def c_identifiers(names) -> dict:
    """Distinct C identifier fragments for arbitrary strings, in order.

    ASCII letters and digits are kept; every other character becomes ``_``
    (``x.1 -> x_1``) or, beyond ASCII, ``_u<hex>`` (``alpha -> _u03b1``).
    Long names are cut and given a hash suffix; names that collide after this
    get ``_2``, ``_3`` ... in order. Callers add a prefix (``p_``, ``in_``), so
    the result never is a C keyword or clashes with the kernel's own names.
    """
    taken: set = set()
    result: dict = {}
    for name in names:
        text = "".join(
            ch if _IDENTIFIER_CHAR.match(ch) else ("_" if ord(ch) < 128 else f"_u{ord(ch):04x}")
            for ch in str(name)
        ) or "_"
        if len(text) > _MAX_IDENTIFIER:
            digest = hashlib.sha256(str(name).encode()).hexdigest()[:8]
            text = f"{text[:_MAX_IDENTIFIER - 9]}_{digest}"
        candidate, k = text, 2
        while candidate in taken:
            candidate, k = f"{text}_{k}", k + 1
        taken.add(candidate)
        result[name] = candidate
    return result
