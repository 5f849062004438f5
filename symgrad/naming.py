"""Names: how nodes are called in displays and comments, and how user names become C identifiers.

Display names come from the model (symbol names, and the variable names the
model file gave intermediate expressions), then ``<name>_bar`` for adjoints,
then ``v<id>`` for everything else; ``v<id>`` is also the node's C variable,
so a line of ``symgrad show`` and the C statement for it carry the same name.

User text never reaches C as it is: :func:`c_identifiers` turns any string
into a distinct, prefix-safe identifier fragment.
"""

from __future__ import annotations

import hashlib
import re

import sympy as sp

from . import ops
from .graph import Graph

_IDENTIFIER_CHAR = re.compile(r"[A-Za-z0-9]")
_MAX_IDENTIFIER = 40


def node_var(node_id: int) -> str:
    """The C variable of a node."""
    return f"v{node_id}"


def display_names(graph: Graph) -> dict:
    """Node id -> display name for every node that has one (others use ``v<id>``)."""
    names: dict = {}
    for name, node in graph.symbols.items():
        names[node] = name
    for node, label in graph.labels.items():
        names.setdefault(node, label)
    for forward in sorted(graph.adjoints, reverse=True):
        adjoint = graph.adjoints[forward]
        if graph.nodes[adjoint].op not in ("const", "symbol"):
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


def _number_text(value) -> str:
    if getattr(value, "is_Rational", False) and not value.is_Integer:
        return f"{value.p}/{value.q}"
    if getattr(value, "is_Float", False):
        return repr(float(value))
    return str(value)


def _operand_text(graph: Graph, node_id: int, names: dict) -> str:
    node = graph.nodes[node_id]
    if node.op == "const":
        return _number_text(node.attrs[0])
    if node.op == "symbol":
        return node.attrs[0]
    if node.op in ("batch_size", "call_size"):
        return str(ops.get(node.op).to_sympy([], node.attrs))
    if node.op == "transpose" and node_id not in names:
        return f"{_operand_text(graph, node.args[0], names)}.T"
    if node.op == "index" and node_id not in names:
        return f"{_operand_text(graph, node.args[0], names)}[{node.attrs[0]}, {node.attrs[1]}]"
    return name_of(names, node_id)


def formula_text(graph: Graph, node_id: int, names: dict) -> str:
    """A node's operation as one line of text, for comments: ``b + v4``, ``-2*v15``.

    The same notation as :func:`formula` prints, written directly: printing
    through SymPy costs far too much per node for the C of a large model.
    """
    node = graph.nodes[node_id]
    args = [_operand_text(graph, a, names) for a in node.args]
    op = node.op
    if op == "add":
        text = args[0]
        for term in args[1:]:
            text += f" - {term[1:]}" if term.startswith("-") else f" + {term}"
        return text
    if op == "mul":
        constants = [a for a, n in zip(args, node.args) if graph.nodes[n].op == "const"]
        others = [a for a, n in zip(args, node.args) if graph.nodes[n].op != "const"]
        matrices = sum(1 for n in node.args if graph.nodes[n].shape != ())
        times = ".*" if matrices > 1 else "*"  # element by element, not a matrix product
        if constants == ["-1"] and others:
            return "-" + times.join(others)
        return "*".join(constants + [times.join(others)] if others else constants)
    if op == "pow" and graph.nodes[node.args[1]].op == "const":
        exponent = graph.nodes[node.args[1]].attrs[0]
        if exponent == -1:
            return f"1/{args[0]}"
        if exponent == sp.Rational(1, 2):
            return f"sqrt({args[0]})"
        return f"{args[0]}**{args[1]}" if not args[1].startswith("-") else f"{args[0]}**({args[1]})"
    if op == "matmul":
        return "*".join(args)
    if op == "reduce_batch":
        return f"batch_sum({args[0]})"
    if ops.get(op).kind == "elementwise" and len(args) == 1 and op not in ("broadcast", "not"):
        return f"{op}({args[0]})"
    if op in ("sum", "softmax", "log_softmax", "logsumexp", "trace", "max", "min", "atan2"):
        return f"{op}({', '.join(args)})"
    return str(formula(graph, node_id, names))


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
