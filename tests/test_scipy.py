"""symgrad.scipy and the flat-vector entry: against the keyword calls (to the bit), PyTorch float64,
central differences, and SciPy's own optimizers on the examples."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.errors import ArgumentDtypeError, ArgumentError, ArgumentShapeError, ModelError
from symgrad.runtime import CHUNK
from symgrad.scipy import Constraint, MissingKernelError, Objective, constraint_model

torch = pytest.importorskip("torch")
so = pytest.importorskip("scipy.optimize")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
A, k, c, t, y = sp.symbols("A k c t y")
R = A * sp.exp(-k * t) + c - y


def _fit_torch(theta, T, Y, c_value=None):
    a, kk = theta[0], theta[1]
    cc = theta[2] if c_value is None else c_value
    return a * torch.exp(-kk * T) + cc - Y


@pytest.fixture(scope="module")
def fit(compile_model):
    """Residuals of an exponential decay; A, k, c differentiated (a reverse-mode Jacobian: 2 rows < 3)."""
    model = sg.Model("scipy_fit3", params=[A, k, c], inputs=[t, y], outputs={"r": R}, loss=R**2 / 2, reduce="sum",
                     kernels=("jacobian", "hvp"))
    return compile_model(model)


@pytest.fixture(scope="module")
def fit2(compile_model):
    """The same with c bound as data (a forward-mode Jacobian: 2 columns for 2 rows), mean reduction."""
    model = sg.Model("scipy_fit2", params=[A, k, c], inputs=[t, y], outputs={"r": R}, loss=R**2, wrt=[A, k],
                     kernels=("jacobian", "hvp"))
    return compile_model(model)


@pytest.fixture(scope="module")
def layer(compile_model):
    """Matrix params: W (2x3) and b (2x1), one tanh layer, squared error, mean over examples."""
    W, b = sp.MatrixSymbol("W", 2, 3), sp.MatrixSymbol("b", 2, 1)
    x, target = sp.MatrixSymbol("x", 3, 1), sp.MatrixSymbol("target", 2, 1)
    h = (W * x + b).applyfunc(sp.tanh)
    model = sg.Model("scipy_layer", params=[W, b], inputs=[x, target], outputs={"h": h},
                     loss=sg.sum((h - target).applyfunc(lambda u: u**2)), kernels=("jacobian", "hvp"))
    return compile_model(model)


@pytest.fixture(scope="module")
def rosen_scalars(compile_model):
    """Rosenbrock of 10 scalar inputs differentiated per example (reduce=None): the one-example kernels."""
    xs = sp.symbols("x0:10")
    loss = sum(100 * (xs[i + 1] - xs[i] ** 2) ** 2 + (1 - xs[i]) ** 2 for i in range(9))
    return compile_model(sg.Model("scipy_rosen_scalars", inputs=list(xs), loss=loss, reduce=None, wrt=list(xs),
                                  kernels=("hvp",)))


@pytest.fixture(scope="module")
def plain(compile_model):
    """A model built without extra kernels."""
    return compile_model(sg.Model("scipy_plain", params=[A, k, c], inputs=[t, y], outputs={"r": R}, loss=R**2,
                                  reduce="sum"))


def _data(n, seed=3):
    rng = np.random.default_rng(seed)
    T = rng.uniform(0, 4, n)
    return T, 2.5 * np.exp(-1.3 * T) + 0.5 + 0.05 * rng.standard_normal(n)


# --- the flat entry equals the keyword call, to the bit ----------------------------------------


@pytest.mark.parametrize("n", [1, 7, 2 * CHUNK + 5])  # one example, one slice, three slices
def test_flat_calls_equal_the_keyword_calls_bit_for_bit(fit, fit2, n):
    T, Y = _data(n)
    for module, theta, data in ((fit, np.array([1.5, 1.1, 0.3]), {"t": T, "y": Y}),
                                (fit2, np.array([1.5, 1.1]), {"t": T, "y": Y, "c": 0.4})):
        obj = Objective(module, data=data, residual="r")
        kw = {**obj.unpack(theta), **data}
        loss, grads = module.value_and_grad(**kw)
        assert obj.fun(theta) == module.forward(**kw)["loss"] == loss
        value, gradient = obj.fun_and_jac(theta)
        assert value == loss
        assert np.array_equal(gradient, [grads[name] for name in obj.names])
        assert np.array_equal(obj.jac(theta), gradient)
        v = np.array([0.7, -1.2, 0.4])[:obj.size]
        hv = module.hvp({name: float(u) for name, u in zip(obj.names, v)}, **kw)
        assert np.array_equal(obj.hessp(theta, v), [hv[name] for name in obj.names])
        _, _, H = module.hessian(**kw)
        assert np.array_equal(obj.hess(theta), [[H[a][b] for b in obj.names] for a in obj.names])
        assert np.array_equal(obj.residuals(theta), np.reshape(module.forward(**kw)["r"], -1))
        J = module.jacobian(**kw)
        assert np.array_equal(obj.residual_jacobian(theta),
                              np.stack([np.reshape(J["r"][name], -1) for name in obj.names], axis=-1))


def test_flat_calls_of_matrix_params_and_one_example_kernels(layer, rosen_scalars):
    rng = np.random.default_rng(5)
    X, target = rng.standard_normal((CHUNK + 3, 3, 1)), rng.standard_normal((CHUNK + 3, 2, 1))
    obj = Objective(layer, data={"x": X, "target": target}, residual="h")
    theta = rng.standard_normal(obj.size)
    kw = {**obj.unpack(theta), "x": X, "target": target}
    loss, grads = layer.value_and_grad(**kw)
    assert obj.fun(theta) == loss
    assert np.array_equal(obj.jac(theta), np.concatenate([grads["W"].ravel(), grads["b"].ravel()]))
    jac = layer.jacobian(**kw)["h"]  # (N, 2, 1, *shape)
    dense = np.concatenate([jac["W"].reshape(-1, 6), jac["b"].reshape(-1, 2)], axis=1)
    assert np.array_equal(obj.residual_jacobian(theta), dense)

    point = Objective(rosen_scalars, data={})
    theta = rng.uniform(-1.5, 1.5, 10)
    kw = point.unpack(theta)
    loss, grads = rosen_scalars.value_and_grad(**kw)  # the one-example entry point
    assert point.fun(theta) == loss and np.array_equal(point.jac(theta), [grads[f"x{i}"] for i in range(10)])
    v = rng.standard_normal(10)
    hv = rosen_scalars.hvp({f"x{i}": float(v[i]) for i in range(10)}, **kw)
    assert np.array_equal(point.hessp(theta, v), [hv[f"x{i}"] for i in range(10)])


def test_pack_and_unpack_follow_wrt_order_and_c_order(layer):
    rng = np.random.default_rng(0)
    obj = Objective(layer, data={"x": rng.standard_normal((4, 3, 1)), "target": rng.standard_normal((4, 2, 1))})
    W, b = np.arange(6.0).reshape(2, 3), np.array([[10.0], [11.0]])
    theta = obj.pack({"W": W, "b": b})
    assert np.array_equal(theta, [0, 1, 2, 3, 4, 5, 10, 11])
    assert obj.layout() == "W at [0:6] (2x3), b at [6:8] (2x1)"
    back = obj.unpack(theta)
    assert list(back) == ["W", "b"] and np.array_equal(back["W"], W) and np.array_equal(back["b"], b)
    assert np.array_equal(obj.pack({"W": W, "b": [10, 11]}), theta)  # a vector may come 1-D
    assert np.array_equal(obj.x0, np.zeros(8))


# --- against PyTorch float64 and central differences -------------------------------------------


def _central(f, theta, h=1e-6):
    columns = []
    for j in range(theta.size):
        e = np.zeros_like(theta)
        e[j] = h
        columns.append((np.asarray(f(theta + e)) - np.asarray(f(theta - e))) / (2 * h))
    return np.stack(columns, axis=-1)


def test_objective_functions_against_torch_and_central_differences(fit):
    T, Y = _data(30)
    obj = Objective(fit, data={"t": T, "y": Y}, params={"A": 2.0, "k": 1.0, "c": 0.2}, residual="r")
    theta = obj.x0
    Tt, Yt = torch.from_numpy(T), torch.from_numpy(Y)

    def loss(th):
        return 0.5 * torch.sum(_fit_torch(th, Tt, Yt) ** 2)

    th = torch.tensor(theta, dtype=torch.float64)
    assert obj.fun(theta) == pytest.approx(loss(th).item(), rel=1e-13)
    assert np.allclose(obj.jac(theta), torch.func.grad(loss)(th).numpy(), rtol=1e-12, atol=1e-13)
    assert np.allclose(obj.jac(theta), _central(obj.fun, theta), rtol=1e-6, atol=1e-7)
    H = torch.func.hessian(loss)(th).numpy()
    assert np.allclose(obj.hess(theta), H, rtol=1e-12, atol=1e-12)
    assert np.array_equal(obj.hess(theta), obj.hess(theta).T)
    assert np.allclose(obj.hess(theta), _central(obj.jac, theta), rtol=1e-6, atol=1e-6)
    v = np.array([0.3, -0.5, 2.0])
    assert np.allclose(obj.hessp(theta, v), H @ v, rtol=1e-12, atol=1e-12)
    assert np.allclose(obj.residuals(theta), _fit_torch(th, Tt, Yt).numpy(), rtol=1e-14, atol=1e-15)
    Jt = torch.func.jacrev(lambda p: _fit_torch(p, Tt, Yt))(th).numpy()
    assert np.allclose(obj.residual_jacobian(theta), Jt, rtol=1e-13, atol=1e-14)
    assert np.allclose(obj.residual_jacobian(theta), _central(obj.residuals, theta), rtol=1e-6, atol=1e-8)


@pytest.fixture(scope="module")
def hs71():
    """The modules of examples/hs71.py, built where its script builds them (so that it finds them)."""
    objective, constraints = sg.load_model(EXAMPLES / "hs71.py")
    out = EXAMPLES.parent / "generated"
    return sg.compile(objective, out_dir=out), sg.compile(constraints, out_dir=out)


def _hs71_c(x):
    return torch.stack([x[0] * x[1] * x[2] * x[3], torch.sum(x**2)])


def test_constraint_functions_against_torch_and_central_differences(hs71):
    _, constraints = hs71
    con = Constraint(constraints, [25, 40], [np.inf, 40])
    assert isinstance(con, so.NonlinearConstraint)
    theta = np.array([1.1, 4.5, 3.9, 1.4])
    th = torch.tensor(theta, dtype=torch.float64)
    assert np.allclose(con.fun(theta), _hs71_c(th).numpy(), rtol=1e-15)
    J = torch.func.jacrev(_hs71_c)(th).numpy()
    assert np.allclose(con.jac(theta), J, rtol=1e-14) and con.jac(theta).shape == (2, 4)
    assert np.allclose(con.jac(theta), _central(con.fun, theta), rtol=1e-7)
    v = np.array([0.7, -1.3])
    Hv = torch.func.hessian(lambda x: torch.dot(torch.from_numpy(v), _hs71_c(x)))(th).numpy()
    assert np.allclose(con.hess(theta, v), Hv, rtol=1e-14, atol=1e-14)
    assert np.allclose(con.hess(theta, v), _central(lambda z: v @ con.jac(z), theta), rtol=1e-6, atol=1e-6)
    # From an Objective of the same module: its data, the multipliers set per call all the same.
    shared = Constraint(Objective(constraints, data={"v": np.ones((2, 1))}), [25, 40], [np.inf, 40])
    assert np.array_equal(shared.hess(theta, v), con.hess(theta, v))
    assert np.array_equal(shared.jac(theta), con.jac(theta))


# --- the examples converge as they say ----------------------------------------------------------


def _run(name):
    done = subprocess.run([sys.executable, str(EXAMPLES / f"run_{name}.py")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_rosenbrock_newton_cg_takes_scipys_iterations():
    out = _run("rosenbrock")
    ours, scipys = (re.search(rf"^{who}: +(\d+) iterations, (\d+) function, (\d+) gradient and (\d+) Hessian", out,
                              re.M).groups() for who in ("symgrad", "scipy"))
    assert ours == scipys and int(ours[0]) > 10
    assert float(re.search(r"max \|x - 1\| = (\S+)", out).group(1)) < 1e-8


def test_exp_decay_least_squares_fit():
    out = _run("exp_decay")
    found = dict(re.findall(r"(\w) = (-?\d+\.\d+)", out.splitlines()[0]))
    assert float(found["A"]) == pytest.approx(2.5, abs=0.05) and float(found["k"]) == pytest.approx(1.3, abs=0.05)
    assert float(found["c"]) == pytest.approx(0.5, abs=0.03)
    assert float(re.search(r"finite differences\| = (\S+)", out).group(1)) < 1e-6


def test_hs71_trust_constr_reaches_the_known_optimum():
    out = _run("hs71")
    assert "f* = 17.0140173 " in out
    assert "x1*x2*x3*x4 = 25.000000" in out and "sum of squares = 40.000000" in out


# --- errors --------------------------------------------------------------------------------------


def test_errors_name_the_problem_and_the_fix(fit, plain, fit2):
    T, Y = _data(5)
    with pytest.raises(ArgumentError, match="'z', which the model 'scipy_fit3' does not declare"):
        Objective(fit, data={"t": T, "y": Y, "z": 1.0})
    with pytest.raises(ArgumentError, match=r"data is missing 'y' \(input, scalar\)"):
        Objective(fit, data={"t": T})
    with pytest.raises(ArgumentError, match="'A', which is differentiated"):
        Objective(fit, data={"t": T, "y": Y, "A": 1.0})
    with pytest.raises(ArgumentShapeError, match="batch sizes disagree"):
        Objective(fit, data={"t": T, "y": Y[:3]})
    with pytest.raises(ArgumentError, match="residual='q' is not an output of 'scipy_fit3'; its outputs are: r"):
        Objective(fit, data={"t": T, "y": Y}, residual="q")
    obj = Objective(fit, data={"t": T, "y": Y})
    with pytest.raises(ArgumentShapeError, match=r"theta has shape \(2,\); expected \(3,\): A at \[0:1\]"):
        obj.fun(np.zeros(2))
    with pytest.raises(ArgumentDtypeError, match="theta has dtype complex128"):
        obj.jac(np.zeros(3, dtype=complex))
    with pytest.raises(ArgumentError, match="theta must be a 1-D array of 3 floats; got str"):
        obj.fun("abc")
    with pytest.raises(ArgumentShapeError, match=r"v has shape \(4,\)"):
        obj.hessp(np.zeros(3), np.zeros(4))
    assert obj.fun([1, 2, 3]) == obj.fun(np.array([1.0, 2.0, 3.0]))  # lists and integers convert exactly
    strided = np.array([1.0, 9.0, 2.0, 9.0, 3.0, 9.0])[::2]  # not contiguous: copied
    assert obj.fun(strided) == obj.fun(np.array([1.0, 2.0, 3.0]))
    assert np.array_equal(obj.hessp(strided, strided), obj.hessp(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])))
    assert obj.fun(np.array([1, 2, 3], dtype=np.float32)) == obj.fun(np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ArgumentDtypeError, match="cannot represent exactly"):
        obj.fun(np.array([2**60, 0, 0]))
    with pytest.raises(MissingKernelError, match="residuals needs the name of the residual output"):
        obj.residuals(np.zeros(3))
    with pytest.raises(ArgumentError, match=r"'q' is not a differentiated symbol.*theta holds A, k, c"):
        obj.pack({"q": 1.0})
    bare = Objective(plain, data={"t": T, "y": Y}, residual="r")
    with pytest.raises(MissingKernelError, match=r'hessp needs the hvp kernel.*add kernels=\("hvp",\)'):
        bare.hessp
    with pytest.raises(MissingKernelError, match=r'hess needs the hvp kernel.*add kernels=\("hessian",\)'):
        bare.hess(np.zeros(3))
    with pytest.raises(MissingKernelError, match=r'residual_jacobian needs the jacobian kernel.*kernels=\("jacobian",\)'):
        bare.residual_jacobian(np.zeros(3))
    assert not hasattr(bare, "hessp")  # an AttributeError: scipy's checks of what it was given work
    with pytest.raises(MissingKernelError, match="Constraint needs the jacobian kernel"):
        Constraint(bare, 0, 1, output="r")
    with pytest.raises(ArgumentError, match="expected a module generated by symgrad"):
        Objective(np, data={})
    with pytest.raises(ModelError, match="at least one constraint"):
        constraint_model("no_constraints", [], params=[A])


def test_per_example_losses_need_one_example(compile_model):
    model = sg.Model("scipy_per_example", params=[A, k, c], inputs=[t, y], loss=R**2, reduce=None)
    module = compile_model(model)
    T, Y = _data(4)
    with pytest.raises(ArgumentShapeError, match="reduce=None .* data holds 4 examples"):
        Objective(module, data={"t": T, "y": Y})
    one = Objective(module, data={"t": T[0], "y": Y[0]})
    assert one.fun(np.ones(3)) == module.forward(A=1.0, k=1.0, c=1.0, t=T[0], y=Y[0])["loss"]


def test_float32_builds_and_batched_inputs_in_theta_are_refused(compile_model):
    model = sg.Model("scipy_single", params=[A, k, c], inputs=[t, y], loss=R**2)
    with pytest.raises(ArgumentDtypeError, match="need a float64 build.*without --dtype float32"):
        Objective(compile_model(model, dtype="float32"), data={"t": 1.0, "y": 2.0})
    by_input = compile_model(sg.Model("scipy_wrt_input", params=[A, k, c], inputs=[t, y], loss=R**2, wrt=[A, t]))
    T, Y = _data(3)
    with pytest.raises(ArgumentShapeError, match="theta holds the input 't'.*data holds 3 examples"):
        Objective(by_input, data={"k": 1.0, "c": 0.0, "y": Y})
    one = Objective(by_input, data={"k": 1.0, "c": 0.0, "y": Y[0]})
    _, grads = by_input.value_and_grad(A=2.0, t=0.5, k=1.0, c=0.0, y=Y[0])
    assert np.array_equal(one.jac(np.array([2.0, 0.5])), [grads["A"], grads["t"]])


def test_constraint_needs_scipy_and_says_so(hs71, monkeypatch):
    real_import = importlib.import_module

    def no_scipy(name, *args):
        if name.startswith("scipy"):
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_scipy)
    with pytest.raises(ImportError, match=r"pip install 'symgrad\[scipy\]'"):
        Constraint(hs71[1], [25, 40], [np.inf, 40])
