"""Structure: slices, blocks and concatenation, diagonals, Kronecker products.

Slices and diagonals are views (read in place, no code); their adjoints write
the cotangent into a matrix of zeros of the source's shape. A block matrix
(``sp.BlockMatrix``, ``sg.hstack``/``sg.vstack``, ``sp.BlockDiagMatrix``) is one
node that copies each block into place, and its adjoint is the slices of the
cotangent. Each op is one loop nest or runtime call, whatever the sizes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import sympy as sp
from sympy.matrices.expressions.blockmatrix import BlockMatrix
from sympy.matrices.expressions.diagonal import DiagMatrix, DiagonalMatrix, DiagonalOf
from sympy.matrices.expressions.kronecker import KroneckerProduct
from sympy.matrices.expressions.slice import MatrixSlice

from .. import functions as sgf
from ..errors import ModelShapeError, UnsupportedFunctionError
from . import Op, linear_jvp, reads, register
from .text import POWER, call, shape as shape_text, wrap


def _dims(shape):
    return shape if shape else (1, 1)


def _span(start, stop, step):
    return len(range(start, stop, step))


def _bound_text(start, stop, step, extent):
    text = f"{start if start else ''}:{stop if stop != extent else ''}"
    return text + (f":{step}" if step != 1 else "")


# --- slices: a view with an offset and strides --------------------------------------------------


def _slice_shape(shapes, attrs):
    rows, cols = _dims(shapes[0])
    (r0, r1, rs), (c0, c1, cs) = attrs
    if not (0 <= r0 < r1 <= rows and 0 <= c0 < c1 <= cols and rs > 0 and cs > 0):
        raise ModelShapeError(f"slice [{r0}:{r1}:{rs}, {c0}:{c1}:{cs}] is empty or outside a matrix of shape "
                              f"{shapes[0]}")
    return (_span(r0, r1, rs), _span(c0, c1, cs))


def _slice_view(base, attrs, shape):
    (r0, _, rs), (c0, _, cs) = attrs
    offset = base.offset + (r0 * base.row_stride if base.rows > 1 else 0) + (c0 * base.col_stride if base.cols > 1
                                                                              else 0)
    return replace(base, shape=shape, offset=offset, row_stride=base.row_stride * rs, col_stride=base.col_stride * cs)


def _slice_vjp(b, n, g):
    node = b.node(n)
    return [b.apply("embed", g, attrs=(b.shape(node.args[0]), node.attrs))]


def _np_slice(args, attrs):
    (r0, r1, rs), (c0, c1, cs) = attrs
    return np.asarray(args[0], dtype=float).reshape(_dims(np.shape(args[0])))[r0:r1:rs, c0:c1:cs]


# X[r0:r1:rs, c0:c1:cs]. attrs: ((r0, r1, rs), (c0, c1, cs)).
register(
    Op(
        name="slice",
        kind="view",
        view=_slice_view,
        arity=1,
        shape=_slice_shape,
        vjp=_slice_vjp,
        jvp=linear_jvp,
        numpy=_np_slice,
        to_sympy=lambda args, attrs: MatrixSlice(args[0], attrs[0], attrs[1]),
        text=lambda args, attrs: f"{wrap(args[0], POWER)}[" + ", ".join(
            _bound_text(*bounds, extent) for bounds, extent in zip(attrs, _dims(args[0].shape))) + "]",
        domain=((-1.0, 1.0),),
        test_cases=((((4, 5),), ((1, 3, 1), (0, 5, 2))), (((3, 1),), ((0, 3, 2), (0, 1, 1))),
                    (((3, 3),), ((2, 3, 1), (0, 3, 1)))),
        sympy_heads=(MatrixSlice,),
        from_sympy=lambda r, e: _read_slice(r, e),
        sympy_children=lambda e: [e.parent],
    )
)


def _read_slice(r, e):
    bounds = e.args[1:]
    if not all(getattr(v, "is_Integer", False) for bound in bounds for v in bound):
        raise UnsupportedFunctionError(
            f"the slice {r.describe(e)} has symbolic bounds (an index given per example) and so no fixed shape. "
            f"To pick a row by an input index, pass a one-hot input e (a MatrixSymbol) and write e.T * X")
    attrs = tuple(tuple(int(v) for v in bound) for bound in bounds)
    node = r.node(e.parent)
    shape = _slice_shape([r.b.shape(node)], attrs)
    if shape != tuple(int(d) for d in e.shape):
        raise UnsupportedFunctionError(
            f"the slice {r.describe(e)} holds {shape[0]}x{shape[1]} elements, but SymPy gives it the shape "
            f"{e.shape[0]}x{e.shape[1]} (it sizes a strided slice as (stop - start) // step), so the model "
            f"around it would not be the one meant. Use bounds where the step divides stop - start, or join "
            f"single rows or columns with sg.vstack / sg.hstack (X[0:1, :] and X[2:3, :])")
    return r.b.apply("slice", node, attrs=attrs)


def _emit_embed(p, out, args, attrs):
    (g,) = args
    _, ((r0, _, rs), (c0, _, cs)) = attrs

    def place(start, step, var):
        if isinstance(var, int):
            return start + step * var
        return f"({start} + {var} * {step})" if step != 1 else f"({start} + {var})"

    lines = p.fill(out, 0)
    lines += p.loop_nest(replace(g, varying=out.varying), lambda e, i, j: p.assign(
        out, g.element(e, i, j), e, place(r0, rs, i), place(c0, cs, j)))
    return lines


def _sympy_embed(args, attrs):
    """The matrix of zeros with the arg's elements at the slice, written out."""
    shape, ((r0, r1, rs), (c0, c1, cs)) = attrs
    rows, cols = _dims(shape)
    rows_at = {r: k for k, r in enumerate(range(r0, r1, rs))}
    cols_at = {c: k for k, c in enumerate(range(c0, c1, cs))}
    g = args[0]
    return sp.ImmutableMatrix(rows, cols, lambda i, j: g[rows_at[i], cols_at[j]]
                              if i in rows_at and j in cols_at else 0)


def _np_embed(args, attrs):
    shape, ((r0, r1, rs), (c0, c1, cs)) = attrs
    out = np.zeros(_dims(shape))
    out[r0:r1:rs, c0:c1:cs] = args[0]
    return out.reshape(shape)


# A matrix of zeros of ``shape`` with the arg written at the slice: the adjoint of a slice.
# attrs: (shape, slice bounds).
register(
    Op(
        name="embed",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: attrs[0],
        vjp=lambda b, n, g: [b.apply("slice", g, attrs=b.node(n).attrs[1])],
        jvp=linear_jvp,
        emit=_emit_embed,
        numpy=_np_embed,
        to_sympy=lambda args, attrs: _sympy_embed(args, attrs),
        text=lambda args, attrs: call("embed", [args[0], shape_text(attrs[0]), "[" + ", ".join(
            _bound_text(*bounds, extent) for bounds, extent in zip(attrs[1], _dims(attrs[0]))) + "]"]),
        domain=((-1.0, 1.0),),
        test_cases=((((1, 3),), ((4, 5), ((1, 2, 1), (0, 5, 2)))),),
    )
)


# --- block matrices ------------------------------------------------------------------------------


def _block_shape(shapes, attrs):
    shape, corners = attrs
    rows, cols = shape
    for s, (r, c) in zip(shapes, corners):
        h, w = _dims(s)
        if r + h > rows or c + w > cols:
            raise ModelShapeError(f"a block of shape {s} at ({r}, {c}) does not fit in a {rows}x{cols} matrix")
    return shape


def _block_vjp(b, n, g):
    node = b.node(n)
    _, corners = node.attrs
    out = []
    for arg, (r, c) in zip(node.args, corners):
        h, w = _dims(b.shape(arg))
        out.append(b.apply("slice", g, attrs=((r, r + h, 1), (c, c + w, 1))))
    return out


def _emit_block(p, out, args, attrs):
    shape, corners = attrs
    covered = sum(a.rows * a.cols for a in args) == shape[0] * shape[1]
    lines = [] if covered else p.fill(out, 0)
    for a, (r, c) in zip(args, corners):
        lines += p.loop_nest(replace(a, varying=out.varying), lambda e, i, j, a=a, r=r, c=c: p.assign(
            out, a.element(e, i, j), e, i if isinstance(i, int) and r == 0 else _shifted(r, i),
            j if isinstance(j, int) and c == 0 else _shifted(c, j)))
    return lines


def _shifted(start, var):
    if isinstance(var, int):
        return start + var
    return f"({start} + {var})" if start else var


def _np_block(args, attrs):
    shape, corners = attrs
    out = np.zeros(shape)
    for a, (r, c) in zip(args, corners):
        a = np.asarray(a, dtype=float).reshape(_dims(np.shape(a)))
        out[r:r + a.shape[0], c:c + a.shape[1]] = a
    return out


def _sympy_block(args, attrs):
    shape, corners = attrs
    if len(args) == 1 and tuple(args[0].shape) == tuple(shape):
        return args[0]
    rows = sorted({r for r, _ in corners})
    cols = sorted({c for _, c in corners})
    at = dict(zip(corners, args))
    row_ends = rows[1:] + [shape[0]]
    col_ends = cols[1:] + [shape[1]]
    grid = [[at.get((r, c), sp.ZeroMatrix(r1 - r, c1 - c)) for c, c1 in zip(cols, col_ends)]
            for r, r1 in zip(rows, row_ends)]
    return BlockMatrix(grid)


def _text_block(args, attrs):
    shape, corners = attrs
    rows = sorted({r for r, _ in corners})
    if len(args) == len(rows) and all(c == 0 for _, c in corners):
        return call("vstack", args)
    if len(rows) == 1:
        return call("hstack", args)
    return "blocks(" + shape_text(shape) + "; " + ", ".join(f"[{r}, {c}]: {a}" for a, (r, c) in zip(args, corners)) + ")"


# A matrix of ``shape`` holding each arg with its top-left corner at the given position, and
# zeros where no arg is. attrs: (shape, ((row, col), ...)).
register(
    Op(
        name="block",
        kind="tensor",
        shape=_block_shape,
        vjp=_block_vjp,
        jvp=linear_jvp,
        emit=_emit_block,
        numpy=_np_block,
        to_sympy=_sympy_block,
        text=_text_block,
        domain=((-1.0, 1.0), (-1.0, 1.0)),
        test_cases=((((2, 3), (1, 3)), ((3, 3), ((0, 0), (2, 0)))), (((2, 2), (2, 1)), ((2, 3), ((0, 0), (0, 2)))),
                    (((2, 2), (1, 1)), ((3, 3), ((0, 0), (2, 2))))),
    )
)


@reads(BlockMatrix, children=lambda e: [blk for blk in e.blocks if not isinstance(blk, sp.ZeroMatrix)])
def _read_block_matrix(r, e):
    """``sp.BlockMatrix`` (and ``sp.BlockDiagMatrix``): zero blocks
    are left out of the node, whose other elements start as zeros."""
    grid = e.blocks
    row_starts, col_starts = [0], [0]
    for i in range(grid.rows):
        row_starts.append(row_starts[-1] + r.dim(grid[i, 0].rows))
    for j in range(grid.cols):
        col_starts.append(col_starts[-1] + r.dim(grid[0, j].cols))
    ids, corners = [], []
    for i in range(grid.rows):
        for j in range(grid.cols):
            blk = grid[i, j]
            if isinstance(blk, sp.ZeroMatrix):
                continue
            ids.append(r.node(blk))
            corners.append((row_starts[i], col_starts[j]))
    shape = (row_starts[-1], col_starts[-1])
    if not ids:
        return r.b.broadcast(r.b.const(0), shape)
    return r.b.apply("block", *ids, attrs=(shape, tuple(corners)))


@reads(sgf.concat, children=lambda e: list(e.matrices))
def _read_concat(r, e):
    """``sg.vstack`` / ``sg.hstack``: one block node."""
    ids = [r.node(m) for m in e.matrices]
    corners, at = [], 0
    for i in ids:
        corners.append((at, 0) if e.axis == 0 else (0, at))
        at += _dims(r.b.shape(i))[e.axis]
    return r.b.apply("block", *ids, attrs=((int(e.shape[0]), int(e.shape[1])), tuple(corners)))


# --- diagonals ---------------------------------------------------------------------------------------


def _diagonal_view(base, attrs, shape):
    stride = (base.row_stride if base.rows > 1 else 0) + (base.col_stride if base.cols > 1 else 0)
    return replace(base, shape=shape, row_stride=stride, col_stride=0)


def _diagonal_vjp(b, n, g):
    (a,) = b.node(n).args
    return [b.apply("diag_embed", g, attrs=(_dims(b.shape(a)),))]


# The diagonal of a matrix as a column (SymPy's DiagonalOf): a view.
register(
    Op(
        name="diagonal",
        kind="view",
        view=_diagonal_view,
        arity=1,
        shape=lambda shapes, attrs: (min(_dims(shapes[0])), 1),
        vjp=_diagonal_vjp,
        jvp=linear_jvp,
        numpy=lambda args, attrs: np.diag(np.asarray(args[0], dtype=float).reshape(_dims(np.shape(args[0]))))[:, None],
        to_sympy=lambda args, attrs: DiagonalOf(args[0]),
        text=lambda args, attrs: call("diagonal", args),
        domain=((-1.0, 1.0),),
        test_cases=((((3, 3),), ()), (((2, 4),), ())),
        sympy_heads=(DiagonalOf,),
    )
)


def _diag_embed_shape(shapes, attrs):
    (shape,) = attrs
    rows, cols = _dims(shapes[0])
    if 1 not in (rows, cols) or rows * cols != min(shape):
        raise ModelShapeError(f"a diagonal of shape {shapes[0]} does not fit a {shape[0]}x{shape[1]} matrix")
    return shape


def _emit_diag_embed(p, out, args, attrs):
    (v,) = args
    k = v.rows * v.cols
    step = v.row_stride if v.rows > 1 else v.col_stride
    flat = replace(v, shape=(k, 1), row_stride=step, col_stride=0)
    lines = p.fill(out, 0)
    lines += p.loop_nest(replace(flat, varying=out.varying), lambda e, i, j: p.assign(
        out, flat.element(e, i, 0), e, i, i))
    return lines


def _np_diag_embed(args, attrs):
    (shape,) = attrs
    out = np.zeros(shape)
    values = np.asarray(args[0], dtype=float).reshape(-1)
    out[np.arange(len(values)), np.arange(len(values))] = values
    return out


def _diag_embed_vjp(b, n, g):
    (v,) = b.node(n).args
    d = b.apply("diagonal", g)
    return [d if _dims(b.shape(v))[1] == 1 else b.transpose(d)]


# A matrix of ``shape``, zero but for a vector (a row or column) on its diagonal: SymPy's
# DiagMatrix(v). attrs: (shape,).
register(
    Op(
        name="diag_embed",
        kind="tensor",
        arity=1,
        shape=_diag_embed_shape,
        vjp=_diag_embed_vjp,
        jvp=linear_jvp,
        emit=_emit_diag_embed,
        numpy=_np_diag_embed,
        to_sympy=lambda args, attrs: DiagMatrix(args[0]),
        text=lambda args, attrs: call("diag", args),
        domain=((-1.0, 1.0),),
        test_cases=((((3, 1),), ((3, 3),)), (((1, 2),), ((2, 2),)), (((2, 1),), ((2, 4),))),
    )
)


@reads(DiagMatrix, children=lambda e: [e.args[0]])
def _read_diag_matrix(r, e):
    v = r.node(e.args[0])
    n = max(_dims(r.b.shape(v)))
    return r.b.apply("diag_embed", v, attrs=((n, n),))


@reads(DiagonalMatrix, children=lambda e: [e.args[0]])
def _read_diagonal_matrix(r, e):
    """SymPy's DiagonalMatrix(X): X with its elements off the diagonal zeroed."""
    a = r.node(e.args[0])
    return r.b.apply("diag_embed", r.b.apply("diagonal", a), attrs=(_dims(r.b.shape(a)),))


# --- Kronecker products ----------------------------------------------------------------------------


def _bilinear_jvp(b, n, tangents):
    """op(X, Y)' = op(X', Y) + op(X, Y') for an op linear in each arg."""
    node = b.node(n)
    x, y = node.args
    tx, ty = tangents
    terms = ([b.apply(node.op, tx, y, attrs=node.attrs)] if tx is not None else []) + (
        [b.apply(node.op, x, ty, attrs=node.attrs)] if ty is not None else [])
    return b.add(*terms) if terms else None


def _kron_vjp(b, n, g):
    x, y = b.node(n).args
    return [b.apply("kron_contract", g, y, attrs=(0, _dims(b.shape(x)))),
            b.apply("kron_contract", g, x, attrs=(1, _dims(b.shape(y))))]


def _emit_kron(p, out, args, attrs):
    x, y = args
    return [p.helper_call("kron", p.examples(out), x.rows, x.cols, y.rows, y.cols, x.strides_text(),
                          y.strides_text(), p.target(out))]


register(
    Op(
        name="kron",
        kind="tensor",
        arity=2,
        shape=lambda shapes, attrs: tuple(p * q for p, q in zip(_dims(shapes[0]), _dims(shapes[1]))),
        vjp=_kron_vjp,
        jvp=lambda b, n, tangents: _bilinear_jvp(b, n, tangents),
        emit=_emit_kron,
        numpy=lambda args, attrs: np.kron(np.asarray(args[0], dtype=float), np.asarray(args[1], dtype=float)),
        to_sympy=lambda args, attrs: KroneckerProduct(*args),
        text=lambda args, attrs: call("kron", args),
        domain=((-1.0, 1.0), (-1.0, 1.0)),
        cost=lambda node, shapes: node.size,
        test_cases=((((2, 3), (3, 2)), ()), (((2, 1), (1, 3)), ())),
        sympy_heads=(KroneckerProduct,),
        from_sympy=lambda r, e: _read_kron(r, e),
    )
)


def _read_kron(r, e):
    ids = [r.node(a) for a in e.args]
    result = ids[0]
    for other in ids[1:]:
        result = r.b.apply("kron", result, other)
    return result


def _kron_contract_shape(shapes, attrs):
    side, other = attrs
    g, x = _dims(shapes[0]), _dims(shapes[1])
    if g[0] % x[0] or g[1] % x[1] or (g[0] // x[0], g[1] // x[1]) != tuple(other):
        raise ModelShapeError(f"kron_contract: shapes {shapes[0]}, {shapes[1]} and {other} do not match")
    return tuple(other)


def _kron_contract_vjp(b, n, g_bar):
    """Bilinear in (G, X): side 0 is out[i, j] = sum G[i rb + k, j cb + l] X[k, l], so
    Ḡ = kron(ō, X) and X̄ = the side-1 contraction of G with ō (and the other way round)."""
    node = b.node(n)
    g, x = node.args
    side, _ = node.attrs
    if side == 0:
        return [b.apply("kron", g_bar, x), b.apply("kron_contract", g, g_bar, attrs=(1, _dims(b.shape(x))))]
    return [b.apply("kron", x, g_bar), b.apply("kron_contract", g, g_bar, attrs=(0, _dims(b.shape(x))))]


def _np_kron_contract(args, attrs):
    side, other = attrs
    g, x = np.asarray(args[0], dtype=float), np.asarray(args[1], dtype=float)
    if side == 0:
        ra, ca = other
        rb, cb = x.shape
        return np.einsum("ikjl,kl->ij", g.reshape(ra, rb, ca, cb), x)
    rb, cb = other
    ra, ca = x.shape
    return np.einsum("ikjl,ij->kl", g.reshape(ra, rb, ca, cb), x)


def _sympy_kron_contract(args, attrs):
    """The contraction written out, element by element."""
    side, other = attrs
    g, x = args
    xr, xc = (int(d) for d in x.shape)
    if side == 0:
        (ra, ca), (rb, cb) = other, (xr, xc)
        return sp.ImmutableMatrix(ra, ca, lambda i, j: sp.Add(*[
            g[i * rb + k, j * cb + l] * x[k, l] for k in range(rb) for l in range(cb)]))
    (ra, ca), (rb, cb) = (xr, xc), other
    return sp.ImmutableMatrix(rb, cb, lambda k, l: sp.Add(*[
        g[i * rb + k, j * cb + l] * x[i, j] for i in range(ra) for j in range(ca)]))


def _emit_kron_contract(p, out, args, attrs):
    g, x = args
    side, other = attrs
    (ra, ca), (rb, cb) = ((other, (x.rows, x.cols)) if side == 0 else ((x.rows, x.cols), other))
    return [p.helper_call("kron_contract", p.examples(out), ra, ca, rb, cb, side, g.strides_text(), x.strides_text(),
                          p.target(out))]


# The adjoints of kron(A, B): G contracted with one factor. attrs: (side, result shape).
register(
    Op(
        name="kron_contract",
        kind="tensor",
        arity=2,
        shape=_kron_contract_shape,
        vjp=_kron_contract_vjp,
        jvp=lambda b, n, tangents: _bilinear_jvp(b, n, tangents),
        emit=_emit_kron_contract,
        numpy=_np_kron_contract,
        to_sympy=_sympy_kron_contract,
        text=lambda args, attrs: call("kron_contract", list(args) + [str(attrs[0])]),
        domain=((-1.0, 1.0), (-1.0, 1.0)),
        cost=lambda node, shapes: 2 * shapes[0][0] * shapes[0][1],
        test_cases=((((4, 6), (2, 3)), (0, (2, 2))), (((4, 6), (2, 2)), (1, (2, 3)))),
    )
)
