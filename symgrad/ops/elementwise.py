"""Scalar functions applied element by element: math, activations, comparisons, selection.

Each differentiable function states its local derivative in terms of its
argument ``x`` and its own result ``y`` (``tanh' = 1 - y*y`` reuses the
forward value instead of computing ``cosh``). The same entry serves a scalar
and every element of a matrix.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from .. import functions as sgf
from . import Op, elementwise_cost, elementwise_shape, elementwise_sympy, register, size_of
from .arith import _elementwise_vjp

#: SymPy function head -> op name, for heads that map one-to-one onto an op.
SYMPY_HEADS: dict = {}


#: Arguments larger than this many nodes get their function applied unevaluated: SymPy's
#: automatic evaluation of sin(x), tanh(x)... asks assumption questions about x (is it zero,
#: real, a multiple of pi?) whose cost can explode on large expressions (minutes, through
#: Mod and polynomial gcds), while on small ones it tidies the display.
EVALUATED_ARGUMENT_NODES = 40


def _small(expr, limit=EVALUATED_ARGUMENT_NODES) -> bool:
    for count, _ in enumerate(sp.preorder_traversal(expr)):
        if count >= limit:
            return False
    return True


def _apply(head, *args):
    """``head(*args)`` for display: evaluated by SymPy when the arguments are small and SymPy
    manages (its simplification of Max, Min and Piecewise arguments can fail on scalars made
    from matrices), else unevaluated."""
    if all(_small(a) for a in args):
        try:
            return head(*args)
        except (TypeError, AttributeError):
            pass
    return head(*args, evaluate=False)


def unary(name, *, sympy_head, c, numpy, derivative, domain, cost=1, simplify=None):
    """Register a one-argument function.

    ``derivative(b, x, y)`` builds dy/dx from the argument ``x`` and the result ``y``.
    """

    def partials(b, node_id):
        x = b.node(node_id).args[0]
        return [derivative(b, x, node_id)]

    register(
        Op(
            name=name,
            kind="elementwise",
            arity=1,
            shape=elementwise_shape,
            vjp=_elementwise_vjp(partials) if derivative is not None else None,
            c=c,
            numpy=lambda args, attrs: numpy(args[0]),
            to_sympy=elementwise_sympy(lambda args, attrs: _apply(sympy_head, *args)),
            domain=(domain,),
            cost=elementwise_cost(cost),
            simplify=simplify,
            differentiable=derivative is not None,
        )
    )
    SYMPY_HEADS[sympy_head] = name


def _call(cname):
    return lambda p, args, attrs: p.call(cname, args[0])


def _runtime(fname):
    return lambda p, args, attrs: p.runtime(fname, args[0])


def _one_minus_square(b, y):
    return b.sub(b.const(1), b.mul(y, y))


unary("exp", sympy_head=sp.exp, c=_call("exp"), numpy=np.exp, domain=(-2, 2),
      derivative=lambda b, x, y: y)
def _stable_log(b, args, attrs):
    """Rewrite logs of functions that over- or underflow into forms that do not.

    log(exp(z)) = z; log(sigmoid(z)) = -softplus(-z); log(1 + exp(z)) = softplus(z);
    log(1 - sigmoid(z)) = -softplus(z); log(softmax(z)) = log_softmax(z).
    """
    inner = b.node(args[0])
    if inner.op == "exp":
        return inner.args[0]
    if inner.op == "sigmoid":
        return b.neg(b.call("softplus", b.neg(inner.args[0])))
    if inner.op == "softmax":
        return b.call("log_softmax", inner.args[0])
    if inner.op == "add" and len(inner.args) == 2:
        one = [a for a in inner.args if b.is_const(a, 1)]
        rest = [a for a in inner.args if not b.is_const(a, 1)]
        if len(one) == 1 and len(rest) == 1:
            term = b.node(rest[0])
            if term.op == "exp":
                return b.call("softplus", term.args[0])
            if term.op == "mul" and len(term.args) == 2 and any(b.is_const(a, -1) for a in term.args):
                negated = b.node([a for a in term.args if not b.is_const(a, -1)][0])
                if negated.op == "sigmoid":
                    return b.neg(b.call("softplus", negated.args[0]))
    return None


unary("log", sympy_head=sp.log, c=_call("log"), numpy=np.log, domain=(0.2, 3),
      derivative=lambda b, x, y: b.recip(x), simplify=_stable_log)
unary("sin", sympy_head=sp.sin, c=_call("sin"), numpy=np.sin, domain=(-3, 3),
      derivative=lambda b, x, y: b.call("cos", x))
unary("cos", sympy_head=sp.cos, c=_call("cos"), numpy=np.cos, domain=(-3, 3),
      derivative=lambda b, x, y: b.neg(b.call("sin", x)))
unary("tan", sympy_head=sp.tan, c=_call("tan"), numpy=np.tan, domain=(-1.2, 1.2),
      derivative=lambda b, x, y: b.add(b.const(1), b.mul(y, y)))
unary("tanh", sympy_head=sp.tanh, c=_call("tanh"), numpy=np.tanh, domain=(-2, 2),
      derivative=lambda b, x, y: _one_minus_square(b, y))
unary("sinh", sympy_head=sp.sinh, c=_call("sinh"), numpy=np.sinh, domain=(-2, 2),
      derivative=lambda b, x, y: b.call("cosh", x))
unary("cosh", sympy_head=sp.cosh, c=_call("cosh"), numpy=np.cosh, domain=(-2, 2),
      derivative=lambda b, x, y: b.call("sinh", x))
unary("atan", sympy_head=sp.atan, c=_call("atan"), numpy=np.arctan, domain=(-2, 2),
      derivative=lambda b, x, y: b.recip(b.add(b.const(1), b.mul(x, x))))
unary("asin", sympy_head=sp.asin, c=_call("asin"), numpy=np.arcsin, domain=(-0.9, 0.9),
      derivative=lambda b, x, y: b.powc(_one_minus_square(b, x), sp.Rational(-1, 2)))
unary("acos", sympy_head=sp.acos, c=_call("acos"), numpy=np.arccos, domain=(-0.9, 0.9),
      derivative=lambda b, x, y: b.neg(b.powc(_one_minus_square(b, x), sp.Rational(-1, 2))))
unary("asinh", sympy_head=sp.asinh, c=_call("asinh"), numpy=np.arcsinh, domain=(-2, 2),
      derivative=lambda b, x, y: b.powc(b.add(b.mul(x, x), b.const(1)), sp.Rational(-1, 2)))
unary("acosh", sympy_head=sp.acosh, c=_call("acosh"), numpy=np.arccosh, domain=(1.2, 3),
      derivative=lambda b, x, y: b.powc(b.add(b.mul(x, x), b.const(-1)), sp.Rational(-1, 2)))
unary("atanh", sympy_head=sp.atanh, c=_call("atanh"), numpy=np.arctanh, domain=(-0.9, 0.9),
      derivative=lambda b, x, y: b.recip(_one_minus_square(b, x)))
unary("erf", sympy_head=sp.erf, c=_call("erf"), numpy=lambda x: np.vectorize(_erf)(x), domain=(-2, 2),
      derivative=lambda b, x, y: b.mul(b.const(2 / sp.sqrt(sp.pi)),
                                       b.call("exp", b.neg(b.mul(x, x)))))
unary("erfc", sympy_head=sp.erfc, c=_call("erfc"), numpy=lambda x: 1 - np.vectorize(_erf)(x), domain=(-2, 2),
      derivative=lambda b, x, y: b.mul(b.const(-2 / sp.sqrt(sp.pi)),
                                       b.call("exp", b.neg(b.mul(x, x)))))


def _reciprocal_of(cname):
    return lambda p, args, attrs: f"{p.literal(1)} / {p.call(cname, args[0])}"


unary("sec", sympy_head=sp.sec, c=_reciprocal_of("cos"), numpy=lambda x: 1 / np.cos(x), domain=(-1.2, 1.2),
      derivative=lambda b, x, y: b.mul(y, b.call("tan", x)))
unary("csc", sympy_head=sp.csc, c=_reciprocal_of("sin"), numpy=lambda x: 1 / np.sin(x), domain=(0.3, 2.8),
      derivative=lambda b, x, y: b.neg(b.mul(y, b.call("cot", x))))
unary("cot", sympy_head=sp.cot, c=_reciprocal_of("tan"), numpy=lambda x: 1 / np.tan(x), domain=(0.3, 1.4),
      derivative=lambda b, x, y: b.neg(b.add(b.const(1), b.mul(y, y))))
unary("sech", sympy_head=sp.sech, c=_reciprocal_of("cosh"), numpy=lambda x: 1 / np.cosh(x), domain=(-2, 2),
      derivative=lambda b, x, y: b.neg(b.mul(y, b.call("tanh", x))))
unary("csch", sympy_head=sp.csch, c=_reciprocal_of("sinh"), numpy=lambda x: 1 / np.sinh(x), domain=(0.3, 2),
      derivative=lambda b, x, y: b.neg(b.mul(y, b.call("coth", x))))
unary("coth", sympy_head=sp.coth, c=_reciprocal_of("tanh"), numpy=lambda x: 1 / np.tanh(x), domain=(0.3, 2),
      derivative=lambda b, x, y: _one_minus_square(b, y))
unary("acot", sympy_head=sp.acot, c=lambda p, args, attrs: p.call("atan", f"{p.literal(1)} / {args[0]}"),
      numpy=lambda x: np.arctan(1 / x), domain=(0.3, 2),
      derivative=lambda b, x, y: b.neg(b.recip(b.add(b.const(1), b.mul(x, x)))))
unary("abs", sympy_head=sp.Abs, c=_call("fabs"), numpy=np.abs, domain=(0.1, 2),
      derivative=lambda b, x, y: b.call("sign", x))
unary("sign", sympy_head=sp.sign, c=_runtime("sign"), numpy=np.sign, domain=(0.1, 2),
      derivative=None)
unary("sigmoid", sympy_head=sgf.sigmoid, c=_runtime("sigmoid"), numpy=sgf._np_sigmoid,
      domain=(-3, 3), derivative=lambda b, x, y: b.mul(y, b.sub(b.const(1), y)))
unary("relu", sympy_head=sgf.relu, c=_runtime("relu"), numpy=lambda x: np.maximum(x, 0.0),
      domain=(0.1, 2), derivative=lambda b, x, y: b.apply("heaviside", x, attrs=(sp.Integer(0),)))
unary("softplus", sympy_head=sgf.softplus, c=_runtime("softplus"), numpy=sgf._np_softplus,
      domain=(-3, 3), derivative=lambda b, x, y: b.call("sigmoid", x))


def _erf(x):
    import math

    return math.erf(x)


def _atan2_partials(b, node_id):
    y, x = b.node(node_id).args
    inverse = b.recip(b.add(b.mul(x, x), b.mul(y, y)))
    return [b.mul(x, inverse), b.neg(b.mul(y, inverse))]


# atan2(y, x): the angle of the point (x, y).
register(
    Op(
        name="atan2",
        kind="elementwise",
        arity=2,
        shape=elementwise_shape,
        vjp=_elementwise_vjp(_atan2_partials),
        c=lambda p, args, attrs: p.call("atan2", args[0], args[1]),
        numpy=lambda args, attrs: np.arctan2(args[0], args[1]),
        to_sympy=elementwise_sympy(lambda args, attrs: sp.atan2(args[0], args[1])),
        domain=((-2, 2), (0.2, 2)),
        cost=elementwise_cost(1),
    )
)
SYMPY_HEADS[sp.atan2] = "atan2"


# Heaviside step with a chosen value at 0; attrs: (value_at_zero,).
register(
    Op(
        name="heaviside",
        kind="elementwise",
        arity=1,
        shape=elementwise_shape,
        c=lambda p, args, attrs: p.runtime("heaviside", args[0], p.literal(attrs[0])),
        numpy=lambda args, attrs: np.heaviside(args[0], float(attrs[0])),
        to_sympy=elementwise_sympy(lambda args, attrs: sp.Heaviside(args[0], attrs[0])),
        domain=((0.1, 2),),
        cost=elementwise_cost(1),
        differentiable=False,
    )
)


# --- max / min of two values: the derivative goes to the larger (smaller) one, half each on a tie.


def _select_partials(first_wins):
    def partials(b, node_id):
        x, y = b.node(node_id).args
        half = (sp.Rational(1, 2),)
        dx = b.apply("heaviside", b.sub(x, y) if first_wins else b.sub(y, x), attrs=half)
        dy = b.apply("heaviside", b.sub(y, x) if first_wins else b.sub(x, y), attrs=half)
        return [dx, dy]

    return partials


for _name, _head, _np, _first in (("max", sp.Max, np.maximum, True), ("min", sp.Min, np.minimum, False)):
    register(
        Op(
            name=_name,
            kind="elementwise",
            arity=2,
            shape=elementwise_shape,
            vjp=_elementwise_vjp(_select_partials(_first)),
            c=(lambda fname: lambda p, args, attrs: p.runtime(fname, args[0], args[1]))(_name),
            numpy=(lambda f: lambda args, attrs: f(args[0], args[1]))(_np),
            to_sympy=elementwise_sympy((lambda h: lambda args, attrs: _apply(h, *args))(_head)),
            domain=((-2, 2), (-2, 2)),
            cost=elementwise_cost(1),
            commutative=True,
        )
    )


# --- comparisons and logic: values 1.0 (true) and 0.0 (false); no derivative.

_RELATIONS = {
    "lt": (sp.StrictLessThan, "<", np.less),
    "le": (sp.LessThan, "<=", np.less_equal),
    "gt": (sp.StrictGreaterThan, ">", np.greater),
    "ge": (sp.GreaterThan, ">=", np.greater_equal),
    "eq": (sp.Eq, "==", np.equal),
    "ne": (sp.Ne, "!=", np.not_equal),
}

for _name, (_head, _symbol, _np) in _RELATIONS.items():
    register(
        Op(
            name=_name,
            kind="elementwise",
            arity=2,
            shape=elementwise_shape,
            c=(lambda s: lambda p, args, attrs: f"({args[0]} {s} {args[1]})")(_symbol),
            numpy=(lambda f: lambda args, attrs: f(args[0], args[1]).astype(float))(_np),
            to_sympy=elementwise_sympy((lambda h: lambda args, attrs: h(*args, evaluate=False))(_head)),
            domain=((-2, 2), (-2, 2)),
            cost=elementwise_cost(1),
            differentiable=False,
        )
    )
    SYMPY_HEADS[_head] = _name


def _truth(x):
    return f"({x} != 0)"


for _name, _head, _joiner, _reduce in (("and", sp.And, " && ", np.logical_and), ("or", sp.Or, " || ", np.logical_or)):
    register(
        Op(
            name=_name,
            kind="elementwise",
            shape=elementwise_shape,
            c=(lambda j: lambda p, args, attrs: "(" + j.join(_truth(a) for a in args) + ")")(_joiner),
            numpy=(lambda r: lambda args, attrs: r.reduce([a != 0 for a in args]).astype(float))(_reduce),
            to_sympy=elementwise_sympy((lambda h: lambda args, attrs: h(*args))(_head)),
            domain=((-1, 1), (-1, 1)),
            cost=lambda node, shapes: (len(shapes) - 1) * size_of(node.shape),
            differentiable=False,
            commutative=True,
        )
    )
    SYMPY_HEADS[_head] = _name
register(
    Op(
        name="not",
        kind="elementwise",
        arity=1,
        shape=elementwise_shape,
        c=lambda p, args, attrs: f"({args[0]} == 0)",
        numpy=lambda args, attrs: (args[0] == 0).astype(float),
        to_sympy=elementwise_sympy(lambda args, attrs: sp.Not(args[0])),
        domain=((-1, 1),),
        cost=elementwise_cost(1),
        differentiable=False,
    )
)
SYMPY_HEADS[sp.Not] = "not"


# --- select: Piecewise. args: (cond1, value1, cond2, value2, ..., otherwise).


def _select_vjp(b, node_id, g):
    args = b.node(node_id).args
    zero = b.const(0)
    contributions = []
    for k, arg in enumerate(args):
        is_condition = k % 2 == 0 and k != len(args) - 1
        if is_condition:
            contributions.append(None)
            continue
        routed = [a if (i % 2 == 0 and i != len(args) - 1) else (g if i == k else zero)
                  for i, a in enumerate(args)]
        contributions.append(b.apply("select", *routed))
    return contributions


def _c_select(p, args, attrs):
    text = str(args[-1])
    for k in range(len(args) - 3, -1, -2):
        text = f"{_truth(args[k])} ? {args[k + 1]} : ({text})"
    return text


def _np_select(args, attrs):
    conditions = [args[k] != 0 for k in range(0, len(args) - 1, 2)]
    values = [args[k] for k in range(1, len(args) - 1, 2)]
    shape = np.broadcast_shapes(*[np.shape(a) for a in args])
    return np.select([np.broadcast_to(c, shape) for c in conditions],
                     [np.broadcast_to(v, shape) for v in values],
                     default=np.broadcast_to(args[-1], shape)).astype(float)


def _sympy_select(args, attrs):
    pairs = [(args[k + 1], args[k]) for k in range(0, len(args) - 1, 2)] + [(args[-1], True)]
    return _apply(sp.Piecewise, *pairs)


register(
    Op(
        name="select",
        kind="elementwise",
        shape=elementwise_shape,
        vjp=_select_vjp,
        c=_c_select,
        numpy=_np_select,
        to_sympy=elementwise_sympy(_sympy_select),
        domain=((-1, 1), (-2, 2), (-2, 2)),
        cost=lambda node, shapes: (len(shapes) // 2) * size_of(node.shape),
    )
)
