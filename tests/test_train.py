"""Fused training (sgd_step, train_epoch) against the NumPy update applied to value_and_grad's gradients.

The reference is the loop of symgrad.train_runtime's docstring, written here
in NumPy over the module's own value_and_grad: the C epoch must give the same
params and losses to the bit, for every optimizer, in order and shuffled,
with a partial last minibatch, with scalar and matrix params, in float64 and
float32, and across the slice threshold of value_and_grad (a minibatch of
more than runtime.CHUNK examples). PyTorch's optimizers on a PyTorch copy of
the model are the independent check of the formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad import runtime
from symgrad.errors import ArgumentDtypeError, ArgumentError, ArgumentShapeError, KernelError

N, FEATURES, CLASSES = 50, 6, 3


def _softmax_model(name="train_softmax"):
    """logits = s * W x + b against a class index: a scalar param (passed by value) and matrix params."""
    x, c, s = sp.MatrixSymbol("x", FEATURES, 1), sp.Symbol("c"), sp.Symbol("s")
    W, b = sp.MatrixSymbol("W", CLASSES, FEATURES), sp.MatrixSymbol("b", CLASSES, 1)
    return sg.Model(name, loss=sg.cross_entropy(s * (W * x) + b, c), params=[W, b, s], inputs=[x, c])


@pytest.fixture(scope="module")
def net(compile_model):
    return compile_model(_softmax_model())


@pytest.fixture(scope="module")
def net32(compile_model):
    return compile_model(_softmax_model(), dtype="float32")


def _data(dtype=np.float64, n=N, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.normal(size=(n, FEATURES)).astype(dtype), "c": rng.integers(0, CLASSES, n).astype(dtype)}


def _params(dtype=np.float64, seed=1):
    rng = np.random.default_rng(seed)
    return {"W": rng.normal(0, 0.5, (CLASSES, FEATURES)).astype(dtype),
            "b": rng.normal(0, 0.5, (CLASSES, 1)).astype(dtype),
            "s": np.array(1.3, dtype=dtype)}


def _reference_epoch(module, params, data, batch_size, lr, optimizer, order, state, hyper):
    """The NumPy loop of symgrad.train_runtime's docstring, over module.value_and_grad."""
    n = len(next(iter(data.values())))
    order = np.arange(n) if order is None else order
    losses = []
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        loss, grads = module.value_and_grad(**params, **{k: v[idx] for k, v in data.items()})
        losses.append(loss)
        state["step"] += 1
        t = state["step"]
        for name, g in grads.items():
            p = params[name]
            g = np.asarray(g, p.dtype)  # a scalar's gradient comes as a Python float: the update is in p's precision
            if optimizer == "sgd":
                p -= lr * g
            elif optimizer == "momentum":
                v = state["velocity"][name]
                v *= hyper["momentum"]
                v += g
                p -= lr * v
            else:
                m, v = state["m"][name], state["v"][name]
                m *= hyper["beta1"]
                m += (1 - hyper["beta1"]) * g
                v *= hyper["beta2"]
                v += (1 - hyper["beta2"]) * (g * g)
                step_size = lr / (1 - hyper["beta1"] ** t)
                root2 = math.sqrt(1 - hyper["beta2"] ** t)
                p -= step_size * (m / (np.sqrt(v) / root2 + hyper["eps"]))
    return np.array(losses)


def _copy(params):
    return {k: np.array(v, copy=True) for k, v in params.items()}


HYPER = {"momentum": 0.8, "beta1": 0.85, "beta2": 0.99, "eps": 1e-7}


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("shuffle", [None, 7, "generator"])
def test_epochs_equal_the_numpy_loop_to_the_bit(net, optimizer, shuffle):
    data, params = _data(), _params()
    mine, theirs = _copy(params), _copy(params)
    state, ref_state = None, {"step": 0, "velocity": {k: np.zeros_like(v) for k, v in params.items()},
                              "m": {k: np.zeros_like(v) for k, v in params.items()},
                              "v": {k: np.zeros_like(v) for k, v in params.items()}}
    gen, ref_gen = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(2):  # the state carries over from one epoch to the next
        arg = gen if shuffle == "generator" else shuffle
        losses, state = net.train_epoch(mine, data, 16, 0.3, optimizer, shuffle=arg, state=state, **HYPER)
        order = (ref_gen.permutation(N) if shuffle == "generator" else
                 None if shuffle is None else np.random.default_rng(shuffle).permutation(N))
        expected = _reference_epoch(net, theirs, data, 16, 0.3, optimizer, order, ref_state, HYPER)
        assert len(losses) == 4  # 16 + 16 + 16 + 2: the last minibatch is its own mean
        np.testing.assert_array_equal(losses, expected)
        for name in params:
            np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    assert state["optimizer"] == optimizer and state["step"] == 8
    if optimizer != "sgd":
        slot = "velocity" if optimizer == "momentum" else "v"
        np.testing.assert_array_equal(state[slot]["W"], ref_state[slot]["W"])


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_float32_epochs_equal_the_numpy_loop_to_the_bit(net32, optimizer):
    data, params = _data(np.float32), _params(np.float32)
    mine, theirs = _copy(params), _copy(params)
    ref_state = {"step": 0, **{slot: {k: np.zeros_like(v) for k, v in params.items()}
                               for slot in ("velocity", "m", "v")}}
    losses, state = net32.train_epoch(mine, data, 8, 0.2, optimizer, shuffle=1, **HYPER)
    expected = _reference_epoch(net32, theirs, data, 8, 0.2, optimizer, np.random.default_rng(1).permutation(N),
                                ref_state, HYPER)
    assert losses.dtype == np.float32
    np.testing.assert_array_equal(losses, expected.astype(np.float32))
    for name in params:
        assert mine[name].dtype == np.float32
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)


def test_sgd_step_is_one_value_and_grad_and_update(net):
    data, params = _data(n=20), _params()
    loss, grads = net.value_and_grad(**params, **data)
    expected = {k: v - 0.1 * grads[k] for k, v in params.items()}
    W = params["W"]
    assert net.sgd_step(params, 0.1, **data) == loss
    assert params["W"] is W  # in place
    for name in params:
        np.testing.assert_array_equal(params[name], expected[name])


def test_a_scalar_param_given_as_a_number_is_replaced_by_its_new_value(net):
    data, params = _data(n=10), _params()
    params["s"] = 1.3
    _, grads = net.value_and_grad(**params, **data)
    net.sgd_step(params, 0.5, **data)
    assert type(params["s"]) is float and params["s"] == 1.3 - 0.5 * grads["s"]
    zero_d = _params()
    net.train_epoch(zero_d, data, 4, 0.5, "adam")
    assert zero_d["s"].shape == () and zero_d["s"] != 1.3  # a 0-d array is updated in place


def test_a_shuffled_epoch_is_the_permutation_of_numpys_generator(net):
    """shuffle=seed takes the examples in default_rng(seed).permutation(n): the same epoch as the data
    permuted by hand and taken in order."""
    data, params = _data(), _params()
    a, b = _copy(params), _copy(params)
    order = np.random.default_rng(11).permutation(N)
    la, _ = net.train_epoch(a, data, 7, 0.1, shuffle=11)
    lb, _ = net.train_epoch(b, {k: v[order] for k, v in data.items()}, 7, 0.1)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(a["W"], b["W"])


@pytest.fixture(scope="module")
def logistic(compile_model):
    x1, x2, y, w1, w2, b = sp.symbols("x1 x2 y w1 w2 b")
    p = sg.sigmoid(w1 * x1 + w2 * x2 + b)
    return compile_model(sg.Model("train_logistic", loss=-(y * sp.log(p) + (1 - y) * sp.log(1 - p)),
                                  params=[w1, w2, b], inputs=[x1, x2, y]))


@pytest.mark.parametrize("n", [runtime.CHUNK, runtime.CHUNK + 1, 3 * runtime.CHUNK + 5])
def test_minibatches_beyond_a_slice_are_cut_as_value_and_grad_cuts_them(logistic, n):
    """value_and_grad runs more than runtime.CHUNK examples in slices and adds their sums in order;
    the C epoch does the same, so full-batch steps stay equal to it across the threshold."""
    rng = np.random.default_rng(n)
    data = {"x1": rng.normal(size=n), "x2": rng.normal(size=n), "y": (rng.random(n) < 0.5).astype(float)}
    params = {"w1": 0.3, "w2": -0.2, "b": 0.1}
    expected, expected_losses = dict(params), []
    for _ in range(2):
        loss, grads = logistic.value_and_grad(**expected, **data)
        expected_losses.append(loss)
        expected = {k: v - 0.5 * grads[k] for k, v in expected.items()}
    losses, _ = logistic.train_epoch(params, data, n, 0.5)  # one full-batch step
    assert [losses[0], logistic.sgd_step(params, 0.5, **data)] == expected_losses
    for name in params:
        assert params[name] == expected[name], name


def test_frozen_params_and_input_gradients(compile_model):
    """A param outside wrt is read, not updated; an input in wrt has per-example gradients the step ignores."""
    x, t, a, k = sp.symbols("x t a k")
    model = sg.Model("train_frozen", loss=(a * x + k - t) ** 2, params=[a, k], inputs=[x, t], wrt=[a, x])
    module = compile_model(model)
    rng = np.random.default_rng(5)
    data = {"x": rng.normal(size=9), "t": rng.normal(size=9)}
    for shuffle in (None, 3):
        params = {"a": np.array(0.5), "k": 2.0}
        order = np.arange(9) if shuffle is None else np.random.default_rng(shuffle).permutation(9)
        expected = 0.5
        for idx in (order[0:4], order[4:8], order[8:9]):
            _, grads = module.value_and_grad(a=expected, k=2.0, x=data["x"][idx], t=data["t"][idx])
            expected = expected - 0.1 * grads["a"]
        module.train_epoch(params, data, 4, 0.1, shuffle=shuffle)
        assert params["a"] == expected and params["k"] == 2.0


def test_pytorch_optimizers_agree(net):
    """An independent check of the formulas: torch.optim on a PyTorch copy of the model."""
    torch = pytest.importorskip("torch")
    data, params = _data(), _params()
    for optimizer in ("sgd", "momentum", "adam"):
        mine = _copy(params)
        losses, _ = net.train_epoch(mine, data, 16, 0.1, optimizer, **HYPER)
        tp = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
        opt = (torch.optim.SGD(tp.values(), lr=0.1) if optimizer == "sgd" else
               torch.optim.SGD(tp.values(), lr=0.1, momentum=HYPER["momentum"]) if optimizer == "momentum" else
               torch.optim.Adam(tp.values(), lr=0.1, betas=(HYPER["beta1"], HYPER["beta2"]), eps=HYPER["eps"]))
        X, c = torch.tensor(data["x"]), torch.tensor(data["c"]).long()
        torch_losses = []
        for start in range(0, N, 16):
            opt.zero_grad()
            logits = tp["s"] * (X[start:start + 16] @ tp["W"].T) + tp["b"][:, 0]
            loss = torch.nn.functional.cross_entropy(logits, c[start:start + 16])
            loss.backward()
            opt.step()
            torch_losses.append(loss.item())
        np.testing.assert_allclose(losses, torch_losses, rtol=1e-12)
        for name in params:
            np.testing.assert_allclose(mine[name], tp[name].detach().numpy(), rtol=1e-11, atol=1e-13)


def test_a_kernel_error_stops_the_epoch_after_the_steps_before_it(net):
    data, params = _data(), _params()
    _, state = net.train_epoch(params, data, 50, 0.1, "adam")  # one step
    after_one = _copy(params)
    data["c"][40] = CLASSES  # no such class: the third minibatch (examples 32..47) fails
    with pytest.raises(KernelError, match="class index"):
        net.train_epoch(params, data, 16, 0.1, "adam", state=state)
    assert state["step"] == 1 + 2
    expected = _copy(after_one)
    ref_state = {"step": 1, "m": {}, "v": {}}
    _, ref_state0 = net.train_epoch(_copy(_params()), _data(), 50, 0.1, "adam")
    ref_state = {"step": 1, "m": ref_state0["m"], "v": ref_state0["v"]}
    _reference_epoch(net, expected, {k: v[:32] for k, v in data.items()}, 16, 0.1, "adam", None, ref_state,
                     {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8})
    for name in params:
        np.testing.assert_array_equal(params[name], expected[name])


def test_models_that_cannot_train_say_why(compile_model):
    x, w = sp.symbols("x w")
    per_example = compile_model(sg.Model("train_none", loss=(w * x) ** 2, params=[w], inputs=[x], reduce=None))
    with pytest.raises(ArgumentError, match="reduce=None"):
        per_example.sgd_step({"w": 1.0}, 0.1, x=np.ones(3))
    with pytest.raises(ArgumentError, match="reduce=None"):
        per_example.train_epoch({"w": 1.0}, {"x": np.ones(3)}, 2, 0.1)


@pytest.mark.parametrize("call, error, message", [
    (lambda m, p, d: m.train_epoch({**p, "V": p["W"]}, d, 8, 0.1), ArgumentError, "unknown param 'V'.*W, b, s"),
    (lambda m, p, d: m.train_epoch({**p, "x": p["W"]}, d, 8, 0.1), ArgumentError, "'x'; it is an input"),
    (lambda m, p, d: m.train_epoch({"W": p["W"], "b": p["b"]}, d, 8, 0.1), ArgumentError, "missing 's'"),
    (lambda m, p, d: m.train_epoch({**p, "W": p["W"].T.copy()}, d, 8, 0.1), ArgumentShapeError,
     r"'W' must have shape \(3, 6\); got \(6, 3\)"),
    (lambda m, p, d: m.train_epoch({**p, "W": p["W"].astype(np.float32)}, d, 8, 0.1), ArgumentDtypeError,
     "float64 array; got float32"),
    (lambda m, p, d: m.train_epoch({**p, "W": np.asfortranarray(p["W"])}, d, 8, 0.1), ArgumentError,
     "writable, C-contiguous"),
    (lambda m, p, d: m.train_epoch({**p, "W": p["W"].tolist()}, d, 8, 0.1), ArgumentError, "NumPy array.*got list"),
    (lambda m, p, d: m.train_epoch(p, d, 8, "0.1"), ArgumentError, "lr must be a finite real number; got '0.1'"),
    (lambda m, p, d: m.train_epoch(p, d, 8, float("nan")), ArgumentError, "lr must be a finite real number"),
    (lambda m, p, d: m.sgd_step(p, None, **d), ArgumentError, "lr must be a finite real number; got None"),
    (lambda m, p, d: m.train_epoch(p, d, 0, 0.1), ArgumentError, "batch_size must be a whole number >= 1; got 0"),
    (lambda m, p, d: m.train_epoch(p, d, 2.5, 0.1), ArgumentError, "batch_size must be a whole number"),
    (lambda m, p, d: m.train_epoch(p, d, 8, 0.1, "rmsprop"), ArgumentError,
     "unknown optimizer 'rmsprop'; choose one of 'sgd', 'momentum', 'adam'"),
    (lambda m, p, d: m.train_epoch(p, d, 8, 0.1, "adam", beta1=1.0), ArgumentError, r"beta1 must be in \[0.0, 1.0\)"),
    (lambda m, p, d: m.train_epoch(p, d, 8, 0.1, "momentum", momentum=-1), ArgumentError, "momentum must be >= 0"),
    (lambda m, p, d: m.train_epoch(p, d, 8, 0.1, shuffle=True), ArgumentError, "shuffle must be None"),
    (lambda m, p, d: m.train_epoch(p, d, 8, 0.1, "adam", state={"optimizer": "momentum", "step": 0}), ArgumentError,
     "state of optimizer 'momentum', but this epoch's optimizer is 'adam'"),
    (lambda m, p, d: m.train_epoch(p, list(d.values()), 8, 0.1), ArgumentError, "data must be a dict"),
    (lambda m, p, d: m.train_epoch(p, {"x": d["x"]}, 8, 0.1), ArgumentError, "data: missing input 'c'"),
    (lambda m, p, d: m.train_epoch(p, {**d, "z": d["c"]}, 8, 0.1), ArgumentError, "unknown input 'z'.*x, c"),
    (lambda m, p, d: m.train_epoch(p, {**d, "c": d["c"][:10]}, 8, 0.1), ArgumentShapeError, "batch sizes disagree"),
    (lambda m, p, d: m.train_epoch(p, {k: v[:0] for k, v in d.items()}, 8, 0.1), ArgumentShapeError, "0 examples"),
    (lambda m, p, d: m.train_epoch({**p, "b": p["W"][:, :1].reshape(3, 1)}, d, 8, 0.1), ArgumentError,
     "writable, C-contiguous"),
    (lambda m, p, d: m.train_epoch({**p, "b": p["W"].reshape(-1)[:3]}, d, 8, 0.1), ArgumentError, "share memory"),
    (lambda m, p, d: m.sgd_step(p, 0.1, x=d["x"], c=d["c"] + 0.5), KernelError, "class index"),
])
def test_bad_arguments_are_refused_with_the_fix(net, call, error, message):
    params, data = _params(), _data()
    with pytest.raises(error, match=message):
        call(net, params, data)


def test_a_state_of_wrong_arrays_is_refused(net):
    params, data = _params(), _data()
    _, state = net.train_epoch(params, data, 8, 0.1, "momentum")
    state["velocity"]["W"] = np.zeros(5)
    with pytest.raises(ArgumentError, match=r"state\['velocity'\]\['W'\] must be a writable, C-contiguous "
                                            "float64 array of 18 elements"):
        net.train_epoch(params, data, 8, 0.1, "momentum", state=state)
