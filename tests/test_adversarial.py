"""Adversarial cases: models and calls at the edges of what the kernels see, each a regression
test of a bug found by the randomized comparison with torch.func (tests/test_torch_random.py)
or by probing extreme inputs. Each case names the reference it is checked against."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

import symgrad as sg


def test_constant_zero_output_with_a_jvp_kernel(compile_model):
    """An output that is the constant 0 has the zero node as its tangent too: the output and its
    tangent were equal Results, so the planner named both tangents (`tan_o_2` twice) and the C did
    not compile. The tangent of a constant is 0 (torch.func.jvp of a constant output)."""
    a = sp.Symbol("a", real=True)
    x = sp.MatrixSymbol("x", 2, 1)
    model = sg.Model("adv_zero_output", loss=a * sg.sum(x), params=[a], inputs=[x],
                     outputs={"zero": sp.Integer(0), "zeros": sp.ZeroMatrix(2, 1), "y": a * x},
                     kernels=("jvp", "jacobian"))
    m = compile_model(model)
    X = np.array([[[1.0], [2.0]], [[3.0], [-1.0]]])
    outputs, tangents = m.jvp({"a": 1.0}, a=2.0, x=X)
    np.testing.assert_array_equal(outputs["zero"], [0.0, 0.0])
    np.testing.assert_array_equal(tangents["zero"], [0.0, 0.0])
    np.testing.assert_array_equal(tangents["zeros"], np.zeros((2, 2, 1)))
    np.testing.assert_allclose(tangents["y"], X)
    np.testing.assert_allclose(tangents["loss"], X.sum(axis=(1, 2)).mean())
    J = m.jacobian(a=2.0, x=X)
    np.testing.assert_array_equal(J["zero"]["a"], [0.0, 0.0])
    np.testing.assert_allclose(J["y"]["a"], X)


def test_infinite_constants_are_named_as_infinities_not_complex_numbers():
    """SymPy's oo has is_real False (it is an extended real), so the reader called it "the complex
    number oo"; it is refused as an infinite constant, and zoo stays a complex number."""
    from symgrad.errors import UnsupportedFunctionError

    x = sp.Symbol("x", real=True)
    for loss, said in ((x + sp.oo, "the infinite constant oo"),
                       (sp.Piecewise((x, x > 0), (-sp.oo, True)), "the infinite constant -oo"),
                       (x * sp.zoo, "the complex number zoo")):
        with pytest.raises(UnsupportedFunctionError, match=said):
            sg.Model("adv_infinity", loss=loss, params=[x]).graph


def test_hvp_through_a_block_matrix_squared(compile_model):
    """Found by tests/test_torch_random.py (seed 169): the hvp of sum(B .* B), B = [[U, x], [W, 0]],
    is 2 v[U] in U (torch.func.hvp; by hand). GCC 12 compiled the AVX-512 version of this valid C
    with 512-bit vectors so that the copy of v19[:2, :2] out of the doubled 5x3 block read a
    stale element (U[1, 1] was 0). On x86, kernels vectorize with vectors of at most 256 bits
    (build.X86_VECTOR_FLAGS), which GCC compiles right."""
    U, W = sp.MatrixSymbol("U", 2, 2), sp.MatrixSymbol("W", 3, 2)
    x = sp.MatrixSymbol("x", 2, 1)
    B = sp.BlockMatrix([[U, x], [W, sp.ZeroMatrix(3, 1)]])
    model = sg.Model("adv_block_hvp", loss=sg.sum(sp.HadamardProduct(B, B)), params=[U], inputs=[x, W],
                     reduce="sum", kernels=("hvp",))
    m = compile_model(model)
    rng = np.random.default_rng(0)
    hv = m.hvp({"U": np.ones((2, 2))}, U=rng.standard_normal((2, 2)), x=rng.standard_normal((1, 2, 1)),
               W=rng.standard_normal((1, 3, 2)))
    np.testing.assert_array_equal(hv["U"], np.full((2, 2), 2.0))
