"""The generated C of every example, compared with the copy checked in under generated/.

The sources of the example packages are tracked so that a change in the
generated code shows up in review as a diff. Regenerate them with

    SYMGRAD_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

No compiler is needed: this compares the rendered text.
"""

import os
from pathlib import Path

import pytest

import symgrad as sg

ROOT = Path(__file__).resolve().parent.parent
MODEL_FILES = sorted(p for p in (ROOT / "examples").glob("*.py") if not p.name.startswith(("run_", "_")))
def _golden_names(files):
    """The model's own C files (kernels, header). The runtime header, the same in
    every float64 package, has one golden copy: generated/symgrad_runtime.h."""
    return sorted(name for name in files if name.endswith((".c", ".h")) and name != "symgrad_runtime.h")


def _models():
    for path in MODEL_FILES:
        for model in sg.load_model(path):
            yield model


@pytest.mark.parametrize("model", list(_models()), ids=lambda m: m.name)
def test_generated_sources_match_the_golden_files(model):
    package = sg.generate(model).package
    for name in _golden_names(package.files):
        golden = ROOT / "generated" / model.name / name
        if os.environ.get("SYMGRAD_UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(package.files[name])
        assert golden.is_file(), f"{golden} is missing; regenerate with SYMGRAD_UPDATE_GOLDEN=1"
        assert package.files[name] == golden.read_text(), f"{golden} differs from what symgrad generates now"


def test_runtime_header_matches_its_golden_copy():
    model = next(_models())
    text = sg.generate(model).package.files["symgrad_runtime.h"]
    golden = ROOT / "generated" / "symgrad_runtime.h"
    if os.environ.get("SYMGRAD_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs from what symgrad generates now"


def test_generation_is_deterministic():
    for model in _models():
        first = sg.generate(model).package.files
        second = sg.generate(model).package.files
        assert first == second
