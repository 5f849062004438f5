"""How one call signature of a kernel is run: the arguments normalized into a :class:`Plan`.

A call's signature is the type of each argument and, for arrays, their
dtype, shape and layout flags. Everything a call needs to decide from the
arguments (are they one example or a batch, how many examples, which ones
need a conversion, the shape of each result) depends only on the signature,
so it is decided once, kept in a :class:`Plan`, and each later call with the
same signature only runs the plan: the few conversions it lists, the kernel
(or the one-example entry point), and the results in their final shapes.
The plans of a kernel are its branches: the one-example entry (every
argument a number), the exact layout (every array as the kernel reads it,
no conversion) and the general case (conversions, broadcasting, sums).

This file is copied into every generated package as ``_callplan.py``, next
to ``_runtime.py``; it needs only NumPy.
"""

from __future__ import annotations

import numpy as np

try:  # the same exception classes as symgrad.errors, when symgrad is installed
    from symgrad.errors import ArgumentDtypeError, ArgumentError, ArgumentShapeError
except ImportError:  # a standalone generated module

    class ArgumentError(TypeError):
        """A call got a missing, unknown or malformed argument."""

    class ArgumentShapeError(ArgumentError, ValueError):
        """An argument has the wrong shape, or batch sizes disagree."""

    class ArgumentDtypeError(ArgumentError):
        """An argument has a dtype that cannot be converted without loss."""


_INTEGER_SCALARS = frozenset([int] + [getattr(np, f"{kind}{bits}") for kind in ("int", "uint")
                                      for bits in (8, 16, 32, 64)])
#: Numbers every kernel takes as they are (integers are checked first: see check_integers).
FLOAT_TYPES = frozenset([float, bool, np.float64, np.float32, np.float16, np.bool_])
#: Python and NumPy scalar types a call may pass straight to C as numbers.
SCALAR_TYPES = FLOAT_TYPES | _INTEGER_SCALARS

#: The bits of ``ndarray.flags.num`` a kernel needs of an array it reads as it is.
_C_CONTIGUOUS, _ALIGNED, _WRITEABLE = 0x1, 0x100, 0x400
READABLE = _C_CONTIGUOUS | _ALIGNED
WRITABLE = READABLE | _WRITEABLE

_ndarray = np.ndarray


def signature(values) -> tuple:
    """The plan key of a call's values: their types, and dtype, shape and layout of the arrays."""
    key = tuple(map(type, values))
    if _ndarray in key:
        key += tuple([(v.dtype, v.shape, v.flags.num & READABLE) for v in values if type(v) is _ndarray])
    return key


def shape_text(shape) -> str:
    return "scalar" if shape == () else "x".join(str(d) for d in shape)


def vector_length(shape):
    """The length of a row or column vector shape, else None."""
    if len(shape) == 2 and (shape[0] == 1 or shape[1] == 1):
        return shape[0] * shape[1]
    return None


def exact_integer_limit(dtype) -> int:
    """The largest integer magnitude below which every integer is exact in ``dtype``."""
    return 2 ** (np.finfo(dtype).nmant + 1)


class Argument:
    """One kernel parameter: role, user name, C type and per-example shape."""

    __slots__ = ("role", "name", "shape", "flat", "per_example", "by_value", "kind", "c_type")

    def __init__(self, role, name, shape, per_example, by_value, kind, c_type):
        self.role = role
        self.name = name
        self.shape = tuple(shape)
        length = vector_length(self.shape)
        self.flat = (length,) if length is not None else self.shape  # a vector's 1-D form
        self.per_example = per_example
        self.by_value = by_value
        self.kind = kind
        self.c_type = c_type


class Plan:
    """What a call of one signature does, decided once.

    ``n``: examples; ``batched``: whether an input came as a batch.
    ``converters``: ``(position, function)`` for the values C cannot read as
    they are; ``point_checks``: positions of integer numbers to check before
    the one-example entry gets them; ``point``: whether that entry may run.
    ``outputs``: per result, ``(mode, shape)``: ``"float"`` (a number; shape is
    its slot in the buffer of numbers), ``"array"`` (an array of this shape
    that the kernel writes as it is) or ``"sum"`` (the kernel writes one row
    per example; the result, of this shape, is their sum: an input given once
    and repeated over the batch). ``sizes``: elements of each ``"array"`` result
    (0 for the others), where it goes in the one block a call's results share.
    """

    __slots__ = ("branch", "n", "batched", "converters", "point_checks", "point", "outputs", "float_count",
                 "float_outputs", "sizes")

    def __init__(self, n, batched, converters, point_checks, point, outputs):
        self.n = n
        self.batched = batched
        self.converters = converters
        self.point_checks = point_checks
        self.point = point
        self.outputs = outputs
        self.float_outputs = [(k, slot) for k, (mode, slot) in enumerate(outputs) if mode == "float"]
        self.float_count = len(self.float_outputs)
        self.sizes = [int(np.prod(shape)) if mode == "array" else 0 for mode, shape in outputs]  # elements
        exact = not converters and all(mode != "sum" for mode, _ in outputs)
        self.branch = "point" if point else "exact" if exact else "general"


def as_array(arg, raw, dtype):
    """``raw`` as an ndarray of real numbers (not yet converted to the kernel's dtype)."""
    if type(raw) is _ndarray:
        array = raw
    else:
        try:
            array = np.asarray(raw)
        except Exception as exc:  # ragged lists and the like
            raise ArgumentError(f"{arg.role} {arg.name!r} is not array-like: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise ArgumentDtypeError(
            f"{arg.role} {arg.name!r} has dtype {array.dtype}; expected real numbers "
            f"(booleans, integers of magnitude up to 2**{exact_integer_limit(dtype).bit_length() - 1} "
            f"and floats are converted to {dtype})"
        )
    return array


def check_integers(arg, value, dtype) -> None:
    """Refuse integers that ``dtype`` would round: conversions must not change a value."""
    limit = exact_integer_limit(dtype)
    if type(value) is _ndarray:
        if value.dtype.kind not in "iu" or value.dtype.itemsize * 8 <= limit.bit_length() - 1 or not value.size:
            return
        largest = max(int(value.max()), -int(value.min()))
    elif type(value) in _INTEGER_SCALARS:
        largest = abs(int(value))
    else:
        return
    if largest > limit:
        raise ArgumentDtypeError(
            f"{arg.role} {arg.name!r} holds the integer {largest}, which {dtype} cannot represent exactly "
            f"(its integers are exact up to 2**{limit.bit_length() - 1}); convert it to floats yourself "
            f"if rounding is what you want"
        )


def _readable(value, dtype) -> bool:
    """Whether C may read ``value`` as it is."""
    return value.dtype == dtype and value.flags.num & READABLE == READABLE


def _to_array(arg, dtype, shape):
    """A converter to a C-ordered array of ``dtype`` and ``shape``."""

    def convert(value):
        check_integers(arg, value, dtype)
        return np.ascontiguousarray(np.reshape(value, shape), dtype=dtype)

    return convert


def _repeated(arg, dtype, n):
    """A converter of one example to a C-ordered batch of n copies of it."""

    def convert(value):
        check_integers(arg, value, dtype)
        return np.ascontiguousarray(np.broadcast_to(np.reshape(value, arg.shape), (n,) + arg.shape), dtype=dtype)

    return convert


def _to_number(arg, dtype):
    def convert(value):
        check_integers(arg, value, dtype)
        return float(value.reshape(()))

    return convert


def _checked(arg, dtype):
    def convert(value):
        check_integers(arg, value, dtype)
        return value

    return convert


def _input_form(arg, shape):
    """(batch size or None for one example, the per-example shape) of an input given with ``shape``."""
    declared = arg.shape
    length = vector_length(declared)
    if shape == declared or (length is not None and shape == (length,)):
        return None
    if len(shape) == len(declared) + 1 and shape[1:] == declared:
        return shape[0]
    if length is not None and len(shape) == 2 and shape[1] == length:
        return shape[0]
    forms = [f"(N, {', '.join(map(str, declared))})" if declared else "(N,)"]
    if length is not None:
        forms.append(f"(N, {length})")
    raise ArgumentShapeError(
        f"input {arg.name!r} has shape {shape}; expected one example of shape {declared} "
        f"or a batch of shape {' or '.join(forms)}"
    )


def make_plan(kernel, values, extras) -> Plan:
    """The plan of a call of ``kernel`` with ``values`` (numbers of SCALAR_TYPES or arrays, one per
    symbol the kernel reads) and ``extras`` (arrays of declared symbols it does not read)."""
    dtype = kernel.dtype
    converters, point_checks, given = [], [], {}
    batch = None  # (N, the input that set it)
    batched = set()  # the inputs given as batches
    one_example = []  # (position, arg, whether C cannot read it as it is) of inputs given as one example
    for position, (arg, value) in enumerate(zip(kernel.symbols, values)):
        scalar = type(value) is not _ndarray
        if not scalar and value.dtype.kind not in "biuf":
            as_array(arg, value, dtype)  # raises the dtype error
        shape = () if scalar else value.shape
        given[arg.name] = shape
        if scalar and type(value) in _INTEGER_SCALARS:
            point_checks.append(position)
        if arg.by_value:
            if scalar:
                if type(value) in _INTEGER_SCALARS:
                    converters.append((position, _checked(arg, dtype)))
            elif value.size == 1 and value.ndim <= 1:
                converters.append((position, _to_number(arg, dtype)))
            else:
                raise ArgumentShapeError(f"param {arg.name!r} is one number shared by all examples; "
                                         f"got an array of shape {shape}")
        elif arg.role == "param":
            if shape != arg.shape and shape != arg.flat:
                raise ArgumentShapeError(
                    f"param {arg.name!r} must have shape {arg.shape}; got {shape}"
                    + ("" if len(shape) <= 2 else " (params are shared by all examples and have no batch axis)"))
            if scalar or not _readable(value, dtype):
                converters.append((position, _to_array(arg, dtype, arg.shape)))
        else:
            size = _input_form(arg, shape)
            if size is None:
                one_example.append((position, arg, scalar or not _readable(value, dtype)))
                continue
            batch = _agree(batch, size, arg.name)
            batched.add(arg.name)
            if not _readable(value, dtype):
                converters.append((position, _to_array(arg, dtype, (size,) + arg.shape)))
    for name, value in extras.items():  # declared symbols this kernel does not read
        role, shape = kernel.declared[name]
        given[name] = value.shape
        if role == "input":  # an input this kernel does not read still says how many examples there are
            size = _input_form(Argument("input", name, shape, True, False, "", ""), value.shape)
            if size is not None:
                batch = _agree(batch, size, name)
                batched.add(name)
    n = 1 if batch is None else batch[0]
    for position, arg, convert in one_example:
        if batch is not None:  # one example next to a batch is repeated over it
            converters.append((position, _repeated(arg, dtype, n)))
        elif convert:
            converters.append((position, _to_array(arg, dtype, arg.shape)))
    converters.sort(key=lambda item: item[0])
    outputs = _output_plans(kernel, given, n, batched)
    point = kernel.has_point and not extras and all(type(v) is not _ndarray for v in values)
    return Plan(n, batch is not None, converters, point_checks, point, outputs)


def _agree(batch, size, name):
    if batch is not None and batch[0] != size:
        raise ArgumentShapeError(f"batch sizes disagree: input {name!r} has {size} examples "
                                 f"but input {batch[1]!r} has {batch[0]}")
    return batch or (size, name)


def _output_plans(kernel, given, n, batched) -> list:
    """(mode, shape) of each result (see :class:`Plan`); ``batched``: the inputs given as batches."""
    outputs, slots = [], 0
    for arg in kernel.outputs:
        rows = n if arg.per_example else 1
        mode = "array"
        if arg.kind == "gradient":
            role, declared = kernel.declared[arg.name]
            shape = given.get(arg.name, declared)  # the gradient has the shape its symbol was passed in
            if arg.per_example and role == "param" and batched:  # per-example gradients (reduce=None)
                shape = (n,) + shape
            elif arg.per_example and role == "input" and batched and arg.name not in batched:
                mode = "sum"  # an input given once and repeated over the batch: its gradient sums over it
                rows = 1
        else:
            shape = (n,) + arg.shape if arg.per_example and batched else arg.shape
        if int(np.prod(shape)) != rows * int(np.prod(arg.shape)):  # never: C would write past the result
            raise RuntimeError(f"internal error: result {arg.name!r} of shape {shape} does not hold "
                               f"{rows} x {arg.shape} values")
        if shape == () and mode == "array":
            mode, shape, slots = "float", slots, slots + 1
        outputs.append((mode, shape))
    return outputs
