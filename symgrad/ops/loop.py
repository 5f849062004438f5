"""Loops over an index: ``sp.Sum`` and ``sp.Product`` as one node with a body (see :mod:`symgrad.loops`).

``sum_loop`` and ``product_loop`` hold their term as a :class:`~symgrad.loops.Body`
in their attrs and capture what the term reads as their args. Their VJP is one
``loop_vjp`` node (the term's reverse pass inside the same loop, adding into a
packed vector of the captures' adjoints) viewed capture by capture through
``loop_part``; their JVP is a sum over the term's JVP. ``loop_index``,
``loop_capture``, ``loop_seed`` and ``loop_element`` exist only inside bodies.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import sympy as sp

from .. import loops
from ..errors import ModelError
from ..graph import Builder, Graph
from . import Op, linear_jvp, reads, register, size_of
from .text import call


def _only_in_bodies(name):
    def fail(*args):
        raise ModelError(f"{name} exists only inside the body of a loop")

    return fail


def _no_second_order(*args):
    raise ModelError("second derivatives through a Sum or Product loop are not supported yet "
                     "(first derivatives, forward or reverse, are)")


register(Op(name="loop_index", kind="leaf", arity=0, shape=lambda shapes, attrs: (),
            to_sympy=lambda args, attrs: sp.Symbol(attrs[1], integer=True), numpy=_only_in_bodies("loop_index"),
            c=_only_in_bodies("loop_index"), text=lambda args, attrs: attrs[1]))
register(Op(name="loop_capture", kind="leaf", arity=0, shape=lambda shapes, attrs: attrs[1],
            to_sympy=_only_in_bodies("loop_capture"), numpy=_only_in_bodies("loop_capture"),
            c=_only_in_bodies("loop_capture"), text=lambda args, attrs: f"capture{attrs[0]}"))
register(Op(name="loop_seed", kind="leaf", arity=0, shape=lambda shapes, attrs: (),
            to_sympy=_only_in_bodies("loop_seed"), numpy=_only_in_bodies("loop_seed"),
            c=_only_in_bodies("loop_seed"), text=lambda args, attrs: "seed"))
# Element (row, col) of a captured matrix, at positions affine in the loop indices.
register(Op(name="loop_element", kind="tensor", arity=1, shape=lambda shapes, attrs: (),
            to_sympy=_only_in_bodies("loop_element"), numpy=_only_in_bodies("loop_element"),
            emit=_only_in_bodies("loop_element"), vjp=_only_in_bodies("loop_element"),
            jvp=_only_in_bodies("loop_element")))


def _loop_vjp(b, n, g):
    node = b.node(n)
    (body,) = node.attrs
    packed = b.apply("loop_vjp", *node.args, g, attrs=(body,))
    return [b.apply("loop_part", packed, attrs=(offset, shape, k, body))
            for k, (offset, shape) in enumerate(zip(body.offsets(), body.captures))]


def _loop_jvp(b, n, tangents):
    node = b.node(n)
    wanted = [k for k, t in enumerate(tangents) if t is not None]
    if not wanted:
        return None
    (body,) = node.attrs
    if body.kind == "product":  # the gradient (one reverse loop with seed 1) dotted with the tangents
        gradient = _loop_vjp(b, n, b.const(1))
        return b.add(*[b.sum(b.mul(gradient[k], tangents[k])) if tangents[k] is not None and b.shape(tangents[k])
                       else b.mul(gradient[k], tangents[k]) for k in wanted])
    slots = {k: len(node.args) + m for m, k in enumerate(wanted)}
    body = loops.tangent_body(body, slots)
    return b.apply("sum_loop", *node.args, *[tangents[k] for k in wanted], attrs=(body,))


def _loop_cost(node, shapes):
    body = node.attrs[0]
    count = body.upper.const - body.lower.const + 1 if not (body.upper.terms or body.lower.terms) else 1
    return max(count, 0) * len(body.nodes)


def _test_bodies():
    """Loops the registry tests differentiate: a sum and a product over elements of a
    captured column a0 (at i and i + 1) and a captured scalar a1, with the index's value."""
    cases = []
    for kind in ("sum", "product"):
        g = Graph()
        b = Builder(g)
        column = g.intern(loops.Node("loop_capture", (), (0, (5, 1)), (5, 1), False))
        scalar = g.intern(loops.Node("loop_capture", (), (1, ()), (), False))
        i = b.apply("loop_index", attrs=(0, "i"))
        here = b.apply("loop_element", column, attrs=(loops.Affine(0, ((0, 1),)), loops.Affine(0)))
        after = b.apply("loop_element", column, attrs=(loops.Affine(1, ((0, 1),)), loops.Affine(0)))
        term = b.add(b.apply("tanh", b.mul(here, scalar)), b.mul(b.mul(i, b.const(sp.Rational(1, 4))), after))
        if kind == "product":
            term = b.add(term, b.const(1))
        body = loops.Body(kind, 0, "i", loops.Affine(0), loops.Affine(3), tuple(g.nodes), term, ((5, 1), ()))
        cases.append((((5, 1), ()), (body,)))
    return cases


_SUM_CASE, _PRODUCT_CASE = _test_bodies()

for _kind, _case in (("sum", _SUM_CASE), ("product", _PRODUCT_CASE)):
    register(
        Op(
            name=f"{_kind}_loop",
            kind="tensor",
            shape=lambda shapes, attrs: (),
            vjp=_loop_vjp,
            jvp=_loop_jvp,
            emit=loops.emit_loop,
            numpy=lambda args, attrs: loops.run_loop(args, attrs[0]),
            to_sympy=lambda args, attrs: loops.body_sympy(attrs[0], args),
            text=lambda args, attrs: loops.body_text(attrs[0], args),
            # the product's second derivatives are not supported, so the registry tests, which
            # transpose each VJP, check the sum only (tests/test_loops.py checks the product)
            domain=((-1.0, 1.0), (-1.0, 1.0)) if _kind == "sum" else None,
            cost=_loop_cost,
            test_cases=(_case,),
        )
    )

def _loop_vjp_vjp(b, n, r):
    """The VJP of ``loop_vjp(c..., seed)`` for the adjoint ``r`` of its packed vector. It is
    ``seed * grad L(c)``, so: for the seed, ``grad L(c) . r``, the loop's directional
    derivative ``J(c; r)`` along r (a sum over the term's JVP); for the captures,
    ``seed * grad_c J(c; r)``, the reverse loop of that sum, with the same seed."""
    node = b.node(n)
    (body,) = node.attrs
    captures, seed = node.args[:-1], node.args[-1]
    if body.kind != "sum":
        _no_second_order()
    directions = [b.apply("loop_part", r, attrs=(offset, shape, k, None))
                  for k, (offset, shape) in enumerate(zip(body.offsets(), body.captures))]
    slots = {k: len(captures) + k for k in range(len(captures))}
    along = b.apply("sum_loop", *captures, *directions, attrs=(loops.tangent_body(body, slots),))
    return _loop_vjp(b, along, seed)[:len(captures)] + [along]


def _loop_vjp_jvp(b, n, tangents):
    """``loop_vjp`` is linear in its seed: its tangent along the seed is the loop_vjp of the
    seed's tangent. Along the captures it is a second derivative (not supported yet)."""
    node = b.node(n)
    if any(t is not None for t in tangents[:-1]):
        _no_second_order()
    if tangents[-1] is None:
        return None
    return b.apply("loop_vjp", *node.args[:-1], tangents[-1], attrs=node.attrs)


def _emit_embed(p, out, args, attrs):
    (r,) = args
    offset, shape, total = attrs
    rows, cols = shape if shape else (1, 1)
    lines = p.fill(out, 0)
    if out.varying:
        lines.append("for (int64_t e = 0; e < nt; ++e)")
    e = "e" if out.varying else None
    lines += [f"    for (int64_t i = 0; i < {rows}; ++i)", f"        for (int64_t j = 0; j < {cols}; ++j)",
              f"            {out.text}[{'e * ' + str(total) + ' + ' if e else ''}{offset} + i * {cols} + j] = "
              f"{r.element(e, 'i', 'j')};"]
    return lines


def _np_embed(args, attrs):
    offset, shape, total = attrs
    out = np.zeros((1, total))
    out[0, offset:offset + size_of(shape)] = np.asarray(args[0], dtype=float).reshape(-1)
    return out


# A packed vector of zeros holding its arg at an offset: the adjoint of a loop_part.
# attrs: (offset, shape of the arg, size of the packed vector).
register(
    Op(
        name="loop_embed",
        kind="tensor",
        arity=1,
        shape=lambda shapes, attrs: (1, attrs[2]),
        vjp=lambda b, n, r: [b.apply("loop_part", r, attrs=(b.node(n).attrs[0], b.node(n).attrs[1], 0, None))],
        jvp=linear_jvp,
        emit=_emit_embed,
        numpy=_np_embed,
        to_sympy=lambda args, attrs: sp.Function("embed")(args[0], attrs[0], attrs[2]),
        text=lambda args, attrs: call("embed", [args[0], str(attrs[0]), str(attrs[2])]),
    )
)


register(
    Op(
        name="loop_vjp",
        kind="tensor",
        shape=lambda shapes, attrs: (1, sum(attrs[0].sizes())),
        vjp=_loop_vjp_vjp,
        jvp=_loop_vjp_jvp,
        emit=loops.emit_loop_vjp,
        numpy=lambda args, attrs: loops.run_loop_vjp(args, attrs[0]),
        # the captures and the seed, which each loop_part differentiates by (see loops.vjp_sympy)
        to_sympy=lambda args, attrs: sp.Tuple(*args),
        text=lambda args, attrs: loops.vjp_text(attrs[0], args),
        cost=lambda node, shapes: 3 * _loop_cost(node, shapes),
    )
)


def _part_view(base, attrs, shape):
    offset = attrs[0]
    cols = shape[1] if shape else 1
    return replace(base, shape=shape, offset=base.offset + offset, row_stride=cols if shape else 0,
                   col_stride=1 if shape else 0)


def _part_sympy(args, attrs):
    offset, shape, k, body = attrs
    if body is not None:  # a capture's adjoint: the derivative, written as SymPy
        return loops.vjp_sympy(body, list(args[0]), k)
    packed = args[0]
    if shape == ():
        return packed[0, offset]
    return sp.ImmutableMatrix(shape[0], shape[1], lambda i, j: packed[0, offset + i * shape[1] + j])


# The part of a packed vector (of a loop_vjp: the adjoint of capture k) from offset, of the given
# shape. attrs: (offset, shape, k, body), with body None for a part of another packed vector.
register(
    Op(
        name="loop_part",
        kind="view",
        arity=1,
        view=_part_view,
        shape=lambda shapes, attrs: attrs[1],
        vjp=lambda b, n, r: [b.apply("loop_embed", r, attrs=(b.node(n).attrs[0], b.node(n).attrs[1],
                                                             b.shape(b.node(n).args[0])[1]))],
        jvp=linear_jvp,
        numpy=lambda args, attrs: np.asarray(args[0]).reshape(-1)[attrs[0]:attrs[0] + size_of(attrs[1])].reshape(attrs[1]),
        to_sympy=_part_sympy,
        text=lambda args, attrs: call("part", [args[0], str(attrs[2])]),
    )
)


@reads(sp.Sum, sp.Product, children=lambda e: [])
def _read_loop(r, e):
    """``sp.Sum(term, (i, lo, hi))`` and ``sp.Product``: one loop node, never unrolled."""
    return loops.read_loop(r, e)
