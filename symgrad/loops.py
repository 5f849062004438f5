"""Loops: ``sp.Sum`` and ``sp.Product`` over an index, as one graph node with a body.

A sum ``Sum(f(i), (i, lo, hi))`` becomes one ``sum_loop`` node (``product_loop``
for a ``Product``) whose attrs hold a :class:`Body`: a small graph of scalar
nodes, the term ``f(i)``, built by the same Builder (so with the same
simplifications and stable rewrites) over three kinds of leaves:

* ``loop_index``: the value of a loop index (of this loop or an enclosing one);
* ``loop_capture``: the k-th arg of the loop node. What a term reads that does
  not depend on any loop index (a param, an input matrix, ``sg.sum(x)/n``) is
  read once, outside, and captured; it is never recomputed per iteration;
* ``loop_element``: element ``M[row, col]`` of a captured matrix, where row and
  column are :class:`Affine` in the loop indices (``x[i + 1, 0]``, ``r[j, 2]``).

A sum inside a term (``Sum(Sum(V(r[i, 0] - r[j, 0]), (j, i + 1, n - 1)), (i, 0, n - 2))``)
is a loop node of the outer body; its bounds may be affine in the enclosing
indices. Captures always name nodes of the model's graph (an inner loop
captures through its enclosing body's leaves), so the adjoint of everything a
nest reads lands in one place.

The derivative of a loop is a loop too: ``loop_vjp(captures..., adjoint)``
runs the same iterations and, in each, the term's reverse pass (the registry's
VJP rules applied to the body, :func:`reverse_program`), adding each
iteration's contributions to one packed vector of the captures' adjoints;
``loop_part`` views pick each capture's part. Its forward-mode derivative is a
loop over the term's JVP. Code size and build time do not depend on the number
of iterations.

The same programs run in C (:func:`emit_loop`, :func:`emit_loop_vjp`: a C
``for`` loop around the body's statements with an accumulator) and in NumPy
(:func:`run_loop`, :func:`run_loop_vjp`: the reference the tests use).

The registry entries of these ops are at the end of this module (not in an
``ops`` family file: they need the graph and the printer, which import the
registry); importing symgrad registers them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits
from sympy.matrices.expressions.matexpr import MatrixElement

from dataclasses import replace

from . import ops
from .errors import ModelError, ModelShapeError, UnsupportedFunctionError
from .graph import Builder, Graph, Node
from .ops import Op, linear_jvp, reads, register, size_of
from .ops.text import call
from .printer import CArg

LOOP_OPS = ("sum_loop", "product_loop")
#: Body leaves and ops besides the element-wise ones.
_BODY_OPS = ("const", "loop_index", "loop_capture", "loop_element", "loop_seed") + LOOP_OPS


@dataclass(frozen=True)
class Affine:
    """``const + sum(coef * index[level])``: a bound or an element position, in whole numbers."""

    const: int
    terms: tuple = ()  # ((level, coef), ...) sorted by level

    def value(self, indices: dict) -> int:
        return self.const + sum(c * indices[level] for level, c in self.terms)

    def interval(self, ranges: dict) -> tuple:
        """(least, greatest) over index ranges {level: (low, high)}."""
        low = high = self.const
        for level, c in self.terms:
            a, b = ranges[level]
            low += min(c * a, c * b)
            high += max(c * a, c * b)
        return low, high

    def c(self) -> str:
        """C text of the value: ``l0 + 1``, ``2 * l1``; parenthesized when it has several terms."""
        parts = [f"l{level}" if c == 1 else f"-l{level}" if c == -1 else f"{c} * l{level}" for level, c in self.terms]
        if self.const or not parts:
            parts.append(str(self.const))
        text = " + ".join(parts).replace("+ -", "- ")
        return f"({text})" if len(parts) > 1 else text

    def text(self, names: dict) -> str:
        """Display text with index names: ``i + 1``."""
        parts = [names[level] if c == 1 else f"{c}*{names[level]}" for level, c in self.terms]
        if self.const or not parts:
            parts.append(str(self.const))
        return " + ".join(parts).replace("+ -", "- ")

    def sympy(self, symbols: dict):
        return self.const + sum(c * symbols[level] for level, c in self.terms)


@dataclass(frozen=True)
class Body:
    """The term of a loop: ``kind`` ("sum" or "product") of ``nodes[result]`` for index
    ``level`` (named ``index``) from ``lower`` to ``upper`` inclusive; ``captures`` are the
    shapes of the loop node's args, which the body's ``loop_capture`` leaves stand for."""

    kind: str
    level: int
    index: str
    lower: Affine
    upper: Affine
    nodes: tuple
    result: int
    captures: tuple

    def graph(self) -> Graph:
        return _graph_of(self.nodes)

    def sizes(self) -> list:
        return [ops.size_of(s) for s in self.captures]

    def offsets(self) -> list:
        """Where each capture's adjoint starts in the packed vector of a ``loop_vjp``."""
        offsets, total = [], 0
        for size in self.sizes():
            offsets.append(total)
            total += size
        return offsets


def _graph_of(nodes) -> Graph:
    g = Graph()
    for node in nodes:
        g.intern(node)
    return g


# --- reading Sum and Product ---------------------------------------------------------------


def read_loop(r, e) -> int:
    """The node of ``sp.Sum`` or ``sp.Product`` ``e``, read by reader ``r`` (the model's or a body's)."""
    kind = "sum" if isinstance(e, sp.Sum) else "product"
    limits = list(e.limits)
    if len(limits) > 1:  # Sum(f, (i, ...), (j, ...)) is the sum over j of the sum over i
        inner = type(e)(e.function, *limits[:-1])
        return _read_one(r, kind, inner, limits[-1], e)
    return _read_one(r, kind, e.function, limits[0], e)


def _read_one(r, kind, term, limit, whole) -> int:
    index, lower, upper = limit
    outer = getattr(r, "indices", {})
    level = len(outer)
    names = {lvl: str(sym) for sym, lvl in outer.items()}
    if not isinstance(index, sp.Symbol):
        raise UnsupportedFunctionError(f"the {kind} {r.describe(whole)} runs over {index}, which is not a symbol")
    if index in outer:
        raise UnsupportedFunctionError(f"the {kind} {r.describe(whole)} reuses the index {index} of an enclosing loop")
    lo = parse_affine(lower, outer, f"the lower bound of {r.describe(whole)}")
    hi = parse_affine(upper, outer, f"the upper bound of {r.describe(whole)}")
    ranges = dict(getattr(r, "ranges", {}))
    ranges[level] = (lo.interval(ranges)[0], hi.interval(ranges)[1])
    top = getattr(r, "top", r)
    body_graph = Graph()
    reader = _BodyReader(Builder(body_graph), top, {**outer, index: level}, ranges, {**names, level: str(index)})
    result = reader.read(term)
    shape = body_graph.nodes[result].shape
    if shape != ():
        raise ModelShapeError(f"the term of {r.describe(whole)} is a matrix of shape {shape}: a {kind} over an "
                              "index adds up scalars (write its elements, or use sg.sum for a whole matrix)")
    _check_body(body_graph, reader, whole)
    captures = [body_graph.nodes[leaf].attrs[0] for leaf in reader.capture_leaves]  # top-level nodes
    body = Body(kind, level, str(index), lo, hi, tuple(body_graph.nodes), result,
                tuple(top.b.shape(c) for c in captures))
    body = _renumbered(body, reader.capture_leaves)
    if top is r:
        args = captures
    else:  # an inner loop: its captures are captured by the enclosing body too
        args = [r.capture_node(c) for c in captures]
    return r.b.apply(f"{kind}_loop", *args, attrs=(body,))


def _renumbered(body: Body, leaves: list) -> Body:
    """The body with capture leaf k holding (k, shape) instead of the model node it stands for."""
    position = {leaf: k for k, leaf in enumerate(leaves)}
    nodes = list(body.nodes)
    for leaf, k in position.items():
        node = nodes[leaf]
        nodes[leaf] = Node("loop_capture", (), (k, node.shape), node.shape, node.varying)
    return Body(body.kind, body.level, body.index, body.lower, body.upper, tuple(nodes), body.result, body.captures)


def _check_body(g: Graph, reader, whole) -> None:
    for nid, node in enumerate(g.nodes):
        op = ops.get(node.op)
        if node.op in _BODY_OPS or op.kind == "elementwise" and node.shape == ():
            continue
        if node.op == "loop_capture":
            continue
        raise UnsupportedFunctionError(
            f"the term of {reader.describe(whole)} computes {node.op} of a matrix that depends on the loop "
            "index; a term may use scalar functions of elements M[i, j] and of values that do not depend "
            "on the index (which are computed once, outside the loop)")
    for node in g.nodes:
        for a in node.args:
            if g.nodes[a].shape != () and node.op not in ("loop_element",) + LOOP_OPS:
                raise UnsupportedFunctionError(
                    f"the term of {reader.describe(whole)} uses a whole matrix in {node.op}; inside a loop, "
                    "read its elements M[i, j]")


def parse_affine(expr, indices: dict, what: str) -> Affine:
    """``expr`` as a whole-number affine function of the loop indices (symbol -> level)."""
    expr = sp.sympify(expr)
    if expr.is_infinite or expr.has(sp.oo, -sp.oo, sp.zoo):
        raise ModelShapeError(f"{what} is {expr}: a loop runs over a finite range of whole numbers")
    symbols = [s for s in indices if expr.has(s)]
    others = expr.free_symbols - set(symbols)
    if others:
        raise ModelShapeError(f"{what} is {expr}, which uses {', '.join(sorted(map(str, others)))}: loop bounds "
                              "and element positions must be whole numbers or affine in the loop indices")
    try:
        poly = sp.Poly(expr, *symbols) if symbols else None
    except sp.PolynomialError:
        poly = None
        symbols = None
    if symbols is None or poly is not None and poly.total_degree() > 1:
        raise ModelShapeError(f"{what} is {expr}, which is not affine in the loop indices")
    const = poly.coeff_monomial(1) if poly is not None else expr
    terms = tuple((indices[s], poly.coeff_monomial(s)) for s in symbols) if poly is not None else ()
    values = [const] + [c for _, c in terms]
    if not all(getattr(v, "is_Integer", False) for v in values):
        raise ModelShapeError(f"{what} is {expr}: loop bounds and element positions must be whole numbers")
    return Affine(int(const), tuple(sorted((lvl, int(c)) for lvl, c in terms if c != 0)))


class _BodyReader:
    """Reads a loop's term into a body graph: index-free parts are read by the model's reader
    and captured; elements at index positions become ``loop_element`` reads."""

    def __init__(self, builder: Builder, top, indices: dict, ranges: dict, names: dict):
        from .frontend import SympyReader

        self.b, self.top, self.indices, self.ranges, self.names = builder, top, indices, ranges, names
        self._plain = SympyReader(builder, {}, top.declared_names)
        self._plain._children = self._children
        self._plain._convert = self._convert
        self.memo = self._plain.memo
        for symbol, level in indices.items():
            self.memo[symbol] = builder.apply("loop_index", attrs=(level, str(symbol)))
        self.capture_leaves: list = []
        self._leaf_of: dict = {}
        self._uses_memo: dict = {}

    def read(self, expr) -> int:
        return self._plain.read(expr)

    def node(self, expr) -> int:
        return self.memo[expr]

    def describe(self, expr) -> str:
        return self.top.describe(expr)

    def capture_node(self, model_node: int) -> int:
        """The leaf of this body that stands for ``model_node`` of the model's graph."""
        leaf = self._leaf_of.get(model_node)
        if leaf is None:
            shape = self.top.b.shape(model_node)
            # a leaf unique to its model node until renumbered (see _renumbered)
            leaf = self.b.graph.intern(Node("loop_capture", (), (model_node, shape), shape,
                                            self.top.b.node(model_node).varying))
            self._leaf_of[model_node] = leaf
            self.capture_leaves.append(leaf)
        return leaf

    def _uses_index(self, e) -> bool:
        memo = self._uses_memo
        stack = [e]
        while stack:
            x = stack[-1]
            if x in memo:
                stack.pop()
                continue
            if isinstance(x, (ExprWithLimits, sp.Indexed)) or x.is_Atom or not x.args:
                # an Indexed is an atom to SymPy, but its indices are free symbols of it
                by_symbols = isinstance(x, (ExprWithLimits, sp.Indexed)) or not x.is_Atom
                memo[x] = any(s in self.indices for s in x.free_symbols) if by_symbols else x in self.indices
                stack.pop()
                continue
            missing = [a for a in x.args if a not in memo]
            if missing:
                stack.extend(missing)
                continue
            memo[x] = any(memo[a] for a in x.args)
            stack.pop()
        return memo[e]

    def _independent(self, e) -> bool:
        return not (e.is_Number or e.is_NumberSymbol or e in (sp.true, sp.false)) and not self._uses_index(e)

    def _children(self, e) -> list:
        if self._independent(e) or isinstance(e, (MatrixElement, sp.Indexed, sp.Sum, sp.Product)):
            return []
        from .frontend import SympyReader

        return SympyReader._children(self._plain, e)

    def _convert(self, e) -> int:
        if isinstance(e, sp.Indexed):
            e = self._as_element(e)
            self._uses_memo.pop(e, None)
        if self._independent(e):
            return self.capture_node(self.top.read(e))
        if isinstance(e, (sp.Sum, sp.Product)):
            return read_loop(self, e)
        if isinstance(e, MatrixElement):
            return self._element(e)
        from .frontend import SympyReader

        return SympyReader._convert(self._plain, e)

    def _as_element(self, e):
        """``sp.IndexedBase(x)[i]`` of a declared MatrixSymbol x: its element, ``x[i, 0]`` for a
        column (``x[0, i]`` for a row), ``x[i, j]`` with two indices."""
        label = e.base.label
        if not isinstance(label, sp.MatrixSymbol):
            raise UnsupportedFunctionError(
                f"the indexed element {self.describe(e)} is of {label}, which is not a MatrixSymbol: declare "
                f"x = sp.MatrixSymbol(...) and write sp.IndexedBase(x)[i], or x[i, 0]")
        rows, cols = (int(d) for d in label.shape)
        if len(e.indices) == 2:
            return MatrixElement(label, *e.indices)
        if len(e.indices) == 1 and 1 in (rows, cols):
            (k,) = e.indices
            return MatrixElement(label, k, 0) if cols == 1 else MatrixElement(label, 0, k)
        raise UnsupportedFunctionError(f"the indexed element {self.describe(e)} of the {rows}x{cols} matrix "
                                       f"{label} needs {'one index' if 1 in (rows, cols) else 'two indices'}")

    def _element(self, e) -> int:
        parent = e.parent
        if self._uses_index(parent):
            raise UnsupportedFunctionError(f"the element {self.describe(e)} is taken of a matrix that depends on "
                                           "the loop index; take elements of matrices computed outside the loop")
        matrix = self.capture_node(self.top.read(parent))
        rows, cols = self.top.b.shape(self.top.read(parent)) or (1, 1)
        row = parse_affine(e.i, self.indices, f"the row of {self.describe(e)}")
        col = parse_affine(e.j, self.indices, f"the column of {self.describe(e)}")
        empty = any(a > b for a, b in self.ranges.values())  # a loop that never runs reads nothing
        for what, position, extent in (("row", row, rows), ("column", col, cols)) if not empty else ():
            low, high = position.interval(self.ranges)
            if low < 0 or high >= extent:
                raise ModelShapeError(
                    f"the element {self.describe(e)} reads {what}s {low}..{high} of a matrix with {extent} {what}s "
                    f"over the loop's range ({', '.join(f'{self.names[l]} in {a}..{b}' for l, (a, b) in sorted(self.ranges.items()))})")
        return self.b.apply("loop_element", matrix, attrs=(row, col))


# --- the reverse pass of a body --------------------------------------------------------------


@dataclass(frozen=True)
class Reverse:
    """A body's reverse pass: ``graph`` holds the body's nodes, a ``loop_seed`` leaf (the
    adjoint of the term) and the adjoint nodes; ``effects`` add adjoints to the packed vector:
    ("add", capture, row Affine or None, col Affine or None, node) or ("loop", loop node, node)
    for a nested loop whose term's adjoint is ``node``."""

    graph: Graph
    seed: int
    effects: tuple

    def needed(self) -> list:
        """The nodes the effects read, in topological order."""
        roots = [eff[-1] for eff in self.effects]
        for eff in self.effects:  # a nested loop's reverse reads its captures, not its value
            if eff[0] == "loop":
                roots += list(self.graph.nodes[eff[1]].args)
        return self.graph.ancestors(roots)


@functools.lru_cache(maxsize=256)
def reverse_program(body: Body) -> Reverse:
    """The term's reverse pass, by the registry's VJP rules, for a seed adjoint of the term."""
    g = body.graph()
    b = Builder(g)
    seed = b.apply("loop_seed")
    pending = {body.result: [seed]}
    effects = []
    for nid in sorted(g.ancestors([body.result]), reverse=True):
        parts = pending.pop(nid, None)
        if not parts:
            continue
        adjoint = b.add(*parts)
        node = g.nodes[nid]
        if node.op == "loop_capture":
            effects.append(("add", node.attrs[0], None, None, adjoint))
        elif node.op == "loop_element":
            capture = g.nodes[node.args[0]].attrs[0]
            effects.append(("add", capture, *node.attrs, adjoint))
        elif node.op in LOOP_OPS:
            effects.append(("loop", nid, adjoint))
        elif node.op in ("const", "loop_index"):
            continue
        else:
            op = ops.get(node.op)
            if op.vjp is None:
                if op.differentiable:
                    raise ModelError(f"op {node.op!r} has no derivative rule")
                continue
            for arg, contribution in zip(node.args, op.vjp(b, nid, adjoint)):
                if contribution is not None:
                    pending.setdefault(arg, []).append(contribution)
    return Reverse(g, seed, tuple(effects))


def _capture_map(parent: Graph, loop_node: int) -> list:
    """For a nested loop node of a body: its capture k -> the enclosing body's capture number."""
    return [parent.nodes[a].attrs[0] for a in parent.nodes[loop_node].args]


# --- forward mode ------------------------------------------------------------------------------


def tangent_body(body: Body, tangent_of: dict) -> Body:
    """The body of the sum whose term is the directional derivative of ``body``'s term, given
    tangents for some captures (capture k -> the number of the capture holding its tangent),
    by the registry's JVP rules; nested sums become sums of their terms' derivatives."""
    if body.kind != "sum":
        raise ModelError("forward-mode derivatives of a Product loop inside another loop are not supported; "
                         "where its terms are positive, write it as the exp of a Sum of logs")
    g = body.graph()
    b = Builder(g)
    shapes = list(body.captures) + [None] * (max(tangent_of.values(), default=-1) + 1 - len(body.captures))
    tangents: dict = {}
    for nid in g.ancestors([body.result]):
        node = g.nodes[nid]
        if node.op == "loop_capture":
            k = node.attrs[0]
            if k in tangent_of:
                shapes[tangent_of[k]] = node.shape
                tangents[nid] = g.intern(Node("loop_capture", (), (tangent_of[k], node.shape), node.shape,
                                              node.varying))
        elif node.op == "loop_element":
            if node.args[0] in tangents:
                tangents[nid] = b.apply("loop_element", tangents[node.args[0]], attrs=node.attrs)
        elif node.op in LOOP_OPS:
            wanted = [k for k, a in enumerate(node.args) if a in tangents]
            if wanted:
                args = list(node.args) + [tangents[node.args[k]] for k in wanted]
                slots = {k: len(node.args) + n for n, k in enumerate(wanted)}
                tangents[nid] = b.apply("sum_loop", *args, attrs=(tangent_body(node.attrs[0], slots),))
        elif node.op not in ("const", "loop_index"):
            arg_tangents = [tangents.get(a) for a in node.args]
            if any(t is not None for t in arg_tangents):
                t = ops.get(node.op).jvp(b, nid, arg_tangents)
                if t is not None:
                    tangents[nid] = t
    result = tangents.get(body.result)
    if result is None:
        result = b.const(0)
    return Body("sum", body.level, body.index, body.lower, body.upper, tuple(g.nodes), result, tuple(shapes))


# --- NumPy reference ------------------------------------------------------------------------------


def _eval_nodes(g: Graph, wanted, args, indices: dict, values: dict, seed=None) -> dict:
    for nid in wanted:
        if nid in values:
            continue
        node = g.nodes[nid]
        if node.op == "loop_index":
            v = float(indices[node.attrs[0]])
        elif node.op == "loop_capture":
            v = np.asarray(args[node.attrs[0]], dtype=float)
        elif node.op == "loop_seed":
            v = seed
        elif node.op == "loop_element":
            m = np.asarray(values[node.args[0]], dtype=float).reshape(-1)
            shape = g.nodes[node.args[0]].shape or (1, 1)
            row, col = (a.value(indices) for a in node.attrs)
            v = float(m[row * shape[1] + col])
        elif node.op in LOOP_OPS:
            v = run_loop([values[a] for a in node.args], node.attrs[0], indices)
        elif node.op == "const":
            v = float(node.attrs[0])
        else:
            v = ops.get(node.op).numpy([values[a] for a in node.args], node.attrs)
        values[nid] = v
    return values


def _iterations(body: Body, indices: dict):
    return range(body.lower.value(indices), body.upper.value(indices) + 1)


def run_loop(args, body: Body, indices: dict | None = None) -> float:
    """The loop's value for one example (``args``: the captures' values)."""
    indices = dict(indices or {})
    g = body.graph()
    wanted = g.ancestors([body.result])
    total = 0.0 if body.kind == "sum" else 1.0
    for i in _iterations(body, indices):
        indices[body.level] = i
        term = float(_eval_nodes(g, wanted, args, indices, {})[body.result])
        total = total + term if body.kind == "sum" else total * term
    return total


def run_loop_vjp(args, body: Body) -> np.ndarray:
    """The packed adjoints of the captures for one example (``args``: captures, then the seed)."""
    out = np.zeros(sum(body.sizes()))
    _run_reverse(list(args[:-1]), body, float(args[-1]), {}, list(range(len(body.captures))), out, body.offsets(),
                 body.captures)
    return out.reshape(1, -1)


def _run_reverse(args, body: Body, seed: float, indices: dict, to_top: list, out, offsets, shapes) -> None:
    program = reverse_program(body)
    g = program.graph
    needed = program.needed()
    forward = g.ancestors([body.result])
    terms = None
    if body.kind == "product":
        terms = {}
        for i in _iterations(body, indices):
            indices[body.level] = i
            terms[i] = float(_eval_nodes(g, forward, args, indices, {})[body.result])
    for i in _iterations(body, indices):
        indices[body.level] = i
        term_seed = seed if terms is None else seed * _others(terms, i)
        values = _eval_nodes(g, needed, args, indices, {}, seed=term_seed)
        for effect in program.effects:
            if effect[0] == "add":
                _, k, row, col, adj = effect
                top = to_top[k]
                position = offsets[top]
                if row is not None:
                    position += row.value(indices) * (shapes[top] or (1, 1))[1] + col.value(indices)
                out[position] += values[adj]
            else:
                _, loop, adj = effect
                inner = g.nodes[loop].attrs[0]
                inner_args = [values[a] for a in g.nodes[loop].args]
                inner_top = [to_top[k] for k in _capture_map(g, loop)]
                _run_reverse(inner_args, inner, float(values[adj]), dict(indices), inner_top, out, offsets, shapes)


def _others(terms: dict, i) -> float:
    """The product of the terms other than term i (no division: exact where terms are zero)."""
    p = 1.0
    for k, t in terms.items():
        if k != i:
            p *= t
    return p


# --- C ----------------------------------------------------------------------------------------------


class _C:
    """Writes a body's statements as C; ``captures`` are the C operands of the outermost loop's
    args (a nested body reaches them through ``to_top``), ``e`` the example variable or None."""

    def __init__(self, p, captures, e):
        self.p, self.captures, self.e = p, captures, e

    def _var(self, level, nid, prefix="s"):
        return f"{prefix}{level}_{nid}"

    def _operand_text(self, g, level, nid, to_top, names, seed_text=None) -> CArg:
        node = g.nodes[nid]
        if node.op == "const":
            return CArg(self.p.literal(float(node.attrs[0])), float(node.attrs[0]))
        if node.op == "loop_capture" and node.shape == ():
            operand = self.captures[to_top[node.attrs[0]]]
            return CArg(operand.element(self.e), operand.const)
        if node.op == "loop_seed":
            return CArg(seed_text)
        return CArg(names[nid])

    def statements(self, g: Graph, level: int, wanted, to_top, seed_text=None, prefix="s", names=None) -> tuple:
        """(C lines, node -> C variable) computing ``wanted`` nodes of a body at ``level``."""
        p = self.p
        names, lines = ({} if names is None else names), []
        for nid in wanted:
            node = g.nodes[nid]
            if node.op in ("const", "loop_seed", "loop_capture") or nid in names:
                continue
            var = self._var(level, nid, prefix)
            names[nid] = var
            if node.op == "loop_index":
                lines.append(p.local(var, f"({p.real}) l{node.attrs[0]}"))
            elif node.op == "loop_element":
                k = g.nodes[node.args[0]].attrs[0]
                operand = self.captures[to_top[k]]
                row, col = node.attrs
                lines.append(p.local(var, operand.element(self.e, _position(row), _position(col))))
            elif node.op in LOOP_OPS:
                inner: Body = node.attrs[0]
                inner_top = [to_top[k] for k in _capture_map(g, nid)]
                lines += self.loop(inner, inner_top, var)
            else:
                args = [self._operand_text(g, level, a, to_top, names, seed_text) for a in node.args]
                lines.append(p.local(var, ops.get(node.op).c(p, args, node.attrs)))
        return lines, names

    def loop(self, body: Body, to_top, target: str) -> list:
        """Lines defining ``const sg_real target`` = the loop's value."""
        g = body.graph()
        lv = body.level
        inner, names = self.statements(g, lv, g.ancestors([body.result]), to_top)
        term = self._operand_text(g, lv, body.result, to_top, names).text
        acc = f"acc{lv}_{target}"
        op = "+=" if body.kind == "sum" else "*="
        return ([f"sg_acc {acc} = {0 if body.kind == 'sum' else 1};",
                 f"for (int64_t l{lv} = {body.lower.c()}; l{lv} <= {body.upper.c()}; ++l{lv}) {{"]
                + ["    " + line for line in inner] + [f"    {acc} {op} {term};", "}",
                                                      self.p.local(target, f"({self.p.real}) {acc}")])

    def reverse(self, body: Body, to_top, seed_text: str, out, shapes) -> list:
        """Lines adding the loop's contributions, for the adjoint ``seed_text`` of its value, to
        the packed vector ``out`` (an Operand of the outermost ``loop_vjp``). A product's term
        gets the product of the other terms as its seed: from the count of zero terms and the
        product of the others, so a zero term is no division by zero."""
        p = self.p
        program = reverse_program(body)
        g = program.graph
        lv = body.level
        offsets = _offsets(shapes)
        loop = f"for (int64_t l{lv} = {body.lower.c()}; l{lv} <= {body.upper.c()}; ++l{lv}) {{"
        lines, term_seed = [], seed_text
        wanted = program.needed()
        if body.kind == "product":
            zeros, nonzero = f"zeros{lv}", f"nonzero{lv}"
            fwd, names = self.statements(g, lv, g.ancestors([body.result]), to_top, prefix="p")
            term = self._operand_text(g, lv, body.result, to_top, names).text
            lines += [f"int64_t {zeros} = 0;", f"sg_acc {nonzero} = 1;", loop] + ["    " + ln for ln in fwd]
            lines += [f"    if ({term} == 0) ++{zeros}; else {nonzero} *= {term};", "}"]
            wanted = sorted(set(wanted) | set(g.ancestors([body.result])))
        seed = f"t{lv}"
        before, names = self.statements(g, lv, [n for n in wanted if n < program.seed], to_top, prefix="r")
        if body.kind == "product":
            term = self._operand_text(g, lv, body.result, to_top, names).text
            term_seed = (f"{seed_text} * ({zeros} == 0 ? ({p.real}) ({nonzero} / {term}) : "
                         f"({zeros} == 1 && {term} == 0 ? ({p.real}) {nonzero} : 0))")
        after, names = self.statements(g, lv, [n for n in wanted if n > program.seed], to_top, seed, "r", names)
        body_lines = before + [p.local(seed, term_seed)] + after
        for effect in program.effects:
            value = self._operand_text(g, lv, effect[-1], to_top, names, seed).text
            if effect[0] == "add":
                _, k, row, col, _ = effect
                top = to_top[k]
                index = str(offsets[top]) if row is None else _flat_index(offsets[top], row, col,
                                                                         (shapes[top] or (1, 1))[1])
                body_lines.append(f"{_element_at(out, self.e, index)} += {value};")
            else:
                inner = g.nodes[effect[1]].attrs[0]
                inner_top = [to_top[k] for k in _capture_map(g, effect[1])]
                body_lines += ["{"] + ["    " + ln for ln in self.reverse(inner, inner_top, value, out, shapes)] + ["}"]
        return lines + [loop] + ["    " + ln for ln in body_lines] + ["}"]


def _flat_index(offset: int, row: Affine, col: Affine, cols: int) -> str:
    """C text of ``offset + row * cols + col``, its terms gathered: ``l0 * 3 + l1 + 5``."""
    coefs: dict = {}
    for level, c in row.terms:
        coefs[level] = coefs.get(level, 0) + c * cols
    for level, c in col.terms:
        coefs[level] = coefs.get(level, 0) + c
    return Affine(offset + row.const * cols + col.const, tuple(sorted(coefs.items()))).c().strip("()")


def _position(a: Affine):
    return a.const if not a.terms else a.c()


def _offsets(shapes) -> list:
    offsets, total = [], 0
    for s in shapes:
        offsets.append(total)
        total += ops.size_of(s)
    return offsets


def _element_at(out, e, index: str) -> str:
    base = f"{out.text}[{index}]" if not (out.varying and e is not None) else \
        f"{out.text}[{e} * {out.example_stride} + {index}]"
    return base


def _per_example(p, out, body_lines_of) -> list:
    """``body_lines_of(e)`` inside a loop over the tile's examples when ``out`` is per example."""
    if out.varying:
        return ["for (int64_t e = 0; e < nt; ++e) {"] + ["    " + ln for ln in body_lines_of("e")] + ["}"]
    return ["{"] + ["    " + ln for ln in body_lines_of(None)] + ["}"]


def emit_loop(p, out, args, attrs) -> list:
    """C of a ``sum_loop`` / ``product_loop`` node: one loop with an accumulator per example."""
    (body,) = attrs

    def lines(e):
        c = _C(p, args, e)
        return c.loop(body, list(range(len(args))), "value") + [f"{out.element(e)} = value;"]

    return _per_example(p, out, lines)


def emit_loop_vjp(p, out, args, attrs) -> list:
    """C of a ``loop_vjp`` node: the packed adjoints of the captures, zeroed, then one loop
    that runs each iteration's term forward and backward and adds its contributions."""
    (body,) = attrs
    captures, seed = args[:-1], args[-1]
    total = sum(body.sizes())

    def lines(e):
        c = _C(p, captures, e)
        zero = [f"for (int64_t q = 0; q < {total}; ++q) {_element_at(out, e, 'q')} = 0;"]
        return zero + c.reverse(body, list(range(len(captures))), "seed", out, body.captures)

    def with_seed(e):
        return [p.local("seed", seed.element(e))] + lines(e)

    return _per_example(p, out, with_seed)


# --- display --------------------------------------------------------------------------------------


def body_text(body: Body, arg_texts) -> str:
    """``sum(i = 0..n - 1: (x[i + 1, 0] - x[i, 0])**2)``: the loop in the display dialect."""
    from .naming import node_text

    g = body.graph()
    texts: dict = {}
    names = _index_names(body)
    for nid in g.ancestors([body.result]):
        node = g.nodes[nid]
        if node.op == "loop_capture":
            texts[nid] = arg_texts[node.attrs[0]]
        elif node.op == "loop_index":
            texts[nid] = node.attrs[1]
        elif node.op == "loop_element":
            row, col = node.attrs
            names_all = {**names, **_level_names(g)}
            texts[nid] = f"{texts[node.args[0]]}[{row.text(names_all)}, {col.text(names_all)}]"
        elif node.op in LOOP_OPS:
            texts[nid] = body_text(node.attrs[0], [texts[a] for a in node.args])
        else:
            texts[nid] = node_text(g, nid, [texts[a] for a in node.args])
    names_all = {**names, **_level_names(g)}
    bounds = f"{body.lower.text(names_all)}..{body.upper.text(names_all)}"
    return f"{body.kind}({body.index} = {bounds}: {texts[body.result]})"


def vjp_text(body: Body, arg_texts) -> str:
    """The reverse loop in the display dialect: each iteration's contributions to the captures'
    adjoints, ``sum_vjp(i = 0..18: x[i + 1, 0] += 200*(...); x[i, 0] += ...)``, for the
    seed (the loop's adjoint) ``arg_texts[-1]``; a nested loop's contributions nest."""
    from .naming import node_text

    program = reverse_program(body)
    g = program.graph
    captures, seed = arg_texts[:-1], arg_texts[-1]
    names = {**_index_names(body), **_level_names(g)}
    texts: dict = {}
    needed = program.needed()
    uses: dict = {}
    for nid in needed:
        for a in g.nodes[nid].args:
            uses[a] = uses.get(a, 0) + 1
    for effect in program.effects:
        uses[effect[-1]] = uses.get(effect[-1], 0) + 1
    bindings = []  # a value read more than once is written once, under a name
    for nid in needed:
        node = g.nodes[nid]
        if node.op == "loop_capture":
            texts[nid] = captures[node.attrs[0]]
        elif node.op == "loop_index":
            texts[nid] = node.attrs[1]
        elif node.op == "loop_seed":
            texts[nid] = seed
        elif node.op == "loop_element":
            row, col = node.attrs
            texts[nid] = f"{texts[node.args[0]]}[{row.text(names)}, {col.text(names)}]"
        elif node.op in LOOP_OPS:
            texts[nid] = body_text(node.attrs[0], [texts[a] for a in node.args])
        else:
            texts[nid] = node_text(g, nid, [texts[a] for a in node.args])
            if uses.get(nid, 0) > 1 and node.op != "const":
                name = f"u{body.level}_{len(bindings)}"
                bindings.append(f"{name} = {texts[nid]}")
                texts[nid] = name
    parts = list(bindings)
    for effect in program.effects:
        if effect[0] == "add":
            _, k, row, col, adj = effect
            where = captures[k] if row is None else f"{captures[k]}[{row.text(names)}, {col.text(names)}]"
            parts.append(f"{where} += {texts[adj]}")
        else:
            _, loop, adj = effect
            inner_captures = [captures[k] for k in _capture_map(g, loop)]
            parts.append(vjp_text(g.nodes[loop].attrs[0], inner_captures + [texts[adj]]))
    bounds = f"{body.lower.text(names)}..{body.upper.text(names)}"
    return f"{body.kind}_vjp({body.index} = {bounds}: {'; '.join(parts)})"


def _index_names(body: Body) -> dict:
    return {body.level: body.index}


def _level_names(g: Graph) -> dict:
    return {n.attrs[0]: n.attrs[1] for n in g.nodes if n.op == "loop_index"}


def body_sympy(body: Body, args):
    """The loop as SymPy: ``Sum(term, (i, lo, hi))`` over the captures' expressions."""
    term, index, symbols = _term_sympy(body, args, {})
    limits = (index, body.lower.sympy(symbols), body.upper.sympy(symbols))
    return (sp.Sum if body.kind == "sum" else sp.Product)(term, limits)


def _term_sympy(body: Body, args, symbols: dict):
    g = body.graph()
    symbols = dict(symbols)
    for n in g.nodes:
        if n.op == "loop_index":
            symbols.setdefault(n.attrs[0], sp.Symbol(n.attrs[1], integer=True))
    symbols.setdefault(body.level, sp.Symbol(body.index, integer=True))
    memo: dict = {}
    for nid in g.ancestors([body.result]):
        node = g.nodes[nid]
        if node.op == "loop_capture":
            memo[nid] = args[node.attrs[0]]
        elif node.op == "loop_index":
            memo[nid] = symbols[node.attrs[0]]
        elif node.op == "loop_element":
            row, col = node.attrs
            memo[nid] = MatrixElement(memo[node.args[0]], row.sympy(symbols), col.sympy(symbols))
        elif node.op in LOOP_OPS:
            inner: Body = node.attrs[0]
            inner_term, inner_index, _ = _term_sympy(inner, [memo[a] for a in node.args], symbols)
            limits = (inner_index, inner.lower.sympy(symbols), inner.upper.sympy(symbols))
            memo[nid] = (sp.Sum if inner.kind == "sum" else sp.Product)(inner_term, limits)
        else:
            memo[nid] = ops.get(node.op).to_sympy([memo[a] for a in node.args], node.attrs)
    return memo[body.result], symbols[body.level], symbols


def vjp_sympy(body: Body, args, k: int):
    """The adjoint of capture ``k`` as SymPy: the derivative of ``seed * loop`` with respect to
    it, with the capture stood in by a symbol (a matrix's entries through a FunctionMatrix, so
    the expression's size does not depend on the matrix's)."""
    *captures, seed = args
    shape = body.captures[k]
    if shape == ():
        stand_in = sp.Dummy("c")
        value = body_sympy(body, [stand_in if j == k else a for j, a in enumerate(captures)])
        return (seed * sp.diff(value, stand_in)).subs(stand_in, captures[k])
    stand_in = sp.MatrixSymbol(f"C{k}", *shape)
    value = body_sympy(body, [stand_in if j == k else a for j, a in enumerate(captures)])
    r, c = sp.symbols("r c", integer=True)
    entry = (seed * sp.diff(value, stand_in[r, c])).xreplace({stand_in: captures[k]})
    return sp.FunctionMatrix(shape[0], shape[1], sp.Lambda((r, c), entry))


# --- the registry entries -------------------------------------------------------------------
#
# sum_loop and product_loop hold their term as a Body in their attrs and capture what the term
# reads as their args. Their VJP is one loop_vjp node (the term's reverse pass inside the same
# loop, adding into a packed vector of the captures' adjoints) viewed capture by capture through
# loop_part; their JVP is a sum over the term's JVP. loop_index, loop_capture, loop_seed and
# loop_element exist only inside bodies.


def _only_in_bodies(name):
    def fail(*args):
        raise ModelError(f"{name} exists only inside the body of a loop")

    return fail


def _no_second_order(*args):
    raise ModelError("second derivatives through a Product loop are not supported yet (first derivatives, "
                     "forward or reverse, are; and second derivatives of a Sum)")


register(Op(name="loop_index", kind="leaf", arity=0, shape=lambda shapes, attrs: (),
            to_sympy=lambda args, attrs: sp.Symbol(attrs[1], integer=True), numpy=_only_in_bodies("loop_index"),
            c=_only_in_bodies("loop_index"), text=lambda args, attrs: attrs[1]))
register(Op(name="loop_capture", kind="leaf", arity=0, shape=lambda shapes, attrs: attrs[1],
            to_sympy=_only_in_bodies("loop_capture"), numpy=_only_in_bodies("loop_capture"),
            c=_only_in_bodies("loop_capture"), text=lambda args, attrs: f"capture{attrs[0]}"))
register(Op(name="loop_seed", kind="leaf", arity=0, shape=lambda shapes, attrs: (),
            to_sympy=_only_in_bodies("loop_seed"), numpy=_only_in_bodies("loop_seed"),
            c=_only_in_bodies("loop_seed"), text=lambda args, attrs: "seed"))
# Element (row, col) of a captured matrix, at positions affine in the loop indices.
register(Op(name="loop_element", kind="tensor", arity=1, shape=lambda shapes, attrs: (),
            to_sympy=_only_in_bodies("loop_element"), numpy=_only_in_bodies("loop_element"),
            emit=_only_in_bodies("loop_element"), vjp=_only_in_bodies("loop_element"),
            jvp=_only_in_bodies("loop_element")))


def _loop_vjp(b, n, g):
    node = b.node(n)
    (body,) = node.attrs
    packed = b.apply("loop_vjp", *node.args, g, attrs=(body,))
    return [b.apply("loop_part", packed, attrs=(offset, shape, k, body))
            for k, (offset, shape) in enumerate(zip(body.offsets(), body.captures))]


def _loop_jvp(b, n, tangents):
    node = b.node(n)
    wanted = [k for k, t in enumerate(tangents) if t is not None]
    if not wanted:
        return None
    (body,) = node.attrs
    if body.kind == "product":  # the gradient (one reverse loop with seed 1) dotted with the tangents
        gradient = _loop_vjp(b, n, b.const(1))
        return b.add(*[b.sum(b.mul(gradient[k], tangents[k])) if tangents[k] is not None and b.shape(tangents[k])
                       else b.mul(gradient[k], tangents[k]) for k in wanted])
    slots = {k: len(node.args) + m for m, k in enumerate(wanted)}
    body = tangent_body(body, slots)
    return b.apply("sum_loop", *node.args, *[tangents[k] for k in wanted], attrs=(body,))


def _loop_cost(node, shapes):
    body = node.attrs[0]
    count = body.upper.const - body.lower.const + 1 if not (body.upper.terms or body.lower.terms) else 1
    return max(count, 0) * len(body.nodes)


def _test_bodies():
    """Loops the registry tests differentiate: a sum and a product over elements of a
    captured column a0 (at i and i + 1) and a captured scalar a1, with the index's value."""
    cases = []
    for kind in ("sum", "product"):
        g = Graph()
        b = Builder(g)
        column = g.intern(Node("loop_capture", (), (0, (5, 1)), (5, 1), False))
        scalar = g.intern(Node("loop_capture", (), (1, ()), (), False))
        i = b.apply("loop_index", attrs=(0, "i"))
        here = b.apply("loop_element", column, attrs=(Affine(0, ((0, 1),)), Affine(0)))
        after = b.apply("loop_element", column, attrs=(Affine(1, ((0, 1),)), Affine(0)))
        term = b.add(b.apply("tanh", b.mul(here, scalar)), b.mul(b.mul(i, b.const(sp.Rational(1, 4))), after))
        if kind == "product":
            term = b.add(term, b.const(1))
        body = Body(kind, 0, "i", Affine(0), Affine(3), tuple(g.nodes), term, ((5, 1), ()))
        cases.append((((5, 1), ()), (body,)))
    return cases


_SUM_CASE, _PRODUCT_CASE = _test_bodies()

for _kind, _case in (("sum", _SUM_CASE), ("product", _PRODUCT_CASE)):
    register(
        Op(
            name=f"{_kind}_loop",
            kind="tensor",
            shape=lambda shapes, attrs: (),
            vjp=_loop_vjp,
            jvp=_loop_jvp,
            emit=emit_loop,
            numpy=lambda args, attrs: run_loop(args, attrs[0]),
            to_sympy=lambda args, attrs: body_sympy(attrs[0], args),
            text=lambda args, attrs: body_text(attrs[0], args),
            # the product's second derivatives are not supported, so the registry tests, which
            # transpose each VJP, check the sum only (tests/test_loops.py checks the product)
            domain=((-1.0, 1.0), (-1.0, 1.0)) if _kind == "sum" else None,
            cost=_loop_cost,
            test_cases=(_case,),
        )
    )

def _loop_vjp_vjp(b, n, r):
    """The VJP of ``loop_vjp(c..., seed)`` for the adjoint ``r`` of its packed vector. It is
    ``seed * grad L(c)``, so: for the seed, ``grad L(c) . r``, the loop's directional
    derivative ``J(c; r)`` along r (a sum over the term's JVP); for the captures,
    ``seed * grad_c J(c; r)``, the reverse loop of that sum, with the same seed."""
    node = b.node(n)
    (body,) = node.attrs
    captures, seed = node.args[:-1], node.args[-1]
    if body.kind != "sum":
        _no_second_order()
    directions = [b.apply("loop_part", r, attrs=(offset, shape, k, None))
                  for k, (offset, shape) in enumerate(zip(body.offsets(), body.captures))]
    slots = {k: len(captures) + k for k in range(len(captures))}
    along = b.apply("sum_loop", *captures, *directions, attrs=(tangent_body(body, slots),))
    return _loop_vjp(b, along, seed)[:len(captures)] + [along]


def _loop_vjp_jvp(b, n, tangents):
    """The JVP of ``loop_vjp(c..., seed) = seed * grad L(c)``: along the seed, the loop_vjp of
    its tangent; along the captures' tangents t, ``seed * H(c) t = seed * grad_c J(c; t)``, the
    reverse loop (with the same seed) of the loop's directional derivative J along t, its
    captures' parts packed back (what forward-over-reverse Hessian products need)."""
    node = b.node(n)
    (body,) = node.attrs
    captures, seed = node.args[:-1], node.args[-1]
    terms = []
    if tangents[-1] is not None:
        terms.append(b.apply("loop_vjp", *captures, tangents[-1], attrs=node.attrs))
    wanted = [k for k in range(len(captures)) if tangents[k] is not None]
    if wanted:
        if body.kind != "sum":
            _no_second_order()
        slots = {k: len(captures) + m for m, k in enumerate(wanted)}
        along = b.apply("sum_loop", *captures, *[tangents[k] for k in wanted], attrs=(tangent_body(body, slots),))
        total = sum(body.sizes())
        for k, part in enumerate(_loop_vjp(b, along, seed)[:len(captures)]):
            terms.append(b.apply("loop_embed", part, attrs=(body.offsets()[k], body.captures[k], total)))
    return b.add(*terms) if terms else None


def _emit_embed(p, out, args, attrs):
    (r,) = args
    offset, shape, total = attrs
    rows, cols = shape if shape else (1, 1)
    lines = p.fill(out, 0)
    if out.varying:
        lines.append("for (int64_t e = 0; e < nt; ++e)")
    e = "e" if out.varying else None
    lines += [f"    for (int64_t i = 0; i < {rows}; ++i)", f"        for (int64_t j = 0; j < {cols}; ++j)",
              f"            {out.text}[{'e * ' + str(total) + ' + ' if e else ''}{offset} + i * {cols} + j] = "
              f"{r.element(e, 'i', 'j')};"]
    return lines


def _np_embed(args, attrs):
    offset, shape, total = attrs
    out = np.zeros((1, total))
    out[0, offset:offset + size_of(shape)] = np.asarray(args[0], dtype=float).reshape(-1)
    return out


# A packed vector of zeros holding its arg at an offset: the adjoint of a loop_part.
# attrs: (offset, shape of the arg, size of the packed vector).
register(
    Op(
        name="loop_embed",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: (1, attrs[2]),
        vjp=lambda b, n, r: [b.apply("loop_part", r, attrs=(b.node(n).attrs[0], b.node(n).attrs[1], 0, None))],
        jvp=linear_jvp,
        emit=_emit_embed,
        numpy=_np_embed,
        to_sympy=lambda args, attrs: sp.Function("embed")(args[0], attrs[0], attrs[2]),
        text=lambda args, attrs: call("embed", [args[0], str(attrs[0]), str(attrs[2])]),
    )
)


register(
    Op(
        name="loop_vjp",
        kind="tensor",
        shape=lambda shapes, attrs: (1, sum(attrs[0].sizes())),
        vjp=_loop_vjp_vjp,
        jvp=_loop_vjp_jvp,
        emit=emit_loop_vjp,
        numpy=lambda args, attrs: run_loop_vjp(args, attrs[0]),
        # the captures and the seed, which each loop_part differentiates by (see vjp_sympy)
        to_sympy=lambda args, attrs: sp.Tuple(*args),
        text=lambda args, attrs: vjp_text(attrs[0], args),
        cost=lambda node, shapes: 3 * _loop_cost(node, shapes),
    )
)


def _part_view(base, attrs, shape):
    offset = attrs[0]
    cols = shape[1] if shape else 1
    return replace(base, shape=shape, offset=base.offset + offset, row_stride=cols if shape else 0,
                   col_stride=1 if shape else 0)


def _part_sympy(args, attrs):
    offset, shape, k, body = attrs
    if body is not None:  # a capture's adjoint: the derivative, written as SymPy
        return vjp_sympy(body, list(args[0]), k)
    packed = args[0]
    if shape == ():
        return packed[0, offset]
    return sp.ImmutableMatrix(shape[0], shape[1], lambda i, j: packed[0, offset + i * shape[1] + j])


# The part of a packed vector (of a loop_vjp: the adjoint of capture k) from offset, of the given
# shape. attrs: (offset, shape, k, body), with body None for a part of another packed vector.
register(
    Op(
        name="loop_part",
        kind="view",
        arity=1,
        view=_part_view,
        shape=lambda shapes, attrs: attrs[1],
        vjp=lambda b, n, r: [b.apply("loop_embed", r, attrs=(b.node(n).attrs[0], b.node(n).attrs[1],
                                                             b.shape(b.node(n).args[0])[1]))],
        jvp=linear_jvp,
        numpy=lambda args, attrs: np.asarray(args[0]).reshape(-1)[attrs[0]:attrs[0] + size_of(attrs[1])].reshape(attrs[1]),
        to_sympy=_part_sympy,
        text=lambda args, attrs: call("part", [args[0], str(attrs[2])]),
    )
)


@reads(sp.Sum, sp.Product, children=lambda e: [])
def _read_loop(r, e):
    """``sp.Sum(term, (i, lo, hi))`` and ``sp.Product``: one loop node, never unrolled."""
    return read_loop(r, e)
