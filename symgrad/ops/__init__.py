"""The op registry: one entry per graph op, holding everything about that op.

An :class:`Op` says how to read the op from SymPy, the shape of its result,
its local derivative (as a vector-Jacobian product built from other graph
ops), how to emit it as C, how to evaluate it with NumPy (the reference the
tests use), how to print it back as SymPy, and the input domain on which its
derivative is tested. Adding an op means writing one entry in one of the
family modules below; the engine, the emitter and the registry-driven tests
pick it up from here.

Families: :mod:`.leaf` (symbols and constants), :mod:`.arith` (+, *, powers),
:mod:`.elementwise` (scalar functions, comparisons, selection), :mod:`.nn`
(softmax and friends), :mod:`.linalg` (matrix products, views, reductions),
:mod:`.special` (log1p, hypot, loggamma, floor, Mod and other C-library and
special functions), :mod:`.factor` (LU and Cholesky factorizations, solves,
inverses, determinants), :mod:`.structure` (slices, blocks, diagonals,
Kronecker products), :mod:`.axis` (reductions and softmax along an axis),
:mod:`.conv` (convolution and pooling). :mod:`symgrad.loops` registers the loop ops
(sums and products over an index), which need the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import ModelShapeError

Shape = tuple  # () for a scalar, (rows, cols) for a matrix


@dataclass(frozen=True)
class Op:
    """Everything symgrad knows about one graph op.

    Attributes:
        name: the op's name in the graph, in C comments and in error messages.
        kind: ``"leaf"`` (no args), ``"elementwise"`` (the result is a scalar
            function of the args, element by element, with broadcasting),
            ``"view"`` (a re-indexing of its arg that emits no code), or
            ``"tensor"`` (anything else: emitted by ``emit``).
        shape: ``(arg_shapes, attrs) -> shape`` of the result; raises
            :class:`ModelShapeError` on a mismatch.
        vjp: ``(builder, node_id, adjoint_id) -> [contribution or None per arg]``:
            the adjoint contributions this node sends to each arg, as graph
            nodes. ``None`` means "no derivative flows" (constant or
            non-differentiable arg).
        jvp: ``(builder, node_id, arg_tangents) -> tangent node or None``: the
            forward-mode rule, the directional derivative of the node given one
            tangent (or ``None``, zero) per arg; ``None`` for a zero tangent. Ops
            without one get a rule transposed from their ``vjp``
            (:func:`symgrad.forward.transposed_vjp`); :func:`linear_jvp` serves
            linear ops.
        c: for elementwise ops, ``(printer, arg_strings, attrs) -> C expression``.
        view: for view ops, ``(arg_operand, attrs, shape) -> operand``: how the
            result is read out of its argument's storage.
        emit: for tensor ops, ``(printer, out, args, attrs) -> [C lines]``.
        emit_batch_sum: for tensor ops that can sum themselves over the examples
            of a tile without storing each (a matrix product's outer products),
            ``(printer, accumulator, args, attrs) -> [C lines]`` adding that sum
            to the accumulator; the planner uses it when only a batch sum reads
            the op's value.
        scratch: ``node -> elements`` of shared scratch memory the op's runtime
            helper needs (packing space), or ``None``.
        numpy: ``(arg_arrays, attrs) -> array``: the reference evaluation of one example.
        to_sympy: ``(arg_exprs, attrs) -> SymPy expression`` for display.
        text: ``(arg_texts, attrs) -> str``: the op as one short line of text, for C
            comments, ``symgrad show`` and docstrings (see :mod:`.text`); by
            default, a call of its name: ``tanh(v7)``.
        domain: per-arg ``(low, high)`` intervals where the derivative is tested
            (``None``: the op is not tested on its own, e.g. leaves).
        cost: ``(node, arg_shapes) -> int`` arithmetic operations for the op count.
        simplify: ``(builder, args, attrs) -> node id or None``: a rewrite applied
            when the node is created (constant folding, identities, stable forms).
        commutative: args may be reordered (canonical order improves sharing).
        differentiable: ``False`` for ops whose derivative is zero almost everywhere.
        varying: ``(args_varying, attrs) -> bool``: whether the result differs
            from example to example; default: when any arg does.
        arity: the number of args, or ``None`` for any number.
        test_cases: ``(arg_shapes, attrs)`` pairs on which the registry tests
            check the derivative of a tensor op (element-wise ops are tested
            on scalars and matrices without being told).
        sympy_heads: the SymPy classes read as this op. By default the op is
            applied to the read arguments of the expression.
        from_sympy: ``(reader, expr) -> node id``: how an expression with one of
            ``sympy_heads`` becomes nodes when that takes more than its head
            (a matrix product with scalar factors, a Piecewise, an n-ary Max).
        sympy_children: ``expr -> sub-expressions`` the reader reads before the
            expression itself (default: ``expr.args``).
    """

    name: str
    kind: str
    shape: Callable[[list, tuple], Shape]
    to_sympy: Callable[[list, tuple], Any]
    numpy: Callable[[list, tuple], Any]
    vjp: Optional[Callable] = None
    jvp: Optional[Callable] = None
    c: Optional[Callable] = None
    view: Optional[Callable] = None
    emit: Optional[Callable] = None
    text: Optional[Callable] = None
    emit_batch_sum: Optional[Callable] = None
    scratch: Optional[Callable] = None
    domain: Optional[tuple] = None
    cost: Callable = field(default=lambda node, arg_shapes: 0)
    simplify: Optional[Callable] = None
    commutative: bool = False
    differentiable: bool = True
    varying: Optional[Callable] = None
    arity: Optional[int] = None
    test_cases: tuple = ()
    sympy_heads: tuple = ()
    from_sympy: Optional[Callable] = None
    sympy_children: Optional[Callable] = None


@dataclass(frozen=True)
class Reading:
    """How expressions with one SymPy head become graph nodes.

    ``op`` is applied to the read ``children`` (default: the expression's
    args), unless ``from_sympy(reader, expr)`` builds the nodes itself.
    """

    head: type
    op: Optional[str] = None
    from_sympy: Optional[Callable] = None
    children: Optional[Callable] = None


REGISTRY: dict[str, Op] = {}
#: SymPy head -> its Reading: filled by the op entries' ``sympy_heads`` and by :func:`reads`.
READINGS: dict = {}


def register(op: Op) -> Op:
    """Add ``op`` to the registry (names are unique), and the SymPy heads it reads."""
    if op.name in REGISTRY:
        raise ValueError(f"op {op.name!r} is registered twice")
    REGISTRY[op.name] = op
    for head in op.sympy_heads:
        _add_reading(Reading(head, op.name, op.from_sympy, op.sympy_children))
    return op


def reads(*heads, children=None):
    """Decorator: ``from_sympy(reader, expr)`` reads SymPy constructs with ``heads``
    that lower to several ops (``cross_entropy``, explicit matrices, ``applyfunc``)."""

    def decorate(from_sympy):
        for head in heads:
            _add_reading(Reading(head, None, from_sympy, children))
        return from_sympy

    return decorate


def _add_reading(reading: Reading) -> None:
    if reading.head in READINGS:
        raise ValueError(f"SymPy head {reading.head.__name__} is read by two entries")
    READINGS[reading.head] = reading


def reading_for(expr) -> Optional[Reading]:
    """The Reading of ``expr``'s head: its class or the nearest base class that has one."""
    for cls in type(expr).__mro__:
        reading = READINGS.get(cls)
        if reading is not None:
            return reading
    return None


#: How a model writes the heads whose class names it never sees.
_SPELLED = {"ImmutableDenseMatrix": "Matrix", "ElementwiseApplyFunction": "applyfunc",
            "Equality": "Eq", "Unequality": "Ne", "StrictLessThan": "Lt", "LessThan": "Le",
            "StrictGreaterThan": "Gt", "GreaterThan": "Ge", "Scan": "scan", "ScanPart": "scan"}


def supported_heads() -> list:
    """Names of the SymPy functions and constructs a model may use."""
    names = (getattr(h, "__name__", str(h)) for h in READINGS)
    return sorted({_SPELLED.get(name, name) for name in names}, key=str.lower)


def get(name: str) -> Op:
    return REGISTRY[name]


def linear_jvp(b, node_id, tangents):
    """The JVP of an op that is linear in its args (transpose, sum, element access, batch
    sums...): the op itself applied to the tangents, a zero for an arg without one."""
    node = b.node(node_id)
    if all(t is None for t in tangents):
        return None
    args = [b.broadcast(b.const(0), b.shape(a)) if t is None else t for a, t in zip(node.args, tangents)]
    return b.apply(node.op, *args, attrs=node.attrs)


#: The most examples a kernel runs through one tile of its loop: the planner never makes
#: tiles larger, so a runtime helper's scratch per tile (``Op.scratch``) may be sized by it.
MAX_TILE = 256


# --- shape helpers shared by the families -------------------------------------


def size_of(shape: Shape) -> int:
    """Number of elements of one example of a value with this shape."""
    n = 1
    for d in shape:
        n *= d
    return n


def broadcast_shapes(shapes: list, what: str = "operands") -> Shape:
    """NumPy-style broadcast of scalar () and 2-D shapes."""
    matrices = [s for s in shapes if s != ()]
    if not matrices:
        return ()
    rows = {s[0] for s in matrices} - {1}
    cols = {s[1] for s in matrices} - {1}
    if len(rows) > 1 or len(cols) > 1:
        raise ModelShapeError(
            f"{what} have shapes {', '.join(str(s) for s in matrices)} that do not broadcast together"
        )
    return (rows.pop() if rows else 1, cols.pop() if cols else 1)


def elementwise_shape(arg_shapes, attrs):
    return broadcast_shapes(list(arg_shapes))


def _is_matrix(value) -> bool:
    import sympy as sp

    return isinstance(value, (sp.MatrixExpr, sp.MatrixBase))


def elementwise_sympy(scalar_form):
    """A ``to_sympy`` for an element-wise op that also reads well on matrices.

    ``scalar_form(args, attrs)`` builds the scalar expression. With one matrix
    argument the op is shown applied element by element (``tanh(W*x + b)``);
    with several, as a function of them.
    """
    import warnings

    import sympy as sp
    from sympy.utilities.exceptions import SymPyDeprecationWarning

    from ..functions import Elementwise

    def to_sympy(args, attrs):
        matrices = [a for a in args if _is_matrix(a)]
        if not matrices:
            return scalar_form(args, attrs)
        rows = max(int(m.shape[0]) for m in matrices)
        cols = max(int(m.shape[1]) for m in matrices)
        if len(matrices) == 1 and not isinstance(matrices[0], sp.MatrixBase):
            (matrix,) = matrices
            d = sp.Dummy("d")
            body = scalar_form([d if a is matrix else a for a in args], attrs)
            return Elementwise(sp.Lambda(d, body), matrix)
        # Several matrices, or numbers written out: the matrix of the op applied entry by entry.
        def entry(a, i, j):
            if not _is_matrix(a):
                return a
            return a[i if a.shape[0] > 1 else 0, j if a.shape[1] > 1 else 0]

        entries = [[scalar_form([entry(a, i, j) for a in args], attrs) for j in range(cols)] for i in range(rows)]
        if all(isinstance(e, sp.Expr) for row in entries for e in row):
            return sp.ImmutableMatrix(entries)
        # Truth values (a comparison or logic op of matrices): SymPy deprecates them as matrix
        # entries, but they are read back only entry by entry, by the select that uses them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SymPyDeprecationWarning)
            return sp.ImmutableMatrix(entries)

    return to_sympy


def elementwise_cost(per_element: int):
    """Cost of an elementwise op: ``per_element`` operations per result element."""
    return lambda node, arg_shapes: per_element * size_of(node.shape)


# Importing the families registers their ops.
from . import leaf, arith, elementwise, nn, linalg, special, factor, structure, axis  # noqa: E402,F401
from . import conv  # noqa: E402,F401
