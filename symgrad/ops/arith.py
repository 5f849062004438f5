"""Arithmetic: n-ary sums and products, and powers.

Sums and products are element-wise with broadcasting, so the same entries
serve scalars, matrices and a scalar times a matrix. Subtraction and division
are what SymPy makes of them: ``x - y`` is ``x + (-1)*y`` and ``x / y`` is
``x * y**-1``.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import sympy as sp
from sympy.matrices.expressions.hadamard import HadamardPower, HadamardProduct

from .. import rewrites
from . import Op, _is_matrix, broadcast_shapes, elementwise_shape, register, size_of
from .text import COMPARISON, NEGATION, POWER, PRODUCT, SUM, binding, wrap


def same_number(value, number) -> bool:
    """Whether the SymPy number ``value`` equals ``number`` as a real number.

    SymPy 1.13+ says ``Float(0.0) == 0`` and ``Float(0.5) == Rational(1, 2)`` are
    False; a model's ``x**0.0`` or ``0.5*x`` must fold exactly like ``x**0`` and
    ``x/2``, so every identity below compares numbers this way.
    """
    if value is None or not getattr(value, "is_Number", False):
        return False
    return (value - number).is_zero is True


def _full_size(matrices):
    """The matrices, each shown broadcast to their common shape where it differs."""
    from ..functions import broadcast_to

    rows = max(int(m.shape[0]) for m in matrices)
    cols = max(int(m.shape[1]) for m in matrices)
    return [m if tuple(m.shape) == (rows, cols) else broadcast_to(m, (rows, cols)) for m in matrices], (rows, cols)


def _sympy_add(args, attrs):
    matrices = [a for a in args if _is_matrix(a)]
    if not matrices:
        return sp.Add(*args)
    matrices, (rows, cols) = _full_size(matrices)
    scalars = [a for a in args if not _is_matrix(a)]
    extra = [sp.Add(*scalars) * sp.OneMatrix(rows, cols)] if scalars else []
    return sp.MatAdd(*(matrices + extra))


def _sympy_mul(args, attrs):
    matrices = [a for a in args if _is_matrix(a)]
    scalars = sp.Mul(*[a for a in args if not _is_matrix(a)])
    if not matrices:
        return scalars
    matrices, _ = _full_size(matrices)
    product = matrices[0] if len(matrices) == 1 else sp.HadamardProduct(*matrices)
    # An unevaluated MatMul: ``scalars * product`` would run MatMul.doit, whose rewriting of
    # powers of 1x1 matrices can fail inside SymPy.
    return sp.MatMul(scalars, product) if scalars != 1 else product


def _sympy_pow(args, attrs):
    base, exponent = args
    if _is_matrix(base) and _is_matrix(exponent):
        (base, exponent), _ = _full_size([base, exponent])
    if _is_matrix(base) or _is_matrix(exponent):
        return sp.HadamardPower(base, exponent)
    return sp.Pow(base, exponent)


def _elementwise_vjp(partials):
    """A VJP from local partial derivatives: contribution_i = g * d(out)/d(arg_i)."""

    def vjp(b, node_id, g):
        return [None if p is None else b.mul(g, p) for p in partials(b, node_id)]

    return vjp


def _elementwise_jvp(partials):
    """A JVP from the same local partials: tangent = sum_i d(out)/d(arg_i) * tangent_i."""

    def jvp(b, node_id, tangents):
        wanted = [t is not None for t in tangents]
        if not any(wanted):
            return None
        terms = [b.mul(p, t) for p, t in zip(partials(b, node_id), tangents) if t is not None and p is not None]
        # A term repeated (the two args of x*x) is counted, not added to itself: 2*(x*t).
        counted = [t if terms.count(t) == 1 else b.mul(b.const(terms.count(t)), t) for t in dict.fromkeys(terms)]
        return b.broadcast(b.add(*counted), b.shape(node_id)) if counted else None

    return jvp


def _add_jvp(b, node_id, tangents):
    terms = [t for t in tangents if t is not None]
    return b.broadcast(b.add(*terms), b.shape(node_id)) if terms else None


def _unbroadcast(b, args):
    """Args with ``broadcast(x)`` replaced by ``x`` where the other args already give the shape.

    Element-wise ops broadcast by themselves, so an explicit broadcast only
    matters when nothing else carries the full shape.
    """
    shapes = [b.shape(a) for a in args]
    full = broadcast_shapes(shapes)
    out = list(args)
    for k, a in enumerate(args):
        node = b.node(a)
        if node.op == "broadcast":
            others = [s for i, s in enumerate(shapes) if i != k] + [b.shape(node.args[0])]
            if broadcast_shapes(others) == full:
                out[k] = node.args[0]
                shapes[k] = b.shape(node.args[0])
    return tuple(out)


# --- add -----------------------------------------------------------------------


def _simplify_add(b, args, attrs):
    unwrapped = _unbroadcast(b, args)
    if unwrapped != args:
        return b.apply("add", *unwrapped)
    constants = [a for a in args if b.is_const(a)]
    others = [a for a in args if not b.is_const(a)]
    total = sp.Add(*[b.const_value(a) for a in constants]) if constants else sp.Integer(0)
    if len(constants) > 1 or (constants and same_number(total, 0)):
        terms = others + ([b.const(total)] if not same_number(total, 0) else [])
        if not terms:
            return b.const(0)
        if len(terms) == 1:
            return terms[0]
        return b.apply("add", *terms)
    if len(args) == 1:
        return args[0]
    if not args:
        return b.const(0)
    return rewrites.stable_add(b, args)


def _text_add(args, attrs):
    text = wrap(args[0], COMPARISON)
    for term in args[1:]:
        term = wrap(term, COMPARISON)
        text += f" - {term[1:]}" if term.startswith("-") else f" + {term}"
    return text


register(
    Op(
        name="add",
        kind="elementwise",
        shape=elementwise_shape,
        vjp=lambda b, node_id, g: [g] * len(b.node(node_id).args),
        jvp=_add_jvp,
        c=lambda p, args, attrs: " + ".join(str(a) for a in args),
        text=_text_add,
        numpy=lambda args, attrs: sum(args[1:], args[0]),
        to_sympy=_sympy_add,
        domain=((-2.0, 2.0), (-2.0, 2.0)),
        cost=lambda node, shapes: (len(shapes) - 1) * size_of(node.shape),
        simplify=_simplify_add,
        commutative=True,
        sympy_heads=(sp.Add, sp.MatAdd),
    )
)


# --- mul -------------------------------------------------------------------------


def _simplify_mul(b, args, attrs):
    unwrapped = _unbroadcast(b, args)
    if unwrapped != args:
        return b.apply("mul", *unwrapped)
    constants = [a for a in args if b.is_const(a)]
    others = [a for a in args if not b.is_const(a)]
    # Pull the constant factor of a single nested product up: c1 * (c2 * y) -> (c1*c2) * y.
    if len(others) == 1 and constants:
        inner = b.node(others[0])
        if inner.op == "mul" and any(b.is_const(a) for a in inner.args):
            constants = constants + [a for a in inner.args if b.is_const(a)]
            others = [a for a in inner.args if not b.is_const(a)]
    product = sp.Mul(*[b.const_value(a) for a in constants]) if constants else sp.Integer(1)
    if same_number(product, 0) and all(b.shape(a) == () for a in others):
        return b.const(0)
    rebuilt = others + ([b.const(product)] if not same_number(product, 1) else [])
    if not rebuilt:
        return b.const(product)
    if len(rebuilt) == 1:
        return rebuilt[0]
    if tuple(sorted(rebuilt)) != tuple(args):
        return b.apply("mul", *rebuilt)
    return rewrites.stable_mul(b, args)


def _mul_partials(b, node_id):
    """d(a1*...*ak)/d(ai) = product of the others; prefix/suffix products keep it O(k)."""
    args = b.node(node_id).args
    k = len(args)
    if k <= 3:
        return [b.mul(*(args[:i] + args[i + 1:])) for i in range(k)]
    prefix = [None] * k
    suffix = [None] * k
    for i in range(1, k):
        prefix[i] = args[0] if i == 1 else b.mul(prefix[i - 1], args[i - 1])
    for i in range(k - 2, -1, -1):
        suffix[i] = args[k - 1] if i == k - 2 else b.mul(suffix[i + 1], args[i + 1])
    return [
        suffix[0] if i == 0 else prefix[k - 1] if i == k - 1 else b.mul(prefix[i], suffix[i])
        for i in range(k)
    ]


def _c_mul(p, args, attrs):
    numeric = [a for a in args if a.const is not None]
    if len(numeric) == 1 and numeric[0].const == -1 and len(args) == 2:
        other = args[0] if args[1] is numeric[0] else args[1]
        return f"-{other}"
    return " * ".join(str(a) for a in args)


def _text_mul(args, attrs):
    """Numbers first (``-2*v15``, ``-y``); ``.*`` between matrices, which multiply element by
    element; a factor that could read as part of a matrix product is parenthesized."""
    numbers = [a for a in args if a.number is not None]
    others = [a for a in args if a.number is None]
    times = ".*" if sum(1 for a in others if a.shape != ()) > 1 else "*"
    negate = len(numbers) == 1 and same_number(numbers[0].number, -1) and bool(others)
    first = not numbers or negate

    def factor(k, a):
        level = binding(a)
        if level <= SUM or (level == NEGATION and (k > 0 or not first or negate)):
            return f"({a})"
        if level == PRODUCT and ((a.shape != () and len(others) > 1) or (k > 0 and a[:1].isdigit())):
            return f"({a})"
        return a

    product = times.join(factor(k, a) for k, a in enumerate(others))
    if negate:
        return f"-{product}"
    return "*".join(numbers + ([product] if others else []))


register(
    Op(
        name="mul",
        kind="elementwise",
        shape=elementwise_shape,
        vjp=_elementwise_vjp(_mul_partials),
        jvp=_elementwise_jvp(_mul_partials),
        c=_c_mul,
        text=_text_mul,
        numpy=lambda args, attrs: np.prod(np.broadcast_arrays(*args), axis=0),
        to_sympy=_sympy_mul,
        domain=((-2.0, 2.0), (-2.0, 2.0)),
        cost=lambda node, shapes: (len(shapes) - 1) * size_of(node.shape),
        simplify=_simplify_mul,
        commutative=True,
        sympy_heads=(sp.Mul, HadamardProduct),
    )
)


# --- pow -------------------------------------------------------------------------


def _exponent(b, node_id):
    """The exponent of a ``pow`` node as a Fraction, or None when it is not a rational constant."""
    value = b.const_value(b.node(node_id).args[1])
    if value is not None and value.is_Rational:
        return Fraction(int(value.p), int(value.q))
    return None


def _simplify_pow(b, args, attrs):
    base, exponent = args
    value = b.const_value(exponent)
    if same_number(value, 1):
        return base
    if same_number(value, 0):  # x**0 = 1 for every x, 0**0 included (C's pow and IEEE 754 agree)
        return b.broadcast(b.const(1), b.shape(base))
    return rewrites.stable_pow(b, base, exponent)


def _pow_partials(b, node_id):
    """Partial derivatives of ``x**y``, with the conventions PyTorch and JAX share at x = 0.

    With a constant exponent c: ``c * x**(c - 1)`` (so 0 at x = 0 for c > 1, inf for
    0 < c < 1, as the formula says). With a variable exponent: d/dx is taken as 0 where
    y == 0 (x**0 is 1 whatever x is, so 0**0 has d/dx 0, not 0 * 0**-1), and d/dy =
    ``x**y * log(x)`` is taken as 0 where x == 0 and y >= 0 (its limit from x > 0;
    0 * log(0) would be NaN). Both are select nodes of the graph, so ``symgrad show``
    prints the same formula the kernel computes.
    """
    node = b.node(node_id)
    x, y = node.args
    value = b.const_value(y)
    if value is not None:
        if same_number(value, sp.Rational(1, 2)):  # sqrt: 1 / (2 sqrt(x)), reusing sqrt(x)
            return [b.mul(b.const(sp.Rational(1, 2)), b.recip(node_id)), None]
        if same_number(value, -1):  # 1/x: -1/x**2 = -(1/x)**2, reusing 1/x
            return [b.neg(b.mul(node_id, node_id)), None]
        return [b.mul(b.const(value), b.apply("pow", x, b.const(value - 1))), None]
    zero = b.const(0)
    dx = b.apply("select", b.apply("eq", y, zero), zero,
                 b.mul(y, b.apply("pow", x, b.add(y, b.const(-1)))))
    base_is_zero = b.apply("and", b.apply("eq", x, zero), b.apply("ge", y, zero))
    dy = b.apply("select", base_is_zero, zero, b.mul(node_id, b.call("log", x)))
    return [dx, dy]


def _negative_exponent(b, node_id):
    """The exponent c of ``x**c`` when it is a constant below 0 other than -1, else None."""
    value = b.const_value(b.node(node_id).args[1])
    if value is None or not value.is_real or not value < 0 or same_number(value, -1):
        return None
    return value


def _scaled_by_power(b, node_id, w):
    """``w * d(x**c)/dx`` for a constant c < 0, as ``c * (w * x**c) / x``.

    The textbook ``w * c * x**(c - 1)`` underflows where ``x**(c - 1)`` does although the
    product does not: in a layer norm ``(var + eps)**(-1/2)`` of rows of about 1e103 the
    variance is about 1e206, ``var**(-3/2)`` is 0, and the gradient with it. Multiplying the
    weight by the value already computed first keeps the product in range (and needs no
    ``pow`` call). At x = 0 both forms give the infinity of the same sign.
    """
    x = b.node(node_id).args[0]
    return b.mul(b.const(_negative_exponent(b, node_id)), b.mul(b.mul(w, node_id), b.recip(x)))


def _pow_vjp(b, node_id, g):
    if _negative_exponent(b, node_id) is not None:
        return [_scaled_by_power(b, node_id, g), None]
    return _elementwise_vjp(_pow_partials)(b, node_id, g)


def _pow_jvp(b, node_id, tangents):
    if _negative_exponent(b, node_id) is not None:
        t = tangents[0]
        return None if t is None else _scaled_by_power(b, node_id, t)
    return _elementwise_jvp(_pow_partials)(b, node_id, tangents)


def _c_pow(p, args, attrs):
    x, y = args
    e = y.const
    if e is not None and float(e).is_integer() and 1 <= abs(e) <= 4:
        product = " * ".join([str(x)] * int(abs(e)))
        return product if e > 0 else f"{p.literal(1)} / ({product})"
    if e == 0.5:
        return p.call("sqrt", x)
    if e == -0.5:
        return f"{p.literal(1)} / {p.call('sqrt', x)}"
    if e == 1.5:
        return f"{x} * {p.call('sqrt', x)}"
    return p.call("pow", x, y)


def _pow_cost(node, shapes):
    return size_of(node.shape)


def _text_pow(args, attrs):
    base, exponent = args
    if same_number(exponent.number, -1):
        return f"1/{wrap(base, PRODUCT)}"
    if same_number(exponent.number, sp.Rational(1, 2)):
        return f"sqrt({base})"
    return f"{wrap(base, POWER)}**{wrap(exponent, POWER)}"


register(
    Op(
        name="pow",
        kind="elementwise",
        arity=2,
        shape=elementwise_shape,
        vjp=_pow_vjp,
        jvp=_pow_jvp,
        c=_c_pow,
        text=_text_pow,
        numpy=lambda args, attrs: np.power(args[0], args[1]),
        to_sympy=_sympy_pow,
        domain=((0.2, 2.0), (-2.0, 2.0)),
        cost=_pow_cost,
        simplify=_simplify_pow,
        sympy_heads=(sp.Pow, HadamardPower),
    )
)
