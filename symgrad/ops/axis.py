"""Reductions and the softmax family along an axis: of each column (axis 0) or row (axis 1).

A reduction keeps the reduced axis with extent 1 (``sum(M, axis=0)`` of an
m x n matrix is a 1 x n row), so its result broadcasts back over the matrix,
and its adjoint is a broadcast. Sums along an axis are the ``sum_to`` op of
:mod:`.linalg` (the adjoint of broadcasting); the largest and smallest
elements send their gradient to the selected elements, split evenly among
ties (as for ``Max``); the softmax family works line by line, shifted by each
line's maximum, as :mod:`.nn` does for a whole matrix.
"""

from __future__ import annotations

import numpy as np

from .. import functions as sgf
from . import Op, reads, register, size_of
from .text import call

_NP_AXIS = {0: 0, 1: 1, -1: None}


def _reduced_shape(shape, axis):
    rows, cols = shape if shape else (1, 1)
    return {0: (1, cols), 1: (rows, 1), -1: ()}[axis]


def _emit_extreme(p, out, args, attrs):
    (a,), (axis, is_max) = args, attrs
    return [p.helper_call("axis_extreme", p.examples(out), a.rows, a.cols, a.strides_text(), p.target(out), axis,
                          int(is_max))]


def _tied(b, n):
    """1 where an element equals its line's extreme, 0 elsewhere: a select of numbers, not the
    comparison itself, so the formula SymPy is shown (model.gradients(), model.hessian()) adds
    and multiplies numbers, as the Max and Min of scalars do."""
    (a,) = b.node(n).args
    return b.apply("select", b.apply("eq", a, n), b.const(1), b.const(0))


def _extreme_vjp(b, n, g):
    """g sent to the elements equal to the extreme, divided by how many there are."""
    tied = _tied(b, n)
    return [b.mul(b.mul(g, b.recip(b.sum_to(tied, b.shape(n)))), tied)]


def _extreme_jvp(b, n, tangents):
    """The mean of the tangent over the tied extreme elements."""
    (t,) = tangents
    if t is None:
        return None
    tied = _tied(b, n)
    return b.mul(b.sum_to(b.mul(tied, t), b.shape(n)), b.recip(b.sum_to(tied, b.shape(n))))


def _np_extreme(args, attrs):
    axis, is_max = attrs
    a = np.asarray(args[0], dtype=float)
    f = np.max if is_max else np.min
    return f(a) if axis == -1 else f(a, axis=axis, keepdims=True)


def _extreme_sympy(args, attrs):
    axis, is_max = attrs
    return (sgf.max if is_max else sgf.min)(args[0], None if axis == -1 else axis)


def _axis_text(name):
    return lambda args, attrs: call(name, [args[0]] + ([] if attrs[0] == -1 else [f"axis={attrs[0]}"]))


# The largest (is_max) or smallest element of each column (axis 0), row (1) or of all (-1).
register(
    Op(
        name="extreme",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: _reduced_shape(shapes[0], attrs[0]),
        vjp=_extreme_vjp,
        jvp=_extreme_jvp,
        emit=_emit_extreme,
        numpy=_np_extreme,
        to_sympy=_extreme_sympy,
        text=lambda args, attrs: _axis_text("max" if attrs[1] else "min")(args, attrs),
        domain=((-1.0, 1.0),),
        cost=lambda node, shapes: size_of(shapes[0]),
        test_cases=((((3, 4),), (0, True)), (((3, 4),), (1, False)), (((2, 3),), (-1, True)), (((1, 3),), (-1, False))),
    )
)


@reads(sgf.max_along, sgf.min_along, children=lambda e: [e.args[0]])
def _read_extreme_along(r, e):
    return r.b.apply("extreme", r.node(e.args[0]), attrs=(e.axis, isinstance(e, sgf.max_along)))


@reads(sgf.max_of, sgf.min_of)
def _read_extreme(r, e):
    a = r.node(e.args[0])
    if r.b.shape(a) == ():
        return a
    return r.b.apply("extreme", a, attrs=(-1, isinstance(e, sgf.max_of)))


@reads(sgf.sum_along, children=lambda e: [e.args[0]])
def _read_sum_along(r, e):
    a = r.node(e.args[0])
    return r.b.sum_to(a, _reduced_shape(r.b.shape(a), e.axis))


# --- the softmax family along an axis ----------------------------------------------------------


def _np_lse(z, axis):
    z = np.asarray(z, dtype=float)
    m = np.max(z, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return m + np.log(np.sum(np.exp(z - m), axis=axis, keepdims=True))


def _emit_axis_softmax(what):
    def emit(p, out, args, attrs):
        (z,), (axis,) = args, attrs
        return [p.helper_call("axis_softmax", p.examples(out), z.rows, z.cols, z.strides_text(), p.target(out), axis,
                              what)]

    return emit


def _line_sums(b, x, axis):
    """sum(x) along the axis, broadcast back to x's shape."""
    shape = b.shape(x)
    return b.broadcast(b.sum_to(x, _reduced_shape(shape, axis)), shape)


def _softmax_axis_vjp(b, n, g):
    # z_bar = s * (g - sum(g * s)), the sums along the axis
    (axis,) = b.node(n).attrs
    return [b.mul(n, b.sub(g, _line_sums(b, b.mul(g, n), axis)))]


def _log_softmax_axis_vjp(b, n, g):
    # z_bar = g - softmax(z) * sum(g)
    (axis,) = b.node(n).attrs
    return [b.sub(g, b.mul(b.call("exp", n), _line_sums(b, g, axis)))]


def _logsumexp_axis_vjp(b, n, g):
    node = b.node(n)
    (z,), (axis,) = node.args, node.attrs
    return [b.mul(b.broadcast(g, b.shape(z)), b.apply("softmax_axis", z, attrs=(axis,)))]


def _softmax_axis_jvp(b, n, tangents):
    # s * (t - sum(s * t))
    (t,) = tangents
    return None if t is None else b.mul(n, b.sub(t, _line_sums(b, b.mul(n, t), b.node(n).attrs[0])))


def _log_softmax_axis_jvp(b, n, tangents):
    # t - sum(softmax(z) * t)
    (t,) = tangents
    return None if t is None else b.sub(t, _line_sums(b, b.mul(b.call("exp", n), t), b.node(n).attrs[0]))


def _logsumexp_axis_jvp(b, n, tangents):
    (t,) = tangents
    node = b.node(n)
    if t is None:
        return None
    soft = b.apply("softmax_axis", node.args[0], attrs=node.attrs)
    return b.sum_to(b.mul(soft, t), node.shape)


_CASES = ((((3, 4),), (0,)), (((3, 4),), (1,)), (((1, 3),), (1,)))

for _name, _what, _vjp, _jvp, _np, _head, _shape in (
    ("softmax_axis", 0, _softmax_axis_vjp, _softmax_axis_jvp, lambda args, attrs: np.exp(np.asarray(args[0]) - _np_lse(args[0], attrs[0])),
     sgf.softmax_along, lambda shapes, attrs: shapes[0]),
    ("log_softmax_axis", 1, _log_softmax_axis_vjp, _log_softmax_axis_jvp, lambda args, attrs: np.asarray(args[0]) - _np_lse(args[0], attrs[0]),
     sgf.log_softmax_along, lambda shapes, attrs: shapes[0]),
    ("logsumexp_axis", 2, _logsumexp_axis_vjp, _logsumexp_axis_jvp, lambda args, attrs: _np_lse(args[0], attrs[0]),
     sgf.logsumexp_along, lambda shapes, attrs: _reduced_shape(shapes[0], attrs[0])),
):
    register(
        Op(
            name=_name,
            kind="tensor",
            arity=1,
            shape=_shape,
            vjp=_vjp,
            jvp=_jvp,
            emit=_emit_axis_softmax(_what),
            numpy=_np,
            to_sympy=(lambda head: lambda args, attrs: head(args[0], attrs[0]))(_head),
            text=(lambda label: lambda args, attrs: call(label, [args[0], f"axis={attrs[0]}"]))(_head.label),
            domain=((-3.0, 3.0),),
            cost=lambda node, shapes: 4 * size_of(shapes[0]),
            test_cases=_CASES,
            sympy_heads=(_head,),
            from_sympy=(lambda name: lambda r, e: r.b.apply(name, r.node(e.args[0]), attrs=(e.axis,)))(_name),
            sympy_children=lambda e: [e.args[0]],
        )
    )
