"""The generated C and __init__.py of every example, compared with the copies checked in under generated/.

The sources of the example packages are tracked so that a change in the
generated code shows up in review as a diff. The generated __init__.py
depends only on the model (the build key and the compiled extension's name
are in the build manifest), so its golden copy is the file a build from
the repository root writes. Regenerate them with

    SYMGRAD_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

No compiler is needed: this compares the rendered text.
"""

import contextlib
import os
from pathlib import Path

import pytest

import symgrad as sg
from symgrad.render import finish

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith(("run_", "_")))
def _golden_names(files):
    """The model's own C files (kernels, header). The runtime header, the same in
    every float64 package, has one golden copy: generated/symgrad_runtime.h, and so has
    the source of the runtime object, generated/symgrad_runtime.c."""
    return sorted(name for name in files if name.endswith((".c", ".h")) and not name.startswith("symgrad_runtime."))


def _models():
    with contextlib.chdir(ROOT):  # models name their file as `symgrad build examples/...` does
        for path in MODEL_FILES:
            yield from sg.load_model(path.relative_to(ROOT))


def _check_golden(golden: Path, text: str) -> None:
    if os.environ.get("SYMGRAD_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"{golden} is missing; regenerate with SYMGRAD_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"{golden} differs from what symgrad generates now"


@pytest.mark.parametrize("model", list(_models()), ids=lambda m: m.name)
def test_generated_sources_match_the_golden_files(model):
    package = sg.generate(model).package
    for name in _golden_names(package.files):
        _check_golden(ROOT / "generated" / model.name / name, package.files[name])


@pytest.mark.parametrize("model", list(_models()), ids=lambda m: m.name)
def test_generated_init_matches_its_golden_copy(model):
    _check_golden(ROOT / "generated" / model.name / "__init__.py", finish(sg.generate(model).package))


@pytest.mark.parametrize("name", ["symgrad_runtime.h", "symgrad_runtime.c"])
def test_runtime_header_matches_its_golden_copy(name):
    """The kernels' runtime header and the source of the runtime object they link."""
    model = next(_models())
    text = sg.generate(model).package.files[name]
    golden = ROOT / "generated" / name
    if os.environ.get("SYMGRAD_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs from what symgrad generates now"


def test_generation_is_deterministic():
    for model in _models():
        first = sg.generate(model).package.files
        second = sg.generate(model).package.files
        assert first == second
