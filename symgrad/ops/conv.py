"""Convolution and pooling: ``conv2d`` (and ``conv1d``), ``max_pool2d``, ``avg_pool2d``.

Layouts (see :mod:`symgrad.layers`): an image of ``C`` channels of ``H x W``
is a ``(C*H) x W`` matrix, weights are ``(C_out*C_in*kh) x kw``, a bias is
``C_out x 1``. Every op carries the layer's :class:`~symgrad.layers.Geometry`
as its attrs, and each is one runtime helper call over the examples of a tile
(``sg_conv2d`` and friends in the convolution section of the runtime header).

The three convolution ops are the partial derivatives of one trilinear form
``T(x, w, g) = sum g[o, i, j] w[o, c, a, b] x[c, i*sh + a - ph, j*sw + b - pw]``:
``conv2d(x, w) = dT/dg``, ``conv2d_input_grad(g, w) = dT/dx`` (the transposed
convolution) and ``conv2d_weight_grad(x, g) = dT/dw`` (the correlation of the
input with the output adjoint). A bias is ``channel_repeat(b)`` added to the
convolution (its adjoint: ``channel_sum``). So the vector-Jacobian product of each is the
other two, and derivatives of any order stay among them. Max pooling picks an
element per window; its derivative sends the adjoint to that element
(``max_pool2d_grad``), and the derivative of that picks again, with the
positions fixed by the pooled input (``max_pool2d(x, v)``: ``v`` where ``x`` is
largest), which is how PyTorch and JAX differentiate it.
"""

from __future__ import annotations

import numpy as np

from .. import layers
from ..errors import ModelShapeError
from ..layers import Geometry
from . import Op, linear_jvp, register, size_of
from .text import call


# --- NumPy references (one example) -------------------------------------------------------


def _windows(g: Geometry, padded, a: int, b: int):
    """The elements ``padded[c, i*sh + a, j*sw + b]`` for every output position (i, j)."""
    return padded[:, a:a + g.stride_h * (g.out_height - 1) + 1:g.stride_h,
                  b:b + g.stride_w * (g.out_width - 1) + 1:g.stride_w]


def _padded(g: Geometry, x, fill=0.0):
    x = np.asarray(x, dtype=float).reshape(g.channels_in, g.height, g.width)
    return np.pad(x, ((0, 0), (g.pad_h, g.pad_h), (g.pad_w, g.pad_w)), constant_values=fill)


def _np_conv2d(args, g: Geometry):
    x, w = args[0], np.asarray(args[1], dtype=float).reshape(g.channels_out, g.channels_in, g.kernel_h, g.kernel_w)
    padded = _padded(g, x)
    out = np.zeros((g.channels_out, g.out_height, g.out_width))
    for a in range(g.kernel_h):
        for b in range(g.kernel_w):
            out += np.einsum("oc,cij->oij", w[:, :, a, b], _windows(g, padded, a, b))
    return out.reshape(g.output_shape)


def _np_conv2d_input_grad(args, g: Geometry):
    gy = np.asarray(args[0], dtype=float).reshape(g.channels_out, g.out_height, g.out_width)
    w = np.asarray(args[1], dtype=float).reshape(g.channels_out, g.channels_in, g.kernel_h, g.kernel_w)
    padded = np.zeros((g.channels_in, g.height + 2 * g.pad_h, g.width + 2 * g.pad_w))
    for a in range(g.kernel_h):
        for b in range(g.kernel_w):
            _windows(g, padded, a, b)[...] += np.einsum("oc,oij->cij", w[:, :, a, b], gy)
    return padded[:, g.pad_h:g.pad_h + g.height, g.pad_w:g.pad_w + g.width].reshape(g.input_shape)


def _np_conv2d_weight_grad(args, g: Geometry):
    padded = _padded(g, args[0])
    gy = np.asarray(args[1], dtype=float).reshape(g.channels_out, g.out_height, g.out_width)
    out = np.zeros((g.channels_out, g.channels_in, g.kernel_h, g.kernel_w))
    for a in range(g.kernel_h):
        for b in range(g.kernel_w):
            out[:, :, a, b] = np.einsum("oij,cij->oc", gy, _windows(g, padded, a, b))
    return out.reshape(g.weight_shape)


def _np_channel_sum(args, g: Geometry):
    return np.asarray(args[0], dtype=float).reshape(g.channels_out, -1).sum(axis=1, keepdims=True)


def _np_channel_repeat(args, g: Geometry):
    b = np.asarray(args[0], dtype=float).reshape(g.channels_out, 1, 1)
    return np.broadcast_to(b, (g.channels_out, g.out_height, g.out_width)).reshape(g.output_shape).copy()


def _argmax_positions(g: Geometry, x):
    """(channel, row, column) in the unpadded input of each window's first largest element."""
    padded = _padded(g, x, fill=-np.inf)
    stacked = np.stack([_windows(g, padded, a, b) for a in range(g.kernel_h) for b in range(g.kernel_w)])
    best = np.argmax(stacked, axis=0)  # the first largest, in row-major window order, as PyTorch
    c, i, j = np.indices(best.shape)
    rows = i * g.stride_h + best // g.kernel_w - g.pad_h
    cols = j * g.stride_w + best % g.kernel_w - g.pad_w
    return c, rows, cols


def _np_max_pool2d(args, g: Geometry):
    c, rows, cols = _argmax_positions(g, args[0])
    source = np.asarray(args[-1], dtype=float).reshape(g.channels_in, g.height, g.width)
    return source[c, rows, cols].reshape(g.output_shape)


def _np_max_pool2d_grad(args, g: Geometry):
    c, rows, cols = _argmax_positions(g, args[0])
    out = np.zeros((g.channels_in, g.height, g.width))
    np.add.at(out, (c, rows, cols), np.asarray(args[1], dtype=float).reshape(c.shape))
    return out.reshape(g.input_shape)


def _np_avg_pool2d(args, g: Geometry):
    padded = _padded(g, args[0])
    total = sum(_windows(g, padded, a, b) for a in range(g.kernel_h) for b in range(g.kernel_w))
    return (total / (g.kernel_h * g.kernel_w)).reshape(g.output_shape)


def _np_avg_pool2d_grad(args, g: Geometry):
    gy = np.asarray(args[0], dtype=float).reshape(g.channels_out, g.out_height, g.out_width)
    padded = np.zeros((g.channels_in, g.height + 2 * g.pad_h, g.width + 2 * g.pad_w))
    for a in range(g.kernel_h):
        for b in range(g.kernel_w):
            _windows(g, padded, a, b)[...] += gy / (g.kernel_h * g.kernel_w)
    return padded[:, g.pad_h:g.pad_h + g.height, g.pad_w:g.pad_w + g.width].reshape(g.input_shape)


# --- shapes, text, emission -----------------------------------------------------------------


def _shape_rule(name: str, expected):
    """A shape rule: the args must have ``expected(geometry)`` shapes (None: any arity beyond)."""

    def shape(shapes, g):
        wanted = expected(g)
        if len(shapes) not in {len(wanted)} | ({len(wanted) - 1} if name == "max_pool2d" else set()):
            raise ModelShapeError(f"{name} takes {len(wanted)} matrices, got {len(shapes)}")
        for k, (got, want) in enumerate(zip(shapes, wanted)):
            if tuple(got) != tuple(want):
                raise ModelShapeError(f"{name}: argument {k + 1} has shape {got}, expected {want} for {g}")
        return _RESULTS[name](g)

    return shape


_RESULTS = {
    "conv2d": lambda g: g.output_shape,
    "conv2d_input_grad": lambda g: g.input_shape,
    "conv2d_weight_grad": lambda g: g.weight_shape,
    "channel_sum": lambda g: (g.channels_out, 1),
    "channel_repeat": lambda g: g.output_shape,
    "max_pool2d": lambda g: g.output_shape,
    "max_pool2d_grad": lambda g: g.input_shape,
    "avg_pool2d": lambda g: g.output_shape,
    "avg_pool2d_grad": lambda g: g.input_shape,
}


def _text(name: str):
    pool = "pool" in name
    plain = name.startswith("channel")

    def text(args, g):
        shown = name.replace("2d", "1d") if g.dims == 1 else name
        options = "" if plain else g.options(pool=pool)
        return call(shown, list(args) + ([options] if options else []))

    return text


def _sizes(g: Geometry) -> list:
    return [g.channels_in, g.height, g.width, g.channels_out, g.kernel_h, g.kernel_w,
            g.stride_h, g.stride_w, g.pad_h, g.pad_w]


def _pool_sizes(g: Geometry) -> list:
    return [g.channels_in, g.height, g.width, g.kernel_h, g.kernel_w, g.stride_h, g.stride_w, g.pad_h, g.pad_w]


def _emit_helper(helper: str, sizes, *, accumulate=None):
    """An emitter calling ``sg_<helper>(nb, sizes..., args as (ptr, strides)..., out, out_es[, acc])``."""

    def emit(p, out, args, g):
        operands = [a.strides_text() for a in args]
        extra = [] if accumulate is None else ["0"]
        return [p.helper_call(helper, p.examples(out), *sizes(g), *operands, p.target(out), *extra)]

    return emit


def _emit_batch_sum(helper: str, sizes):
    """A batch-sum emitter: ``acc += sum over the tile`` of the op (``accumulate`` = 1)."""

    def emit(p, acc, args, g):
        return [p.helper_call(helper, "nt", *sizes(g), *[a.strides_text() for a in args], acc.text, 0, 1)]

    return emit


def _conv_vjp(b, n, g):
    node = b.node(n)
    geometry = node.attrs
    x, w = node.args
    return [b.apply("conv2d_input_grad", g, w, attrs=geometry), b.apply("conv2d_weight_grad", x, g, attrs=geometry)]


def _input_grad_vjp(b, n, r):
    gy, w = b.node(n).args
    geometry = b.node(n).attrs
    return [b.apply("conv2d", r, w, attrs=geometry), b.apply("conv2d_weight_grad", r, gy, attrs=geometry)]


def _weight_grad_vjp(b, n, r):
    x, gy = b.node(n).args
    geometry = b.node(n).attrs
    return [b.apply("conv2d_input_grad", gy, r, attrs=geometry), b.apply("conv2d", x, r, attrs=geometry)]


def _multilinear_jvp(b, n, tangents):
    """The JVP of an op linear in each of its matrix args (the convolutions): the op with one
    arg replaced by its tangent, summed over the args."""
    node = b.node(n)
    terms = []
    for k, tangent in enumerate(tangents):
        if tangent is None:
            continue
        args = list(node.args)
        args[k] = tangent
        terms.append(b.apply(node.op, *args, attrs=node.attrs))
    return b.add(*terms) if terms else None


def _pick_jvp(b, n, tangents):
    """The JVP of max_pool2d(x[, v]) and max_pool2d_grad(x, g): the positions are fixed by x
    (almost everywhere), so the tangent of the picked (or scattered) values goes the same way."""
    node = b.node(n)
    tangent = tangents[-1]
    if tangent is None:
        return None
    return b.apply(node.op, node.args[0], tangent, attrs=node.attrs)


def _max_pool_vjp(b, n, g):
    node = b.node(n)
    grad = b.apply("max_pool2d_grad", node.args[0], g, attrs=node.attrs)
    return [grad] if len(node.args) == 1 else [None, grad]


def _read_layer(op_name):
    def read(r, e):
        return r.b.apply(op_name, *[r.node(m) for m in e.matrices], attrs=e.geometry)

    return read


def _read_conv2d(r, e):
    """``sg.conv2d(x, w[, b])``: the convolution, plus the bias repeated over its channel."""
    x, w, *bias = (r.node(m) for m in e.matrices)
    out = r.b.apply("conv2d", x, w, attrs=e.geometry)
    return r.b.add(out, r.b.apply("channel_repeat", *bias, attrs=e.geometry)) if bias else out


def _conv_cost(node, shapes):
    g = node.attrs
    return 2 * g.channels_out * g.out_height * g.out_width * g.channels_in * g.kernel_h * g.kernel_w


def _pool_cost(node, shapes):
    g = node.attrs
    return g.channels_in * g.out_height * g.out_width * g.kernel_h * g.kernel_w


#: Geometries the registry tests differentiate on: channels, strides, padding, 1-D.
_CONV_GEOMETRIES = (Geometry(2, 3, 4, 5, 2, 3, 1, 2, 1, 0), Geometry(1, 2, 5, 5, 3, 3, 2, 2, 1, 1),
                    Geometry(2, 2, 1, 7, 1, 3, 1, 2, 0, 1, 1))
_POOL_GEOMETRIES = (Geometry(2, 2, 4, 6, 2, 2, 2, 2, 0, 0), Geometry(1, 1, 5, 5, 3, 3, 2, 1, 1, 1))


def _cases(arg_shapes):
    return tuple((tuple(arg_shapes(g)), g) for g in _CONV_GEOMETRIES)


def _pool_cases(arg_shapes):
    return tuple((tuple(arg_shapes(g)), g) for g in _POOL_GEOMETRIES)


_DOMAIN = ((-1.0, 1.0), (-1.0, 1.0), (-1.0, 1.0))

register(
    Op(
        name="conv2d",
        kind="tensor",
        jvp=_multilinear_jvp,
        arity=2,
        shape=_shape_rule("conv2d", lambda g: (g.input_shape, g.weight_shape)),
        vjp=_conv_vjp,
        emit=_emit_helper("conv2d", _sizes),
        numpy=_np_conv2d,
        to_sympy=lambda args, g: layers.Conv2d(*args, g),
        text=_text("conv2d"),
        domain=_DOMAIN,
        cost=_conv_cost,
        test_cases=_cases(lambda g: (g.input_shape, g.weight_shape)),
        sympy_heads=(layers.Conv2d,),
        from_sympy=_read_conv2d,
        sympy_children=lambda e: list(e.matrices),
    )
)

register(
    Op(
        name="conv2d_input_grad",
        kind="tensor",
        jvp=_multilinear_jvp,
        arity=2,
        shape=_shape_rule("conv2d_input_grad", lambda g: (g.output_shape, g.weight_shape)),
        vjp=_input_grad_vjp,
        emit=_emit_helper("conv2d_input_grad", _sizes),
        numpy=_np_conv2d_input_grad,
        to_sympy=lambda args, g: layers.ConvTranspose2d(*args, g),
        text=_text("conv_transpose2d"),
        domain=_DOMAIN,
        cost=_conv_cost,
        test_cases=_cases(lambda g: (g.output_shape, g.weight_shape)),
    )
)

register(
    Op(
        name="conv2d_weight_grad",
        kind="tensor",
        jvp=_multilinear_jvp,
        arity=2,
        shape=_shape_rule("conv2d_weight_grad", lambda g: (g.input_shape, g.output_shape)),
        vjp=_weight_grad_vjp,
        emit=_emit_helper("conv2d_weight_grad", _sizes, accumulate=True),
        emit_batch_sum=_emit_batch_sum("conv2d_weight_grad", _sizes),
        numpy=_np_conv2d_weight_grad,
        to_sympy=lambda args, g: layers.Conv2dWeightGrad(*args, g),
        text=_text("conv2d_weight_grad"),
        domain=_DOMAIN,
        cost=_conv_cost,
        test_cases=_cases(lambda g: (g.input_shape, g.output_shape)),
    )
)


def _channel_sizes(g: Geometry) -> list:
    return [g.channels_out, g.out_height, g.out_width]


register(
    Op(
        name="channel_sum",
        kind="tensor",
        jvp=linear_jvp,
        arity=1,
        shape=_shape_rule("channel_sum", lambda g: (g.output_shape,)),
        vjp=lambda b, n, r: [b.apply("channel_repeat", r, attrs=b.node(n).attrs)],
        emit=_emit_helper("channel_sum", _channel_sizes, accumulate=True),
        emit_batch_sum=_emit_batch_sum("channel_sum", _channel_sizes),
        numpy=_np_channel_sum,
        to_sympy=lambda args, g: layers.ChannelSum(*args, g),
        text=_text("channel_sum"),
        domain=_DOMAIN,
        cost=lambda node, shapes: size_of(shapes[0]),
        test_cases=_cases(lambda g: (g.output_shape,))[:2],
    )
)

register(
    Op(
        name="channel_repeat",
        kind="tensor",
        jvp=linear_jvp,
        arity=1,
        shape=_shape_rule("channel_repeat", lambda g: ((g.channels_out, 1),)),
        vjp=lambda b, n, r: [b.apply("channel_sum", r, attrs=b.node(n).attrs)],
        emit=_emit_helper("channel_repeat", _channel_sizes),
        numpy=_np_channel_repeat,
        to_sympy=lambda args, g: layers.ChannelRepeat(*args, g),
        text=_text("channel_repeat"),
        domain=_DOMAIN,
        test_cases=_cases(lambda g: ((g.channels_out, 1),))[:2],
    )
)

register(
    Op(
        name="max_pool2d",
        kind="tensor",
        jvp=_pick_jvp,
        shape=_shape_rule("max_pool2d", lambda g: (g.input_shape, g.input_shape)),
        vjp=_max_pool_vjp,
        emit=lambda p, out, args, g: _emit_helper("max_pool2d", _pool_sizes)(p, out, list(args) * (3 - len(args)), g),
        numpy=_np_max_pool2d,
        to_sympy=lambda args, g: layers.MaxPool2d(*args, g),
        text=_text("max_pool2d"),
        domain=_DOMAIN,
        cost=_pool_cost,
        test_cases=_pool_cases(lambda g: (g.input_shape,)) + _pool_cases(lambda g: (g.input_shape, g.input_shape)),
        sympy_heads=(layers.MaxPool2d,),
        from_sympy=_read_layer("max_pool2d"),
        sympy_children=lambda e: list(e.matrices),
    )
)

register(
    Op(
        name="max_pool2d_grad",
        kind="tensor",
        jvp=_pick_jvp,
        arity=2,
        shape=_shape_rule("max_pool2d_grad", lambda g: (g.input_shape, g.output_shape)),
        vjp=lambda b, n, r: [None, b.apply("max_pool2d", b.node(n).args[0], r, attrs=b.node(n).attrs)],
        emit=_emit_helper("max_pool2d_grad", _pool_sizes),
        numpy=_np_max_pool2d_grad,
        to_sympy=lambda args, g: layers.MaxPool2dGrad(*args, g),
        text=_text("max_pool2d_grad"),
        domain=_DOMAIN,
        cost=_pool_cost,
        test_cases=_pool_cases(lambda g: (g.input_shape, g.output_shape)),
    )
)

register(
    Op(
        name="avg_pool2d",
        kind="tensor",
        jvp=linear_jvp,
        arity=1,
        shape=_shape_rule("avg_pool2d", lambda g: (g.input_shape,)),
        vjp=lambda b, n, r: [b.apply("avg_pool2d_grad", r, attrs=b.node(n).attrs)],
        emit=_emit_helper("avg_pool2d", _pool_sizes),
        numpy=_np_avg_pool2d,
        to_sympy=lambda args, g: layers.AvgPool2d(*args, g),
        text=_text("avg_pool2d"),
        domain=_DOMAIN,
        cost=_pool_cost,
        test_cases=_pool_cases(lambda g: (g.input_shape,)),
        sympy_heads=(layers.AvgPool2d,),
        from_sympy=_read_layer("avg_pool2d"),
        sympy_children=lambda e: list(e.matrices),
    )
)

register(
    Op(
        name="avg_pool2d_grad",
        kind="tensor",
        jvp=linear_jvp,
        arity=1,
        shape=_shape_rule("avg_pool2d_grad", lambda g: (g.output_shape,)),
        vjp=lambda b, n, r: [b.apply("avg_pool2d", r, attrs=b.node(n).attrs)],
        emit=_emit_helper("avg_pool2d_grad", _pool_sizes),
        numpy=_np_avg_pool2d_grad,
        to_sympy=lambda args, g: layers.AvgPool2dGrad(*args, g),
        text=_text("avg_pool2d_grad"),
        domain=_DOMAIN,
        cost=_pool_cost,
        test_cases=_pool_cases(lambda g: (g.output_shape,)),
    )
)
