"""Leaves: declared symbols, numeric constants, and the two example counts.

Leaves have no derivative rule of their own: the reverse pass stops at them,
and a symbol's adjoint is its gradient. A symbol is a kernel argument and a
constant a literal; the counts are the kernel's count arguments, spelled by
their ``c`` form.

Two counts, because a batch may be cut into several kernel calls (slices
run one after the other or on threads, chunks on a cluster) whose batch sums
are added: ``batch_size`` is the N of a mean, the examples of the whole
batch; ``call_size`` is the number of examples of this kernel call. A value
shared by all examples summed over the examples of a call is ``call_size``
times it, so that the sums of the calls add up to N times it.
"""

from __future__ import annotations

import sympy as sp

from . import Op, register
from .text import number


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
        text=lambda args, attrs: attrs[0],
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
        text=lambda args, attrs: number(attrs[0]),
        numpy=lambda args, attrs: float(attrs[0]),
    )
)

# The number of examples of the whole batch, the N of means; a uniform scalar.
register(
    Op(
        name="batch_size",
        kind="leaf",
        arity=0,
        shape=lambda shapes, attrs: (),
        c=lambda p, args, attrs: f"(({p.real}) batch)",
        to_sympy=lambda args, attrs: sp.Symbol("N", positive=True, integer=True),
        text=lambda args, attrs: "N",
        numpy=lambda args, attrs: 1.0,
    )
)

# The number of examples of this kernel call (all of the batch, or a slice of it).
register(
    Op(
        name="call_size",
        kind="leaf",
        arity=0,
        shape=lambda shapes, attrs: (),
        c=lambda p, args, attrs: f"(({p.real}) n)",
        to_sympy=lambda args, attrs: sp.Symbol("n", positive=True, integer=True),
        text=lambda args, attrs: "n",
        numpy=lambda args, attrs: 1.0,
    )
)
