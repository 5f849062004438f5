"""The runtime helpers compiled once per machine and flag set into a cached object.

symgrad_runtime.h.j2 renders one text; render.split_runtime cuts it into the
header the kernels include (prototypes of the helpers that take pointers,
scalar helpers inline) and the source of the runtime object (every
definition), which the build compiles once, caches under cache_dir() and
links statically into each extension.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import sympy as sp

import symgrad as sg
from symgrad.build import load
from symgrad.pipeline import build_model, generate
from symgrad.render import split_runtime


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A runtime cache of the test's own."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(folder))
    return folder


def _affine(name):
    """loss = sum((W x + b)**2) for a 3x4 W: a matrix product and a reduction, both runtime helpers."""
    x, W, b = sp.MatrixSymbol("x", 4, 1), sp.MatrixSymbol("W", 3, 4), sp.MatrixSymbol("b", 3, 1)
    z = W * x + b
    return sg.Model(name, loss=sg.sum(sp.HadamardPower(z, 2)), params=[W, b], inputs=[x], reduce="sum")


def _check_affine(module, rng):
    W, b, x = rng.normal(size=(3, 4)), rng.normal(size=(3, 1)), rng.normal(size=(40, 4, 1))
    loss, grads = module.value_and_grad(W=W, b=b, x=x)
    z = W @ x + b
    np.testing.assert_allclose(loss, np.sum(z ** 2), rtol=1e-12)
    np.testing.assert_allclose(grads["W"], np.sum(2 * z @ x.transpose(0, 2, 1), axis=0), rtol=1e-12)
    np.testing.assert_allclose(grads["b"], np.sum(2 * z, axis=0), rtol=1e-12)


SYNTHETIC = """\
typedef double sg_real;
/* a scalar helper */
static inline sg_real sg_twice(sg_real x)
{
    return 2 * x;
}

/* an array helper, with a target attribute */
__attribute__((target("arch=x86-64-v3"))) static void sg_scale(int64_t n,
    const sg_real *a, sg_real *out)
{
    for (int64_t i = 0; i < n; ++i)
        out[i] = sg_twice(a[i]);
}
"""


def test_array_helpers_move_to_the_runtime_source_and_scalar_helpers_stay_inline():
    header, source = split_runtime(SYNTHETIC)
    assert "static inline sg_real sg_twice(sg_real x)\n{" in header and "return 2 * x;" in header
    assert "SG_RUNTIME_API void sg_scale(int64_t n,\n    const sg_real *a, sg_real *out);" in header
    assert "out[i] = sg_twice(a[i]);" not in header
    assert ('SG_RUNTIME_API __attribute__((target("arch=x86-64-v3"))) void sg_scale(int64_t n,\n'
            "    const sg_real *a, sg_real *out)\n{" in source)
    assert "static inline sg_real sg_twice(sg_real x)\n{" in source


def test_the_kernels_header_defines_no_helper_that_takes_a_pointer():
    files = generate(_affine("split_view")).package.files
    header, source = files["symgrad_runtime.h"], files["symgrad_runtime.c"]
    lines = header.split("\n")
    heads = []
    for i in (i for i, line in enumerate(lines) if line == "{"):  # each function body left in the header
        start = next(j for j in range(i - 1, -1, -1) if lines[j][:1] not in " /*#" and re.search(r"\bstatic\b", lines[j]))
        heads.append(" ".join(lines[start:i]))
    assert len(heads) > 10 and all("*" not in head[head.index("("):] for head in heads), heads
    for name in ("sg_gemm", "sg_matmul", "sg_sum", "sg_softmax", "sg_take"):
        assert re.search(rf"^SG_RUNTIME_API \w+ {name}\([^;{{]*\);$", header, re.M), name
        assert re.search(rf"^SG_RUNTIME_API [^\n]*\b{name}\([^;{{]*\)\n\{{$", source, re.M), name


def test_models_link_one_cached_runtime_object(cache, tmp_path, rng):
    _, first = build_model(_affine("runtime_first"), tmp_path / "out")
    objects = sorted((cache / "runtime").glob("*.o"))
    assert first.runtime == "compiled" and len(objects) == 1
    stamp = objects[0].stat().st_mtime_ns
    _, second = build_model(_affine("runtime_second"), tmp_path / "out")
    assert second.runtime == "cached" and objects[0].stat().st_mtime_ns == stamp
    _check_affine(load(first.path), rng)
    _check_affine(load(second.path), rng)
    # The extension carries its own copy of the helpers, hidden from the rest of the process.
    if shutil.which("nm"):
        extension = next(second.path.glob("_kernels_*"))
        exported = subprocess.run(["nm", "-D", "--defined-only", str(extension)], capture_output=True,
                                  text=True).stdout
        assert "runtime_second_value_and_grad" in exported and not re.search(r"\bsg_\w+", exported)
    # A corrupted cached object is noticed and compiled again.
    objects[0].write_bytes(b"not an object file")
    _, third = build_model(_affine("runtime_third"), tmp_path / "out")
    assert third.runtime == "compiled"
    _check_affine(load(third.path), rng)


def test_a_cache_that_cannot_be_written_only_costs_time(tmp_path, monkeypatch, rng):
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    monkeypatch.setenv("SYMGRAD_CACHE_DIR", str(blocked))
    _, result = build_model(_affine("runtime_uncached"), tmp_path / "out")
    assert result.runtime == "compiled"
    _check_affine(load(result.path), rng)


def test_the_cache_keeps_a_bounded_number_of_objects(cache, tmp_path, monkeypatch):
    from symgrad import build

    monkeypatch.setattr(build, "RUNTIME_CACHE_SIZE", 2)
    for k in range(4):
        built = tmp_path / f"object{k}.o"
        built.write_bytes(b"object %d" % k)
        build.publish_runtime(str(k) * 64, built)
        os.utime(cache / "runtime" / f"{str(k) * 32}.o", (k, k))  # published in this order
    kept = sorted(p.name for p in (cache / "runtime").glob("*.o"))
    assert kept == ["2" * 32 + ".o", "3" * 32 + ".o"]
    assert build.cached_runtime("3" * 64, tmp_path).read_bytes() == b"object 3"
    assert build.cached_runtime("0" * 64, tmp_path) is None
