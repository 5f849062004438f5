"""Leaves: declared symbols, numeric constants, and the batch size.

Leaves have no derivative rule of their own: the reverse pass stops at them,
and a symbol's adjoint is its gradient. Their C form is decided by the
scheduler (a kernel argument, a literal, the batch count), so they emit nothing.
"""

from __future__ import annotations

import sympy as sp

from . import Op, register


def _no_numpy(args, attrs):
    raise ValueError("leaf values are supplied by the evaluator")


# attrs: (name, role, shape, sympy_symbol) with role "param" or "input".
register(
    Op(
        name="symbol",
        kind="leaf",
        arity=0,
        shape=lambda shapes, attrs: attrs[2],
        to_sympy=lambda args, attrs: attrs[3],
        numpy=_no_numpy,
        varying=lambda flags, attrs: attrs[1] == "input",
    )
)

# attrs: (value,) with value a SymPy number (Integer, Rational, Float, pi, ...).
register(
    Op(
        name="const",
        kind="leaf",
        arity=0,
        shape=lambda shapes, attrs: (),
        to_sympy=lambda args, attrs: attrs[0],
        numpy=lambda args, attrs: float(attrs[0]),
    )
)

# The number of examples in the call; a uniform scalar.
register(
    Op(
        name="batch_size",
        kind="leaf",
        arity=0,
        shape=lambda shapes, attrs: (),
        to_sympy=lambda args, attrs: sp.Symbol("N", positive=True, integer=True),
        numpy=lambda args, attrs: 1.0,
    )
)
