"""Compiled kernels against the NumPy reference, op by op.

Scalar ops: one model holds every element-wise op of the registry, each on
inputs of its own drawn from the op's domain; its outputs are compared with
the reference interpreter and its per-example gradients with the interpreter
on the differentiated graph and with finite differences of the compiled loss.
Matrix ops: small models that use each matrix construct.
"""

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import ops
from symgrad.check import check_model
from symgrad.pipeline import derived
from symgrad.interpret import evaluate

ELEMENTWISE = sorted(
    name for name, op in ops.REGISTRY.items()
    if op.kind == "elementwise" and op.domain is not None and not op.test_cases
)
_ATTRS = {"heaviside": (sp.Rational(1, 2),)}
# Ops whose arguments are truth values get comparisons as arguments.
_CUSTOM = {
    "select": lambda v: sp.Piecewise((v[1], v[0] > 0), (v[2], True)),
    "and": lambda v: sp.And(v[0] > 0, v[1] > 0),
    "or": lambda v: sp.Or(v[0] > 0, v[1] > 0),
    "not": lambda v: sp.Not(v[0] > 0),
}


def _scalar_op_model():
    outputs, inputs, domains = {}, [], {}
    for name in ELEMENTWISE:
        op = ops.get(name)
        arity = op.arity or len(op.domain)
        symbols = [sp.Symbol(f"{name}_{k}", real=True) for k in range(arity)]
        for s, dom in zip(symbols, op.domain):
            domains[str(s)] = dom
        inputs += symbols
        build = _CUSTOM.get(name, lambda v: op.to_sympy(v, _ATTRS.get(name, ())))
        outputs[name] = build(symbols)
    loss = sp.Add(*[sp.Piecewise((1, True)) * 0 + expr if not isinstance(expr, sp.logic.boolalg.Boolean)
                    else sp.Piecewise((1, expr), (0, True)) for expr in outputs.values()])
    model = sg.Model("all_scalar_ops", loss=loss, inputs=inputs, wrt=inputs, reduce=None,
                     outputs={k: v for k, v in outputs.items() if not isinstance(v, sp.logic.boolalg.Boolean)})
    return model, domains


def test_every_scalar_op_compiles_and_matches_the_reference(compile_model, rng):
    model, domains = _scalar_op_model()
    module = compile_model(model)
    n = 7
    values = {name: rng.uniform(*dom, size=n) for name, dom in domains.items()}
    forward = module.forward(**values)
    _, grads = module.value_and_grad(**values)
    graph = derived(model, None)
    for e in range(n):
        example = {k: v[e] for k, v in values.items()}
        ref = evaluate(graph, example)
        for r in graph.results["outputs"]:
            np.testing.assert_allclose(forward[r.name][e], ref[r.node], rtol=1e-13, atol=1e-14,
                                       err_msg=f"forward of {r.name}")
        for r in graph.results["gradients"]:
            np.testing.assert_allclose(grads[r.name][e], ref[r.node], rtol=1e-12, atol=1e-13,
                                       err_msg=f"gradient with respect to {r.name}")


def test_every_scalar_op_gradient_matches_finite_differences(compile_model):
    model, _ = _scalar_op_model()
    report = check_model(model, compile_model(model), points=2)
    assert report.directions > 50
    assert report.ok, report.line()


# --- matrix constructs ------------------------------------------------------------------

x = sp.MatrixSymbol("x", 3, 1)
y = sp.MatrixSymbol("y", 3, 1)
A = sp.MatrixSymbol("A", 3, 3)
B = sp.MatrixSymbol("B", 2, 3)
s = sp.Symbol("s")
c = sp.Symbol("c")

MATRIX_MODELS = {
    # name: (loss, params, inputs)
    "matmul_chain": ((y.T * A * B.T * B * x)[0, 0], [A, B], [x, y]),
    "quadratic": (x.T * A * x, [A], [x]),
    "transpose_sum": (sg.sum(sp.HadamardProduct(A.T, A) + A * A.T), [A], []),
    "elements": (x[0, 0] * A[1, 2] + sp.sin(A[2, 0]) * x[2, 0] ** 2, [A], [x]),
    "explicit_matrix": (sg.sum(sp.Matrix([[s * x[0, 0], s**2], [x[1, 0], 1]]) * sp.Matrix([[1, 2], [3, 4]])),
                        [s], [x]),
    "trace_identity": (sp.Trace(A * A + 2 * sp.Identity(3) * A), [A], []),
    "scalar_times_matrix": (sg.sum(s * A + sp.OneMatrix(3, 3) * s**2 + sp.ZeroMatrix(3, 3)), [s, A], []),
    "elementwise_functions": (sg.sum((A * x).applyfunc(sp.tanh).applyfunc(sp.exp)) + sg.sum(sg.sigmoid(B * x))
                              + sg.sum(sg.softplus(A * x)) + sg.sum(sp.cos(B * x)), [A, B], [x]),
    "hadamard_power": (sg.sum(sp.HadamardPower(A * x, 3)), [A], [x]),
    "softmax": (sg.sum(sp.HadamardProduct(sg.softmax(A * x), y)), [A], [x, y]),
    "log_softmax": (sg.sum(sp.HadamardProduct(sg.log_softmax(A * x), y)), [A], [x, y]),
    "logsumexp": (sg.logsumexp(A * x) * s, [A, s], [x]),
    "cross_entropy_probabilities": (sg.cross_entropy(A * x, y), [A], [x, y]),
    "cross_entropy_index": (sg.cross_entropy(A * x, c), [A], [x, c]),
    "cross_entropy_literal": (sg.cross_entropy(A * x, 2), [A], [x]),
    "mse": (sg.mse(A * x, y), [A], [x, y]),
    "relu_max": (sg.sum(sg.relu(A * x)) + sp.Max(x[0, 0], x[1, 0]), [A], [x]),
    "matpow": ((y.T * A**3 * x)[0, 0], [A], [x, y]),
}


@pytest.mark.parametrize("name", sorted(MATRIX_MODELS))
@pytest.mark.parametrize("reduce", ["mean", None])
def test_matrix_model_gradients(name, reduce, compile_model):
    loss, params, inputs = MATRIX_MODELS[name]
    model = sg.Model(f"m_{name}_{reduce}", loss=loss, params=params, inputs=inputs,
                     wrt=params + inputs, reduce=reduce)
    report = check_model(model, compile_model(model), points=2)
    assert report.ok, report.line()


@pytest.mark.parametrize("name", sorted(MATRIX_MODELS))
def test_matrix_model_matches_reference_interpreter(name, compile_model, rng):
    loss, params, inputs = MATRIX_MODELS[name]
    model = sg.Model(f"m_{name}_None", loss=loss, params=params, inputs=inputs, wrt=params + inputs, reduce=None)
    module = compile_model(model)
    from symgrad.check import random_point

    values = random_point(model, rng, 0.3, 0.9, batch=4)
    losses, grads = module.value_and_grad(**values)
    if not inputs:  # nothing is batched: one example, results without a batch axis
        losses, grads = [losses], {k: [v] for k, v in grads.items()}
    graph = derived(model, None)
    input_names = {str(v.name) for v in inputs}
    for e in range(len(losses)):
        example = {k: (v[e] if k in input_names else v) for k, v in values.items()}
        ref = evaluate(graph, example)
        np.testing.assert_allclose(losses[e], ref[graph.results["example_loss"][0].node], rtol=1e-12)
        for r in graph.results["gradients"]:
            np.testing.assert_allclose(np.reshape(grads[r.name][e], ref[r.node].shape), ref[r.node],
                                       rtol=1e-11, atol=1e-12, err_msg=r.name)
