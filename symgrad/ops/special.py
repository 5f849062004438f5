"""Special and C-library functions: the stable forms the rewrites produce, SymPy's
C-function heads, gamma-function relatives, inverse reciprocal functions, and the
piecewise-constant functions (floor, ceiling) with their derivative conventions.

Every entry follows :func:`.elementwise.unary` (or registers an n-ary op the
same way): SymPy head, C form, NumPy reference, derivative from the argument
and the result, test domain.
"""

from __future__ import annotations

import math

import numpy as np
import sympy as sp
from sympy.codegen import cfunctions as cf

from .. import functions as sgf
from ..errors import UnsupportedFunctionError
from . import Op, elementwise_cost, elementwise_shape, elementwise_sympy, reads, register
from .arith import _elementwise_jvp, _elementwise_vjp
from .elementwise import (_apply, _call, _inverse_sqrt_of_square_minus_one, _one_minus_square_factored, _runtime,
                          unary)


def _scalar_ref(f):
    """A NumPy reference from a scalar Python function (math, mpmath), element by element."""
    return lambda x: np.vectorize(lambda v: float(f(float(v))), otypes=[float])(x)


def _mpmath(name):
    import mpmath

    return getattr(mpmath, name)


# --- C-library functions (sympy.codegen.cfunctions) ------------------------------------------


unary("log1p", sympy_head=cf.log1p, c=_call("log1p"), numpy=np.log1p, domain=(-0.5, 2),
      derivative=lambda b, x, y: b.recip(b.add(b.const(1), x)))
unary("expm1", sympy_head=cf.expm1, c=_call("expm1"), numpy=np.expm1, domain=(-2, 2),
      derivative=lambda b, x, y: b.call("exp", x))
unary("exp2", sympy_head=cf.exp2, c=_call("exp2"), numpy=np.exp2, domain=(-2, 2),
      derivative=lambda b, x, y: b.mul(b.const(sp.log(2)), y))
unary("log2", sympy_head=cf.log2, c=_call("log2"), numpy=np.log2, domain=(0.2, 3),
      derivative=lambda b, x, y: b.mul(b.const(1 / sp.log(2)), b.recip(x)))
unary("log10", sympy_head=cf.log10, c=_call("log10"), numpy=np.log10, domain=(0.2, 3),
      derivative=lambda b, x, y: b.mul(b.const(1 / sp.log(10)), b.recip(x)))
# cbrt(x) = sign(x) * abs(x)**(1/3): real for negative x too; d/dx = 1/(3 cbrt(x)**2), inf at 0.
unary("cbrt", sympy_head=cf.Cbrt, display=lambda x: _apply(sgf.Cbrt, x), c=_call("cbrt"), numpy=np.cbrt,
      domain=(0.2, 3),
      derivative=lambda b, x, y: b.mul(b.const(sp.Rational(1, 3)), b.powc(y, -2)))


# --- n-ary stable forms: hypot and logaddexp ---------------------------------------------------


def _nested(p, name, args, runtime=False):
    """``f(a, f(b, c))``: an n-ary function from its two-argument C form."""
    call = p.runtime if runtime else p.call
    text = str(args[-1])
    for a in reversed(args[:-1]):
        text = call(name, a, text)
    return text


def _hypot_partials(b, node_id):
    # d hypot / d t_i = t_i / hypot (NaN at the origin, as torch.hypot gives); the ratio first,
    # as the product of the adjoint and 1/hypot can underflow where the ratio is ordinary
    inverse = b.recip(node_id)
    return [b.mul(t, inverse) for t in b.node(node_id).args]


def _np_hypot(args, attrs):
    out = np.asarray(args[0], dtype=float)
    for a in args[1:]:
        out = np.hypot(out, a)
    return out


def _sympy_hypot(args, attrs):
    out = args[-1]
    for a in reversed(args[:-1]):
        out = cf.hypot(a, out)
    return out


# hypot(t1, t2, ...) = sqrt(t1**2 + t2**2 + ...) without overflow or underflow of the squares.
register(
    Op(
        name="hypot",
        sympy_heads=(cf.hypot,),
        kind="elementwise",
        shape=elementwise_shape,
        vjp=_elementwise_vjp(_hypot_partials),
        jvp=_elementwise_jvp(_hypot_partials),
        c=lambda p, args, attrs: _nested(p, "hypot", args),
        numpy=_np_hypot,
        to_sympy=elementwise_sympy(_sympy_hypot),
        domain=((-2, 2), (0.3, 2)),
        cost=lambda node, shapes: 4 * len(shapes) * max(1, node.size),
        commutative=True,
    )
)


def _logaddexp_partials(b, node_id):
    args = b.node(node_id).args
    if len(args) == 2:  # d/da log(exp(a) + exp(b)) = sigmoid(a - b): no cancellation, no overflow
        first, second = args
        return [b.call("sigmoid", b.sub(first, second)), b.call("sigmoid", b.sub(second, first))]
    # exp(a_i - m) / sum_j exp(a_j - m) with m the largest: a softmax over the args
    m = b.apply("max", *args)
    shifted = [b.call("exp", b.sub(a, m)) for a in args]
    inverse = b.recip(b.add(*shifted))
    return [b.mul(e, inverse) for e in shifted]


def _np_logaddexp(args, attrs):
    out = np.asarray(args[0], dtype=float)
    for a in args[1:]:
        out = np.logaddexp(out, a)
    return out


# logaddexp(u1, u2, ...) = log(exp(u1) + exp(u2) + ...), element by element, shifted by the largest.
register(
    Op(
        name="logaddexp",
        sympy_heads=(sgf.logaddexp,),
        kind="elementwise",
        shape=elementwise_shape,
        vjp=_elementwise_vjp(_logaddexp_partials),
        jvp=_elementwise_jvp(_logaddexp_partials),
        c=lambda p, args, attrs: _nested(p, "logaddexp", args, runtime=True),
        numpy=_np_logaddexp,
        to_sympy=elementwise_sympy(lambda args, attrs: sgf.logaddexp(*args)),
        domain=((-3, 3), (-3, 3)),
        cost=lambda node, shapes: 4 * len(shapes) * max(1, node.size),
        commutative=True,
    )
)


# --- sinc and its derivative ---------------------------------------------------------------


def _np_sinc(x):
    x = np.asarray(x, dtype=float)
    return np.sinc(x / np.pi)


def _np_dsinc(x):
    x = np.asarray(x, dtype=float)
    safe = np.where(x == 0, 1.0, x)
    return np.where(np.abs(x) < 1e-3, -x / 3 + x**3 / 30, (np.cos(safe) - np.sin(safe) / safe) / safe)


def _sympy_dsinc(x):
    return sp.Piecewise(((x * sp.cos(x) - sp.sin(x)) / x**2, sp.Ne(x, 0)), (0, True))


def _dsinc_derivative(b, x, y):
    # sinc''(x) = -sinc(x) - 2 sinc'(x)/x, with its limit -1/3 at x = 0
    zero = b.const(0)
    general = b.sub(b.neg(b.call("sinc", x)), b.mul(b.const(2), y, b.recip(x)))
    return b.apply("select", b.apply("eq", x, zero), b.const(sp.Rational(-1, 3)), general)


# sinc(x) = sin(x)/x, 1 at 0 (SymPy's unnormalized sinc); the runtime uses a series near 0.
unary("sinc", sympy_head=sp.sinc, c=_runtime("sinc"), numpy=_np_sinc, domain=(-3, 3),
      derivative=lambda b, x, y: b.call("dsinc", x))
# sinc'(x) = (cos(x) - sinc(x))/x, 0 at 0, from a series where that would cancel.
unary("dsinc", sympy_head=None, display=_sympy_dsinc, c=_runtime("dsinc"), numpy=_np_dsinc,
      domain=(-3, 3), derivative=_dsinc_derivative)


# --- gamma-function relatives ----------------------------------------------------------------


# log(Gamma(x)) for x > 0 (log(abs(Gamma(x))) below 0, where SymPy's loggamma is complex).
unary("loggamma", sympy_head=sp.loggamma, c=_runtime("lgamma"), numpy=_scalar_ref(math.lgamma),
      domain=(0.5, 4), derivative=lambda b, x, y: b.call("digamma", x))
# digamma(x) = polygamma(0, x); SymPy writes sp.digamma(x) as polygamma(0, x).
unary("digamma", sympy_head=sp.digamma, c=_runtime("digamma"), numpy=_scalar_ref(lambda v: _mpmath("digamma")(v)),
      domain=(0.5, 4), derivative=lambda b, x, y: b.apply("polygamma", x, attrs=(1,)))


def _read_polygamma(r, e):
    order, x = e.args
    if not (order.is_Integer and order >= 0):
        raise UnsupportedFunctionError(
            f"polygamma({order}, ...): the order must be a whole number 0, 1, 2, ... written in the model"
        )
    return r.b.apply("polygamma", r.node(x), attrs=(int(order),))


def _np_polygamma(args, attrs):
    psi = _mpmath("psi")
    return np.vectorize(lambda v: float(psi(attrs[0], v)), otypes=[float])(np.asarray(args[0], dtype=float))


def _polygamma_partials(b, node_id):
    return [b.apply("polygamma", b.node(node_id).args[0], attrs=(b.node(node_id).attrs[0] + 1,))]


# polygamma(n, x): the (n+1)-th derivative of log(Gamma(x)). attrs: (n,), a whole number;
# polygamma(0, x) is digamma(x).
register(
    Op(
        name="polygamma",
        kind="elementwise",
        arity=1,
        shape=elementwise_shape,
        vjp=_elementwise_vjp(_polygamma_partials),
        jvp=_elementwise_jvp(_polygamma_partials),
        c=lambda p, args, attrs: p.runtime("polygamma", p.literal(attrs[0]), args[0]),
        numpy=_np_polygamma,
        to_sympy=elementwise_sympy(lambda args, attrs: _apply(sp.polygamma, attrs[0], args[0])),
        text=lambda args, attrs: f"polygamma({attrs[0]}, {args[0]})",
        domain=((0.5, 4),),
        cost=elementwise_cost(40),
        simplify=lambda b, args, attrs: b.call("digamma", args[0]) if attrs[0] == 0 else None,
        test_cases=((((),), (1,)), (((2, 3),), (2,))),
        sympy_heads=(sp.polygamma,),
        from_sympy=_read_polygamma,
        sympy_children=lambda e: [e.args[1]],
    )
)


# --- inverse reciprocal functions: runtime forms exact near |x| = 1 (acsch: asinh(1/x)) ---------


def _of_reciprocal(cname):
    return lambda p, args, attrs: p.call(cname, f"{p.literal(1)} / {args[0]}")


def _asec_derivative(b, x, y):
    # 1/(x**2 sqrt(1 - 1/x**2)) = 1/(|x| sqrt(|x| - 1) sqrt(|x| + 1)): exact near |x| = 1
    return b.mul(b.recip(b.call("abs", x)), _inverse_sqrt_of_square_minus_one(b, x))


def _acsch_derivative(b, x, y):
    # -1/(x**2 sqrt(1 + 1/x**2)) = -1/(|x| hypot(x, 1)): no overflow of x**2
    return b.neg(b.recip(b.mul(b.call("abs", x), b.apply("hypot", x, b.const(1)))))


def _asech_derivative(b, x, y):
    # -1/(x sqrt(1 - x**2)), with 1 - x**2 as (1 - x)(1 + x)
    return b.neg(b.recip(b.mul(x, b.powc(_one_minus_square_factored(b, x), sp.Rational(1, 2)))))


unary("acoth", sympy_head=sp.acoth, c=_runtime("acoth"), numpy=lambda x: np.arctanh(1 / x),
      domain=(1.2, 3), derivative=lambda b, x, y: b.recip(_one_minus_square_factored(b, x)))
unary("asec", sympy_head=sp.asec, c=_runtime("asec"), numpy=lambda x: np.arccos(1 / x),
      domain=(1.2, 3), derivative=_asec_derivative)
unary("acsc", sympy_head=sp.acsc, c=_runtime("acsc"), numpy=lambda x: np.arcsin(1 / x),
      domain=(1.2, 3), derivative=lambda b, x, y: b.neg(_asec_derivative(b, x, y)))
unary("asech", sympy_head=sp.asech, c=_runtime("asech"), numpy=lambda x: np.arccosh(1 / x),
      domain=(0.2, 0.9), derivative=_asech_derivative)
unary("acsch", sympy_head=sp.acsch, c=_of_reciprocal("asinh"), numpy=lambda x: np.arcsinh(1 / x),
      domain=(0.3, 3), derivative=_acsch_derivative)


# --- piecewise-constant and sawtooth functions: derivatives between the jumps ------------------


def _noting(text):
    """A simplify hook that records a derivative convention for ``symgrad show`` (for the
    derivatives between jumps that are not 0)."""

    def simplify(b, args, attrs):
        b.note_rewrite(text)
        return None

    return simplify


# No derivative rule: symgrad show lists them among the ops whose derivative is taken as 0.
unary("floor", sympy_head=sp.floor, c=_call("floor"), numpy=np.floor, domain=(0.1, 0.9), derivative=None)
unary("ceiling", sympy_head=sp.ceiling, c=_call("ceil"), numpy=np.ceil, domain=(0.1, 0.9), derivative=None)
unary("frac", sympy_head=sp.frac, display=lambda x: _apply(sgf.frac, x),
      c=lambda p, args, attrs: f"{args[0]} - {p.call('floor', args[0])}",
      numpy=lambda x: x - np.floor(x), domain=(0.1, 0.9), derivative=lambda b, x, y: b.const(1),
      simplify=_noting("frac(x): derivative taken as 1 (between its jumps)"))


def _np_mod(args, attrs):
    return np.mod(args[0], args[1])


def _mod_partials(b, node_id):
    x, c = b.node(node_id).args
    # Mod(x, c) = x - c*floor(x/c): d/dx = 1, d/dc = -floor(x/c), between the jumps
    return [b.const(1), b.neg(b.call("floor", b.mul(x, b.recip(c))))]


# Mod(x, c): the remainder with the sign of c, as SymPy and Python define it.
register(
    Op(
        name="mod",
        sympy_heads=(sp.Mod,),
        kind="elementwise",
        arity=2,
        shape=elementwise_shape,
        vjp=_elementwise_vjp(_mod_partials),
        jvp=_elementwise_jvp(_mod_partials),
        c=lambda p, args, attrs: p.runtime("mod", args[0], args[1]),
        numpy=_np_mod,
        to_sympy=elementwise_sympy(lambda args, attrs: _apply(sp.Mod, *args)),
        domain=((2.2, 2.6), (1.35, 1.45)),
        cost=elementwise_cost(4),
        simplify=_noting("Mod(x, c): derivative taken as 1 in x and -floor(x/c) in c (between its jumps)"),
    )
)


# --- real and imaginary parts: a model's values are real --------------------------------------


# SymPy writes some real functions with them (real_root(x, 3) is a Piecewise on Eq(im(x), 0)).
@reads(sp.re)
def _read_re(r, e):
    return r.node(e.args[0])


@reads(sp.im)
def _read_im(r, e):
    return r.b.broadcast(r.b.const(0), r.b.shape(r.node(e.args[0])))
