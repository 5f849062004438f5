"""Neural-network ops over a whole matrix: softmax, log-softmax, log-sum-exp, the norm.

Each works on all elements of its argument (a vector of logits, typically),
per example, shifted by the maximum so that logits of any magnitude give
finite results. Their derivatives reuse the forward result: the softmax
Jacobian is never formed.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from .. import functions as sgf
from ..errors import ModelShapeError
from . import Op, reads, register, size_of


def _np_logsumexp(z):
    z = np.asarray(z, dtype=float)
    m = np.max(z)
    m = m if np.isfinite(m) else 0.0
    return m + np.log(np.sum(np.exp(z - m)))


def _emit_vector_function(name):
    def emit(p, out, args, attrs):
        (z,) = args
        nb = "nt" if out.varying else "1"
        return [f"sg_{name}({nb}, {z.rows}, {z.cols}, {z.strides_text()}, "
                f"{out.text}, {out.example_stride if out.varying else 0});"]

    return emit


def _softmax_vjp(b, node_id, g):
    # z_bar = s * (g - sum(g * s))
    s = node_id
    return [b.mul(s, b.sub(g, b.sum(b.mul(g, s))))]


def _log_softmax_vjp(b, node_id, g):
    # z_bar = g - softmax(z) * sum(g), with softmax(z) = exp(log_softmax(z))
    return [b.sub(g, b.mul(b.call("exp", node_id), b.sum(g)))]


def _logsumexp_vjp(b, node_id, g):
    # z_bar = g * softmax(z); not g * exp(z - logsumexp(z)), in which the rounding of a
    # large logsumexp (float32 logits near 800) would swamp the difference
    z = b.node(node_id).args[0]
    return [b.mul(g, b.call("softmax", z))]


# Forward-mode rules: the Jacobians of softmax and log-softmax are symmetric (softmax) or
# read off the same formulas, so each JVP is its VJP's formula applied to the tangent.


def _softmax_jvp(b, node_id, tangents):
    (t,) = tangents
    return None if t is None else _softmax_vjp(b, node_id, t)[0]


def _log_softmax_jvp(b, node_id, tangents):
    # t - sum(softmax(z) * t)
    (t,) = tangents
    return None if t is None else b.sub(t, b.sum(b.mul(b.call("exp", node_id), t)))


def _logsumexp_jvp(b, node_id, tangents):
    (t,) = tangents
    return None if t is None else b.sum(b.mul(t, b.call("softmax", b.node(node_id).args[0])))


def _norm_jvp(b, node_id, tangents):
    (t,) = tangents
    return None if t is None else b.sum(b.mul(t, b.mul(b.node(node_id).args[0], b.recip(node_id))))


_CASES = ((((4, 1),), ()), (((1, 3),), ()), (((2, 3),), ()))

register(
    Op(
        name="softmax",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: shapes[0],
        vjp=_softmax_vjp,
        jvp=_softmax_jvp,
        emit=_emit_vector_function("softmax"),
        numpy=lambda args, attrs: np.exp(np.asarray(args[0]) - _np_logsumexp(args[0])),
        to_sympy=lambda args, attrs: sgf.softmax(args[0]),
        domain=((-3.0, 3.0),),
        cost=lambda node, shapes: 4 * size_of(node.shape),
        test_cases=_CASES,
        sympy_heads=(sgf.softmax,),
    )
)

register(
    Op(
        name="log_softmax",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: shapes[0],
        vjp=_log_softmax_vjp,
        jvp=_log_softmax_jvp,
        emit=_emit_vector_function("log_softmax"),
        numpy=lambda args, attrs: np.asarray(args[0]) - _np_logsumexp(args[0]),
        to_sympy=lambda args, attrs: sgf.log_softmax(args[0]),
        domain=((-3.0, 3.0),),
        cost=lambda node, shapes: 4 * size_of(node.shape),
        test_cases=_CASES,
        sympy_heads=(sgf.log_softmax,),
    )
)

register(
    Op(
        name="logsumexp",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: (),
        vjp=_logsumexp_vjp,
        jvp=_logsumexp_jvp,
        emit=_emit_vector_function("logsumexp"),
        numpy=lambda args, attrs: _np_logsumexp(args[0]),
        to_sympy=lambda args, attrs: sgf.logsumexp(args[0]),
        domain=((-3.0, 3.0),),
        cost=lambda node, shapes: 3 * size_of(shapes[0]),
        test_cases=_CASES,
        sympy_heads=(sgf.logsumexp,),
    )
)


def _norm_vjp(b, node_id, g):
    # z_bar = g * (z / norm(z)): the ratio first (NaN at z = 0, as hypot), as g / norm can
    # underflow where the ratio is ordinary
    z = b.node(node_id).args[0]
    return [b.mul(g, b.mul(z, b.recip(node_id)))]


def _np_norm(args, attrs):
    flat = np.abs(np.asarray(args[0], dtype=float)).reshape(-1)
    out = 0.0
    for v in flat:
        out = np.hypot(out, v)
    return out


# sqrt(sum(z**2)) over all elements, scaled by the largest magnitude (see sg_norm).
register(
    Op(
        name="norm",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: (),
        vjp=_norm_vjp,
        jvp=_norm_jvp,
        emit=_emit_vector_function("norm"),
        numpy=_np_norm,
        to_sympy=lambda args, attrs: sgf.norm(args[0]) if hasattr(args[0], "shape") else sp.Abs(args[0]),
        domain=((-3.0, 3.0),),
        cost=lambda node, shapes: 3 * size_of(shapes[0]),
        test_cases=_CASES,
        sympy_heads=(sgf.norm,),
    )
)


# --- losses written with symgrad's functions, lowered to the ops above ---------------------


@reads(sgf.cross_entropy)
def _read_cross_entropy(r, e):
    """-sum(target * log_softmax(logits)); a class-index target picks one entry instead."""
    b = r.b
    logits, target = (r.node(a) for a in e.args)
    log_p = b.call("log_softmax", logits)
    if b.shape(target) != ():
        return b.neg(b.sum(b.mul(target, log_p)))
    index = b.const_value(target)
    if index is None:  # a class index given per example
        return b.neg(b.apply("take", log_p, target))
    size = b.node(log_p).size
    if not (index.is_Integer and 0 <= int(index) < size):
        raise ModelShapeError(f"cross_entropy: class index {index} is outside 0..{size - 1}")
    cols = b.shape(log_p)[1]
    return b.neg(b.apply("index", log_p, attrs=(int(index) // cols, int(index) % cols)))


@reads(sgf.mse)
def _read_mse(r, e):
    """The mean of the squared differences of the elements."""
    b = r.b
    prediction, target = (r.node(a) for a in e.args)
    diff = b.sub(prediction, target)
    squared = b.mul(diff, diff)
    if b.shape(diff) == ():
        return squared
    return b.mul(b.const(sp.Rational(1, b.node(diff).size)), b.sum(squared))
