"""``sg.scan``: a loop over a sequence whose step is written once (Theano's ``scan``, JAX's ``lax.scan``).

``final, ys = sg.scan(step, init, sequences=X, length=None)`` runs
``carry, y_t = step(carry, x_t)`` for t = 0..T-1: ``init`` is a matrix (or a
tuple of matrices, an LSTM's ``(h, c)``), ``X`` a ``T x k`` matrix whose row
t the step receives as the ``k x 1`` column ``x_t`` (so ``W * x_t`` reads as
written), and ``ys`` stacks the ``y_t`` as rows (``T x m`` for a column
``y_t`` of m elements, ``T x 1`` for a scalar). ``length`` may be a
per-example scalar input: steps at ``t >= length`` leave the carry as it is
and write a zero row of ``ys``.

The step becomes one ``scan`` node of the model's graph whose attrs hold a
:class:`Step`: a small graph built by the same Builder, over three kinds of
leaves: ``scan_carry`` (carry k before the step), ``scan_elem`` (row t of
sequence k) and ``loop_capture`` (what the step reads that depends on neither:
params, inputs, ``W.T``; read once outside the loop, the loop node's args).
The node's value is one packed row per example: the history of every carry
(rows 0..T), the stacked outputs, and sums over the steps (which reverse scans
use for the adjoints of their captures); ``scan_part`` views pick the parts.

Derivatives are scans too, so every order composes:

* the VJP of a scan is a scan running the other way over the step's reverse
  pass (the registry's VJP rules applied to the step graph): its carry is the
  carries' adjoint, its sequences the stored carries, the sequences and the
  outputs' adjoints, its outputs the sequences' adjoints, its sums the
  captures' adjoints (backpropagation through time);
* the JVP of a scan is a scan of the step's JVP (the registry's JVP rules)
  carrying the tangents beside the carries; its second half is the tangent.

C (:func:`emit_scan`): one C ``for`` loop over t around the step's statements,
each node emitted by its registry entry over the whole tile of examples, its
values in scratch memory reused by every iteration; the generated code and the
build time do not depend on T. :func:`run_scan` is the NumPy reference.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace

import numpy as np
import sympy as sp
from sympy.core.basic import Basic
from sympy.matrices.expressions.matexpr import MatrixExpr

from . import ops
from .errors import ModelError, ModelShapeError, UnsupportedFunctionError
from .graph import Builder, Graph, Node
from .ops import MAX_TILE, Op, linear_jvp, reads, register, size_of
from .ops.text import call
from .printer import Operand

__all__ = ["scan"]

_LEAVES = ("scan_carry", "scan_elem", "loop_capture")


# --- the step --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """The step of a scan node and the layout of its value.

    ``nodes`` is the step graph; ``carries`` the carries' shapes, ``sequences`` the shapes of
    the sequences' rows as the step reads them, ``captures`` the captured args' shapes.
    ``new_carries``, ``ys`` and ``sums`` are step nodes: the carries after the step, the
    per-step outputs (stacked as rows) and the per-step terms added up over the steps.
    The scan node's args: the initial carries, the sequences, the captures, then the
    per-example length when ``masked``. ``order`` lists the blocks of the packed value:
    ("carry", k) a carry's history, (T + 1) rows; ("y", j) an output, T rows; ("sum", j).
    A ``reverse`` scan runs t = T-1..0; its history's row T is the initial carry.
    """

    nodes: tuple
    carries: tuple
    sequences: tuple
    captures: tuple
    new_carries: tuple
    ys: tuple
    sums: tuple
    steps: int
    reverse: bool = False
    masked: bool = False
    order: tuple = ()
    carry_names: tuple = ()
    sequence_names: tuple = ()

    def graph(self) -> Graph:
        g = Graph()
        for node in self.nodes:
            g.intern(node)
        return g

    def blocks(self) -> list:
        """(kind, k, offset, rows, cols) of each block of the packed value, in order."""
        out, offset = [], 0
        for kind, k in self.order:
            if kind == "carry":
                rows, cols = self.steps + 1, size_of(self.carries[k])
            elif kind == "y":
                rows, cols = self.steps, size_of(self.nodes[self.ys[k]].shape)
            else:
                rows, cols = 1, size_of(self.nodes[self.sums[k]].shape)
            out.append((kind, k, offset, rows, cols))
            offset += rows * cols
        return out

    def size(self) -> int:
        return sum(rows * cols for *_, rows, cols in self.blocks())

    def block(self, kind, k):
        return next(b for b in self.blocks() if b[:2] == (kind, k))

    def final_row(self) -> int:
        return 0 if self.reverse else self.steps

    def first_row(self) -> int:
        return self.steps if self.reverse else 0

    def counts(self) -> tuple:
        return len(self.carries), len(self.sequences), len(self.captures)


def _default_order(n_carries, n_ys, n_sums) -> tuple:
    return tuple([("carry", k) for k in range(n_carries)] + [("y", j) for j in range(n_ys)]
                 + [("sum", j) for j in range(n_sums)])


def _leaf(g: Graph, op: str, k: int, shape, varying: bool) -> int:
    return g.intern(Node(op, (), (k, tuple(shape)), tuple(shape), varying))


def _reflagged(nodes, flags: dict) -> tuple:
    """The step's nodes with each leaf's ``varying`` from ``flags`` ((op, k) -> bool) and every
    other node's recomputed from its args (what the emitted C indexes per example)."""
    out = []
    for node in nodes:
        if node.op in _LEAVES:
            varying = flags[(node.op, node.attrs[0])]
        elif node.args:
            op = ops.get(node.op)
            arg_flags = [out[a].varying for a in node.args]
            varying = op.varying(arg_flags, node.attrs) if op.varying is not None else any(arg_flags)
        else:
            varying = node.varying
        out.append(replace(node, varying=varying))
    return tuple(out)


def make_scan(b: Builder, step: Step, inits, sequences, captures, length=None) -> int:
    """The scan node: unused sequences and captures dropped, leaves flagged per example as
    their args are, the initial carries per example when the scan is."""
    g = step.graph()
    live = set(g.ancestors(list(step.new_carries) + list(step.ys) + list(step.sums)))
    used = {(g.nodes[n].op, g.nodes[n].attrs[0]) for n in live if g.nodes[n].op in _LEAVES}
    keep_seq = [k for k in range(len(sequences)) if ("scan_elem", k) in used]
    keep_cap = [k for k in range(len(captures)) if ("loop_capture", k) in used]
    renumber = {("scan_elem", k): m for m, k in enumerate(keep_seq)}
    renumber.update({("loop_capture", k): m for m, k in enumerate(keep_cap)})
    nodes, remap = [], {}
    new = Graph()
    for nid in sorted(live):
        node = g.nodes[nid]
        if node.op in ("scan_elem", "loop_capture"):
            node = replace(node, attrs=(renumber[(node.op, node.attrs[0])], node.attrs[1]))
        else:
            node = replace(node, args=tuple(remap[a] for a in node.args))
        remap[nid] = new.intern(node)
    sequences = [sequences[k] for k in keep_seq]
    captures = [captures[k] for k in keep_cap]
    args = list(inits) + list(sequences) + list(captures) + ([length] if length is not None else [])
    varying = any(b.node(a).varying for a in args)
    flags = {("scan_carry", k): varying for k in range(len(inits))}
    flags.update({("scan_elem", k): b.node(s).varying for k, s in enumerate(sequences)})
    flags.update({("loop_capture", k): b.node(c).varying for k, c in enumerate(captures)})
    nodes = _reflagged(new.nodes, flags)
    step = replace(step, nodes=nodes, new_carries=tuple(remap[n] for n in step.new_carries),
                   ys=tuple(remap[n] for n in step.ys), sums=tuple(remap[n] for n in step.sums),
                   sequences=tuple(step.sequences[k] for k in keep_seq),
                   captures=tuple(step.captures[k] for k in keep_cap),
                   sequence_names=tuple(step.sequence_names[k] for k in keep_seq) if step.sequence_names else (),
                   masked=length is not None)
    return b.apply("scan", *args, attrs=(step,))


def _split(step: Step, args) -> tuple:
    nc, ns, nk = step.counts()
    args = list(args)
    return (args[:nc], args[nc:nc + ns], args[nc + ns:nc + ns + nk],
            args[nc + ns + nk] if step.masked else None)


def part(b: Builder, scan_node: int, offset: int, shape, label: str) -> int:
    """A view of the packed value of a scan: ``shape`` from ``offset``, row-major."""
    return b.apply("scan_part", scan_node, attrs=(offset, tuple(shape), label))


def final_carry(b, n, k, label="final"):
    step = b.node(n).attrs[0]
    _, _, offset, _, cols = step.block("carry", k)
    return part(b, n, offset + step.final_row() * cols, step.carries[k], label)


def history(b, n, k):
    """The carries before each step, T rows (what a reverse pass reads back)."""
    step = b.node(n).attrs[0]
    _, _, offset, _, cols = step.block("carry", k)
    first = 1 if step.reverse else 0
    return part(b, n, offset + first * cols, (step.steps, cols), "history")


def stacked(b, n, j):
    step = b.node(n).attrs[0]
    _, _, offset, rows, cols = step.block("y", j)
    return part(b, n, offset, (rows, cols), f"y{j}")


def summed(b, n, j):
    step = b.node(n).attrs[0]
    _, _, offset, _, _ = step.block("sum", j)
    return part(b, n, offset, step.nodes[step.sums[j]].shape, f"sum{j}")


# --- reading sg.scan ---------------------------------------------------------------------------


class Scan(Basic):
    """``sg.scan`` as a SymPy object: args are the carries' and rows' stand-ins, the step's
    new carries and outputs, the initial carries, the sequences, the length (an Integer
    number of steps, or a per-example scalar) and the names of the step's parameters."""

    def doit(self, **hints):
        return self

    @property
    def free_symbols(self):
        stand_ins = set(self.args[0]) | set(self.args[1])
        inner = set()
        for a in self.args[2:7]:
            inner |= a.free_symbols
        return {s for s in inner if s not in stand_ins and not any(s in m.free_symbols for m in stand_ins)}

    def _sympystr(self, printer):
        inits = ", ".join(printer._print(a) for a in self.args[4])
        seqs = ", ".join(printer._print(a) for a in self.args[5])
        return f"scan({inits}{'; ' + seqs if seqs else ''})"


class ScanPart(MatrixExpr):
    """What ``sg.scan`` returns: carry k after the last step (``"final"``) or the stacked outputs."""

    def __new__(cls, scan_expr, kind, k, rows, cols):
        kind = kind if isinstance(kind, sp.Symbol) else sp.Symbol(kind)
        return Basic.__new__(cls, scan_expr, kind, sp.Integer(k), sp.Integer(rows), sp.Integer(cols))

    def doit(self, **hints):
        return self

    @property
    def shape(self):
        return self.args[3], self.args[4]

    def _entry(self, i, j, **kwargs):
        from sympy.matrices.expressions.matexpr import MatrixElement

        return MatrixElement(self, i, j)

    def _sympystr(self, printer):
        what = "ys" if str(self.args[1]) == "ys" else f"final[{int(self.args[2])}]"
        return f"{printer._print(self.args[0])}.{what}"


def _matrix_shape(value):
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 2:
        return None
    return tuple(int(d) for d in shape)


def scan(step, init, sequences=None, length=None):
    """Run ``carry, y_t = step(carry, x_t)`` over the rows of ``sequences``; returns ``(final, ys)``.

    ``init``: a matrix expression (a column vector, usually) or a tuple of them; ``step``
    gets the carry in the same form. ``sequences``: a ``T x k`` matrix (or a tuple of them,
    or None), time along its rows; ``x_t`` is row t as a ``k x 1`` column (a tuple of
    columns for a tuple of sequences, None without sequences). ``step`` returns
    ``(new_carry, y_t)``: the new carry of the carry's shapes and ``y_t`` a matrix, a
    scalar or None. ``length``: None (T, the sequences' rows), a whole number of steps,
    or a per-example scalar (an input of whole-number values): steps at ``t >= length``
    leave the carry unchanged and give a zero row of ``ys``, and read nothing.

    ``final`` is the carry after the last step (a tuple if ``init`` is); ``ys`` is the
    ``T x m`` matrix whose row t is ``y_t`` flattened (``y_t.T`` for a column), or None.
    """
    if not callable(step):
        raise TypeError(f"sg.scan: step must be a function step(carry, x_t) -> (carry, y_t), got {step!r}")
    is_tuple = isinstance(init, (tuple, list))
    inits = [sp.sympify(m) for m in (init if is_tuple else [init])]
    for k, m in enumerate(inits):
        if _matrix_shape(m) is None:
            raise ModelShapeError(f"sg.scan: the initial carry {m} is not a matrix; a carry is a matrix "
                                  "(a k x 1 column: sp.Matrix([h0]) or sp.ZeroMatrix(k, 1) for a scalar state)")
    single_sequence = sequences is not None and not isinstance(sequences, (tuple, list))
    seqs = [] if sequences is None else [sp.sympify(s) for s in (sequences if not single_sequence else [sequences])]
    for s in seqs:
        if _matrix_shape(s) is None:
            raise ModelShapeError(f"sg.scan: the sequence {s} is not a matrix: a sequence is a T x k matrix "
                                  "whose row t is the step's x_t (a sp.MatrixSymbol input, or a param)")
    rows = {_matrix_shape(s)[0] for s in seqs}
    if len(rows) > 1:
        raise ModelShapeError(f"sg.scan: the sequences have different numbers of rows ({sorted(rows)}); "
                              "each row is one step")
    per_example = None
    if length is None:
        if not seqs:
            raise ModelShapeError("sg.scan: without sequences, give the number of steps: length=T")
        steps = rows.pop()
    elif isinstance(length, bool) or isinstance(length, (float, np.floating)) and not float(length).is_integer():
        raise ModelShapeError(f"sg.scan: length={length!r} is not a whole number of steps")
    elif isinstance(length, (int, np.integer)) or isinstance(length, sp.Basic) and length.is_Integer:
        steps = int(length)
        if steps < 1:
            raise ModelShapeError(f"sg.scan: length={steps}: a scan runs at least one step (a per-example "
                                  "length may be 0)")
        if seqs and rows != {steps}:
            raise ModelShapeError(f"sg.scan: length={steps} but the sequences have {rows.pop()} rows: pass the "
                                  f"rows to scan (X[:{steps}, :]), or a per-example length to mask the rest")
    elif isinstance(length, sp.Basic) and getattr(length, "shape", None) is None and length.is_number is not True:
        if not seqs:
            raise ModelShapeError("sg.scan: a per-example length needs sequences (their rows are the longest length)")
        steps, per_example = rows.pop(), length
    else:
        raise ModelShapeError(f"sg.scan: length must be None, a whole number, or a per-example scalar "
                              f"(a SymPy symbol declared as an input); got {length!r}")
    carry_name, seq_name = "carry", "x_t"
    try:
        params = list(inspect.signature(step).parameters)
        carry_name = params[0] if params else carry_name
        seq_name = params[1] if len(params) > 1 else seq_name
    except (TypeError, ValueError):
        pass
    carry_names = [carry_name] if not is_tuple else [f"{carry_name}[{k}]" for k in range(len(inits))]
    seq_names = [seq_name] if len(seqs) <= 1 else [f"{seq_name}[{k}]" for k in range(len(seqs))]
    stand_carries = [sp.MatrixSymbol(sp.Dummy(n), *_matrix_shape(m)) for n, m in zip(carry_names, inits)]
    stand_rows = [sp.MatrixSymbol(sp.Dummy(n), _matrix_shape(s)[1], 1) for n, s in zip(seq_names, seqs)]
    carry_arg = tuple(stand_carries) if is_tuple else stand_carries[0]
    row_arg = None if not seqs else (stand_rows[0] if single_sequence else tuple(stand_rows))
    result = step(carry_arg, row_arg)
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise ModelShapeError(f"sg.scan: step must return (new_carry, y_t), a pair; it returned {result!r}")
    new, y = result
    new = list(new) if isinstance(new, (tuple, list)) else [new]
    if len(new) != len(inits) or is_tuple != isinstance(result[0], (tuple, list)):
        raise ModelShapeError(f"sg.scan: step returned {len(new)} carr{'y' if len(new) == 1 else 'ies'} "
                              f"for {len(inits)} initial one{'' if len(inits) == 1 else 's'}: the new carry "
                              "has the form of init")
    new = [sp.sympify(m) for m in new]
    for name, m, s in zip(carry_names, new, inits):
        if _matrix_shape(m) != _matrix_shape(s):
            raise ModelShapeError(f"sg.scan: step changes the shape of the carry {name} from "
                                  f"{_matrix_shape(s)} to {_matrix_shape(m) or 'a scalar'}; a carry keeps its shape")
    ys = [] if y is None else [sp.sympify(y)]
    whole = Scan(sp.Tuple(*stand_carries), sp.Tuple(*stand_rows), sp.Tuple(*new), sp.Tuple(*ys),
                 sp.Tuple(*inits), sp.Tuple(*seqs), sp.Integer(steps) if per_example is None else per_example,
                 sp.Integer(steps), sp.Tuple(*[sp.Symbol(n) for n in carry_names + seq_names]))
    finals = [ScanPart(whole, "final", k, *_matrix_shape(m)) for k, m in enumerate(inits)]
    stacked_ys = None
    if ys:
        shape = _matrix_shape(ys[0])
        stacked_ys = ScanPart(whole, "ys", 0, steps, size_of(shape) if shape else 1)
    return (tuple(finals) if is_tuple else finals[0]), stacked_ys


class _StepReader:
    """Reads a step's expressions into a step graph: parts that use neither the carry nor the
    row are read by the model's reader and captured; the stand-ins become the step's leaves."""

    def __init__(self, top, builder: Builder, stand_ins: dict):
        from .frontend import SympyReader

        self.top, self.b = top, builder
        self._plain = SympyReader(builder, dict(stand_ins), top.declared_names)
        self._plain._children = self._children
        self._plain._convert = self._convert
        self.memo = self._plain.memo
        self.stand_ins = set(stand_ins)
        self.captured: list = []  # model nodes, in capture order
        self._leaf_of: dict = {}
        self._uses: dict = {}

    def read(self, expr) -> int:
        return self._plain.read(expr)

    def describe(self, expr) -> str:
        return self.top.describe(expr)

    def _uses_stand_in(self, e) -> bool:
        memo, stack = self._uses, [e]
        while stack:
            x = stack[-1]
            if x in memo:
                stack.pop()
                continue
            if x in self.stand_ins:
                memo[x] = True
            elif isinstance(x, (sp.MatrixSymbol, sp.Symbol)) or x.is_Atom or not x.args:
                memo[x] = False
            else:
                missing = [a for a in x.args if a not in memo]
                if missing:
                    stack.extend(missing)
                    continue
                memo[x] = any(memo[a] for a in x.args)
            stack.pop()
        return memo[e]

    def capture(self, model_node: int) -> int:
        leaf = self._leaf_of.get(model_node)
        if leaf is None:
            k = len(self.captured)
            leaf = _leaf(self.b.graph, "loop_capture", k, self.top.b.shape(model_node), True)
            self.captured.append(model_node)
            self._leaf_of[model_node] = leaf
        return leaf

    def _independent(self, e) -> bool:
        return not (e.is_Number or e.is_NumberSymbol or e in (sp.true, sp.false)) and not self._uses_stand_in(e)

    def _children(self, e) -> list:
        if self._independent(e):
            return []
        if isinstance(e, Scan):
            raise UnsupportedFunctionError(f"a scan inside the step of another scan ({self.describe(e)}) is not "
                                           "supported; carry both states in one scan")
        from .frontend import SympyReader

        return SympyReader._children(self._plain, e)

    def _convert(self, e) -> int:
        if self._independent(e):
            return self.capture(self.top.read(e))
        from .frontend import SympyReader

        return SympyReader._convert(self._plain, e)


def read_scan(r, e) -> int:
    """The scan node of ``sg.scan``'s SymPy object ``e``, read by the model's reader ``r``."""
    if hasattr(r, "indices") or hasattr(r, "stand_ins"):
        raise UnsupportedFunctionError(f"sg.scan inside a Sum, Product or another scan's step ({r.describe(e)}) "
                                       "is not supported")
    stand_carries, stand_rows, new, ys, inits, seqs, length, steps, names = e.args
    init_nodes = [r.read(m) for m in inits]
    seq_nodes = [r.read(s) for s in seqs]
    length_node = None
    if not length.is_Integer:
        length_node = r.read(length)
        if r.b.shape(length_node) != ():
            raise ModelShapeError(f"sg.scan: the length {r.describe(length)} is a matrix of shape "
                                  f"{r.b.shape(length_node)}; it is one whole number per example")
    g = Graph()
    b = Builder(g)
    leaves = {}
    for k, m in enumerate(stand_carries):
        leaves[m] = _leaf(g, "scan_carry", k, r.b.shape(init_nodes[k]), True)
    for k, m in enumerate(stand_rows):
        leaves[m] = _leaf(g, "scan_elem", k, (int(m.shape[0]), 1), True)
    reader = _StepReader(r, b, leaves)
    new_nodes = [reader.read(m) for m in new]
    y_nodes = [reader.read(y) for y in ys]
    names = [str(n) for n in names]
    for k, (n, init) in enumerate(zip(new_nodes, init_nodes)):
        if g.nodes[n].shape != r.b.shape(init):
            raise ModelShapeError(f"sg.scan: the step's new carry {names[k]} has shape {g.nodes[n].shape}, "
                                  f"the initial one {r.b.shape(init)}")
    captures = list(reader.captured)
    step = Step(tuple(g.nodes), tuple(r.b.shape(i) for i in init_nodes),
                tuple((int(m.shape[0]), 1) for m in stand_rows), tuple(r.b.shape(c) for c in captures),
                tuple(new_nodes), tuple(y_nodes), (), int(steps), order=_default_order(len(inits), len(ys), 0),
                carry_names=tuple(names[:len(inits)]), sequence_names=tuple(names[len(inits):]))
    return make_scan(r.b, step, init_nodes, seq_nodes, captures, length_node)


@reads(Scan, children=lambda e: [])
def _read_scan(r, e):
    """``sg.scan(step, init, sequences=..., length=...)``: one scan node, its step read once."""
    return read_scan(r, e)


@reads(ScanPart, children=lambda e: [e.args[0]])
def _read_scan_part(r, e):
    n = r.node(e.args[0])
    if str(e.args[1]) == "ys":
        return stacked(r.b, n, int(e.args[2]))
    return final_carry(r.b, n, int(e.args[2]), r.b.node(n).attrs[0].carry_names[int(e.args[2])])


# --- derivatives: scans of the step's reverse and forward passes ----------------------------


def _copy_into(b: Builder, step: Step, leaf_map) -> dict:
    """Step node -> node of ``b``'s graph, its leaves replaced by ``leaf_map(op, k, node)``."""
    memo = {}
    for nid, node in enumerate(step.nodes):
        if node.op in _LEAVES:
            memo[nid] = leaf_map(node.op, node.attrs[0], node)
        elif not node.args:
            memo[nid] = b.graph.intern(node)
        else:
            memo[nid] = b.apply(node.op, *[memo[a] for a in node.args], attrs=node.attrs)
    return memo


def _adjoint_parts(b: Builder, n: int, adjoint: int) -> dict:
    """The adjoint of a scan's packed value by part: ("final"|"history"|"y"|"sum", k) ->
    node. When the adjoint is a sum of embedded parts (what the views' VJPs send), the
    parts that are never embedded are left out (zero); otherwise every part is read."""
    step = b.node(n).attrs[0]
    wanted = {}
    for kind, k, offset, rows, cols in step.blocks():
        if kind == "carry":
            wanted[(offset + step.final_row() * cols, step.carries[k])] = ("final", k)
            first = 1 if step.reverse else 0
            wanted[(offset + first * cols, (step.steps, cols))] = ("history", k)
        elif kind == "y":
            wanted[(offset, (rows, cols))] = ("y", k)
        else:
            wanted[(offset, step.nodes[step.sums[k]].shape)] = ("sum", k)
    node = b.node(adjoint)
    terms = list(node.args) if node.op == "add" else [adjoint]
    parts: dict = {}
    for t in terms:
        tn = b.node(t)
        key = (tn.attrs[0], tuple(tn.attrs[1])) if tn.op == "loop_embed" and tn.attrs[2] == step.size() else None
        if key not in wanted:
            parts = None
            break
        parts.setdefault(wanted[key], []).append(tn.args[0])
    if parts is None:
        return {what: b.apply("loop_part", adjoint, attrs=(offset, shape, 0, None)) for (offset, shape), what in
                wanted.items()}
    return {what: b.add(*nodes) for what, nodes in parts.items()}


def scan_vjp(b: Builder, n: int, adjoint: int) -> list:
    """Backpropagation through time: a scan the other way over the step's reverse pass."""
    node = b.node(n)
    step: Step = node.attrs[0]
    inits, seqs, caps, length = _split(step, node.args)
    nc, ns, nk = step.counts()
    parts = _adjoint_parts(b, n, adjoint)
    if length is not None and any(w[0] == "history" for w in parts):
        raise ModelError("the adjoint of a masked scan's stored carries (a reverse pass over a reverse pass "
                         "with length=) is not supported; forward-over-reverse (hvp) is")
    ys_adj = [j for j in range(len(step.ys)) if ("y", j) in parts]
    sums_adj = [j for j in range(len(step.sums)) if ("sum", j) in parts]
    hist_adj = [k for k in range(nc) if ("history", k) in parts]
    g = Graph()
    rb = Builder(g)
    # R's sequences: the stored carries, the sequences, the outputs' adjoints, the stored carries' adjoints
    r_seqs = [history(b, n, k) for k in range(nc)] + list(seqs) + [parts[("y", j)] for j in ys_adj] \
        + [parts[("history", k)] for k in hist_adj]
    r_seq_shapes = list(step.carries) + list(step.sequences) \
        + [step.nodes[step.ys[j]].shape or (1, 1) for j in ys_adj] + [step.carries[k] for k in hist_adj]
    r_caps = list(caps) + [parts[("sum", j)] for j in sums_adj]
    r_cap_shapes = list(step.captures) + [step.nodes[step.sums[j]].shape for j in sums_adj]

    def leaf_map(op, k, _):
        if op == "scan_carry":
            return _leaf(g, "scan_elem", k, step.carries[k], True)
        if op == "scan_elem":
            return _leaf(g, "scan_elem", nc + k, step.sequences[k], True)
        return _leaf(g, "loop_capture", k, step.captures[k], True)

    memo = _copy_into(rb, step, leaf_map)
    carry_bars = [_leaf(g, "scan_carry", k, step.carries[k], True) for k in range(nc)]
    seeds: dict = {}

    def seed(target, value):
        seeds[target] = rb.add(seeds[target], value) if target in seeds else value

    for k in range(nc):
        seed(memo[step.new_carries[k]], carry_bars[k])
    for m, j in enumerate(ys_adj):
        shape = step.nodes[step.ys[j]].shape
        leaf = _leaf(g, "scan_elem", nc + ns + m, shape if shape else (1, 1), True)
        seed(memo[step.ys[j]], leaf if shape else rb.apply("index", leaf, attrs=(0, 0)))
    for m, j in enumerate(sums_adj):
        seed(memo[step.sums[j]], _leaf(g, "loop_capture", nk + m, r_cap_shapes[nk + m], True))
    from .autodiff import backpropagate

    seeds = {t: v for t, v in seeds.items() if rb.node(t).op != "const"}
    state_leaves = [_leaf(g, "scan_elem", k, step.carries[k], True) for k in range(nc)]
    row_leaves = [_leaf(g, "scan_elem", nc + k, step.sequences[k], True) for k in range(ns)]
    cap_leaves = [_leaf(g, "loop_capture", k, step.captures[k], True) for k in range(nk)]
    adj = backpropagate(rb, seeds, state_leaves + row_leaves + cap_leaves, None) if seeds else {}
    new_bars = []
    for k in range(nc):
        terms = [adj[state_leaves[k]]] if state_leaves[k] in adj else []
        if k in hist_adj:
            terms.append(_leaf(g, "scan_elem", nc + ns + len(ys_adj) + hist_adj.index(k), step.carries[k], True))
        new_bars.append(rb.add(*terms) if terms else rb.broadcast(rb.const(0), step.carries[k]))
    x_bars = [k for k in range(ns) if row_leaves[k] in adj]
    # A capture's adjoint is summed over the steps. Its outer-product terms u v (u a column, v a
    # row: W_bar += g h.T) are stacked as two outputs U, V instead, and summed after the loop as
    # one product U.T V, which a batch sum then runs as one matrix product over every example
    # and step; the other terms are added up inside the loop.
    ys_out = [adj[row_leaves[k]] for k in x_bars]
    sums_out, cap_parts = [], {}
    for k in range(nk):
        if cap_leaves[k] not in adj:
            continue
        total = adj[cap_leaves[k]]
        terms = list(rb.node(total).args) if rb.node(total).op == "add" else [total]
        outer = [t for t in terms if rb.node(t).op == "matmul" and len(step.captures[k]) == 2
                 and rb.shape(rb.node(t).args[0])[1] == 1]
        rest = [t for t in terms if t not in outer]
        entry = cap_parts[k] = {"outer": [], "sum": None}
        for t in outer:
            entry["outer"].append((len(ys_out), len(ys_out) + 1))
            ys_out += list(rb.node(t).args)
        if rest:
            entry["sum"] = len(sums_out)
            sums_out.append(rb.add(*rest))
    reverse = Step(tuple(g.nodes), step.carries, tuple(r_seq_shapes), tuple(r_cap_shapes), tuple(new_bars),
                   tuple(ys_out), tuple(sums_out),
                   step.steps, reverse=not step.reverse, order=_default_order(nc, len(ys_out), len(sums_out)),
                   carry_names=tuple(f"{name}_bar" for name in step.carry_names),
                   sequence_names=tuple(step.carry_names) + tuple(step.sequence_names)
                   + tuple(f"y{j}_bar" for j in ys_adj) + tuple(f"{step.carry_names[k]}_hist_bar" for k in hist_adj))
    r_inits = [parts.get(("final", k)) for k in range(nc)]
    r_inits = [v if v is not None else b.broadcast(b.const(0), step.carries[k]) for k, v in enumerate(r_inits)]
    r = make_scan(b, reverse, r_inits, r_seqs, r_caps, length)
    contributions = [final_carry(b, r, k, f"{step.carry_names[k]}_bar") for k in range(nc)]
    seq_bars = [None] * ns
    for j, k in enumerate(x_bars):
        seq_bars[k] = stacked(b, r, j)
    cap_bars = [None] * nk
    for k, entry in cap_parts.items():
        terms = [b.matmul(b.transpose(stacked(b, r, u)), stacked(b, r, v)) for u, v in entry["outer"]]
        if entry["sum"] is not None:
            terms.append(summed(b, r, entry["sum"]))
        cap_bars[k] = b.add(*terms)
    return contributions + seq_bars + cap_bars + ([None] if length is not None else [])


def scan_jvp(b: Builder, n: int, tangents: list):
    """Forward mode: a scan of the step's JVP carrying the tangents beside the carries; the
    tangent of the packed value is the second half of that scan's."""
    node = b.node(n)
    step: Step = node.attrs[0]
    inits, seqs, caps, length = _split(step, node.args)
    nc, ns, nk = step.counts()
    t_inits, t_seqs, t_caps = tangents[:nc], tangents[nc:nc + ns], tangents[nc + ns:nc + ns + nk]
    if all(t is None for t in t_inits + t_seqs + t_caps):
        return None
    g = step.graph()
    sb = Builder(g)
    seeds = {}
    leaf_of = {(nd.op, nd.attrs[0]): nid for nid, nd in enumerate(step.nodes) if nd.op in _LEAVES}
    for k in range(nc):
        if ("scan_carry", k) in leaf_of:
            seeds[leaf_of[("scan_carry", k)]] = _leaf(g, "scan_carry", nc + k, step.carries[k], True)
    seq_with = [k for k in range(ns) if t_seqs[k] is not None]
    cap_with = [k for k in range(nk) if t_caps[k] is not None]
    for m, k in enumerate(seq_with):
        if ("scan_elem", k) in leaf_of:
            seeds[leaf_of[("scan_elem", k)]] = _leaf(g, "scan_elem", ns + m, step.sequences[k], True)
    for m, k in enumerate(cap_with):
        if ("loop_capture", k) in leaf_of:
            seeds[leaf_of[("loop_capture", k)]] = _leaf(g, "loop_capture", nk + m, step.captures[k], True)
    from .forward import push_forward

    roots = list(step.new_carries) + list(step.ys) + list(step.sums)
    tan = push_forward(sb, seeds, roots)

    def tangent_of(nid):
        t = tan.get(nid)
        return t if t is not None else sb.broadcast(sb.const(0), g.nodes[nid].shape)

    n_ys, n_sums = len(step.ys), len(step.sums)
    order = tuple(step.order) + tuple((kind, k + {"carry": nc, "y": n_ys, "sum": n_sums}[kind])
                                      for kind, k in step.order)
    new_carries = step.new_carries + tuple(tangent_of(c) for c in step.new_carries)
    ys = step.ys + tuple(tangent_of(y) for y in step.ys)
    sums = step.sums + tuple(tangent_of(s) for s in step.sums)
    forward = Step(tuple(g.nodes), step.carries * 2, step.sequences + tuple(step.sequences[k] for k in seq_with),
                   step.captures + tuple(step.captures[k] for k in cap_with), new_carries, ys, sums,
                   step.steps, reverse=step.reverse, order=order,
                   carry_names=step.carry_names + tuple(f"{c}_dot" for c in step.carry_names),
                   sequence_names=step.sequence_names + tuple(f"{step.sequence_names[k]}_dot" for k in seq_with)
                   if step.sequence_names else ())
    t_init_nodes = [t if t is not None else b.broadcast(b.const(0), step.carries[k]) for k, t in enumerate(t_inits)]
    f = make_scan(b, forward, list(inits) + t_init_nodes, list(seqs) + [t_seqs[k] for k in seq_with],
                  list(caps) + [t_caps[k] for k in cap_with], length)
    return part(b, f, step.size(), (1, step.size()), "tangent")


# --- NumPy reference ---------------------------------------------------------------------------


def run_scan(args, step: Step) -> np.ndarray:
    """The packed value of a scan for one example (``args``: the scan node's args' values)."""
    inits, seqs, caps, length = _split(step, [np.asarray(a, dtype=float) for a in args])
    T = step.steps
    limit = T if length is None else int(min(max(float(length), 0), T))
    out = np.zeros(step.size())
    blocks = step.blocks()
    rows_of = {}
    for kind, k, offset, rows, cols in blocks:
        rows_of[(kind, k)] = out[offset:offset + rows * cols].reshape(rows, cols)
    g = step.graph()
    wanted = g.ancestors(list(step.new_carries) + list(step.ys) + list(step.sums))
    carries = [np.asarray(v, dtype=float).reshape(s) for v, s in zip(inits, step.carries)]
    first = step.first_row()
    for k, c in enumerate(carries):
        rows_of[("carry", k)][first] = c.reshape(-1)
    order = range(T - 1, -1, -1) if step.reverse else range(T)
    for t in order:
        nxt = t if step.reverse else t + 1
        if t >= limit:
            for k, c in enumerate(carries):
                rows_of[("carry", k)][nxt] = c.reshape(-1)
            continue
        values = {}
        for nid in wanted:
            node = g.nodes[nid]
            if node.op == "scan_carry":
                v = carries[node.attrs[0]]
            elif node.op == "scan_elem":
                v = seqs[node.attrs[0]][t].reshape(node.shape)
            elif node.op == "loop_capture":
                v = caps[node.attrs[0]].reshape(node.shape) if node.shape else caps[node.attrs[0]].reshape(())
            elif node.op == "const":
                v = np.asarray(float(node.attrs[0]))
            else:
                v = ops.get(node.op).numpy([values[a] for a in node.args], node.attrs)
            values[nid] = np.asarray(v, dtype=float)
        carries = [np.broadcast_to(values[nc_], s).copy() for nc_, s in zip(step.new_carries, step.carries)]
        for k, c in enumerate(carries):
            rows_of[("carry", k)][nxt] = c.reshape(-1)
        for j, y in enumerate(step.ys):
            rows_of[("y", j)][t] = np.broadcast_to(values[y], g.nodes[y].shape).reshape(-1)
        for j, s in enumerate(step.sums):
            rows_of[("sum", j)][0] += np.broadcast_to(values[s], g.nodes[s].shape).reshape(-1)
    return out.reshape(1, -1)


# --- C ----------------------------------------------------------------------------------------------


def _align(n: int) -> int:
    return -(-n // 8) * 8


def _slots(step: Step) -> tuple:
    """(node -> workspace offset, workspace size, offset of the workspace in the scratch):
    each computed node of the step has a slot for a whole tile of examples."""
    g = step.graph()
    inner = 0
    offsets, total = {}, 0
    for nid in g.ancestors(list(step.new_carries) + list(step.ys) + list(step.sums)):
        node = g.nodes[nid]
        op = ops.get(node.op)
        if op.kind in ("leaf", "view"):
            continue
        if op.scratch is not None:
            inner = max(inner, op.scratch(node))
        offsets[nid] = total
        total += _align(size_of(node.shape) * (MAX_TILE if node.varying else 1))
    return offsets, total, _align(inner)


def _scan_scratch(node) -> int:
    _, total, inner = _slots(node.attrs[0])
    return inner + total


def _dense(text, shape, varying, example_stride=None) -> Operand:
    cols = shape[1] if shape else 1
    return Operand(text, tuple(shape), "buffer", varying, row_stride=cols, col_stride=1,
                   example_stride=(size_of(shape) if example_stride is None else example_stride) if varying else 0)


def _row_view(seq: Operand, text: str, shape) -> Operand:
    """Row t of a sequence operand as the step reads it (``text`` points at the row)."""
    if seq.storage != "buffer":
        return replace(seq, shape=tuple(shape))
    cols = shape[1] if shape else 1
    return Operand(text, tuple(shape), "buffer", seq.varying, row_stride=cols * seq.col_stride,
                   col_stride=seq.col_stride, example_stride=seq.example_stride)


def _copy_lines(p, dst: Operand, src: Operand, live=None, otherwise=None, add=False) -> list:
    """``dst = src`` element by element (``+=`` when ``add``); with ``live(e)`` a C condition,
    ``dst = live ? src : otherwise(e, i, j)`` (a C expression, ``0`` by default)."""
    def body(e, i, j):
        value = src.element(e, i, j)
        if live is not None:
            other = otherwise(e, i, j) if otherwise is not None else p.literal(0)
            value = f"{live(e)} ? {value} : {other}"
        return f"{dst.element(e, i, j)} {'+=' if add else '='} {value};"

    return p.loop_nest(dst, body)


def emit_scan(p, out, args, attrs) -> list:
    """C of a scan node: the initial carries into the history, then one loop over t whose
    body is the step's statements (each node by its registry entry, over the whole tile)
    followed by the writes of the new carries, the outputs' rows and the sums."""
    from .naming import node_text

    (step,) = attrs
    inits, seqs, caps, length = _split(step, args)
    g = step.graph()
    slots, _, inner = _slots(step)
    T = step.steps
    base = out.pointer()
    es = out.example_stride
    lines = [f"{p.real} *const sw = scratch + {inner};  /* the step's values, one tile each */"]
    operands: dict = {}
    texts: dict = {}
    for nid, offset in slots.items():
        node = g.nodes[nid]
        lines.append(f"{p.real} *const st{nid} = sw + {offset};")
        operands[nid] = _dense(f"st{nid}", node.shape, node.varying)

    def block_rows(kind, k, row_text, shape, name):
        _, _, offset, _, cols = step.block(kind, k)
        return f"{p.real} *const {name} = {base} + {offset} + {row_text} * {cols};", \
            _dense(name, shape, out.varying, es)

    live = None
    if length is not None:
        def live(e):
            return f"t < (int64_t) {length.element(e)}"

    for k, init in enumerate(inits):  # the initial carries
        decl, row = block_rows("carry", k, str(step.first_row()), step.carries[k], f"sc{k}")
        lines += ["{", "    " + decl] + ["    " + ln for ln in _copy_lines(p, row, init)] + ["}"]
    for j, s in enumerate(step.sums):
        _, _, offset, _, _ = step.block("sum", j)
        target = replace(_dense("out_sum", g.nodes[s].shape, out.varying, es), text=f"({base} + {offset})")
        lines += p.fill(target, 0)
    steps_var = str(T)
    if length is not None:
        steps_var = "steps"
        count = f"(int64_t) {length.element('e' if length.varying else None)}"
        clamp = f"(n_e < 0 ? 0 : n_e > {T} ? {T} : n_e)"
        loop = (["for (int64_t e = 0; e < nt; ++e) {"] if length.varying else ["{"]) + [
            f"    const int64_t n_e = {count};", f"    if ({clamp} > steps) steps = {clamp};", "}"]
        lines += ["int64_t steps = 0;  /* the longest length in the tile */"] + loop
    if step.reverse:
        lines.append(f"for (int64_t t = {steps_var} - 1; t >= 0; --t) {{")
    else:
        lines.append(f"for (int64_t t = 0; t < {steps_var}; ++t) {{")
    body = []
    before, after = ("t + 1", "t") if step.reverse else ("t", "t + 1")
    for k in range(len(step.carries)):
        decl, row = block_rows("carry", k, f"({before})", step.carries[k], f"sc{k}")
        body.append(decl)
        operands[("carry", k)] = row
        texts[("carry", k)] = step.carry_names[k] if step.carry_names else f"carry{k}"
    for k, s in enumerate(seqs):
        if s.storage == "buffer":
            body.append(f"const {p.real} *const sx{k} = {s.pointer()} + t * {s.row_stride};")
        operands[("elem", k)] = _row_view(s, f"sx{k}", step.sequences[k])
        texts[("elem", k)] = (step.sequence_names[k] if step.sequence_names else f"x{k}") + "[t]"
    for nid in g.ancestors(list(step.new_carries) + list(step.ys) + list(step.sums)):
        node = g.nodes[nid]
        op = ops.get(node.op)
        if node.op == "scan_carry":
            operands[nid], texts[nid] = operands[("carry", node.attrs[0])], texts[("carry", node.attrs[0])]
            continue
        if node.op == "scan_elem":
            operands[nid], texts[nid] = operands[("elem", node.attrs[0])], texts[("elem", node.attrs[0])]
            continue
        if node.op == "loop_capture":
            operands[nid] = caps[node.attrs[0]]
            texts[nid] = caps[node.attrs[0]].text
            continue
        if node.op == "const":
            value = float(node.attrs[0])
            operands[nid] = Operand(p.literal(value), (), "literal", False, const=value)
            texts[nid] = node_text(g, nid, [])
            continue
        if op.kind == "leaf":
            operands[nid] = Operand(op.c(p, (), node.attrs), (), "literal", False)
            texts[nid] = node_text(g, nid, [])
            continue
        arg_ops = [operands[a] for a in node.args]
        text = node_text(g, nid, [texts[a] for a in node.args])
        if op.kind == "view":
            operands[nid] = op.view(arg_ops[0], node.attrs, node.shape)
            texts[nid] = text
            continue
        texts[nid] = f"st{nid}"
        from .printer import comment_text

        body.append(f"/* st{nid} = {comment_text(text[:100])} */")
        if op.kind == "elementwise":
            body += p.elementwise(op.c, node.attrs, operands[nid], arg_ops)
        else:
            body += op.emit(p, operands[nid], arg_ops, node.attrs)
    for k, c in enumerate(step.new_carries):
        decl, row = block_rows("carry", k, f"({after})", step.carries[k], f"sn{k}")
        prev = operands[("carry", k)]
        body += ["{", "    " + decl] + ["    " + ln for ln in _copy_lines(
            p, row, operands[c], live, (lambda e, i, j, prev=prev: prev.element(e, i, j)) if live else None)] + ["}"]
    for j, y in enumerate(step.ys):
        decl, row = block_rows("y", j, "t", g.nodes[y].shape or (1, 1), f"sy{j}")
        src = operands[y]
        body += ["{", "    " + decl] + ["    " + ln for ln in _copy_lines(p, row, src, live)] + ["}"]
    for j, s in enumerate(step.sums):
        _, _, offset, _, _ = step.block("sum", j)
        target = replace(_dense("out_sum", g.nodes[s].shape, out.varying, es), text=f"({base} + {offset})")
        body += _copy_lines(p, target, operands[s], live, add=True)
    lines += ["    " + ln for ln in body] + ["}"]
    if length is not None:  # steps past the tile's longest length: the carry stays, the outputs are zero
        fill = []
        for k in range(len(step.carries)):
            _, _, offset, _, cols = step.block("carry", k)
            src = _dense(f"({base} + {offset} + {'steps' if not step.reverse else T} * {cols})", step.carries[k],
                         out.varying, es)
            fill += _copy_lines(p, replace(src, text=f"({base} + {offset} + r * {cols})"), src)
        rows = f"int64_t r = steps; r < {T}; ++r" if step.reverse else f"int64_t r = steps + 1; r <= {T}; ++r"
        lines += [f"for ({rows}) {{"] + ["    " + ln for ln in fill] + ["}"]
        zero = []
        for j, y in enumerate(step.ys):
            _, _, offset, _, cols = step.block("y", j)
            zero += p.fill(_dense(f"({base} + {offset} + r * {cols})", g.nodes[y].shape or (1, 1), out.varying, es), 0)
        if zero:
            lines += [f"for (int64_t r = steps; r < {T}; ++r) {{"] + ["    " + ln for ln in zero] + ["}"]
    return ["{"] + ["    " + ln for ln in lines] + ["}"]


# --- display --------------------------------------------------------------------------------------


def scan_text(step: Step, arg_texts) -> str:
    """The scan in the display dialect, its step once: ``scan(t = 0..19; h = h0; x_t = X[t]:
    h <- tanh(W*vstack(h, x_t) + b); y = ...)``; values read twice are named once."""
    from .naming import node_text

    inits, seqs, caps, length = _split(step, arg_texts)
    g = step.graph()
    texts, uses, bindings = {}, {}, []
    wanted = g.ancestors(list(step.new_carries) + list(step.ys) + list(step.sums))
    for nid in wanted:
        for a in g.nodes[nid].args:
            uses[a] = uses.get(a, 0) + 1
    for nid in list(step.new_carries) + list(step.ys) + list(step.sums):
        uses[nid] = uses.get(nid, 0) + 1
    carry_names = step.carry_names or tuple(f"carry{k}" for k in range(len(step.carries)))
    seq_names = step.sequence_names or tuple(f"x{k}" for k in range(len(step.sequences)))
    for nid in wanted:
        node = g.nodes[nid]
        if node.op == "scan_carry":
            texts[nid] = carry_names[node.attrs[0]]
        elif node.op == "scan_elem":
            texts[nid] = seq_names[node.attrs[0]]
        elif node.op == "loop_capture":
            texts[nid] = caps[node.attrs[0]]
        else:
            texts[nid] = node_text(g, nid, [texts[a] for a in node.args])
            if uses.get(nid, 0) > 1 and node.op != "const" and ops.get(node.op).kind != "view":
                name = f"s{len(bindings)}"
                bindings.append(f"{name} = {texts[nid]}")
                texts[nid] = name
    parts = list(bindings)
    parts += [f"{carry_names[k]} <- {texts[c]}" for k, c in enumerate(step.new_carries)]
    parts += [f"y{j} = {texts[y]}" for j, y in enumerate(step.ys)]
    parts += [f"sum{j} += {texts[s]}" for j, s in enumerate(step.sums)]
    head = f"t = {step.steps - 1}..0" if step.reverse else f"t = 0..{step.steps - 1}"
    if length is not None:
        head += f" while t < {length}"
    starts = [f"{carry_names[k]} = {v}" for k, v in enumerate(inits)]
    rows = [f"{seq_names[k]} = {v}[t]" for k, v in enumerate(seqs)]
    return f"scan({'; '.join([head] + starts + rows)}: {'; '.join(parts)})"


# --- the registry entries -------------------------------------------------------------------


def _only_in_steps(name):
    def fail(*args):
        raise ModelError(f"{name} exists only inside the step of a scan")

    return fail


for _name, _what in (("scan_carry", "carry"), ("scan_elem", "row")):
    register(Op(name=_name, kind="leaf", arity=0, shape=lambda shapes, attrs: attrs[1],
                to_sympy=_only_in_steps(_name), numpy=_only_in_steps(_name), c=_only_in_steps(_name),
                text=lambda args, attrs, _what=_what: f"{_what}{attrs[0]}"))


def _scan_cost(node, shapes):
    step = node.attrs[0]
    g = step.graph()
    per_step = 0
    for nid in g.ancestors(list(step.new_carries) + list(step.ys) + list(step.sums)):
        n = g.nodes[nid]
        per_step += ops.get(n.op).cost(n, [g.nodes[a].shape for a in n.args])
    return step.steps * per_step


def _scan_sympy(args, attrs):
    return sp.Function("scan")(*[a for a in args if isinstance(a, sp.Basic)])


def _test_step():
    """A scan the op tests differentiate: h <- tanh(A h + B x_t), y_t = h .* h over 3 steps,
    and the same run backwards with a per-example length."""
    g = Graph()
    b = Builder(g)
    h = _leaf(g, "scan_carry", 0, (2, 1), False)
    x = _leaf(g, "scan_elem", 0, (3, 1), False)
    A = _leaf(g, "loop_capture", 0, (2, 2), False)
    B = _leaf(g, "loop_capture", 1, (2, 3), False)
    new = b.apply("tanh", b.add(b.matmul(A, h), b.matmul(B, x)))
    y = b.mul(new, new)
    step = Step(tuple(g.nodes), ((2, 1),), ((3, 1),), ((2, 2), (2, 3)), (new,), (y,), (), 3,
                order=_default_order(1, 1, 0), carry_names=("h",), sequence_names=("x",))
    return step


TEST_STEP = _test_step()

register(
    Op(
        name="scan",
        kind="tensor",
        shape=lambda shapes, attrs: (1, attrs[0].size()),
        vjp=scan_vjp,
        jvp=scan_jvp,
        emit=emit_scan,
        scratch=_scan_scratch,
        numpy=lambda args, attrs: run_scan(args, attrs[0]),
        to_sympy=_scan_sympy,
        text=lambda args, attrs: scan_text(attrs[0], [str(a) for a in args]),
        cost=_scan_cost,
        # not in the registry's generic tests: their transposed check needs the reverse of a
        # reverse scan to be structurally free of the adjoint it is linear in, which it is not
        # (it reads the stored adjoint carries); tests/test_scan.py checks vjp and jvp of TEST_STEP
        domain=None,
    )
)


def _part_view(base, attrs, shape):
    offset = attrs[0]
    cols = shape[1] if shape else 1
    return replace(base, shape=tuple(shape), offset=base.offset + offset, row_stride=cols if shape else 0,
                   col_stride=1 if shape else 0)


def _part_numpy(args, attrs):
    offset, shape, _ = attrs
    return np.asarray(args[0]).reshape(-1)[offset:offset + size_of(shape)].reshape(shape)


# A part of a scan's packed value: ``shape`` from ``offset``, row-major. attrs: (offset, shape, label).
register(
    Op(
        name="scan_part",
        kind="view",
        arity=1,
        view=_part_view,
        shape=lambda shapes, attrs: tuple(attrs[1]),
        vjp=lambda b, n, r: [b.apply("loop_embed", r, attrs=(b.node(n).attrs[0], tuple(b.node(n).attrs[1]),
                                                             b.shape(b.node(n).args[0])[1]))],
        jvp=linear_jvp,
        numpy=_part_numpy,
        to_sympy=lambda args, attrs: sp.Function(attrs[2])(args[0]),
        text=lambda args, attrs: call(attrs[2], [args[0]]),
    )
)
