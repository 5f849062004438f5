"""symgrad build --wheel: a wheel pip installs into an environment without symgrad or SymPy.

The fresh environment is made with ``python -m venv --without-pip`` under the
test's temporary folder; NumPy and cffi (with pycparser) are linked into its
site-packages from this environment, dist-info included, so pip sees them as
installed; nothing else is. pip (this environment's, through ``--python``)
then installs the wheel with ``--no-index``: it checks the wheel's tags and
requirements as it would anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from symgrad.cli import main
from symgrad.errors import BuildError
from symgrad.model import load_model
from symgrad.pipeline import build_model
from symgrad.wheel import REQUIREMENTS, wheel_tag, write_wheel

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: What the generated package needs, and what must not be there.
LINKED = ("numpy", "numpy.libs", "cffi", "pycparser", "_cffi_backend")


def _site_packages(prefix: Path) -> Path:
    return next((prefix / "lib").glob("python3*/site-packages"))


def _fresh_environment(where: Path) -> Path:
    """A virtual environment holding only NumPy and cffi; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    target = _site_packages(where)
    ours = [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    for source in ours:
        for entry in source.iterdir():
            stem = entry.name.split("-")[0].split(".cpython")[0]
            if stem in LINKED or entry.name == "numpy.libs":
                if not (target / entry.name).exists():
                    (target / entry.name).symlink_to(entry)
    return where / "bin" / "python"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of the fresh environment, the wheel) with logistic_regression's wheel installed."""
    root = tmp_path_factory.mktemp("wheel")
    model = load_model(str(EXAMPLES / "logistic_regression.py"))[0]
    _, result = build_model(model, root / "build")
    wheel = write_wheel(result.path, root / "dist")
    python = _fresh_environment(root / "env")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index",
                           "--no-build-isolation", "--disable-pip-version-check", "-q", str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return python, wheel


def _run(python: Path, code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd="/", env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_installed_wheel_computes_what_the_build_computes(installed):
    python, _ = installed
    out = _run(python, """
import json, numpy as np, logistic_regression as lr
x1 = np.linspace(-1, 1, 7); x2 = np.cos(x1); y = (x1 > 0).astype(float)
loss, g = lr.value_and_grad(w1=0.3, w2=-0.2, b=0.1, x1=x1, x2=x2, y=y)
print(json.dumps([loss, g["w1"], g["w2"], g["b"], lr.forward(w1=0.3, w2=-0.2, b=0.1, x1=x1, x2=x2, y=y)["p"].tolist()]))
""")
    loss, gw1, gw2, gb, p = json.loads(out)
    x1 = np.linspace(-1, 1, 7)
    x2, y = np.cos(x1), (x1 > 0).astype(float)
    q = 1 / (1 + np.exp(-(0.3 * x1 - 0.2 * x2 + 0.1)))
    np.testing.assert_allclose(p, q, rtol=1e-14)
    np.testing.assert_allclose([loss, gw1, gw2, gb], [np.mean(-(y * np.log(q) + (1 - y) * np.log(1 - q))),
                                                      np.mean((q - y) * x1), np.mean((q - y) * x2),
                                                      np.mean(q - y)], rtol=1e-13)


def test_the_environment_has_neither_symgrad_nor_sympy(installed):
    python, _ = installed
    out = _run(python, """
import importlib.util
print([m for m in ("symgrad", "sympy", "jinja2") if importlib.util.find_spec(m)])
""")
    assert out.strip() == "[]"


def test_the_wheel_follows_the_format(installed):
    _, wheel = installed
    name, version, python_tag, abi, platform = wheel.stem.split("-")
    assert name == "logistic_regression" and "-".join((python_tag, abi, platform)) == wheel_tag()
    assert wheel_tag().startswith(f"cp{sys.version_info.major}{sys.version_info.minor}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = f"{name}-{version}.dist-info"
        metadata = archive.read(f"{dist_info}/METADATA").decode()
        assert [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist")] == \
            [f"Requires-Dist: {r}" for r in REQUIREMENTS]
        assert "Root-Is-Purelib: false" in archive.read(f"{dist_info}/WHEEL").decode()
        record = archive.read(f"{dist_info}/RECORD").decode().splitlines()
        assert sorted(line.split(",")[0] for line in record) == sorted(names)
        assert any(n.startswith(f"{name}/_kernels_") and n.endswith(".so") for n in names)


def test_the_wheel_requires_what_symgrad_requires_of_numpy_and_cffi():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(REQUIREMENTS) <= set(declared)


def test_the_same_build_gives_the_same_wheel(tmp_path, build_dir):
    model = load_model(str(EXAMPLES / "fan_out.py"))[0]
    _, result = build_model(model, build_dir)
    first = write_wheel(result.path, tmp_path / "a").read_bytes()
    assert write_wheel(result.path, tmp_path / "b").read_bytes() == first


def test_build_wheel_writes_it_beside_the_packages(tmp_path, capsys):
    assert main(["build", str(EXAMPLES / "fan_out.py"), "-o", str(tmp_path), "--wheel"]) == 0
    wheels = list(tmp_path.glob("fan_out-*.whl"))
    assert len(wheels) == 1 and f"wrote wheel {wheels[0]}" in capsys.readouterr().out


def test_a_folder_that_is_not_a_build_is_refused(tmp_path):
    with pytest.raises(BuildError, match="not a built symgrad package"):
        write_wheel(tmp_path)


@pytest.mark.parametrize("name", ["numpy", "json"])
def test_a_model_named_like_a_module_it_would_hide_is_refused(name, tmp_path):
    folder = tmp_path / name
    folder.mkdir()
    (folder / ".symgrad-build.json").write_text(json.dumps({"key": "0" * 64, "extension_file": "x.so"}))
    with pytest.raises(BuildError, match="hides the module"):
        write_wheel(folder)
