"""Factorizations and what is computed from them: solves, inverses, determinants, Cholesky.

A factorization is a value of the graph like any other: ``lu(A)`` (partial
pivoting) or ``cholesky(A)``. The ops that need one take it as an argument
beside the matrix itself (``lu_solve(A, B, lu(A))``), so hash-consing makes
one factorization serve every solve, determinant and backward solve of the
same matrix, and a matrix of params only is factored once per call, before
the loop over the examples. Derivatives flow to the matrix, never through the
factor: each op's vector-Jacobian product is written for the matrix directly
(for X = A⁻¹B: B̄ = A⁻ᵀX̄, Ā = -B̄Xᵀ).

How SymPy reads here: ``X.inv()``, ``X**-1`` and ``sp.Inverse(X)`` are a solve
with the identity, and a product ``X.inv() * B`` (or ``B * X.inv()``) is
rewritten into a solve with B when the product is made (:mod:`.linalg`), so
generated code never forms an inverse it multiplies by. ``sp.Determinant(X)``
is ``det``; ``log(det(X))`` becomes ``logdet``. A matrix the model declares
symmetric positive definite (``sg.spd(X)``, or ``Q.positive_definite(X)`` in
SymPy's assumptions when the model is read) is factored by Cholesky instead of
LU. Such a matrix is only read through its lower triangle, and its gradients
are those of the functions of the full matrix (``logdet``: X⁻ᵀ, which is X⁻¹),
the values they have at a symmetric point.

A singular or non-positive-definite matrix is not detected: its zero pivot or
square root of a negative number gives inf or NaN in the results of that
example, as IEEE arithmetic does.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from .. import functions as sgf
from ..errors import ModelShapeError
from . import MAX_TILE, Op, linear_jvp, reads, register
from .text import call


def _square(shape, what):
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ModelShapeError(f"{what} of a matrix of shape {shape}: the matrix must be square")
    return shape[0]


# --- test domains: ``(rng, shape, earlier args, attrs) -> array``, matrices a factorization is
# defined and well conditioned on ------------------------------------------------------------------


def well_conditioned(rng, shape, args, attrs):
    """A random square matrix with a dominant diagonal: far from singular."""
    n = shape[0]
    return rng.uniform(-1.0, 1.0, size=shape) + (n + 1.0) * np.eye(n)


def spd(rng, shape, args, attrs):
    """A random symmetric positive definite matrix (M Mᵀ + n I)."""
    m = rng.uniform(-1.0, 1.0, size=shape)
    return m @ m.T + shape[0] * np.eye(shape[0])


def lower_triangular(rng, shape, args, attrs):
    """A random lower triangle with a diagonal away from 0 (the factor of an spd matrix)."""
    return np.linalg.cholesky(spd(rng, shape, args, attrs))


def lu_of_first(rng, shape, args, attrs):
    """The LU factor of the op's first argument (the test harness varies the matrix; the
    factor arg is the one the graph would hold)."""
    return np_lu(args[0])


def cholesky_of_first(rng, shape, args, attrs):
    return np.linalg.cholesky(args[0])


def _by_method(attrs):
    return attrs and attrs[0] == "cholesky"


def matrix_for_method(rng, shape, args, attrs):
    """An spd matrix for the Cholesky form of an op (attrs ("cholesky",)), else a well-conditioned one."""
    return (spd if _by_method(attrs) else well_conditioned)(rng, shape, args, attrs)


def factor_for_method(rng, shape, args, attrs):
    return (cholesky_of_first if _by_method(attrs) else lu_of_first)(rng, shape, args, attrs)


# --- NumPy references -----------------------------------------------------------------------


def np_lu(a):
    """The packed LU factor the runtime's sg_lu computes: n x (n+1), pivots in the last column."""
    a = np.array(a, dtype=float)
    n = a.shape[0]
    f = np.zeros((n, n + 1))
    f[:, :n] = a
    for k in range(n):
        p = k + int(np.argmax(np.abs(f[k:, k])))
        f[k, n] = p
        f[[k, p], :n] = f[[p, k], :n]
        if f[k, k] != 0:
            f[k + 1:, k] /= f[k, k]
            f[k + 1:, k + 1:n] -= np.outer(f[k + 1:, k], f[k, k + 1:n])
    return f


def _np_solve(args, attrs):
    a, rhs = np.asarray(args[0], dtype=float), np.asarray(args[1], dtype=float)
    (trans,) = attrs
    return np.linalg.solve(a.T if trans else a, rhs)


def _np_cholesky(args, attrs):
    a = np.asarray(args[0], dtype=float)
    return np.linalg.cholesky((a + a.T) / 2)


def _triangle(a, lower):
    return np.tril(a) if lower else np.triu(a)


def _np_tri_solve(args, attrs):
    lower, trans = attrs
    t = _triangle(np.asarray(args[0], dtype=float), lower)
    return np.linalg.solve(t.T if trans else t, np.asarray(args[1], dtype=float))


def _np_det(args, attrs):
    return np.linalg.det(np.asarray(args[0], dtype=float))


def _np_logdet(args, attrs):
    sign, value = np.linalg.slogdet(np.asarray(args[0], dtype=float))
    return value if sign > 0 else (-np.inf if sign == 0 else np.nan)


# --- forward-mode rules ------------------------------------------------------------------------


def _solve_tangent(b, n, t_matrix, t_rhs, resolve, matrix_tangent):
    """(M⁻¹B)' = M⁻¹(B' - M' X): ``resolve(y)`` is M⁻¹y with the node's factor, and
    ``matrix_tangent(t)`` is M' from the tangent of the matrix arg."""
    terms = ([t_rhs] if t_rhs is not None else [])
    if t_matrix is not None:
        terms.append(b.neg(b.matmul(matrix_tangent(t_matrix), n)))
    return resolve(b.add(*terms)) if terms else None


def _lu_solve_jvp(b, n, tangents):
    node = b.node(n)
    a, _, f = node.args
    (trans,) = node.attrs
    return _solve_tangent(b, n, tangents[0], tangents[1],
                          lambda y: b.apply("lu_solve", a, y, f, attrs=node.attrs),
                          lambda t: b.transpose(t) if trans else t)


def _cho_solve_jvp(b, n, tangents):
    a, _, chol = b.node(n).args
    return _solve_tangent(b, n, tangents[0], tangents[1], lambda y: b.apply("cho_solve", a, y, chol), lambda t: t)


def _tri_solve_jvp(b, n, tangents):
    node = b.node(n)
    t_matrix, _ = node.args
    lower, trans = node.attrs

    def matrix_tangent(t):
        masked = b.apply("triangle", t, attrs=(lower, 1))
        return b.transpose(masked) if trans else masked

    return _solve_tangent(b, n, tangents[0], tangents[1],
                          lambda y: b.apply("tri_solve", t_matrix, y, attrs=node.attrs), matrix_tangent)


def _cholesky_jvp(b, n, tangents):
    """L' = L Φ(L⁻¹ A'_sym L⁻ᵀ), with Φ the lower triangle, diagonal halved, and A'_sym the
    symmetric part of the tangent (the op is a function of the symmetric matrix)."""
    (t,) = tangents
    if t is None:
        return None
    sym = b.mul(b.const(sp.Rational(1, 2)), b.add(t, b.transpose(t)))
    y = b.apply("tri_solve", n, sym, attrs=(True, False))  # L⁻¹ A'
    z = b.transpose(b.apply("tri_solve", n, b.transpose(y), attrs=(True, False)))  # L⁻¹ A' L⁻ᵀ
    return b.matmul(n, b.apply("triangle", z, attrs=(True, sp.Rational(1, 2))))


def _det_jvp(b, n, tangents):
    """det' = det(A) sum(A⁻ᵀ .* A'); logdet' = sum(A⁻ᵀ .* A')."""
    node = b.node(n)
    t = tangents[0]
    if t is None:
        return None
    a, factor = node.args
    inner = b.sum(b.mul(_inverse_transpose(b, a, factor, node.attrs[0]), t))
    return b.mul(n, inner) if node.op == "det" else inner


# --- the factorizations ------------------------------------------------------------------------


def _emit_lu(p, out, args, attrs):
    (a,) = args
    return [p.helper_call("lu", p.examples(out), a.rows, a.strides_text(), p.target(out))]


# P A = L U, packed as the runtime's sg_lu leaves it: shape n x (n+1).
register(
    Op(
        name="lu",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: (_square(shapes[0], "lu"), _square(shapes[0], "lu") + 1),
        emit=_emit_lu,
        numpy=lambda args, attrs: np_lu(args[0]),
        # a value only the solves and determinants read, whose own forms name the matrix
        to_sympy=lambda args, attrs: sp.Function("lu", commutative=True)(args[0]),
        differentiable=False,
        cost=lambda node, shapes: 2 * shapes[0][0] ** 3 // 3,
    )
)


def _cholesky_vjp(b, n, g):
    """Murray's rule ("Differentiation of the Cholesky decomposition", 2016), as JAX and
    PyTorch use it: with P = Φ(Lᵀ L̄) (the lower triangle, diagonal halved) and
    S = L⁻ᵀ P L⁻¹, Ā = (S + Sᵀ)/2, the gradient at a symmetric A."""
    phi = b.apply("triangle", b.matmul(b.transpose(n), g), attrs=(True, sp.Rational(1, 2)))
    y = b.apply("tri_solve", n, phi, attrs=(True, True))  # L⁻ᵀ P
    s = b.transpose(b.apply("tri_solve", n, b.transpose(y), attrs=(True, True)))  # Y L⁻¹
    return [b.mul(b.const(sp.Rational(1, 2)), b.add(s, b.transpose(s)))]


def _emit_cholesky(p, out, args, attrs):
    (a,) = args
    return [p.helper_call("cholesky", p.examples(out), a.rows, a.strides_text(), p.target(out))]


register(
    Op(
        name="cholesky",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: (_square(shapes[0], "cholesky"),) * 2,
        vjp=_cholesky_vjp,
        jvp=_cholesky_jvp,
        emit=_emit_cholesky,
        numpy=_np_cholesky,
        to_sympy=lambda args, attrs: sgf.cholesky(args[0]),
        domain=(spd,),
        cost=lambda node, shapes: shapes[0][0] ** 3 // 3,
        test_cases=((((3, 3),), ()), (((1, 1),), ())),
        sympy_heads=(sgf.cholesky,),
    )
)


# --- solves ------------------------------------------------------------------------------------


def _solve_shape(what):
    def shape(shapes, attrs):
        a, rhs = shapes[0], shapes[1]
        n = _square(a, what)
        if len(rhs) != 2 or rhs[0] != n:
            raise ModelShapeError(f"{what}: a {n}x{n} matrix cannot solve for a right-hand side of shape {rhs}")
        return rhs

    return shape


def _lu_solve_vjp(b, n, g):
    """X = A⁻¹B: B̄ = A⁻ᵀX̄, Ā = -B̄Xᵀ; X = A⁻ᵀB: B̄ = A⁻¹X̄, Ā = -X B̄ᵀ."""
    node = b.node(n)
    a, _, f = node.args
    (trans,) = node.attrs
    rhs_bar = b.apply("lu_solve", a, g, f, attrs=(not trans,))
    # the product last, so that a batch sum of it is one matrix product over the tile
    a_bar = b.matmul(n, b.neg(b.transpose(rhs_bar))) if trans else b.matmul(b.neg(rhs_bar), b.transpose(n))
    return [a_bar, rhs_bar, None]


def _emit_lu_solve(p, out, args, attrs):
    _, rhs, f = args
    (trans,) = attrs
    return [p.helper_call("lu_solve", p.examples(out), rhs.rows, rhs.cols, f.pointer(), _es(f), rhs.strides_text(),
                          p.target(out), int(trans), "scratch")]


def _es(operand):
    return operand.example_stride if operand.varying else 0


def _solve_scratch(node):
    """A column of the right-hand side for every example of a tile (sg_tri_solve's shared-factor path)."""
    return node.shape[0] * MAX_TILE


# A⁻¹B (attrs (False,)) or A⁻ᵀB (attrs (True,)) from F = lu(A): args (A, B, F).
register(
    Op(
        name="lu_solve",
        kind="tensor",
        arity=3,
        shape=_solve_shape("solve"),
        vjp=_lu_solve_vjp,
        jvp=_lu_solve_jvp,
        emit=_emit_lu_solve,
        scratch=_solve_scratch,
        numpy=_np_solve,
        to_sympy=lambda args, attrs: sp.MatMul(sp.Inverse(sp.Transpose(args[0]) if attrs[0] else args[0]), args[1]),
        text=lambda args, attrs: f"solve({args[0]}{'.T' if attrs[0] else ''}, {args[1]})",
        domain=(well_conditioned, (-1.0, 1.0), lu_of_first),
        cost=lambda node, shapes: 2 * shapes[0][0] ** 2 * shapes[1][1],
        test_cases=((((3, 3), (3, 2), (3, 4)), (False,)), (((3, 3), (3, 1), (3, 4)), (True,)),
                    (((1, 1), (1, 3), (1, 2)), (False,))),
    )
)


def _cho_solve_vjp(b, n, g):
    """X = A⁻¹B with A = L Lᵀ symmetric: B̄ = A⁻¹X̄, Ā = -B̄Xᵀ."""
    a, _, chol = b.node(n).args
    rhs_bar = b.apply("cho_solve", a, g, chol)
    return [b.matmul(b.neg(rhs_bar), b.transpose(n)), rhs_bar, None]


def _emit_cho_solve(p, out, args, attrs):
    _, rhs, chol = args
    n = rhs.rows
    first = p.helper_call("tri_solve", p.examples(out), n, rhs.cols, chol.strides_text(), rhs.strides_text(),
                          p.target(out), 1, 0, "scratch")
    # then Lᵀ X = Y, in place in the result
    second = p.helper_call("tri_solve", p.examples(out), n, rhs.cols, chol.strides_text(),
                           f"{out.text}, {_es(out)}, {rhs.cols}, 1", p.target(out), 1, 1, "scratch")
    return [first, second]


# A⁻¹B for a symmetric positive definite A from L = cholesky(A): L⁻ᵀ(L⁻¹B). args (A, B, L).
register(
    Op(
        name="cho_solve",
        kind="tensor",
        arity=3,
        shape=_solve_shape("solve"),
        vjp=_cho_solve_vjp,
        jvp=_cho_solve_jvp,
        emit=_emit_cho_solve,
        scratch=_solve_scratch,
        numpy=lambda args, attrs: _np_solve(args, (False,)),
        to_sympy=lambda args, attrs: sp.MatMul(sp.Inverse(args[0]), args[1]),
        text=lambda args, attrs: f"solve({args[0]}, {args[1]})",
        domain=(spd, (-1.0, 1.0), cholesky_of_first),
        cost=lambda node, shapes: 2 * shapes[0][0] ** 2 * shapes[1][1],
        test_cases=((((3, 3), (3, 2), (3, 3)), ()), (((2, 2), (2, 1), (2, 2)), ())),
    )
)


def _tri_solve_vjp(b, n, g):
    """X = op(T)⁻¹B, op(T) = T or Tᵀ: B̄ = op(T)⁻ᵀX̄; T̄ = the triangle of -B̄Xᵀ (of -X B̄ᵀ for Tᵀ)."""
    node = b.node(n)
    t, _ = node.args
    lower, trans = node.attrs
    rhs_bar = b.apply("tri_solve", t, g, attrs=(lower, not trans))
    # the product innermost: a batch sum of the triangle is the triangle of one product over the tile
    negated = b.neg(rhs_bar)
    full = b.matmul(n, b.transpose(negated)) if trans else b.matmul(negated, b.transpose(n))
    return [b.apply("triangle", full, attrs=(lower, 1)), rhs_bar]


def _emit_tri_solve(p, out, args, attrs):
    t, rhs = args
    lower, trans = attrs
    return [p.helper_call("tri_solve", p.examples(out), rhs.rows, rhs.cols, t.strides_text(), rhs.strides_text(),
                          p.target(out), int(lower), int(trans), "scratch")]



# op(T)⁻¹B for the lower (or upper) triangle T of the first arg. attrs: (lower, transposed).
register(
    Op(
        name="tri_solve",
        kind="tensor",
        arity=2,
        shape=_solve_shape("triangular solve"),
        vjp=_tri_solve_vjp,
        jvp=_tri_solve_jvp,
        emit=_emit_tri_solve,
        scratch=_solve_scratch,
        numpy=_np_tri_solve,
        to_sympy=lambda args, attrs: sgf.triangular_solve(args[0], args[1], lower=attrs[0], trans=attrs[1]),
        text=lambda args, attrs: call("triangular_solve", [args[0], args[1]] + (["upper"] if not attrs[0] else [])
                                      + (["transposed"] if attrs[1] else [])),
        domain=(lower_triangular, (-1.0, 1.0)),
        cost=lambda node, shapes: shapes[0][0] ** 2 * shapes[1][1],
        test_cases=((((3, 3), (3, 2)), (True, False)), (((3, 3), (3, 2)), (True, True)),
                    (((3, 3), (3, 1)), (False, False)), (((3, 3), (3, 1)), (False, True))),
        sympy_heads=(sgf.triangular_solve,),
        from_sympy=lambda r, e: r.b.apply("tri_solve", r.node(e.args[0]), r.node(e.args[1]),
                                          attrs=(bool(e.args[2]), bool(e.args[3]))),
        sympy_children=lambda e: e.args[:2],
    )
)


def _emit_triangle(p, out, args, attrs):
    (a,) = args
    lower, diagonal = attrs

    def body(e, i, j):
        value = a.element(e, i, j)
        inside = f"{j} < {i}" if lower else f"{j} > {i}"
        on_diagonal = value if diagonal == 1 else f"{p.literal(diagonal)} * {value}"
        return p.assign(out, f"{inside} ? {value} : ({i} == {j} ? {on_diagonal} : 0)", e, i, j)

    return p.loop_nest(out, body)


def _np_triangle(args, attrs):
    lower, diagonal = attrs
    a = np.asarray(args[0], dtype=float)
    i, j = np.indices(a.shape)
    return np.where(j < i if lower else j > i, a, np.where(i == j, float(diagonal) * a, 0.0))


# The lower (or upper) triangle of a matrix, its diagonal scaled. attrs: (lower, diagonal scale).
register(
    Op(
        name="triangle",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: shapes[0],
        vjp=lambda b, n, g: [b.apply("triangle", g, attrs=b.node(n).attrs)],
        jvp=linear_jvp,
        emit=_emit_triangle,
        numpy=_np_triangle,
        to_sympy=lambda args, attrs: sgf.tril(args[0]) if attrs == (True, 1) else sp.Function(
            "triangle")(args[0], sp.true if attrs[0] else sp.false, attrs[1]),
        text=lambda args, attrs: call("tril" if attrs[0] else "triu", [args[0]]) if attrs[1] == 1 else call(
            "tril" if attrs[0] else "triu", [args[0], f"diagonal*{attrs[1]}"]),
        domain=((-1.0, 1.0),),
        cost=lambda node, shapes: 0,
        test_cases=((((3, 3),), (True, 1)), (((3, 3),), (True, sp.Rational(1, 2))), (((2, 3),), (False, 1))),
        sympy_heads=(sgf.tril,),
        from_sympy=lambda r, e: r.b.apply("triangle", r.node(e.args[0]), attrs=(True, 1)),
    )
)


# --- determinants ------------------------------------------------------------------------------


def _det_shape(shapes, attrs):
    _square(shapes[0], "det")
    return ()


def _inverse_transpose(b, a, factor, method):
    """A⁻ᵀ from the factor of A (for an spd A, A⁻¹, which is the same)."""
    identity = b.apply("identity", attrs=(b.shape(a)[0],))
    if method == "cholesky":
        return b.apply("cho_solve", a, identity, factor)
    return b.apply("lu_solve", a, identity, factor, attrs=(True,))


def _det_vjp(b, n, g):
    """d det(A) = det(A) A⁻ᵀ."""
    a, factor = b.node(n).args
    return [b.mul(g, n, _inverse_transpose(b, a, factor, b.node(n).attrs[0])), None]


def _logdet_vjp(b, n, g):
    """d log det(A) = A⁻ᵀ."""
    a, factor = b.node(n).args
    return [b.mul(g, _inverse_transpose(b, a, factor, b.node(n).attrs[0])), None]


def _emit_det(log):
    def emit(p, out, args, attrs):
        (a, factor), (method,) = args, attrs
        helper = "cholesky_det" if method == "cholesky" else "lu_det"
        return [p.helper_call(helper, p.examples(out), a.rows, factor.pointer(), _es(factor), p.target(out), log)]

    return emit


for _name, _log, _vjp, _np, _sympy in (
    ("det", 0, _det_vjp, _np_det, lambda args, attrs: sp.Determinant(args[0])),
    ("logdet", 1, _logdet_vjp, _np_logdet, lambda args, attrs: sp.log(sp.Determinant(args[0]))),
):
    # det(A) or log(det(A)) from the factor F of A: args (A, F); attrs ("lu",) or ("cholesky",).
    register(
        Op(
            name=_name,
            kind="tensor",
            arity=2,
            shape=_det_shape,
            vjp=_vjp,
            jvp=_det_jvp,
            emit=_emit_det(_log),
            numpy=_np,
            to_sympy=_sympy,
            text=lambda args, attrs, name=_name: call(name, args[:1]),
            domain=(matrix_for_method, factor_for_method),
            cost=lambda node, shapes: shapes[0][0],
            test_cases=((((3, 3), (3, 4)), ("lu",)), (((1, 1), (1, 2)), ("lu",)), (((3, 3), (3, 3)), ("cholesky",))),
        )
    )


# --- reading SymPy --------------------------------------------------------------------------------


def declared_spd(expr) -> bool:
    """Whether the model declares ``expr`` symmetric positive definite: ``sg.spd(X)``, or an
    assumption ``Q.positive_definite(X)`` in force (``sp.assuming``, global assumptions)."""
    if isinstance(expr, sgf.spd):
        return True
    try:
        return sp.ask(sp.Q.positive_definite(expr)) is True
    except (TypeError, ValueError, NotImplementedError, AttributeError):
        return False


def factor_of(b, a, spd_matrix: bool):
    """(method, factor node) of the matrix node ``a``."""
    if spd_matrix:
        return "cholesky", b.apply("cholesky", a)
    return "lu", b.apply("lu", a)


def solve(b, a, rhs, spd_matrix: bool = False):
    """The node of A⁻¹B, by the factorization that suits A."""
    method, factor = factor_of(b, a, spd_matrix)
    if method == "cholesky":
        return b.apply("cho_solve", a, rhs, factor)
    return b.apply("lu_solve", a, rhs, factor, attrs=(False,))


def inverse(b, a, spd_matrix: bool = False):
    _square(b.shape(a), "the inverse")
    return solve(b, a, b.apply("identity", attrs=(b.shape(a)[0],)), spd_matrix)


@reads(sp.Inverse, children=lambda e: [e.args[0]])
def _read_inverse(r, e):
    """X⁻¹ as the solve X⁻¹ I; a product with it becomes a solve with the other factor
    (the matmul entry's simplification)."""
    return inverse(r.b, r.node(e.args[0]), declared_spd(e.args[0]))


@reads(sp.Determinant, children=lambda e: [e.args[0]])
def _read_determinant(r, e):
    a = r.node(e.args[0])
    _square(r.b.shape(a), "the determinant")
    method, factor = factor_of(r.b, a, declared_spd(e.args[0]))
    return r.b.apply("det", a, factor, attrs=(method,))


@reads(sgf.logdet, children=lambda e: [e.args[0]])
def _read_logdet(r, e):
    a = r.node(e.args[0])
    _square(r.b.shape(a), "logdet")
    method, factor = factor_of(r.b, a, declared_spd(e.args[0]))
    return r.b.apply("logdet", a, factor, attrs=(method,))


@reads(sgf.spd)
def _read_spd(r, e):
    """The matrix itself: the declaration only chooses how inverses and determinants of it
    are computed (read by the heads around it)."""
    return r.node(e.args[0])



def quadratic_form(b, left, right):
    """``xᵀ A⁻¹ x`` for an spd A = L Lᵀ as ``yᵀ y`` with ``y = L⁻¹ x``: one triangular solve
    instead of two (and as many fewer in the backward pass), and never negative. Matches the
    product ``xᵀ (A⁻¹ x)`` and ``(A⁻¹ x)ᵀ x``, as the matmul entry's simplification meets them;
    None for other products."""
    first, second = b.node(left), b.node(right)
    if second.op == "cho_solve" and transpose_of(b, left, second.args[1]):
        node = second  # xᵀ (A⁻¹ x)
    elif first.op == "transpose" and b.node(first.args[0]).op == "cho_solve" \
            and _same(b, b.node(first.args[0]).args[1], right):
        node = b.node(first.args[0])  # (A⁻¹ x)ᵀ x
    else:
        return None
    _, x, chol = node.args
    b.note_rewrite("x.T*A^-1*x -> y.T*y with y = L^-1*x, L = cholesky(A), for an spd A")
    y = b.apply("tri_solve", chol, x, attrs=(True, False))
    return b.matmul(b.transpose(y), y)


def _same(b, y, x) -> bool:
    """Whether the node ``y`` is ``x``, or the transpose of a transpose of it."""
    node = b.node(y)
    return y == x or (node.op == "transpose" and transpose_of(b, node.args[0], x))


def transpose_of(b, t, x, depth=4) -> bool:
    """Whether the node ``t`` is the transpose of the node ``x``: ``x.T``, or, as SymPy writes
    ``(x - mu).T``, a sum (or scalar multiple) of the transposes of x's terms."""
    tn, xn = b.node(t), b.node(x)
    if tn.shape == () or (tn.op == "transpose" and tn.args[0] == x):
        return t == x if tn.shape == () else True
    if depth == 0 or tn.op != xn.op or tn.op not in ("add", "mul") or len(tn.args) != len(xn.args):
        return False
    rest = list(xn.args)
    for term in tn.args:
        match = next((k for k, other in enumerate(rest) if transpose_of(b, term, other, depth - 1)), None)
        if match is None:
            return False
        del rest[match]
    return True
