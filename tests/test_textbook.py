"""Worked examples whose numbers are published: symgrad must reproduce them.

Each value here is the one printed in the source, to the digits it prints.
"""

import numpy as np
import pytest
import sympy as sp

import symgrad as sg


def test_micrograd_readme_expression(compile_model):
    """The expression of micrograd's README: g = 24.7041, dg/da = 138.8338, dg/db = 645.5773
    at a = -4, b = 2 (it mixes +, *, **, relu, division, and values used many times)."""
    a, b = sp.symbols("a b")
    c = a + b
    d = a * b + b**3
    c = c + c + 1
    c = c + 1 + c + (-a)
    d = d + d * 2 + sg.relu(b + a)
    d = d + 3 * d + sg.relu(b - a)
    e = c - d
    f = e**2
    g = f / 2 + 10 / f
    model = sg.Model("micrograd_readme", loss=g, inputs=[a, b], wrt=[a, b], reduce=None)
    module = compile_model(model)
    loss, grads = module.value_and_grad(a=-4.0, b=2.0)
    assert loss == pytest.approx(24.7041, abs=5e-5)
    assert grads["a"] == pytest.approx(138.8338, abs=5e-5)
    assert grads["b"] == pytest.approx(645.5773, abs=5e-5)
    symbolic = model.gradients()
    assert float(symbolic[a].subs({a: -4, b: 2})) == pytest.approx(138.8338, abs=5e-5)


def _step_by_step_network():
    """The 2-2-2 sigmoid network of Matt Mazur's "A Step by Step Backpropagation Example":
    one shared bias per layer, E = sum of 1/2 (target - output)^2."""
    i1, i2, t1, t2 = sp.symbols("i1 i2 t1 t2")
    w = sp.symbols("w1:9")
    b1, b2 = sp.symbols("b1 b2")
    h1 = sg.sigmoid(w[0] * i1 + w[1] * i2 + b1)
    h2 = sg.sigmoid(w[2] * i1 + w[3] * i2 + b1)
    o1 = sg.sigmoid(w[4] * h1 + w[5] * h2 + b2)
    o2 = sg.sigmoid(w[6] * h1 + w[7] * h2 + b2)
    error = (t1 - o1) ** 2 / 2 + (t2 - o2) ** 2 / 2
    return sg.Model("step_by_step", loss=error, params=[*w, b1, b2], inputs=[i1, i2, t1, t2],
                    outputs={"o1": o1, "o2": o2}, wrt=list(w))


STEP_BY_STEP_START = {"w1": 0.15, "w2": 0.20, "w3": 0.25, "w4": 0.30, "w5": 0.40, "w6": 0.45,
                      "w7": 0.50, "w8": 0.55, "b1": 0.35, "b2": 0.60}
STEP_BY_STEP_DATA = {"i1": [0.05], "i2": [0.10], "t1": [0.01], "t2": [0.99]}


def test_step_by_step_backpropagation_figures(compile_model):
    module = compile_model(_step_by_step_network())
    params = dict(STEP_BY_STEP_START)
    outputs = module.forward(**params, **STEP_BY_STEP_DATA)
    assert outputs["o1"][0] == pytest.approx(0.75136507, abs=5e-9)
    assert outputs["o2"][0] == pytest.approx(0.772928465, abs=5e-10)
    loss, grads = module.value_and_grad(**params, **STEP_BY_STEP_DATA)
    assert loss == pytest.approx(0.298371109, abs=5e-10)
    assert grads["w5"] == pytest.approx(0.082167041, abs=5e-10)
    assert grads["w1"] == pytest.approx(0.000438568, abs=5e-10)
    # One step of gradient descent with learning rate 0.5 (the biases stay fixed).
    updated = {name: params[name] - 0.5 * grads[name] for name in grads}
    assert updated["w5"] == pytest.approx(0.35891648, abs=5e-9)
    assert updated["w6"] == pytest.approx(0.408666186, abs=5e-10)
    assert updated["w7"] == pytest.approx(0.511301270, abs=5e-10)
    assert updated["w8"] == pytest.approx(0.561370121, abs=5e-10)
    assert updated["w1"] == pytest.approx(0.149780716, abs=5e-10)
    assert updated["w2"] == pytest.approx(0.19956143, abs=5e-9)
    assert updated["w3"] == pytest.approx(0.24975114, abs=5e-9)
    assert updated["w4"] == pytest.approx(0.29950229, abs=5e-9)
    # "After repeating this process 10,000 times, the error plummets to 0.0000351085": the
    # error the 10,000th step computes, before its own update.
    for _ in range(10_000):
        loss, grads = module.value_and_grad(**params, **STEP_BY_STEP_DATA)
        for name, g in grads.items():
            params[name] -= 0.5 * g
    assert loss == pytest.approx(0.0000351085, abs=5e-11)


def test_step_by_step_network_as_matrices(compile_model):
    """The same network with weight matrices and vectors: the same published figures."""
    x, t = sp.MatrixSymbol("x", 2, 1), sp.MatrixSymbol("t", 2, 1)
    W1, W2 = sp.MatrixSymbol("W1", 2, 2), sp.MatrixSymbol("W2", 2, 2)
    b1, b2 = sp.symbols("b1 b2")
    h = sg.sigmoid(W1 * x + b1 * sp.OneMatrix(2, 1))
    o = sg.sigmoid(W2 * h + b2 * sp.OneMatrix(2, 1))
    model = sg.Model("step_by_step_matrices", loss=sg.sum(sp.HadamardPower(t - o, 2)) / 2,
                     params=[W1, W2, b1, b2], inputs=[x, t], wrt=[W1, W2])
    module = compile_model(model)
    loss, grads = module.value_and_grad(W1=np.array([[0.15, 0.20], [0.25, 0.30]]), b1=0.35,
                                        W2=np.array([[0.40, 0.45], [0.50, 0.55]]), b2=0.60,
                                        x=np.array([[0.05], [0.10]]), t=np.array([[0.01], [0.99]]))
    assert loss == pytest.approx(0.298371109, abs=5e-10)
    assert grads["W2"][0, 0] == pytest.approx(0.082167041, abs=5e-10)
    assert grads["W1"][0, 0] == pytest.approx(0.000438568, abs=5e-10)


def test_cs231n_circuit_and_neuron(compile_model):
    """CS231n's backpropagation notes: f = (x + y) z at x = -2, y = 5, z = -4 gives f = -12 and
    gradients [-4, -4, 3]; the 2-input sigmoid neuron with w = [2, -3, -3], x = [-1, -2] gives
    0.73 and gradients dx = [0.393, -0.590], dw = [-0.196, -0.393, 0.196]."""
    x, y, z = sp.symbols("x y z")
    circuit = compile_model(sg.Model("circuit", loss=(x + y) * z, inputs=[x, y, z], wrt=[x, y, z], reduce=None))
    value, grads = circuit.value_and_grad(x=-2.0, y=5.0, z=-4.0)
    assert value == -12.0 and (grads["x"], grads["y"], grads["z"]) == (-4.0, -4.0, 3.0)

    w0, w1, w2, x0, x1 = sp.symbols("w0 w1 w2 x0 x1")
    neuron = sg.Model("neuron", loss=1 / (1 + sp.exp(-(w0 * x0 + w1 * x1 + w2))), params=[w0, w1, w2],
                      inputs=[x0, x1], wrt=[w0, w1, w2, x0, x1])
    value, grads = compile_model(neuron).value_and_grad(w0=2.0, w1=-3.0, w2=-3.0, x0=-1.0, x1=-2.0)
    assert value == pytest.approx(0.73, abs=5e-3)
    for name, want in (("x0", 0.393), ("x1", -0.590), ("w0", -0.196), ("w1", -0.393), ("w2", 0.196)):
        assert grads[name] == pytest.approx(want, abs=1e-3), name
