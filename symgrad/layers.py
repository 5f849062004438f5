"""SymPy heads for convolution and pooling: ``sg.conv2d``, ``sg.conv1d``, ``sg.max_pool2d``, ``sg.avg_pool2d``.

symgrad's values are scalars and 2-D matrices, so an image of ``C`` channels
of ``H x W`` pixels is a ``(C*H) x W`` matrix: channel ``c`` is the block of
rows ``c*H .. c*H + H - 1``. That is PyTorch's ``(C, H, W)`` tensor with its
first two axes merged (``x.reshape(C*H, W)``), and for one channel it is the
image itself. Weights follow PyTorch's ``(C_out, C_in, kh, kw)`` the same way:
a ``(C_out*C_in*kh) x kw`` matrix, and a bias is a ``C_out x 1`` column. A
1-D signal of ``C`` channels of length ``L`` is a ``C x L`` matrix (one row
per channel), its weights ``(C_out*C_in) x k``.

Each head is an ordinary SymPy matrix expression (it prints as
``conv2d(x, w, stride=2)`` and has a shape); its last argument is the
:class:`Geometry` of the layer as a SymPy tuple. The graph ops that compute
and differentiate them live in :mod:`symgrad.ops.conv`.
"""

from __future__ import annotations

from typing import NamedTuple

import sympy as sp
from sympy.core.basic import Basic
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr

from .functions import matrix_shape

__all__ = ["Geometry", "conv1d", "conv2d", "max_pool2d", "avg_pool2d"]


class Geometry(NamedTuple):
    """The sizes of a convolution or pooling layer: channels in and out, the
    input's height and width, the kernel's, the strides and the zero padding;
    ``dims`` is 1 for a 1-D layer (height 1), which only changes its name."""

    channels_in: int
    channels_out: int
    height: int
    width: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dims: int = 2

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.pad_h - self.kernel_h) // self.stride_h + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.pad_w - self.kernel_w) // self.stride_w + 1

    @property
    def input_shape(self) -> tuple:
        return (self.channels_in * self.height, self.width)

    @property
    def weight_shape(self) -> tuple:
        return (self.channels_out * self.channels_in * self.kernel_h, self.kernel_w)

    @property
    def output_shape(self) -> tuple:
        return (self.channels_out * self.out_height, self.out_width)

    def options(self, pool: bool = False) -> str:
        """``stride=2, padding=1``: the settings that differ from the defaults, for display;
        for a pooling layer (``pool``), the window first and the stride if it is not the window."""
        parts = []
        if pool:
            window = (self.kernel_h, self.kernel_w)
            parts.append(str(window[0] if len(set(window)) == 1 else window))
            if (self.stride_h, self.stride_w) == window:
                pad = (self.pad_h, self.pad_w)
                return ", ".join(parts + ([f"padding={pad[0] if len(set(pad)) == 1 else pad}"] if set(pad) != {0} else []))
        stride = (self.stride_w,) if self.dims == 1 else (self.stride_h, self.stride_w)
        pad = (self.pad_w,) if self.dims == 1 else (self.pad_h, self.pad_w)
        if set(stride) != {1} or pool:
            parts.append(f"stride={stride[0] if len(set(stride)) == 1 else stride}")
        if set(pad) != {0}:
            parts.append(f"padding={pad[0] if len(set(pad)) == 1 else pad}")
        return ", ".join(parts)


def _pair(value, what: str) -> tuple:
    values = (value, value) if isinstance(value, int) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{what} must be a whole number or a pair of them, got {value!r}")
    return values


def _shape_of(name: str, what: str, value) -> tuple:
    shape = matrix_shape(sp.sympify(value))
    if shape is None:
        raise TypeError(f"{name}: the {what} must be a matrix expression, got the scalar {value}")
    return tuple(int(d) for d in shape)


def _check(name: str, ok: bool, message: str) -> None:
    if not ok:
        raise sp.ShapeError(f"{name}: {message}")


class Layer(MatrixExpr):
    """A layer applied to matrices: args are the matrices, then the Geometry as a Tuple."""

    #: the name it prints with; whether it is a pooling layer, and prints its settings
    layer_name = ""
    pool = False
    shows_options = True

    def __new__(cls, *args):
        *matrices, geometry = args
        return Basic.__new__(cls, *[sp.sympify(m) for m in matrices], sp.Tuple(*geometry))

    @property
    def geometry(self) -> Geometry:
        return Geometry(*(int(v) for v in self.args[-1]))

    @property
    def matrices(self) -> tuple:
        return self.args[:-1]

    @property
    def shape(self):
        return tuple(sp.Integer(d) for d in self.result_shape(self.geometry))

    @staticmethod
    def result_shape(geometry: Geometry) -> tuple:
        return geometry.output_shape

    def _entry(self, i, j, **kwargs):
        return MatrixElement(self, i, j)

    def display_name(self) -> str:
        return self.layer_name.replace("2d", "1d") if self.geometry.dims == 1 else self.layer_name

    def _sympystr(self, printer):
        parts = [printer._print(m) for m in self.matrices]
        options = self.geometry.options(pool=self.pool) if self.shows_options else ""
        return f"{self.display_name()}({', '.join(parts + ([options] if options else []))})"

    def _latex(self, printer):
        inner = ", ".join(printer._print(m) for m in self.matrices)
        name = self.display_name().replace("_", "\\_")
        return rf"\operatorname{{{name}}}\left({inner}\right)"


class Conv2d(Layer):
    """Cross-correlation of an image with a bank of kernels (PyTorch's ``conv2d``), plus a bias."""

    layer_name = "conv2d"


class ConvTranspose2d(Layer):
    """The transposed convolution: the gradient of ``conv2d`` with respect to its input."""

    layer_name = "conv_transpose2d"

    @staticmethod
    def result_shape(geometry):
        return geometry.input_shape


class Conv2dWeightGrad(Layer):
    """The correlation of an input with an output adjoint: the gradient of ``conv2d`` with
    respect to its weights."""

    layer_name = "conv2d_weight_grad"

    @staticmethod
    def result_shape(geometry):
        return geometry.weight_shape


class ChannelSum(Layer):
    """The sum of each channel's block of rows: the gradient of a per-channel bias."""

    layer_name = "channel_sum"
    shows_options = False

    @staticmethod
    def result_shape(geometry):
        return (geometry.channels_out, 1)


class ChannelRepeat(Layer):
    """A column of one number per channel repeated over each channel's block of rows."""

    layer_name = "channel_repeat"
    shows_options = False


class MaxPool2d(Layer):
    """The largest element of each window of each channel (PyTorch's ``max_pool2d``); with a
    second matrix, that matrix's element where the first has its largest."""

    layer_name = "max_pool2d"
    pool = True


class MaxPool2dGrad(Layer):
    """Each window's adjoint sent to the position of the window's largest element."""

    layer_name = "max_pool2d_grad"
    pool = True

    @staticmethod
    def result_shape(geometry):
        return geometry.input_shape


class AvgPool2d(Layer):
    """The mean of each window of each channel, padding counted as zeros (PyTorch's default)."""

    layer_name = "avg_pool2d"
    pool = True


class AvgPool2dGrad(Layer):
    """Each window's adjoint spread evenly over the window."""

    layer_name = "avg_pool2d_grad"
    pool = True

    @staticmethod
    def result_shape(geometry):
        return geometry.input_shape


def conv2d(x, w, bias=None, *, stride=1, padding=0, in_channels=1, out_channels=1):
    """Cross-correlation of the image ``x`` with the kernels ``w``, as PyTorch's ``conv2d``.

    ``x`` is ``(in_channels*H) x W`` (channel blocks of rows), ``w`` is
    ``(out_channels*in_channels*kh) x kw`` (PyTorch's weight with its first
    three axes merged), ``bias`` (optional) ``out_channels x 1``. The result is
    ``(out_channels*H_out) x W_out`` with ``H_out = (H + 2*pad - kh)//stride + 1``.
    ``stride`` and ``padding`` (zeros) are a number or a (rows, columns) pair.
    """
    (rows, width), (w_rows, kw) = _shape_of("conv2d", "input", x), _shape_of("conv2d", "weight", w)
    sh, sw = _pair(stride, "conv2d: stride")
    ph, pw = _pair(padding, "conv2d: padding")
    ci, co = in_channels, out_channels
    _check("conv2d", isinstance(ci, int) and ci > 0 and isinstance(co, int) and co > 0,
           f"in_channels and out_channels must be positive whole numbers, got {ci!r} and {co!r}")
    _check("conv2d", rows % ci == 0, f"the input has {rows} rows, not a multiple of in_channels={ci} "
           "(an image of C channels of H x W pixels is a (C*H) x W matrix)")
    _check("conv2d", w_rows % (ci * co) == 0, f"the weight has {w_rows} rows, not a multiple of "
           f"out_channels*in_channels = {co * ci} (the weight is (out_channels*in_channels*kh) x kw)")
    geometry = Geometry(ci, co, rows // ci, width, w_rows // (ci * co), kw, sh, sw, ph, pw, 2)
    return _conv(Conv2d, "conv2d", x, w, bias, geometry)


def conv1d(x, w, bias=None, *, stride=1, padding=0):
    """Cross-correlation of the signal ``x`` (``C_in x L``: one row per channel) with the kernels
    ``w`` (``(C_out*C_in) x k``), as PyTorch's ``conv1d``; ``bias`` is ``C_out x 1``. The
    result is ``C_out x L_out`` with ``L_out = (L + 2*padding - k)//stride + 1``."""
    (ci, length), (w_rows, k) = _shape_of("conv1d", "input", x), _shape_of("conv1d", "weight", w)
    _check("conv1d", all(isinstance(v, int) and not isinstance(v, bool) for v in (stride, padding)),
           f"stride and padding must be whole numbers, got {stride!r} and {padding!r}")
    _check("conv1d", w_rows % ci == 0, f"the weight has {w_rows} rows, not a multiple of the input's "
           f"{ci} channels (the weight is (out_channels*in_channels) x k)")
    geometry = Geometry(ci, w_rows // ci, 1, length, 1, k, 1, stride, 0, padding, 1)
    return _conv(Conv2d, "conv1d", x, w, bias, geometry)


def _conv(cls, name, x, w, bias, geometry: Geometry):
    _check(name, min(geometry) >= 0 and min(geometry.stride_h, geometry.stride_w) > 0,
           "strides must be positive and padding not negative")
    _check(name, geometry.out_height > 0 and geometry.out_width > 0,
           f"a kernel of {geometry.kernel_h}x{geometry.kernel_w} does not fit an input of "
           f"{geometry.height}x{geometry.width} padded by ({geometry.pad_h}, {geometry.pad_w})")
    if bias is None:
        return cls(x, w, geometry)
    shape = _shape_of(name, "bias", bias)
    _check(name, shape == (geometry.channels_out, 1),
           f"the bias has shape {shape}, expected one number per output channel: ({geometry.channels_out}, 1)")
    return cls(x, w, bias, geometry)


def _pool(cls, name, x, kernel_size, stride, padding, channels):
    rows, width = _shape_of(name, "input", x)
    kh, kw = _pair(kernel_size, f"{name}: kernel_size")
    sh, sw = _pair(kernel_size if stride is None else stride, f"{name}: stride")
    ph, pw = _pair(padding, f"{name}: padding")
    _check(name, isinstance(channels, int) and channels > 0 and rows % channels == 0,
           f"the input has {rows} rows, not a multiple of channels={channels!r}")
    _check(name, 2 * ph <= kh and 2 * pw <= kw, f"padding ({ph}, {pw}) must be at most half the kernel "
           f"size ({kh}, {kw}), as in PyTorch")
    geometry = Geometry(channels, channels, rows // channels, width, kh, kw, sh, sw, ph, pw, 2)
    _check(name, min(geometry) >= 0 and min(kh, kw, sh, sw) > 0,
           "kernel sizes and strides must be positive and padding not negative")
    _check(name, geometry.out_height > 0 and geometry.out_width > 0,
           f"a window of {kh}x{kw} does not fit an input of {geometry.height}x{width}")
    return cls(x, geometry)


def max_pool2d(x, kernel_size, stride=None, padding=0, *, channels=1):
    """The largest element of each ``kernel_size`` window of each channel of ``x``
    (``(channels*H) x W``), as PyTorch's ``max_pool2d``: ``stride`` defaults to the kernel
    size, padding is never the largest. Its gradient goes to the first largest element."""
    return _pool(MaxPool2d, "max_pool2d", x, kernel_size, stride, padding, channels)


def avg_pool2d(x, kernel_size, stride=None, padding=0, *, channels=1):
    """The mean of each ``kernel_size`` window of each channel of ``x`` (``(channels*H) x W``),
    as PyTorch's ``avg_pool2d`` (padding counts as zeros in the mean)."""
    return _pool(AvgPool2d, "avg_pool2d", x, kernel_size, stride, padding, channels)
