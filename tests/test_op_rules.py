"""Every op's derivative rules against central differences, driven by the registry.

Each differentiable op is evaluated with the NumPy reference interpreter on
random points of the domain its registry entry declares, and the adjoint
contributions its VJP builds, and the tangent its JVP builds (or the JVP
transposed from its VJP, for an op without one), are compared with finite
differences of the op's own NumPy implementation. A new op is tested the
moment it is registered.
"""

import numpy as np
import pytest
import sympy as sp

from symgrad import ops
from symgrad.forward import transposed_vjp
from symgrad.graph import Builder, Graph, Node
from symgrad.interpret import evaluate

from conftest import central_difference

DIFFERENTIABLE = sorted(
    name for name, op in ops.REGISTRY.items()
    if op.kind != "leaf" and op.vjp is not None and op.domain is not None
)
ELEMENTWISE_SHAPES = [(), (2, 3)]


def _cases(op):
    """(arg shapes, attrs) to test an op on."""
    if op.test_cases:
        return list(op.test_cases)
    arity = op.arity or len(op.domain)
    cases = [(tuple(shape for _ in range(arity)), ()) for shape in ELEMENTWISE_SHAPES]
    if arity >= 2:  # a scalar broadcast against a matrix
        cases.append((((),) + tuple((2, 3) for _ in range(arity - 1)), ()))
    return cases


def _graph_for(op_name, shapes, attrs, domain):
    g = Graph()
    b = Builder(g)
    leaves = []
    for k, shape in enumerate(shapes):
        name = f"a{k}"
        symbol = sp.MatrixSymbol(name, *shape) if shape else sp.Symbol(name, real=True)
        leaves.append(b.apply("symbol", attrs=(name, "param", shape, symbol)))
    out = g.intern(Node(op_name, tuple(leaves), attrs, ops.get(op_name).shape(list(shapes), attrs), False))
    return g, b, leaves, out


def _random_args(op, shapes, rng, attrs=()):
    """A random point of the op's domain: per arg an interval, or a function
    ``(rng, shape, earlier args, attrs) -> array`` for structured args (an spd matrix,
    the factorization of the arg before)."""
    values = []
    for k, shape in enumerate(shapes):
        domain = op.domain[min(k, len(op.domain) - 1)]
        if callable(domain):
            values.append(np.asarray(domain(rng, shape, values, attrs), dtype=float))
            continue
        low, high = domain
        values.append(rng.uniform(low, high, size=shape))
    return values


@pytest.mark.parametrize("op_name", DIFFERENTIABLE)
def test_vjp_matches_central_differences(op_name, rng):
    op = ops.get(op_name)
    for shapes, attrs in _cases(op):
        g, b, leaves, out = _graph_for(op_name, shapes, attrs, op.domain)
        values = _random_args(op, shapes, rng, attrs)
        out_shape = g.nodes[out].shape
        weights = rng.standard_normal(out_shape)  # a random cotangent
        cotangent = b.apply("symbol", attrs=("g", "param", out_shape,
                                              sp.MatrixSymbol("g", *out_shape) if out_shape else sp.Symbol("g")))
        contributions = op.vjp(b, out, cotangent)
        env = {f"a{k}": v for k, v in enumerate(values)}
        env["g"] = weights
        for k, contribution in enumerate(contributions):
            if contribution is None:
                continue
            contribution = b.sum_to(contribution, shapes[k])
            got = evaluate(g, env, [contribution])[contribution]

            def scalarized(x, k=k):
                args = list(values)
                args[k] = x
                return float(np.sum(weights * op.numpy(args, attrs)))

            expected = central_difference(scalarized, values[k])
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8,
                                       err_msg=f"{op_name} arg {k} shapes {shapes}")


@pytest.mark.parametrize("transposed", [False, True], ids=["jvp", "transposed_vjp"])
@pytest.mark.parametrize("op_name", DIFFERENTIABLE)
def test_jvp_matches_central_differences(op_name, transposed, rng):
    """The forward-mode rule (and the rule transposed from the VJP that an op without one
    gets) against the directional derivative of the op's NumPy form along random tangents."""
    op = ops.get(op_name)
    rule = transposed_vjp if transposed or op.jvp is None else op.jvp
    for shapes, attrs in _cases(op):
        g, b, leaves, out = _graph_for(op_name, shapes, attrs, op.domain)
        values = _random_args(op, shapes, rng, attrs)
        directions = [rng.standard_normal(shape) for shape in shapes]
        tangents = [b.apply("symbol", attrs=(f"t{k}", "param", shape,
                                             sp.MatrixSymbol(f"t{k}", *shape) if shape else sp.Symbol(f"t{k}")))
                    for k, shape in enumerate(shapes)]
        env = {f"a{k}": v for k, v in enumerate(values)} | {f"t{k}": d for k, d in enumerate(directions)}
        for k in range(len(shapes)):  # along one arg at a time
            tangent = rule(b, out, [tangents[i] if i == k else None for i in range(len(shapes))])
            got = 0.0 if tangent is None else evaluate(g, env, [tangent])[tangent]
            got = np.broadcast_to(got, g.nodes[out].shape)

            def along(h, k=k):
                args = list(values)
                args[k] = values[k] + h * directions[k]
                return np.asarray(op.numpy(args, attrs), dtype=float)

            expected = (along(1e-6) - along(-1e-6)) / 2e-6
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7,
                                       err_msg=f"{op_name} arg {k} shapes {shapes}")


SCALAR_FUNCTIONS = [
    (name, op) for name, op in sorted(ops.REGISTRY.items())
    if op.kind == "elementwise" and op.arity == 1 and op.vjp is not None and op.domain and not op.test_cases
]


@pytest.mark.parametrize("name,op", SCALAR_FUNCTIONS, ids=[n for n, _ in SCALAR_FUNCTIONS])
def test_unary_rule_matches_sympy_diff(name, op, rng):
    """The rule's symbolic derivative equals sympy.diff of the op's SymPy head."""
    g, b, (leaf,), out = _graph_for(name, ((),), (), op.domain)
    one = b.const(1)
    (contribution,) = op.vjp(b, out, one)
    from symgrad.symbolic import expression

    x = g.nodes[leaf].attrs[3]
    ours = expression(g, contribution)
    reference = sp.diff(op.to_sympy([x], ()), x)
    for value in rng.uniform(*op.domain[0], size=5):
        assert float(ours.subs(x, value).evalf()) == pytest.approx(float(reference.subs(x, value).evalf()),
                                                                   rel=1e-12, abs=1e-12)


def test_every_registered_op_has_what_the_engine_needs():
    for name, op in ops.REGISTRY.items():
        assert op.kind in ("leaf", "elementwise", "view", "tensor"), name
        if op.kind == "elementwise":
            assert op.c is not None, f"{name} has no C form"
        if op.kind == "tensor":
            assert op.emit is not None, f"{name} has no emitter"
        if op.kind == "view":
            assert op.view is not None, f"{name} has no view rule"
        if op.differentiable and op.arity != 0:
            assert op.vjp is not None, f"{name} is differentiable but has no rule"
            assert op.jvp is not None, f"{name} is differentiable but has no forward-mode (jvp) rule"
