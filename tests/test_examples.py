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
