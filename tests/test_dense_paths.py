"""The fast paths of the runtime's matrix product and triangular solve, side by side with
their general paths.

sg_gemm (templates/symgrad_runtime.h.j2) runs small products as plain loops and
larger ones packed into SG_MR x nr blocks; the packing copies contiguous rows or
columns of A and B with loops of their own, and zeroes contiguous rows of C
with a loop of its own. Each such path must give the numbers of the general
one (a strided copy of the same operands, packed element by element) to the
bit, and both the product within rounding, on sizes that cross every
threshold: the small-product limit (m n k < 512), whole and partial panels of
B (nr columns) and slivers of A (SG_MR rows), the depth of one packed block
(SG_KC) and its width (SG_NC). The helpers are compiled once, with the
kernels' flags, into a small extension of the test's own.

sg_tri_solve solves an example with several right-hand columns row by row, all
columns at once (in double precision); one column at a time is its general path.
"""

from __future__ import annotations

import importlib.util
import itertools

import numpy as np
import pytest

from symgrad import __version__
from symgrad.build import BASE_FLAGS
from symgrad.ops.linalg import GEMM_BLOCKS
from symgrad.render import VECTOR_FUNCTIONS, environment, gemm_levels, split_runtime

WRAPPER = """
void test_gemm(int64_t m, int64_t n, int64_t k, const double *a, int64_t a_rs, int64_t a_cs,
               const double *b, int64_t b_rs, int64_t b_cs, double *c, int64_t c_rs, int64_t c_cs,
               int accumulate, double *scratch)
{
    sg_gemm(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, c_rs, c_cs, accumulate, scratch);
}

void test_tri_solve(int64_t n, int64_t m, const double *t, int64_t t_rs, int64_t t_cs, const double *b,
                    int64_t b_rs, int64_t b_cs, double *out, int lower, int trans)
{
    sg_tri_solve(1, n, m, t, 0, t_rs, t_cs, b, 0, b_rs, b_cs, out, 0, lower, trans, 0);
}
"""

CDEF = """
void test_gemm(int64_t m, int64_t n, int64_t k, const double *a, int64_t a_rs, int64_t a_cs,
               const double *b, int64_t b_rs, int64_t b_cs, double *c, int64_t c_rs, int64_t c_cs,
               int accumulate, double *scratch);
void test_tri_solve(int64_t n, int64_t m, const double *t, int64_t t_rs, int64_t t_cs, const double *b,
                    int64_t b_rs, int64_t b_cs, double *out, int lower, int trans);
"""

SCRATCH = GEMM_BLOCKS["kc"] * GEMM_BLOCKS["nc"] + GEMM_BLOCKS["mr"] * GEMM_BLOCKS["kc"]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """The runtime object's source (float64) with a wrapper of sg_gemm, compiled."""
    import cffi

    header = environment().get_template("symgrad_runtime.h.j2").render(
        version=__version__, real="double", f="", gemm=GEMM_BLOCKS, vector_functions=VECTOR_FUNCTIONS,
        gemm_levels=gemm_levels("float64"))
    _, source = split_runtime(header)
    folder = tmp_path_factory.mktemp("dense_paths")
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("_sg_dense_paths", source + WRAPPER, extra_compile_args=list(BASE_FLAGS), libraries=["m"])
    path = ffi.compile(tmpdir=str(folder))
    spec = importlib.util.spec_from_file_location("_sg_dense_paths", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _operand(value, layout):
    """A matrix as (value, buffer, row stride, column stride) in elements: 'rows' stored by rows,
    'cols' by columns (a transposed view), 'strided' every other element of a larger array (so
    that no contiguous copy applies: the general packing)."""
    rows, cols = value.shape
    if layout == "rows":
        return value, np.ascontiguousarray(value), cols, 1
    if layout == "cols":
        return value, np.asfortranarray(value).ravel(order="F"), 1, rows
    big = np.zeros((rows, 2 * cols))
    big[:, ::2] = value
    return value, big.ravel(), 2 * cols, 2


def _gemm(runtime, m, n, k, a, b, c_layout, accumulate, c0):
    """C (m x n, stored by c_layout) = A B, or C0 + A B with accumulate."""
    ffi, lib = runtime.ffi, runtime.lib
    (_, a_buf, a_rs, a_cs), (_, b_buf, b_rs, b_cs) = a, b
    if c_layout == "rows":
        c, c_rs, c_cs = c0.copy().ravel(), n, 1
    else:
        c, c_rs, c_cs = c0.ravel(order="F").copy(), 1, m
    scratch = np.empty(SCRATCH)
    ptr = ffi.from_buffer
    lib.test_gemm(m, n, k, ptr("double[]", a_buf), a_rs, a_cs, ptr("double[]", b_buf), b_rs, b_cs,
                  ptr("double[]", c), c_rs, c_cs, accumulate, ptr("double[]", scratch))
    return c.reshape(m, n) if c_layout == "rows" else c.reshape(n, m).T


# m: below, at and past SG_MR (4) and a tile of 64 examples; n: one column, the float64 panel
# widths of AVX2 (8) and AVX-512 (16) and past them, 10 classes, past SG_NC (512); k: short
# (1, 10), one tile, past SG_KC (256).
SIZES = [(1, 1, 1), (3, 5, 7), (4, 8, 16), (5, 17, 10), (64, 10, 128), (64, 128, 64), (64, 128, 10),
         (10, 128, 64), (128, 64, 64), (33, 33, 257), (9, 513, 3), (130, 16, 1)]


@pytest.mark.parametrize("m,n,k", SIZES)
def test_packing_fast_paths_give_the_general_paths_numbers(runtime, m, n, k):
    rng = np.random.default_rng(m * 1000 + n * 10 + k)
    for a_layout, b_layout, c_layout, accumulate in itertools.product(("rows", "cols"), ("rows", "cols"),
                                                                      ("rows", "cols"), (0, 1)):
        a_value, b_value, c0 = rng.normal(size=(m, k)), rng.normal(size=(k, n)), rng.normal(size=(m, n))
        a, b = _operand(a_value, a_layout), _operand(b_value, b_layout)
        got = _gemm(runtime, m, n, k, a, b, c_layout, accumulate, c0)
        # the same operands as strided copies: packed element by element, no fast path
        general = _gemm(runtime, m, n, k, _operand(a_value, "strided"), _operand(b_value, "strided"), c_layout,
                        accumulate, c0)
        case = f"{m}x{k} ({a_layout}) by {k}x{n} ({b_layout}), C by {c_layout}, accumulate={accumulate}"
        np.testing.assert_array_equal(got, general, err_msg=case)
        want = (c0 if accumulate else 0) + a[0] @ b[0]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * k, err_msg=case)


def test_a_product_without_scratch_runs_as_plain_loops(runtime):
    """scratch NULL (the one-example entry points) takes the plain loops at every size."""
    rng = np.random.default_rng(3)
    a, b = _operand(rng.normal(size=(20, 30)), "rows"), _operand(rng.normal(size=(30, 40)), "cols")
    ffi, lib = runtime.ffi, runtime.lib
    c = np.full(20 * 40, np.nan)
    lib.test_gemm(20, 40, 30, ffi.from_buffer("double[]", a[1]), a[2], a[3], ffi.from_buffer("double[]", b[1]),
                  b[2], b[3], ffi.from_buffer("double[]", c), 40, 1, 0, ffi.NULL)
    np.testing.assert_allclose(c.reshape(20, 40), a[0] @ b[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,m", [(1, 2), (5, 3), (64, 64), (17, 40)])
def test_triangular_solve_by_rows_gives_the_numbers_of_one_column_at_a_time(runtime, n, m):
    ffi, lib = runtime.ffi, runtime.lib
    ptr = ffi.from_buffer
    rng = np.random.default_rng(n * 100 + m)
    t = rng.normal(size=(n, n)) + 4 * np.eye(n)
    b = rng.normal(size=(n, m))
    for lower, trans, b_layout in itertools.product((1, 0), (0, 1), ("rows", "cols")):
        _, b_buf, b_rs, b_cs = _operand(b, b_layout)
        rows = np.empty(n * m)
        lib.test_tri_solve(n, m, ptr("double[]", t), n, 1, ptr("double[]", b_buf), b_rs, b_cs,
                           ptr("double[]", rows), lower, trans)
        columns = np.empty((n, m))
        for c in range(m):  # one column: the general path
            column, bc = np.empty(n), np.ascontiguousarray(b[:, c])
            lib.test_tri_solve(n, 1, ptr("double[]", t), n, 1, ptr("double[]", bc), 1, 1, ptr("double[]", column),
                               lower, trans)
            columns[:, c] = column
        case = f"n={n} m={m} lower={lower} trans={trans} B by {b_layout}"
        np.testing.assert_array_equal(rows.reshape(n, m), columns, err_msg=case)
        tri = np.tril(t) if lower else np.triu(t)
        np.testing.assert_allclose(rows.reshape(n, m), np.linalg.solve(tri.T if trans else tri, b), rtol=1e-9,
                                   atol=1e-12, err_msg=case)
        in_place = np.ascontiguousarray(b).ravel()  # X written over B itself
        lib.test_tri_solve(n, m, ptr("double[]", t), n, 1, ptr("double[]", in_place), m, 1,
                           ptr("double[]", in_place), lower, trans)
        np.testing.assert_array_equal(in_place.reshape(n, m), columns, err_msg=case + ", in place")
