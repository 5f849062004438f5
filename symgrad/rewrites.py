"""Numerically stable forms of formulas as people write them.

Users write the textbook formula (``1/(1 + exp(-z))``, ``log(exp(a) + exp(b))``,
``sqrt(x**2 + y**2)``), whose value or derivative overflows, underflows or
cancels where the true numbers are ordinary. The ops' ``simplify`` hooks call
the functions below as each node is created, so every spelling of a formula
reaches the same stable node before differentiation, and the derivative is
taken of the stable form. Each rewrite that fires is recorded in the graph
(``Builder.note_rewrite``) so that ``symgrad show`` can list it.

A rewrite is only made where the stable form is at least as accurate on
ordinary inputs as the formula written (``tests/test_stable_forms.py`` checks
both against mpmath).

The hooks, and what they catch:

- ``log``: :func:`stable_log` (log of an exponential, of a sigmoid, of a
  softmax, of a sum or mean of exponentials, of a power, of ``1 + x``).
- ``pow``: :func:`stable_pow` (the reciprocal of a sum of exponentials, the
  square root of a sum of squares of scalars or of a matrix's elements,
  powers of an exponential).
- ``mul``: :func:`stable_mul` (products of exponentials, also one moved out of
  a matrix product by SymPy, an exponential times a sigmoid,
  ``sin(u)**k / u**k``, ``sign(x) * abs(x)**(1/3)``).
- ``add``: :func:`stable_add` (``exp(u) - 1``, ``1 - cos(u)``, and multiples).
- ``exp``: :func:`stable_exp` (``exp(z - logsumexp(z))``).
"""

from __future__ import annotations

import sympy as sp


# --- recognizing shapes of nodes -------------------------------------------------------


def _const(b, node_id):
    return b.const_value(node_id)


def _is(b, node_id, number) -> bool:
    """Whether the node is the constant ``number`` (a Float equal to it counts)."""
    value = _const(b, node_id)
    return value is not None and value.is_Number and (value - number).is_zero is True


def _positive_const(b, node_id) -> bool:
    value = _const(b, node_id)
    return value is not None and value.is_positive is True and value.is_finite is True


def _negation_of(b, node_id):
    """``u`` when the node is ``-u`` (a product of -1 and one factor), else None."""
    node = b.node(node_id)
    if node.op == "mul" and len(node.args) == 2:
        first, second = node.args
        if _is(b, first, -1):
            return second
        if _is(b, second, -1):
            return first
    return None


def _are_negations(b, u, w) -> bool:
    return _negation_of(b, u) == w or _negation_of(b, w) == u


def _const_power(b, node_id):
    """``(base, exponent)`` of a power with a constant exponent, else None."""
    node = b.node(node_id)
    if node.op == "pow":
        exponent = _const(b, node.args[1])
        if exponent is not None and exponent.is_Number:
            return node.args[0], exponent
    return None


def _exponents(b, terms):
    """``[v1, v2, ...]`` when ``sum(terms) == exp(v1) + exp(v2) + ...``, else None.

    A term is an exponential ``exp(v)`` or a positive constant ``c = exp(log c)``;
    at least one term is an exponential.
    """
    if len(terms) < 2 or not any(b.node(t).op == "exp" for t in terms):
        return None
    if not all(b.node(t).op == "exp" or _positive_const(b, t) for t in terms):
        return None  # decided before any node is made: a rewrite that does not fire leaves none behind
    return [b.node(t).args[0] if b.node(t).op == "exp" else b.const(sp.log(_const(b, t))) for t in terms]


def _ones(b, node_id) -> bool:
    """Whether the node is a matrix of ones (``OneMatrix``)."""
    node = b.node(node_id)
    return node.op == "broadcast" and _is(b, node.args[0], 1)


def _sum_of_exp_matrix(b, node_id):
    """``z`` when the node sums all elements of ``exp(z)``: ``sg.sum(exp(z))``, or a
    product with a ``OneMatrix`` that gives a 1x1 matrix (``OneMatrix(1, n) * exp(z)``),
    or its single element; else None."""
    node = b.node(node_id)
    if node.op == "index":
        node = b.node(node.args[0])
        if node.shape != (1, 1):
            return None
    if node.op == "sum":
        inner = b.node(node.args[0])
        return inner.args[0] if inner.op == "exp" else None
    if node.op == "matmul" and node.shape == (1, 1):
        left, right = node.args
        for ones, other in ((left, right), (right, left)):
            if _ones(b, ones) and b.node(other).op == "exp":
                return b.node(other).args[0]
    return None


def log_of_sum_of_exps(b, node_id):
    """The stable log of the node when it is a sum of exponentials, else None.

    ``log(1 + exp(u))`` is ``softplus(u)``; ``log(exp(u1) + exp(u2) + ...)`` is
    ``logaddexp(u1, u2, ...)`` (max-shifted, element-wise); the log of all elements
    of ``exp(z)`` summed is ``logsumexp(z)`` (max-shifted).
    """
    node = b.node(node_id)
    if node.op == "add":
        exponents = _exponents(b, node.args)
        if exponents is None:
            return None
        zeros = [v for v in exponents if _is(b, v, 0)]
        if len(exponents) == 2 and len(zeros) == 1:
            b.note_rewrite("log(1 + exp(u)) -> softplus(u)")
            (u,) = [v for v in exponents if v not in zeros]
            return b.call("softplus", u)
        b.note_rewrite("log(exp(u1) + exp(u2) + ...) -> logaddexp(u1, u2, ...), shifted by the maximum")
        return b.apply("logaddexp", *exponents)
    z = _sum_of_exp_matrix(b, node_id)
    if z is not None:
        b.note_rewrite("log(sum(exp(z))) -> logsumexp(z), shifted by the maximum")
        return b.broadcast(b.call("logsumexp", z), node.shape)
    if node.op == "mul" and len(node.args) == 2:  # a mean of exponentials: log(c) + log(sum)
        for c, rest in (node.args, reversed(node.args)):
            if _positive_const(b, c) and _const(b, rest) is None:
                inner = log_of_sum_of_exps(b, rest)
                if inner is not None:
                    return b.add(b.const(sp.log(_const(b, c))), inner)
    return None


def _squares(b, terms):
    """``[t1, t2, ...]`` when ``sum(terms) == t1**2 + t2**2 + ...``, else None.

    A term is a square ``t**2``, a positive multiple of one ``c*t**2 = (sqrt(c)*t)**2``,
    or a positive constant ``c = sqrt(c)**2``; at least one is a square of a variable.
    """
    def square_root_of(t):
        """(scale, root) with t == (scale*root)**2 (root None for a constant), or None."""
        power = _const_power(b, t)
        if power is not None and (power[1] - 2).is_zero:
            return sp.Integer(1), power[0]
        node = b.node(t)
        if node.op == "mul" and len(node.args) == 2:
            for c, rest in (node.args, reversed(node.args)):
                power = _const_power(b, rest)
                if _positive_const(b, c) and power is not None and (power[1] - 2).is_zero:
                    return sp.sqrt(_const(b, c)), power[0]
        if _positive_const(b, t):
            return sp.sqrt(_const(b, t)), None
        return None

    parts = [square_root_of(t) for t in terms]
    if any(p is None for p in parts) or all(root is None for _, root in parts):
        return None
    return [b.const(scale) if root is None else (root if scale == 1 else b.mul(b.const(scale), root))
            for scale, root in parts]


def _sum_of_squares_matrix(b, node_id):
    """``z`` when the node sums the squares of all elements of the matrix ``z``:
    ``sg.sum(z**2)``, ``sg.sum(z.*z)``, ``x.T*x`` for a column x (``x*x.T`` for a row),
    or the single element of such a 1x1 product; else None."""
    node = b.node(node_id)
    if node.op == "index":
        node = b.node(node.args[0])
        if node.shape != (1, 1):
            return None
    if node.op == "sum":
        inner = b.node(node.args[0])
        power = _const_power(b, node.args[0])
        if power is not None and (power[1] - 2).is_zero:
            return power[0]
        if inner.op == "mul" and len(inner.args) == 2 and inner.args[0] == inner.args[1]:
            return inner.args[0]
    if node.op == "matmul" and node.shape == (1, 1):
        left, right = node.args
        if b.node(left).op == "transpose" and b.node(left).args[0] == right:
            return right
        if b.node(right).op == "transpose" and b.node(right).args[0] == left:
            return left
    return None


def _root_of_sum_of_squares(b, base):
    """sqrt(base) when base is a sum of squares (of scalars, or of a matrix's elements, or a
    positive multiple of one), in a scaled form; else None."""
    node = b.node(base)
    power = _const_power(b, base)
    if power is not None and (power[1] - 2).is_zero:
        b.note_rewrite("sqrt(t**2) -> abs(t)")
        return b.call("abs", power[0])
    if node.op == "add" and (roots := _squares(b, node.args)) is not None:
        b.note_rewrite("sqrt(t1**2 + t2**2 + ...) -> hypot(t1, t2, ...), scaled against overflow")
        return b.apply("hypot", *roots)
    z = _sum_of_squares_matrix(b, base)
    if z is not None:
        b.note_rewrite("sqrt(sum(z**2)) -> norm(z), scaled against overflow")
        return b.broadcast(b.call("norm", z), node.shape)
    if node.op == "mul" and len(node.args) == 2:
        for c, rest in (node.args, reversed(node.args)):
            if _positive_const(b, c) and _const(b, rest) is None:
                root = _root_of_sum_of_squares(b, rest)
                if root is not None:
                    return b.mul(b.const(sp.sqrt(_const(b, c))), root)
    return None


# --- the hooks ----------------------------------------------------------------------------


def stable_log(b, x):
    """``log(x)`` in a stable form, or None to keep it.

    log(exp(u)) = u; log(sigmoid(u)) = -softplus(-u) (and log(1 - sigmoid(u)), which is
    log(sigmoid(-u)), = -softplus(u));
    log(softmax(z)) = log_softmax(z); log(det(A)) = logdet(A); logs of sums of exponentials (see
    :func:`log_of_sum_of_exps`); log(x**c) = c*log(x) (c*log(abs(x)) for an even c,
    so log(1/x) = -log(x)); log(1 + x) = log1p(x).
    """
    inner = b.node(x)
    if inner.op == "exp":
        b.note_rewrite("log(exp(u)) -> u")
        return inner.args[0]
    if inner.op == "sigmoid":
        b.note_rewrite("log(sigmoid(u)) -> -softplus(-u)")
        return b.neg(b.call("softplus", b.neg(inner.args[0])))
    if inner.op == "softmax":
        b.note_rewrite("log(softmax(z)) -> log_softmax(z)")
        return b.call("log_softmax", inner.args[0])
    if inner.op == "det":
        b.note_rewrite("log(det(A)) -> logdet(A)")
        return b.apply("logdet", *inner.args, attrs=inner.attrs)
    stable = log_of_sum_of_exps(b, x)
    if stable is not None:
        return stable
    if inner.op == "add":
        ones = [a for a in inner.args if _is(b, a, 1)]
        rest = [a for a in inner.args if not _is(b, a, 1)]
        if len(ones) == 1 and rest:
            b.note_rewrite("log(1 + x) -> log1p(x)")
            return b.call("log1p", b.add(*rest))
    power = _const_power(b, x)
    if power is not None:
        base, c = power
        even = c.is_Integer and c % 2 == 0 or (c.is_Float and float(c).is_integer() and int(c) % 2 == 0)
        if even:
            b.note_rewrite("log(x**c) -> c*log(abs(x)) for an even whole c")
            return b.mul(b.const(c), b.call("log", b.call("abs", base)))
        b.note_rewrite("log(x**c) -> c*log(x), so log(1/x) -> -log(x)")
        return b.mul(b.const(c), b.call("log", base))
    return None


def stable_pow(b, base, exponent):
    """``base**exponent`` in a stable form, or None to keep it.

    1/(1 + exp(u)) = sigmoid(-u); 1/(sum of exponentials) = exp(-(its stable log));
    sqrt(t1**2 + t2**2 + ...) = hypot(t1, t2, ...) (scaled: no overflow or underflow
    of the squares), sqrt(t**2) = abs(t), sqrt(sum(z**2)) = norm(z) (also x.T*x, and
    positive multiples: the root of an mse), and their reciprocals; exp(u)**c = exp(c*u).
    """
    c = _const(b, exponent)
    if c is None or not c.is_Number:
        return None
    node = b.node(base)
    if node.op == "exp":
        b.note_rewrite("exp(u)**c -> exp(c*u)")
        return b.call("exp", b.mul(b.const(c), node.args[0]))
    if (c + 1).is_zero:
        if node.op == "add":
            exponents = _exponents(b, node.args)
            if exponents is not None and len(exponents) == 2 and any(_is(b, v, 0) for v in exponents):
                (u,) = [v for v in exponents if not _is(b, v, 0)]
                b.note_rewrite("1/(1 + exp(u)) -> sigmoid(-u)")
                return b.call("sigmoid", b.neg(u))
        log = log_of_sum_of_exps(b, base)
        if log is not None:
            b.note_rewrite("1/(exp(u1) + exp(u2) + ...) -> exp(-logaddexp(u1, u2, ...))")
            return b.call("exp", b.neg(log))
    if (abs(c) - sp.Rational(1, 2)).is_zero:
        root = _root_of_sum_of_squares(b, base)
        if root is None:
            return None
        return root if c > 0 else b.recip(root)
    return None


def _factors(b, args):
    """The factors of a product, with nested products opened one level."""
    out = []
    for a in args:
        node = b.node(a)
        out.extend(node.args if node.op == "mul" else [a])
    return out


def _sin_power(b, node_id):
    """``(u, k)`` when the node is ``sin(u)**k`` for a whole k >= 1 (``sin(u)`` itself: k = 1)."""
    node = b.node(node_id)
    if node.op == "sin":
        return node.args[0], 1
    power = _const_power(b, node_id)
    if power is not None and power[1].is_Integer and power[1] >= 1 and b.node(power[0]).op == "sin":
        return b.node(power[0]).args[0], int(power[1])
    return None


def _scale_of(b, u, v):
    """c when ``u == c*v`` for a constant c (1 when u is v), else None."""
    if u == v:
        return sp.Integer(1)
    node = b.node(u)
    if node.op == "mul" and len(node.args) == 2 and v in node.args:
        other = node.args[0] if node.args[1] == v else node.args[1]
        return _const(b, other)
    return None


def stable_mul(b, args):
    """A product in a stable form, or None to keep it.

    exp(u)*exp(w) = exp(u + w) (no overflow of one factor against underflow of the
    other); exp(u)*sigmoid(-u) = sigmoid(u), which catches exp(u)/(1 + exp(u)), and
    exp(u)*sigmoid(w) = exp(u - softplus(-w)) otherwise; sin(c*v)**k / v**k =
    c**k * sinc(c*v)**k (finite at v = 0, no cancellation in the derivative: with
    1 - cos(x) = 2 sin(x/2)**2 this catches (1 - cos(x))/x**2); sign(x)*abs(x)**(1/3)
    = cbrt(x) (SymPy's real_root(x, 3)).
    """
    factors = _factors(b, args)
    exps = [f for f in factors if b.node(f).op == "exp"]
    if len(exps) >= 2:
        b.note_rewrite("exp(u)*exp(w) -> exp(u + w)")
        rest = [f for f in factors if f not in exps] + [b.call("exp", b.add(*[b.node(f).args[0] for f in exps]))]
        return b.mul(*rest)
    scalar_exps = [f for f in exps if b.shape(f) == ()]
    for f in factors if scalar_exps else ():
        node = b.node(f)
        if node.op != "matmul":
            continue
        for k, arg in enumerate(node.args):
            if b.node(arg).op == "exp":
                # SymPy moves the scalar of exp(Z)/sum(exp(Z)) out of a matrix product c.T*(...)
                b.note_rewrite("exp(s) * (A*exp(Z)) -> A*exp(Z + s) for a scalar s")
                (e,) = scalar_exps[:1]
                shifted = b.call("exp", b.add(b.node(arg).args[0], b.node(e).args[0]))
                product = b.matmul(*[shifted if i == k else a for i, a in enumerate(node.args)])
                return b.mul(*([h for h in factors if h not in (e, f)] + [product]))
    sigmoids = [f for f in factors if b.node(f).op == "sigmoid"]
    if exps and sigmoids:
        (e,), s = exps, sigmoids[0]
        u, w = b.node(e).args[0], b.node(s).args[0]
        if _are_negations(b, u, w):
            b.note_rewrite("exp(u)*sigmoid(-u) -> sigmoid(u), so exp(u)/(1 + exp(u)) -> sigmoid(u)")
            merged = b.call("sigmoid", u)
        else:
            b.note_rewrite("exp(u)*sigmoid(w) -> exp(u - softplus(-w))")
            merged = b.call("exp", b.sub(u, b.call("softplus", b.neg(w))))
        rest = [f for f in factors if f not in (e, s)]
        return b.mul(*(rest + [merged]))
    for f in factors:
        sin_power = _sin_power(b, f)
        if sin_power is None:
            continue
        u, k = sin_power
        for g in factors:
            power = _const_power(b, g) if g != f else None
            if power is None or not (power[1] + k).is_zero:
                continue
            scale = _scale_of(b, u, power[0])
            if scale is None:
                continue
            b.note_rewrite("sin(c*v)**k / v**k -> c**k * sinc(c*v)**k")
            rest = [h for h in factors if h not in (f, g)]
            sinc = b.call("sinc", u)
            return b.mul(*(rest + [b.const(scale ** k), sinc if k == 1 else b.powc(sinc, k)]))
    signs = [f for f in factors if b.node(f).op == "sign"]
    for s in signs:
        x = b.node(s).args[0]
        for g in factors:
            power = _const_power(b, g)
            if power is not None and (power[1] - sp.Rational(1, 3)).is_zero and b.node(power[0]).op == "abs" \
                    and b.node(power[0]).args[0] == x:
                b.note_rewrite("sign(x)*abs(x)**(1/3) -> cbrt(x)")
                rest = [h for h in factors if h not in (s, g)]
                return b.mul(*(rest + [b.call("cbrt", x)]))
    return None


def _scaled(b, node_id):
    """``(d, X)`` with the node equal to ``d*X`` for a constant d (d = 1 for a plain X)."""
    node = b.node(node_id)
    if node.op == "mul" and len(node.args) == 2:
        for d, rest in (node.args, reversed(node.args)):
            value = _const(b, d)
            if value is not None and value.is_Number and _const(b, rest) is None:
                return value, rest
    return sp.Integer(1), node_id


def stable_add(b, args):
    """A sum in a stable form, or None to keep it.

    d*exp(u) - d = d*expm1(u) (so exp(u) - 1 = expm1(u), 1 - exp(u) = -expm1(u): no
    cancellation for small u); c - c*cos(u) = 2c*sin(u/2)**2 (the same for 1 - cos(u));
    c - c*sigmoid(u) = c*sigmoid(-u) (1 - sigmoid(40) is 4e-18, not 0).
    """
    for k, a in enumerate(args):
        c = _const(b, a)
        if c is None or not c.is_Number or c.is_zero is not False:
            continue
        rest = [t for i, t in enumerate(args) if i != k]
        for j, t in enumerate(rest):
            d, term = _scaled(b, t)
            if not (c + d).is_zero:
                continue
            node = b.node(term)
            if node.op == "exp":
                b.note_rewrite("exp(u) - 1 -> expm1(u)")
                replaced = b.mul(b.const(d), b.call("expm1", node.args[0]))
            elif node.op == "cos":
                b.note_rewrite("1 - cos(u) -> 2*sin(u/2)**2")
                half = b.call("sin", b.mul(b.const(sp.Rational(1, 2)), node.args[0]))
                replaced = b.mul(b.const(2 * c), b.powc(half, 2))
            elif node.op == "sigmoid":
                b.note_rewrite("1 - sigmoid(u) -> sigmoid(-u)")
                replaced = b.mul(b.const(c), b.call("sigmoid", b.neg(node.args[0])))
            else:
                continue
            return b.add(*([r for i, r in enumerate(rest) if i != j] + [replaced]))
    return None


def stable_exp(b, x):
    """``exp(x)`` in a stable form, or None: exp(z - logsumexp(z)) = softmax(z)."""
    node = b.node(x)
    if node.op == "add" and len(node.args) == 2:
        for z, other in (node.args, reversed(node.args)):
            negated = _negation_of(b, other)
            if negated is None:
                continue
            lse = b.node(negated)
            if lse.op == "broadcast":
                lse = b.node(lse.args[0])
            if lse.op == "logsumexp" and lse.args[0] == z and b.shape(z) != ():
                b.note_rewrite("exp(z - logsumexp(z)) -> softmax(z), so exp(z)/sum(exp(z)) -> softmax(z)")
                return b.call("softmax", z)
    return None
