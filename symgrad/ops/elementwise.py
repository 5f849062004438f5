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
from .. import rewrites
from . import Op, reads, broadcast_shapes, elementwise_cost, elementwise_shape, elementwise_sympy, register, size_of
from .arith import _elementwise_jvp, _elementwise_vjp
from .text import COMPARISON, call, number, wrap



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


def unary(name, *, sympy_head, c, numpy, derivative, domain, cost=1, simplify=None, display=None):
    """Register a one-argument function.

    ``derivative(b, x, y)`` builds dy/dx from the argument ``x`` and the result ``y``
    (``None``: the derivative is 0 almost everywhere). ``sympy_head`` is the SymPy
    function read as this op (``None`` for an op that only derivatives create);
    ``display(x)`` builds its SymPy form when that is not ``sympy_head(x)``.
    """
    show = display if display is not None else (lambda x: _apply(sympy_head, x))

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
            jvp=_elementwise_jvp(partials) if derivative is not None else None,
            c=c,
            numpy=lambda args, attrs: numpy(args[0]),
            to_sympy=elementwise_sympy(lambda args, attrs: show(*args)),
            domain=(domain,),
            cost=elementwise_cost(cost),
            simplify=simplify,
            differentiable=derivative is not None,
            sympy_heads=(sympy_head,) if sympy_head is not None else (),
        )
    )


def _call(cname):
    return lambda p, args, attrs: p.call(cname, args[0])


def _runtime(fname):
    return lambda p, args, attrs: p.runtime(fname, args[0])


def _one_minus_square(b, y):
    return b.sub(b.const(1), b.mul(y, y))


def _one_minus_square_factored(b, x):
    """(1 - x)(1 + x): 1 - x*x loses the digits of 1 - x where |x| is near 1."""
    return b.mul(b.sub(b.const(1), x), b.add(b.const(1), x))


def _inverse_sqrt_of_square_minus_one(b, x):
    """1/sqrt(x*x - 1) as 1/(sqrt(|x| - 1) sqrt(|x| + 1)): no cancellation near |x| = 1,
    no overflow of x*x for large |x|."""
    a = b.call("abs", x)
    return b.recip(b.mul(b.powc(b.add(a, b.const(-1)), sp.Rational(1, 2)),
                         b.powc(b.add(a, b.const(1)), sp.Rational(1, 2))))


unary("exp", sympy_head=sp.exp, c=_call("exp"), numpy=np.exp, domain=(-2, 2),
      derivative=lambda b, x, y: y, simplify=lambda b, args, attrs: rewrites.stable_exp(b, args[0]))
unary("log", sympy_head=sp.log, c=_call("log"), numpy=np.log, domain=(0.2, 3),
      derivative=lambda b, x, y: b.recip(x), simplify=lambda b, args, attrs: rewrites.stable_log(b, args[0]))
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
      derivative=lambda b, x, y: b.powc(_one_minus_square_factored(b, x), sp.Rational(-1, 2)))
unary("acos", sympy_head=sp.acos, c=_call("acos"), numpy=np.arccos, domain=(-0.9, 0.9),
      derivative=lambda b, x, y: b.neg(b.powc(_one_minus_square_factored(b, x), sp.Rational(-1, 2))))
unary("asinh", sympy_head=sp.asinh, c=_call("asinh"), numpy=np.arcsinh, domain=(-2, 2),
      derivative=lambda b, x, y: b.recip(b.apply("hypot", x, b.const(1))))
unary("acosh", sympy_head=sp.acosh, c=_call("acosh"), numpy=np.arccosh, domain=(1.2, 3),
      derivative=lambda b, x, y: _inverse_sqrt_of_square_minus_one(b, x))
unary("atanh", sympy_head=sp.atanh, c=_call("atanh"), numpy=np.arctanh, domain=(-0.9, 0.9),
      derivative=lambda b, x, y: b.recip(_one_minus_square_factored(b, x)))
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
      domain=(-3, 3), derivative=lambda b, x, y: b.mul(y, b.call("sigmoid", b.neg(x))))
unary("relu", sympy_head=sgf.relu, c=_runtime("relu"), numpy=lambda x: np.maximum(x, 0.0),
      domain=(0.1, 2), derivative=lambda b, x, y: b.apply("heaviside", x, attrs=(sp.Integer(0),)))
unary("softplus", sympy_head=sgf.softplus, c=_runtime("softplus"), numpy=sgf._np_softplus,
      domain=(-3, 3), derivative=lambda b, x, y: b.call("sigmoid", x))


def _erf(x):
    import math

    return math.erf(x)


def _atan2_partials(b, node_id):
    # x/(x**2 + y**2) and -y/(x**2 + y**2) as (x/r)/r and -(y/r)/r with r = hypot(x, y):
    # the squares overflowed to a zero gradient at x = 1e300 (true: 1e-300)
    y, x = b.node(node_id).args
    inverse = b.recip(b.apply("hypot", x, y))
    return [b.mul(b.mul(x, inverse), inverse), b.neg(b.mul(b.mul(y, inverse), inverse))]


# atan2(y, x): the angle of the point (x, y).
register(
    Op(
        name="atan2",
        kind="elementwise",
        arity=2,
        shape=elementwise_shape,
        vjp=_elementwise_vjp(_atan2_partials),
        jvp=_elementwise_jvp(_atan2_partials),
        c=lambda p, args, attrs: p.call("atan2", args[0], args[1]),
        numpy=lambda args, attrs: np.arctan2(args[0], args[1]),
        to_sympy=elementwise_sympy(lambda args, attrs: sp.atan2(args[0], args[1])),
        domain=((-2, 2), (0.2, 2)),
        cost=elementwise_cost(1),
        sympy_heads=(sp.atan2,),
    )
)



# Heaviside step with a chosen value at 0; attrs: (value_at_zero,).
register(
    Op(
        name="heaviside",
        kind="elementwise",
        arity=1,
        shape=elementwise_shape,
        c=lambda p, args, attrs: p.runtime("heaviside", args[0], p.literal(attrs[0])),
        text=lambda args, attrs: call("heaviside", [args[0], number(attrs[0])]),
        numpy=lambda args, attrs: np.heaviside(args[0], float(attrs[0])),
        to_sympy=elementwise_sympy(lambda args, attrs: sp.Heaviside(args[0], attrs[0])),
        domain=((0.1, 2),),
        cost=elementwise_cost(1),
        differentiable=False,
        sympy_heads=(sp.Heaviside,),
        # Heaviside(x) takes its value at 0 from SymPy's default, 1/2.
        from_sympy=lambda r, e: r.b.apply("heaviside", r.node(e.args[0]),
                                          attrs=(e.args[1] if len(e.args) > 1 else sp.Rational(1, 2),)),
        sympy_children=lambda e: [e.args[0]],
    )
)


# --- max / min: the derivative goes to the larger (smaller) value, split evenly on a tie.


def _select_partials(first_wins):
    """Two args: heaviside(x - y, 1/2), half each on a tie. More (``Max(a, b, c)``): the
    indicator of the args equal to the result over their count, as torch.amax and jnp.max
    split a tie of a reduction (1/3 each for three), not 1/4, 1/4, 1/2 as nested pairs would."""

    def partials(b, node_id):
        args = b.node(node_id).args
        if len(args) == 2:
            x, y = args
            half = (sp.Rational(1, 2),)
            dx = b.apply("heaviside", b.sub(x, y) if first_wins else b.sub(y, x), attrs=half)
            dy = b.apply("heaviside", b.sub(y, x) if first_wins else b.sub(x, y), attrs=half)
            return [dx, dy]
        one, zero = b.const(1), b.const(0)
        hits = [b.apply("select", b.apply("eq", a, node_id), one, zero) for a in args]
        share = b.recip(b.add(*hits))
        return [b.mul(h, share) for h in hits]

    return partials


def _nested_runtime(fname):
    def c(p, args, attrs):
        text = str(args[-1])
        for a in reversed(args[:-1]):
            text = p.runtime(fname, a, text)
        return text

    return c


def _np_reduce(f):
    def numpy(args, attrs):
        out = np.asarray(args[0], dtype=float)
        for a in args[1:]:
            out = f(out, a)
        return out

    return numpy


for _name, _head, _np, _first in (("max", sp.Max, np.maximum, True), ("min", sp.Min, np.minimum, False)):
    register(
        Op(
            name=_name,
            kind="elementwise",
            shape=elementwise_shape,
            vjp=_elementwise_vjp(_select_partials(_first)),
            jvp=_elementwise_jvp(_select_partials(_first)),
            c=_nested_runtime(_name),
            numpy=_np_reduce(_np),
            to_sympy=elementwise_sympy((lambda h: lambda args, attrs: _apply(h, *args))(_head)),
            domain=((-2, 2), (-2, 2)),
            cost=lambda node, shapes: (len(shapes) - 1) * size_of(node.shape),
            commutative=True,
            sympy_heads=(_head,),
            simplify=lambda b, args, attrs: args[0] if len(args) == 1 else None,
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

def _fold_relation(compare):
    """A comparison of two constants is the constant 1 or 0 (a select then keeps one branch)."""

    def simplify(b, args, attrs):
        values = [b.const_value(a) for a in args]
        if all(v is not None and v.is_number for v in values):
            return b.const(int(bool(compare(float(values[0]), float(values[1])))))
        return None

    return simplify


def _fold_logic(is_and):
    """Constants in and/or: a deciding one decides, the others are dropped."""

    def simplify(b, args, attrs):
        constants = [a for a in args if b.const_value(a) is not None]
        if not constants:
            return None
        truths = [float(b.const_value(a)) != 0 for a in constants]
        if (not all(truths)) if is_and else any(truths):
            return b.const(0 if is_and else 1)
        rest = [a for a in args if a not in constants]
        if not rest:
            return b.const(1 if is_and else 0)
        if len(rest) == 1 and b.node(rest[0]).op in _TRUTH_VALUED:
            return rest[0]
        return b.apply("and" if is_and else "or", *rest)

    return simplify


#: Ops whose values are already 1.0 or 0.0.
_TRUTH_VALUED = set(_RELATIONS) | {"and", "or", "not"}

for _name, (_head, _symbol, _np) in _RELATIONS.items():
    register(
        Op(
            name=_name,
            kind="elementwise",
            arity=2,
            shape=elementwise_shape,
            c=(lambda s: lambda p, args, attrs: f"({args[0]} {s} {args[1]})")(_symbol),
            text=(lambda s: lambda args, attrs: f"{wrap(args[0], COMPARISON)} {s} {wrap(args[1], COMPARISON)}")(_symbol),
            numpy=(lambda f: lambda args, attrs: f(args[0], args[1]).astype(float))(_np),
            to_sympy=elementwise_sympy((lambda h: lambda args, attrs: h(*args, evaluate=False))(_head)),
            domain=((-2, 2), (-2, 2)),
            cost=elementwise_cost(1),
            simplify=_fold_relation(_np),
            differentiable=False,
            sympy_heads=(_head,),
        )
    )


def _truth(x):
    return f"({x} != 0)"


for _name, _head, _joiner, _reduce in (("and", sp.And, " && ", np.logical_and), ("or", sp.Or, " || ", np.logical_or)):
    register(
        Op(
            name=_name,
            kind="elementwise",
            shape=elementwise_shape,
            c=(lambda j: lambda p, args, attrs: "(" + j.join(_truth(a) for a in args) + ")")(_joiner),
            text=(lambda j: lambda args, attrs: j.join(wrap(a, COMPARISON) for a in args))(" & " if _name == "and" else " | "),
            numpy=(lambda r: lambda args, attrs: r.reduce(
                np.broadcast_arrays(*[np.asarray(a) != 0 for a in args])).astype(float))(_reduce),
            to_sympy=elementwise_sympy((lambda h: lambda args, attrs: h(*args))(_head)),
            domain=((-1, 1), (-1, 1)),
            cost=lambda node, shapes: (len(shapes) - 1) * size_of(node.shape),
            simplify=_fold_logic(_name == "and"),
            differentiable=False,
            commutative=True,
            sympy_heads=(_head,),
        )
    )
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
        sympy_heads=(sp.Not,),
    )
)


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


def _select_jvp(b, node_id, tangents):
    """The select of the values' tangents under the same conditions."""
    args = b.node(node_id).args
    values = [k for k in range(len(args)) if k % 2 == 1 or k == len(args) - 1]
    if all(tangents[k] is None for k in values):
        return None
    zero = b.const(0)
    routed = [a if k not in values else (zero if tangents[k] is None else tangents[k]) for k, a in enumerate(args)]
    return b.broadcast(b.apply("select", *routed), b.shape(node_id))


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


def _simplify_select(b, args, attrs):
    """Constant conditions decide: a false one drops its branch, a true one ends the select."""
    conditions = range(0, len(args) - 1, 2)
    if not any(b.const_value(args[k]) is not None for k in conditions):
        return None
    shape = broadcast_shapes([b.shape(a) for a in args])
    kept = []
    for k in conditions:
        value = b.const_value(args[k])
        if value is None:
            kept += [args[k], args[k + 1]]
        elif float(value) != 0:
            return b.broadcast(args[k + 1], shape) if not kept else b.apply("select", *kept, args[k + 1])
    if not kept:
        return b.broadcast(args[-1], shape)
    return b.apply("select", *kept, args[-1])


def _sympy_select(args, attrs):
    pairs = [(args[k + 1], args[k]) for k in range(0, len(args) - 1, 2)] + [(args[-1], True)]
    return _apply(sp.Piecewise, *pairs)


register(
    Op(
        name="select",
        kind="elementwise",
        shape=elementwise_shape,
        vjp=_select_vjp,
        jvp=_select_jvp,
        c=_c_select,
        numpy=_np_select,
        to_sympy=elementwise_sympy(_sympy_select),
        simplify=_simplify_select,
        domain=((-1, 1), (-2, 2), (-2, 2)),
        cost=lambda node, shapes: (len(shapes) // 2) * size_of(node.shape),
        sympy_heads=(sp.ITE,),  # if-then-else of truth values, as SymPy rewrites some conditions
    )
)


@reads(sp.Piecewise, children=lambda e: [part for pair in e.args for part in (pair.cond, pair.expr)])
def _read_piecewise(r, e):
    """Piecewise((v1, c1), (v2, c2), ..., (v, True)) -> select(c1, v1, c2, v2, ..., v); NaN where no
    condition holds and there is no True branch."""
    args = []
    for pair in e.args:
        if pair.cond is sp.true:
            default = r.node(pair.expr)
            break
        args += [r.node(pair.cond), r.node(pair.expr)]
    else:
        default = r.b.const(sp.nan)
    return r.b.apply("select", *args, default) if args else default
