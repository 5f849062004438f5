"""Each example script runs and prints what its model file promises."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name):
    done = subprocess.run([sys.executable, str(EXAMPLES / f"run_{name}.py")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


def numbers(line):
    return [float(v) for v in re.findall(r"-?\d+(?:\.\d*)?(?:e[-+]?\d+)?", line.split("=", 1)[1])]


def test_affine_square():
    out = run_example("affine_square")
    lines = {line.split("=")[0].strip(): line for line in out.splitlines() if "=" in line}
    # a = 3, b = -1, x = [0, 0.5, 2]: by hand 2a(ax+b), 2x(ax+b), 2(ax+b)
    assert numbers(lines["df/dx"]) == pytest.approx([-6.0, 3.0, 30.0])
    assert numbers(lines["df/da"]) == pytest.approx([0.0, 0.5, 20.0])
    assert numbers(lines["df/db"]) == pytest.approx([-2.0, 1.0, 10.0])
    assert "symbolic df/da = x*(2*a*x + 2*b)" in out


def test_inverse_square_chain():
    out = run_example("inverse_square")
    assert "u = x**2" in out and "y = 1/u" in out
    assert "u_bar = -y*y" in out
    assert "d loss / d x = -y*y*(2*x)" in out and "    y = 1/x**2" in out
    dydx = next(line for line in out.splitlines() if line.startswith("dy/dx"))
    assert numbers(dydx)[:3] == pytest.approx([-16.0, -2.0, -0.25])


def test_fan_out_gradients_add():
    out = run_example("fan_out")
    assert "x_bar = 3*square + triple*(2*x)" in out
    assert "d loss / d x = 3*x**2 + 3*x*(2*x)" in out
    dydx = next(line for line in out.splitlines() if line.startswith("dy/dx"))
    assert numbers(dydx)[:3] == pytest.approx([9.0, 2.25, 36.0])


def test_log_sin_textbook_values():
    out = run_example("log_sin")
    assert "f(2, 5)      = 11.6521" in out
    assert "df/dx1(2, 5) = 5.5000" in out
    assert "df/dx2(2, 5) = 1.7163" in out
    assert "d loss / d x1 = x2 + 1/x1" in out


def test_logistic_regression_fits():
    out = run_example("logistic_regression")
    losses = [float(m) for m in re.findall(r"loss (\d+\.\d+)", out)]
    assert losses[0] == pytest.approx(0.6931, abs=1e-4)  # log 2 at zero weights
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.1
    accuracy = float(re.search(r"training accuracy: (\d+\.\d+)%", out).group(1))
    assert accuracy > 95


def test_xor_textbook_run():
    out = run_example("xor")
    assert "before training: predictions [0.1833, 0.7426, 0.7426, 0.3343], cost 0.069483" in out
    assert "after one step : predictions [0.1835, 0.7426, 0.7432, 0.3332], cost 0.069232" in out
    final = next(line for line in out.splitlines() if line.startswith("after") and "steps" in line)
    predictions = [float(v) for v in re.search(r"\[(.*)\]", final).group(1).split(",")]
    assert predictions[0] < 0.1 and predictions[3] < 0.1 and min(predictions[1:3]) > 0.9


def test_quadratic_form_run():
    out = run_example("quadratic_form")
    assert "d f / d x = (A + A.T)*x" in out or "d f / d x = (A.T + A)*x" in out
    assert "d f / d A = x*x.T" in out
    errors = [float(line.split(":")[1]) for line in out.splitlines() if line.startswith("worst error")]
    assert len(errors) == 2 and max(errors) < 1e-12


def test_digits_softmax_regression_accuracy():
    out = run_example("digits_softmax")
    accuracy = float(re.search(r"test accuracy: (\d+\.\d+)%", out).group(1))
    assert accuracy >= 95.0


def test_digits_mlp_accuracy_progress_and_plot(tmp_path):
    plot = tmp_path / "loss.png"
    done = subprocess.run([sys.executable, str(EXAMPLES / "run_digits_mlp.py"), str(plot)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    accuracy = float(re.search(r"test accuracy: (\d+\.\d+)%", done.stdout).group(1))
    assert accuracy >= 96.0
    assert "training: 100%" in done.stderr  # the tqdm progress bar
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gaussian_nll_fits_the_sample_covariance():
    out = run_example("gaussian_nll")
    assert float(re.search(r"max \|mean - sample mean\| = (\S+)", out).group(1)) < 1e-8
    assert float(re.search(r"max \|covariance - np.cov\| = (\S+)", out).group(1)) < 1e-8


def test_attention_agrees_with_pytorch_and_trains():
    out = run_example("attention")
    assert "every row of weights sums to 1: True" in out
    loss_diff, grad_diff = (float(v) for v in re.search(r"loss (\S+), worst gradient difference (\S+)", out).groups())
    assert loss_diff < 1e-13 and grad_diff < 1e-12
    first = float(re.search(r"^loss (\S+);", out, re.M).group(1))
    assert float(re.search(r"after 200 steps: loss (\S+)", out).group(1)) < 0.7 * first


def test_elman_rnn_agrees_with_pytorch_and_trains():
    out = run_example("elman_rnn")
    loss_diff, grad_diff = (float(v) for v in re.search(r"loss (\S+), worst gradient difference (\S+)", out).groups())
    assert loss_diff < 1e-13 and grad_diff < 1e-12
    losses = [float(v) for v in re.findall(r"step +\d+: loss (\S+)", out)]
    assert losses[-1] < 0.01 * losses[0]


def test_transformer_block_agrees_with_pytorch_and_learns_the_task():
    out = run_example("transformer_block")
    loss_diff, grad_diff = (float(v) for v in re.search(r"loss (\S+), worst gradient difference (\S+)", out).groups())
    assert loss_diff < 1e-13 and grad_diff < 1e-12
    losses = [float(v) for v in re.findall(r"mean training loss (\S+)", out)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.2
    before = float(re.search(r"before training: test accuracy (\S+)%", out).group(1))
    after = float(re.search(r"; test accuracy (\S+)%", out).group(1))
    assert before < 65 and after > 90  # chance is 50%: the block compares positions


def test_skipgram_agrees_with_pytorch_and_groups_words_by_class():
    out = run_example("skipgram")
    loss_diff, grad_diff = (float(v) for v in re.search(r"loss (\S+), worst gradient difference (\S+)", out).groups())
    assert loss_diff < 1e-13 and grad_diff < 1e-12
    first, last = (float(v) for v in re.findall(r"epoch \d: mean loss (\S+)", out))
    assert last < 0.8 * first
    assert re.search(r"^cat +(sheep|dog|horse|cow|goat) ", out, re.M)
    assert float(re.search(r"nearest neighbour is of their own class: (\d+)%", out).group(1)) >= 80


@pytest.fixture(scope="module")
def layer_norm_module(tmp_path_factory):
    """The transformer block's layer norm (examples/transformer_block.py, as written there) on an input
    Z, with a loss sum(layer_norm(Z) .* G) whose gradient in Z is checked."""
    import runpy

    import sympy as sp

    import symgrad as sg

    block = runpy.run_path(str(EXAMPLES / "transformer_block.py"))
    shape = (block["LENGTH"], block["WIDTH"])
    Z, G = sp.MatrixSymbol("Z", *shape), sp.MatrixSymbol("G", *shape)
    gain, bias = sp.MatrixSymbol("gain", 1, shape[1]), sp.MatrixSymbol("bias", 1, shape[1])
    normed = block["layer_norm"](Z, gain, bias)
    model = sg.Model("layer_norm_check", loss=sg.sum(sp.HadamardProduct(normed, G)), params=[gain, bias],
                     inputs=[Z, G], wrt=[Z], outputs={"normed": normed})
    return sg.compile(model, out_dir=tmp_path_factory.mktemp("layer_norm")), float(block["EPS"])


@pytest.mark.parametrize("case", ["ordinary", "variance near eps", "constant rows", "magnitude 1e-150",
                                  "magnitude 1e100", "magnitude 1e110", "offset 1e6"])
def test_transformer_layer_norm_is_accurate_as_written(layer_norm_module, case):
    """(x - mean) / sqrt(var + eps) as the textbook writes it (the variance of the centered values), and its
    gradient, against mpmath at 50 digits from the same float64 inputs."""
    import mpmath
    import numpy as np

    module, eps = layer_norm_module
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 8))
    z = {"ordinary": z, "variance near eps": 1e-3 * z, "constant rows": np.ones_like(z) * z[:, :1],
         "magnitude 1e-150": 1e-150 * z, "magnitude 1e100": 1e100 * z, "magnitude 1e110": 1e110 * z,
         "offset 1e6": 1e6 + 1e-2 * z}[case]
    g = rng.standard_normal((6, 8))
    gain, bias = 1 + 0.1 * rng.standard_normal((1, 8)), rng.standard_normal((1, 8))
    out = module.forward(Z=z[None], G=g[None], gain=gain, bias=bias)["normed"][0]
    _, grads = module.value_and_grad(Z=z[None], G=g[None], gain=gain, bias=bias)
    with mpmath.workdps(50):
        want_y, want_grad = np.zeros((6, 8)), np.zeros((6, 8))
        for r in range(6):
            x = [mpmath.mpf(float(v)) for v in z[r]]
            mean = sum(x) / 8
            s = mpmath.sqrt(sum((v - mean) ** 2 for v in x) / 8 + mpmath.mpf(eps))
            y = [(v - mean) / s for v in x]
            dy = [mpmath.mpf(float(g[r, k])) * mpmath.mpf(float(gain[0, k])) for k in range(8)]  # d loss / d y
            mean_dy, mean_dy_y = sum(dy) / 8, sum(a * b for a, b in zip(dy, y)) / 8
            want_y[r] = [float(v * mpmath.mpf(float(gain[0, k])) + mpmath.mpf(float(bias[0, k])))
                         for k, v in enumerate(y)]
            want_grad[r] = [float((dy[k] - mean_dy - y[k] * mean_dy_y) / s) for k in range(8)]
    # the offset case is ill-conditioned (the rows' mean holds 1e6 against a spread of 1e-2): float64's own
    # rounding of the mean then costs about 1e-16 * 1e6 / 1e-2 relatively; PyTorch's layer_norm does no better
    tolerance = 1e-7 if case == "offset 1e6" else 1e-13
    assert np.max(np.abs(out - want_y)) <= tolerance * np.max(np.abs(want_y))
    assert np.max(np.abs(grads["Z"][0] - want_grad)) <= tolerance * np.max(np.abs(want_grad))


def test_lstm_language_model_agrees_with_pytorch_and_learns():
    out = run_example("lstm_lm")
    loss_diff, grad_diff = (float(v) for v in re.search(r"loss (\S+), worst gradient difference (\S+)", out).groups())
    assert loss_diff < 1e-12 and grad_diff < 1e-12
    losses = [float(v) for v in re.findall(r"epoch \d+: loss (\S+) per character", out)]
    assert losses[0] == pytest.approx(3.332, rel=0.05) and losses[-1] < 0.7 * losses[0]  # log 28 at the start
