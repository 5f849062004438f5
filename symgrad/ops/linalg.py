"""Matrix ops: products, transposes, element access, reductions, broadcasting, batch sums.

Every op here carries its vector-Jacobian product at the matrix level, so the
backward pass of a layer is a handful of matrix nodes (``W_bar = y_bar * x^T``)
rather than one node per element. Emission is one loop nest or one call of a
runtime helper per node, whatever the matrix sizes.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from dataclasses import replace

from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement

from ..errors import ModelShapeError, UnsupportedFunctionError
from .. import functions as sgf
from . import Op, elementwise_shape, linear_jvp, reads, register, size_of
from .text import POWER, PRODUCT, call, number, shape as shape_text, wrap


def _dims(shape):
    return shape if shape else (1, 1)


# --- matmul ----------------------------------------------------------------------


def _matmul_shape(shapes, attrs):
    a, b = shapes
    if len(a) != 2 or len(b) != 2 or a[1] != b[0]:
        raise ModelShapeError(f"matrix product of shapes {a} and {b}: inner dimensions differ")
    return (a[0], b[1])


def _simplify_matmul(b, args, attrs):
    """A column of copies times a row is a broadcast: OneMatrix(m, 1) * r -> r repeated m times.
    A product with an inverse is a solve: (A⁻¹ I) B -> A⁻¹ B and B (A⁻¹ I) -> (A⁻ᵀ Bᵀ)ᵀ, so no
    inverse is formed to be multiplied."""
    from .factor import quadratic_form

    solved = quadratic_form(b, *args)
    if solved is None:
        solved = _solve_product(b, *args)
    if solved is not None:
        return solved
    left, right = (b.node(a) for a in args)
    rows, inner = left.shape
    cols = right.shape[1]
    if inner == 1 and left.op == "broadcast" and b.shape(left.args[0]) == ():
        return b.mul(left.args[0], b.broadcast(args[1], (rows, cols)))
    if inner == 1 and right.op == "broadcast" and b.shape(right.args[0]) == ():
        return b.mul(right.args[0], b.broadcast(args[0], (rows, cols)))
    return None


def _is_inverse(b, node_id) -> bool:
    """Whether the node is a solve with the identity (what ``A.inv()`` reads as)."""
    node = b.node(node_id)
    return node.op in ("lu_solve", "cho_solve") and b.node(node.args[1]).op == "identity"


def _solve_product(b, left, right):
    _matmul_shape([b.shape(left), b.shape(right)], ())
    if _is_inverse(b, left):
        node = b.node(left)
        return b.apply(node.op, node.args[0], right, node.args[2], attrs=node.attrs)
    if _is_inverse(b, right):
        node = b.node(right)
        a, _, factor = node.args
        # B A⁻¹ = (A⁻ᵀ Bᵀ)ᵀ; an spd A is its own transpose
        attrs = (not node.attrs[0],) if node.op == "lu_solve" else node.attrs
        return b.transpose(b.apply(node.op, a, b.transpose(left), factor, attrs=attrs))
    return None


def _read_matmul(r, factors):
    """A SymPy matrix product: scalar factors multiply, matrix factors chain left to right."""
    b = r.b
    ids = [r.node(a) for a in factors]
    matrices = [i for i in ids if b.shape(i) != ()]
    result = matrices[0] if matrices else None
    for m in matrices[1:]:
        result = b.matmul(result, m)
    return b.mul(*([i for i in ids if b.shape(i) == ()] + ([result] if result is not None else [])))


@reads(sp.MatPow, children=lambda e: [e.args[0]])
def _read_matpow(r, e):
    """A whole power of a square matrix as repeated products (of its inverse for a negative
    power); any real power of a 1x1 matrix (``(x.T*y)**S.Half``), which is a scalar, as the
    power of its element."""
    base, power = e.args
    node = r.node(base)
    if r.b.shape(node) == (1, 1) and power.is_real and power.is_number:
        # kept a 1x1 matrix, as Trace, products and sums of it expect
        return r.b.broadcast(r.b.apply("pow", r.b.apply("index", node, attrs=(0, 0)), r.b.const(power)), (1, 1))
    if not (power.is_Integer and power != 0):
        raise UnsupportedFunctionError(
            f"matrix power {r.describe(e)}: only whole powers (not 0) of a square matrix are supported"
        )
    if power < 0:  # (A⁻¹)^k: the first factor is a solve, and each product with it one more
        from .factor import declared_spd, inverse

        node, power = inverse(r.b, node, declared_spd(base)), -power
    result = node
    for _ in range(int(power) - 1):
        result = r.b.matmul(result, node)
    return result


#: Block sizes of the packed matrix product in the runtime header, and the scratch it needs.
GEMM_BLOCKS = {"mr": 6, "kc": 256, "nc": 512}
GEMM_SCRATCH = GEMM_BLOCKS["kc"] * GEMM_BLOCKS["nc"] + GEMM_BLOCKS["mr"] * GEMM_BLOCKS["kc"]


def _emit_matmul(p, out, args, attrs):
    a, b = args
    return [p.helper_call("matmul", p.examples(out), a.rows, b.cols, a.cols, a.strides_text(), b.strides_text(),
                          p.target(out), b.cols, 1, "scratch")]


def _emit_matmul_batch_sum(p, acc, args, attrs):
    a, b = args
    return [p.helper_call("matmul_batch_sum", "nt", a.rows, b.cols, a.cols, a.strides_text(), b.strides_text(),
                          acc.text, b.cols, 1, "scratch")]


def _matmul_jvp(b, n, tangents):
    """(A B)' = A' B + A B'."""
    (x, y), (tx, ty) = b.node(n).args, tangents
    terms = ([b.matmul(tx, y)] if tx is not None else []) + ([b.matmul(x, ty)] if ty is not None else [])
    return b.add(*terms) if terms else None


register(
    Op(
        name="matmul",
        kind="tensor",
        arity=2,
        shape=_matmul_shape,
        vjp=lambda b, n, g: [
            b.matmul(g, b.transpose(b.node(n).args[1])),
            b.matmul(b.transpose(b.node(n).args[0]), g),
        ],
        jvp=_matmul_jvp,
        emit=_emit_matmul,
        emit_batch_sum=_emit_matmul_batch_sum,
        scratch=lambda node: GEMM_SCRATCH,
        simplify=_simplify_matmul,
        sympy_heads=(sp.MatMul,),
        from_sympy=lambda r, e: _read_matmul(r, e.args),
        numpy=lambda args, attrs: args[0] @ args[1],
        to_sympy=lambda args, attrs: sp.MatMul(*args),
        text=lambda args, attrs: "*".join(wrap(a, PRODUCT) for a in args),
        domain=((-1.0, 1.0), (-1.0, 1.0)),
        cost=lambda node, shapes: 2 * shapes[0][0] * shapes[0][1] * shapes[1][1],
        test_cases=((((3, 2), (2, 4)), ()), (((1, 3), (3, 1)), ()), (((3, 1), (1, 2)), ())),
    )
)


# --- transpose: a view, no code ----------------------------------------------------


def _simplify_transpose(b, args, attrs):
    inner = b.node(args[0])
    if inner.shape == ():
        return args[0]
    if inner.op == "transpose":
        return inner.args[0]
    return None


def _transpose_view(base, attrs, shape):
    return replace(base, shape=shape, row_stride=base.col_stride, col_stride=base.row_stride)


register(
    Op(
        name="transpose",
        kind="view",
        view=_transpose_view,
        arity=1,
        shape=lambda shapes, attrs: (shapes[0][1], shapes[0][0]) if shapes[0] else (),
        vjp=lambda b, n, g: [b.transpose(g)],
        jvp=linear_jvp,
        numpy=lambda args, attrs: np.transpose(args[0]),
        to_sympy=lambda args, attrs: sp.Transpose(args[0]) if hasattr(args[0], "shape") else args[0],
        text=lambda args, attrs: f"{wrap(args[0], POWER)}.T" if args[0].shape else args[0],
        domain=((-1.0, 1.0),),
        simplify=_simplify_transpose,
        sympy_heads=(sp.Transpose, sp.Adjoint),  # real matrices: the adjoint is the transpose
        test_cases=((((3, 2),), ()), (((4, 1),), ())),
    )
)


# --- element access and assembly -------------------------------------------------------


def _index_shape(shapes, attrs):
    rows, cols = _dims(shapes[0])
    i, j = attrs
    if not (0 <= i < rows and 0 <= j < cols):
        raise ModelShapeError(f"element [{i}, {j}] is outside a matrix of shape {shapes[0]}")
    return ()


def _index_view(base, attrs, shape):
    i, j = attrs
    offset = base.offset + (i * base.row_stride if base.rows > 1 else 0) + (j * base.col_stride if base.cols > 1 else 0)
    return replace(base, shape=(), row_stride=0, col_stride=0, offset=offset)


# Element (i, j) of a matrix: a view, read in place. attrs: (i, j).
register(
    Op(
        name="index",
        kind="view",
        view=_index_view,
        arity=1,
        shape=_index_shape,
        vjp=lambda b, n, g: [b.apply("assemble", g, attrs=(b.shape(b.node(n).args[0]), (b.node(n).attrs,)))],
        jvp=linear_jvp,
        numpy=lambda args, attrs: np.asarray(args[0])[attrs],
        # MatrixElement, not M[i, j]: indexing makes SymPy write a matrix product out element by element.
        to_sympy=lambda args, attrs: MatrixElement(args[0], *attrs) if hasattr(args[0], "shape") else args[0],
        text=lambda args, attrs: f"{wrap(args[0], POWER)}[{attrs[0]}, {attrs[1]}]" if args[0].shape else args[0],
        domain=((-1.0, 1.0),),
        test_cases=((((3, 2),), (2, 1)), (((1, 4),), (0, 3))),
        sympy_heads=(MatrixElement,),
        from_sympy=lambda r, e: _read_element(r, e),
        sympy_children=lambda e: [e.parent],
    )
)


def _read_element(r, e):
    if not (e.i.is_Integer and e.j.is_Integer):
        raise UnsupportedFunctionError(f"element {r.describe(e)} has a symbolic index; indices must be whole numbers")
    return r.b.apply("index", r.node(e.parent), attrs=(int(e.i), int(e.j)))


@reads(sgf.scalar)
def _read_scalar(r, e):
    """The number in a 1x1 matrix: its element (0, 0), read in place."""
    return r.b.apply("index", r.node(e.args[0]), attrs=(0, 0))


def _assemble_shape(shapes, attrs):
    shape, positions = attrs
    if len(positions) != len(shapes) or any(s != () for s in shapes):
        raise ModelShapeError("assemble takes one scalar per position")
    return shape


def _np_assemble(args, attrs):
    shape, positions = attrs
    out = np.zeros(shape)
    for value, (i, j) in zip(args, positions):
        out[i, j] += value
    return out


def _sympy_assemble(args, attrs):
    shape, positions = attrs
    entries = {}
    for value, pos in zip(args, positions):
        entries[pos] = entries.get(pos, 0) + value
    return sp.ImmutableMatrix(shape[0], shape[1], lambda i, j: entries.get((i, j), 0))


def _text_assemble(args, attrs):
    shape, positions = attrs
    if shape == () and len(args) == 1:  # the adjoint of "element [0, 0]" of a scalar: the scalar
        return args[0]
    if shape == (1, 1) and len(args) == 1:
        return f"[[{args[0]}]]"
    return f"matrix({shape_text(shape)}; " + ", ".join(f"[{i}, {j}]: {a}" for a, (i, j) in zip(args, positions)) + ")"


def _emit_assemble(p, out, args, attrs):
    shape, positions = attrs
    lines = p.fill(out, 0)
    for value, (i, j) in zip(args, positions):
        lines += p.over_examples(out, lambda e: p.add_to(out.element(e, i, j), value.element(e)))
    return lines


# A matrix of the given shape holding each scalar arg at its position (summed
# where positions repeat) and zero elsewhere. attrs: (shape, ((i, j), ...)).
register(
    Op(
        name="assemble",
        kind="tensor",
        shape=_assemble_shape,
        vjp=lambda b, n, g: [b.apply("index", g, attrs=pos) for pos in b.node(n).attrs[1]],
        jvp=linear_jvp,
        emit=_emit_assemble,
        numpy=_np_assemble,
        to_sympy=_sympy_assemble,
        text=_text_assemble,
        domain=((-1.0, 1.0), (-1.0, 1.0)),
        test_cases=((((), ()), ((2, 2), ((0, 1), (0, 1)))), (((), (), ()), ((3, 1), ((0, 0), (2, 0), (1, 0))))),
    )
)


# --- reductions ------------------------------------------------------------------------


def _emit_runtime_reduction(name):
    def emit(p, out, args, attrs):
        (a,) = args
        return [p.helper_call(name, p.examples(out), a.rows, a.cols, a.strides_text(), p.target(out))]

    return emit


register(
    Op(
        name="sum",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: (),
        vjp=lambda b, n, g: [b.broadcast(g, b.shape(b.node(n).args[0]))],
        emit=_emit_runtime_reduction("sum"),
        jvp=linear_jvp,
        numpy=lambda args, attrs: np.sum(args[0]),
        to_sympy=lambda args, attrs: sgf.sum(args[0]) if hasattr(args[0], "shape") else args[0],
        domain=((-1.0, 1.0),),
        cost=lambda node, shapes: size_of(shapes[0]) - 1,
        simplify=lambda b, args, attrs: args[0] if b.shape(args[0]) == () else None,
        test_cases=((((3, 2),), ()), (((1, 4),), ())),
        sympy_heads=(sgf.sum,),
    )
)


def _simplify_trace(b, args, attrs):
    """tr(A B) = sum(A .* Bᵀ): the product is not formed (2nk operations instead of 2n²k)."""
    node = b.node(args[0])
    if node.op == "matmul" and node.shape[0] > 1:
        left, right = node.args
        return b.sum(b.mul(left, b.transpose(right)))
    return None


def _trace_shape(shapes, attrs):
    rows, cols = _dims(shapes[0])
    if rows != cols:
        raise ModelShapeError(f"trace of a non-square matrix of shape {shapes[0]}")
    return ()


register(
    Op(
        name="trace",
        kind="tensor",
        arity=1,
        shape=_trace_shape,
        vjp=lambda b, n, g: [b.mul(g, b.apply("identity", attrs=(b.shape(b.node(n).args[0])[0],)))],
        jvp=linear_jvp,
        emit=_emit_runtime_reduction("trace"),
        simplify=_simplify_trace,
        numpy=lambda args, attrs: np.trace(args[0]),
        to_sympy=lambda args, attrs: sp.Trace(args[0]),
        domain=((-1.0, 1.0),),
        cost=lambda node, shapes: shapes[0][0] - 1,
        test_cases=((((3, 3),), ()),),
        sympy_heads=(sp.Trace,),
    )
)


def _sum_to_shape(shapes, attrs):
    (source,), (target,) = shapes, attrs
    if elementwise_shape([source, target], ()) != _dims(source) and source != ():
        raise ModelShapeError(f"cannot sum a matrix of shape {source} down to {target}")
    return target


def _np_sum_to(args, attrs):
    (a,), (target,) = args, attrs
    if target == ():
        return np.sum(a)
    axes = tuple(ax for ax in range(2) if target[ax] == 1 and a.shape[ax] != 1)
    return np.sum(a, axis=axes, keepdims=True)


def _sympy_sum_to(args, attrs):
    (a,), (target,) = args, attrs
    if target == ():
        return sgf.sum(a)
    rows, cols = a.shape
    if target[0] == 1 and rows != 1:
        a = sp.OneMatrix(1, rows) * a
    if target[1] == 1 and cols != 1:
        a = a * sp.OneMatrix(cols, 1)
    return a


def _emit_sum_to(p, out, args, attrs):
    (a,) = args
    return [p.helper_call("sum_to", p.examples(out), a.rows, a.cols, a.strides_text(), p.target(out),
                          out.rows, out.cols)]


# The sum of a matrix over the axes where ``shape`` has extent 1: the adjoint of broadcasting.
register(
    Op(
        name="sum_to",
        kind="tensor",
        arity=1,
        shape=_sum_to_shape,
        vjp=lambda b, n, g: [b.broadcast(g, b.shape(b.node(n).args[0]))],
        emit=_emit_sum_to,
        jvp=linear_jvp,
        numpy=_np_sum_to,
        to_sympy=_sympy_sum_to,
        text=lambda args, attrs: call("sum_to", [args[0], shape_text(attrs[0])]) if attrs[0] else call("sum", args),
        domain=((-1.0, 1.0),),
        cost=lambda node, shapes: size_of(shapes[0]) - size_of(node.shape),
        test_cases=((((3, 2),), ((1, 2),)), (((3, 2),), ((3, 1),)), (((3, 2),), ((),))),
    )
)


def _sympy_broadcast(args, attrs):
    (a,), (shape,) = args, attrs
    rows, cols = shape
    if not hasattr(a, "shape"):
        return a * sp.OneMatrix(rows, cols)
    if a.shape[0] == 1 and rows != 1:
        a = sp.OneMatrix(rows, 1) * a
    if a.shape[1] == 1 and cols != 1:
        a = a * sp.OneMatrix(1, cols)
    return a


register(
    Op(
        name="broadcast",
        kind="elementwise",
        arity=1,
        shape=lambda shapes, attrs: elementwise_shape([shapes[0], attrs[0]], ()),
        vjp=lambda b, n, g: [b.sum_to(g, b.shape(b.node(n).args[0]))],
        jvp=linear_jvp,
        c=lambda p, args, attrs: str(args[0]),
        numpy=lambda args, attrs: np.broadcast_to(args[0], attrs[0]).copy(),
        to_sympy=_sympy_broadcast,
        text=lambda args, attrs: call("broadcast_to", [args[0], shape_text(attrs[0])]),
        domain=((-1.0, 1.0),),
        test_cases=((((),), ((2, 3),)), (((1, 3),), ((2, 3),)), (((2, 1),), ((2, 3),))),
        sympy_heads=(sgf.broadcast_to,),
        from_sympy=lambda r, e: r.b.broadcast(r.node(e.args[0]), (int(e.args[1]), int(e.args[2]))),
        sympy_children=lambda e: [e.args[0]],
    )
)


# --- constant matrices -------------------------------------------------------------------


register(
    Op(
        name="identity",
        kind="tensor",
        arity=0,
        shape=lambda shapes, attrs: (attrs[0], attrs[0]),
        emit=lambda p, out, args, attrs: p.loop_nest(
            out, lambda e, i, j: p.assign(out, p.indicator(p.equal(i, j)), e, i, j)),
        numpy=lambda args, attrs: np.eye(attrs[0]),
        to_sympy=lambda args, attrs: sp.Identity(attrs[0]),
        sympy_heads=(sp.Identity,),
        from_sympy=lambda r, e: r.b.apply("identity", attrs=(r.dim(e.rows),)),
        sympy_children=lambda e: [],
        text=lambda args, attrs: call("identity", [str(attrs[0])]),
    )
)


def _emit_matrix_const(p, out, args, attrs):
    shape, values = attrs
    return p.copy_table(out, values)


# A matrix of numbers written in the model. attrs: (shape, values in row-major order).
register(
    Op(
        name="matrix_const",
        kind="tensor",
        arity=0,
        shape=lambda shapes, attrs: attrs[0],
        emit=_emit_matrix_const,
        numpy=lambda args, attrs: np.array([float(v) for v in attrs[1]]).reshape(attrs[0]),
        to_sympy=lambda args, attrs: sp.ImmutableMatrix(attrs[0][0], attrs[0][1], list(attrs[1])),
        text=lambda args, attrs: "[" + ", ".join(
            "[" + ", ".join(number(v) for v in attrs[1][r * attrs[0][1]:(r + 1) * attrs[0][1]]) + "]"
            for r in range(attrs[0][0])) + "]",
    )
)


@reads(sp.ImmutableDenseMatrix, children=lambda e: [v for v in e if not v.is_Number])
def _read_explicit_matrix(r, e):
    """``sp.Matrix([...])``: a constant table when every entry is a number, else an assembly."""
    shape = (int(e.rows), int(e.cols))
    values = list(e)
    if all(v.is_Number for v in values):
        return r.b.apply("matrix_const", attrs=(shape, tuple(values)))
    ids = [r.b.const(v) if v.is_Number else r.node(v) for v in values]
    for v, i in zip(values, ids):
        if r.b.shape(i) != ():
            raise ModelShapeError(f"explicit matrix entries must be scalars, got {r.describe(v)}")
    positions = tuple((k // shape[1], k % shape[1]) for k in range(len(values)))
    return r.b.apply("assemble", *ids, attrs=(shape, positions))


@reads(sp.ZeroMatrix, sp.OneMatrix, children=lambda e: [])
def _read_constant_matrix(r, e):
    value = 0 if isinstance(e, sp.ZeroMatrix) else 1
    return r.b.broadcast(r.b.const(value), (r.dim(e.rows), r.dim(e.cols)))


@reads(ElementwiseApplyFunction, children=lambda e: [e.expr])
def _read_applyfunc(r, e):
    """``M.applyfunc(f)``: the body of f read once, with its variable bound to M's node, so the
    scalar ops in it apply element by element."""
    lam = e.function
    if not isinstance(lam, sp.Lambda):
        d = sp.Dummy("d")
        lam = sp.Lambda(d, lam(d))
    (variable,) = lam.variables
    return r.read_bound(lam.expr, {variable: r.node(e.expr)})


# --- the batch: sum a per-example value over all examples of the call -----------------------


def _emit_reduce_batch(p, out, args, attrs):
    (a,) = args
    return [p.helper_call("reduce_batch", "nt", a.rows, a.cols, a.strides_text(), out.text)]


def _simplify_reduce_batch(b, args, attrs):
    """The batch sum of a triangle is the triangle of the batch sum: the sum then reaches the
    matrix product inside (an adjoint of a triangular solve), which sums itself over the tile."""
    node = b.node(args[0])
    if node.op == "triangle":
        return b.apply("triangle", b.apply("reduce_batch", node.args[0]), attrs=node.attrs)
    return None


def _reduce_batch_jvp(b, n, tangents):
    """The batch sum of the tangent; a tangent the same for every example (that of a param)
    sums to the number of examples of the call times it, as in the reverse pass."""
    (t,) = tangents
    if t is None:
        return None
    return b.apply("reduce_batch", t) if b.node(t).varying else b.mul(b.apply("call_size"), t)


register(
    Op(
        name="reduce_batch",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: shapes[0],
        vjp=lambda b, n, g: [g],
        emit=_emit_reduce_batch,
        simplify=_simplify_reduce_batch,
        jvp=_reduce_batch_jvp,
        numpy=lambda args, attrs: args[0],
        to_sympy=lambda args, attrs: sp.Function("batch_sum")(args[0]),
        text=lambda args, attrs: call("batch_sum", args),
        cost=lambda node, shapes: size_of(node.shape),
        varying=lambda flags, attrs: False,
    )
)


# --- class-index access: element ``idx`` of a matrix, with ``idx`` a runtime value ------------


def _emit_take(p, out, args, attrs):
    z, idx = args
    idx_stride = idx.example_stride if idx.varying else 0
    return [p.checked_helper_call("take", "SG_ERROR_CLASS_INDEX", p.examples(out), z.rows, z.cols,
                                  z.strides_text(), idx.pointer(), idx_stride, p.target(out))]


register(
    Op(
        name="take",
        kind="tensor",
        arity=2,
        shape=lambda shapes, attrs: (),
        vjp=lambda b, n, g: [
            b.mul(g, b.apply("one_hot", b.node(n).args[1], attrs=(b.shape(b.node(n).args[0]),))),
            None,
        ],
        jvp=lambda b, n, tangents: None if tangents[0] is None else b.apply("take", tangents[0], b.node(n).args[1]),
        emit=_emit_take,
        numpy=lambda args, attrs: np.asarray(args[0]).reshape(-1)[int(args[1])],
        to_sympy=lambda args, attrs: sp.Add(*[
            args[0][k // args[0].shape[1], k % args[0].shape[1]] * sp.KroneckerDelta(args[1], k)
            for k in range(args[0].shape[0] * args[0].shape[1])]),
        text=lambda args, attrs: f"{wrap(args[0], POWER)}[{args[1]}]",
    )
)


def _emit_one_hot(p, out, args, attrs):
    (idx,) = args
    return p.loop_nest(out, lambda e, i, j: p.assign(
        out, p.indicator(p.equal(p.flat_index(i, j, out.cols), p.as_index(idx.element(e)))), e, i, j))


# A matrix of zeros with a one at flat position ``idx``. attrs: (shape,).
register(
    Op(
        name="one_hot",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: attrs[0],
        emit=_emit_one_hot,
        numpy=lambda args, attrs: np.eye(size_of(attrs[0]))[int(args[0])].reshape(attrs[0]),
        to_sympy=lambda args, attrs: sp.ImmutableMatrix(
            attrs[0][0], attrs[0][1], lambda i, j: sp.KroneckerDelta(args[0], i * attrs[0][1] + j)),
        text=lambda args, attrs: call("one_hot", [args[0], shape_text(attrs[0])]),
        differentiable=False,
    )
)
