"""symgrad installed from its wheel (not from a checkout) finds its templates and builds a model.

The templates live in the checkout's top-level ``templates/`` folder; the
wheel carries them as ``symgrad/templates``. This builds the wheel, unpacks
it into a folder of its own, and runs a build from a folder outside the
checkout with only that copy of symgrad importable.
"""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import sys
import sympy as sp
import symgrad as sg
from symgrad.render import template_folder
assert sg.__file__.startswith(sys.argv[1]), sg.__file__
assert str(template_folder()).startswith(sys.argv[1]), template_folder()
w, x = sp.symbols("w x")
module = sg.compile(sg.Model("from_wheel", loss=(w * x - 1) ** 2, params=[w], inputs=[x]), out_dir="generated")
print(module.grad(w=2.0, x=3.0)["w"])
"""


def test_an_installed_wheel_builds_a_model(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = dist.glob("symgrad-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    assert "symgrad/templates/kernels.c.j2" in names and "symgrad/templates/macros.j2" in names
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site))
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(site)], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.strip()) == 2 * (2.0 * 3.0 - 1) * 3.0
