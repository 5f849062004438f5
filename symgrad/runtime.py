"""Calling compiled kernels from Python: argument checks, batching, results.

This file is copied verbatim into every generated package as ``_runtime.py``
so that a generated module needs only NumPy and cffi. It must not import
symgrad (except for the exception classes, when symgrad happens to be there).

Calling convention (what a user passes):

* a param: a Python or NumPy number for a scalar; an array of the declared
  shape for a matrix (a vector may also be given 1-D);
* an input: one example (a number, or an array of the declared shape) or a
  batch with a leading axis of N examples; a column or row vector may be
  given as ``(N, length)``. Single examples next to batched inputs are
  repeated over the batch;
* dtype: integers, booleans and floating point are converted to the
  kernel's precision; complex, object and string data are refused.

Results are new arrays the caller owns, with the batch axis first when any
input was batched, and plain floats for scalars otherwise. Parameter
gradients have the shape the parameter was passed in.
"""

from __future__ import annotations

import threading

import numpy as np

try:  # the same exception classes as symgrad.errors, when symgrad is installed
    from symgrad.errors import ArgumentDtypeError, ArgumentError, ArgumentShapeError, KernelError
except ImportError:  # a standalone generated module

    class ArgumentError(TypeError):
        """A call got a missing, unknown or malformed argument."""

    class ArgumentShapeError(ArgumentError, ValueError):
        """An argument has the wrong shape, or batch sizes disagree."""

    class ArgumentDtypeError(ArgumentError):
        """An argument has a dtype that cannot be converted without loss."""

    class KernelError(RuntimeError):
        """A kernel reported a failure while running."""


KERNEL_ERRORS = {
    1: "a class index is not a whole number between 0 and the number of classes - 1",
}


def _shape_text(shape) -> str:
    return "scalar" if shape == () else "x".join(str(d) for d in shape)


def _vector_length(shape):
    """The length of a row or column vector shape, else None."""
    if len(shape) == 2 and (shape[0] == 1 or shape[1] == 1):
        return shape[0] * shape[1]
    return None


class Argument:
    """One kernel parameter: role, user name, C type and per-example shape."""

    __slots__ = ("role", "name", "shape", "per_example", "by_value", "kind", "c_type", "size")

    def __init__(self, role, name, shape, per_example, by_value, kind, c_type):
        self.role = role
        self.name = name
        self.shape = tuple(shape)
        self.per_example = per_example
        self.by_value = by_value
        self.kind = kind
        self.c_type = c_type
        size = 1
        for d in self.shape:
            size *= d
        self.size = size


class Kernel:
    """A compiled kernel with the Python-side checks around it."""

    def __init__(self, ffi, function, *, dtype, arguments, declared, work_size, reduce):
        self._ffi = ffi
        self._function = function
        self.dtype = np.dtype(dtype)
        self.arguments = [Argument(*a) for a in arguments]
        self.declared = dict(declared)  # every symbol of the model: name -> (role, shape)
        self.work_size = work_size
        self.reduce = reduce
        self._local = threading.local()
        self._symbols = [a for a in self.arguments if a.role in ("param", "input")]
        self._outputs = [a for a in self.arguments if a.role == "output"]
        self._real_ptr = "float *" if self.dtype == np.float32 else "double *"

    # --- the call -----------------------------------------------------------------

    def __call__(self, arrays: dict) -> list:
        """Run the kernel on keyword ``arrays``; returns ``[(result name, value), ...]``."""
        self._check_names(arrays)
        values = {}
        given_shapes = {}
        batch = None  # (N, name of an input that set it)
        batched_inputs = []
        for arg in self._symbols:
            raw = arrays[arg.name]
            if arg.role == "param":
                values[arg.name], given_shapes[arg.name] = self._param(arg, raw)
            else:
                array, is_batch = self._input(arg, raw)
                values[arg.name], given_shapes[arg.name] = array, np.shape(raw)
                if is_batch:
                    batched_inputs.append(arg)
                    if batch is not None and batch[0] != array.shape[0]:
                        raise ArgumentShapeError(
                            f"batch sizes disagree: input {arg.name!r} has {array.shape[0]} examples "
                            f"but input {batch[1]!r} has {batch[0]}"
                        )
                    batch = batch or (array.shape[0], arg.name)
        n = batch[0] if batch else 1
        batched = batch is not None
        for arg in self._symbols:
            if arg.role == "input":
                array = values[arg.name]
                if not batched or arg not in batched_inputs:
                    array = np.ascontiguousarray(np.broadcast_to(array.reshape((1,) + arg.shape), (n,) + arg.shape))
                values[arg.name] = array
        if n == 0 and self.reduce == "mean" and any(not a.per_example for a in self._outputs):
            raise ArgumentShapeError(
                "the batch has 0 examples: the mean over no examples is undefined; pass at least one example"
            )
        outputs = {a.name: np.empty(((n,) if a.per_example else ()) + a.shape, dtype=self.dtype)
                   for a in self._outputs}
        status = self._run(n, values, outputs)
        if status != 0:
            raise KernelError(f"the kernel failed: {KERNEL_ERRORS.get(status, f'error code {status}')}")
        return self._results(outputs, batched, given_shapes, {a.name for a in batched_inputs})

    def _run(self, n, values, outputs) -> int:
        ffi = self._ffi
        ptr = self._real_ptr
        call_args = [n]
        for arg in self._symbols:
            value = values[arg.name]
            call_args.append(value if arg.by_value else ffi.from_buffer(ptr, value))
        for arg in self._outputs:
            call_args.append(ffi.from_buffer(ptr, outputs[arg.name], require_writable=True))
        call_args.append(self._workspace())
        return self._function(*call_args)

    def _workspace(self):
        """Scratch memory for this thread, allocated on its first call and kept."""
        local = self._local
        work = getattr(local, "work", None)
        if work is None:
            local.array = np.empty(max(self.work_size, 1), dtype=self.dtype)
            work = local.work = self._ffi.from_buffer(self._real_ptr, local.array, require_writable=True)
        return work

    # --- arguments -------------------------------------------------------------------

    def _check_names(self, arrays) -> None:
        unknown = [k for k in arrays if k not in self.declared]
        if unknown:
            raise ArgumentError(
                f"unknown argument {unknown[0]!r}; this model takes: {', '.join(sorted(self.declared))}"
            )
        missing = [a for a in self._symbols if a.name not in arrays]
        if missing:
            described = ", ".join(
                f"{a.name!r} ({'param' if a.role == 'param' else 'input'}, {_shape_text(a.shape)})"
                for a in missing
            )
            raise ArgumentError(f"missing argument{'s' if len(missing) > 1 else ''}: {described}")

    def _as_array(self, arg, raw):
        try:
            array = np.asarray(raw)
        except Exception as exc:  # ragged lists and the like
            raise ArgumentError(f"{arg.role} {arg.name!r} is not array-like: {exc}") from None
        if array.dtype.kind not in "biuf":
            raise ArgumentDtypeError(
                f"{arg.role} {arg.name!r} has dtype {array.dtype}; expected real numbers "
                f"(integers, booleans and floats are converted to {self.dtype})"
            )
        return array

    def _param(self, arg, raw):
        array = self._as_array(arg, raw)
        if arg.by_value:
            if array.size != 1 or array.ndim > 1:
                raise ArgumentShapeError(
                    f"param {arg.name!r} is one number shared by all examples; got an array of shape {array.shape}"
                )
            return float(array.reshape(())), array.shape
        if array.shape != arg.shape and not (array.ndim == 1 and array.shape[0] == _vector_length(arg.shape)):
            raise ArgumentShapeError(
                f"param {arg.name!r} must have shape {arg.shape}; got {array.shape}"
                + ("" if array.ndim <= 2 else " (params are shared by all examples and have no batch axis)")
            )
        return np.ascontiguousarray(array, dtype=self.dtype).reshape(arg.shape), array.shape

    def _input(self, arg, raw):
        """The input as (N, *shape) or (*shape), and whether it is a batch."""
        array = self._as_array(arg, raw)
        shape = arg.shape
        length = _vector_length(shape)
        if array.shape == shape:
            batch = False
        elif array.ndim == len(shape) + 1 and array.shape[1:] == shape:
            batch = True
        elif length is not None and array.ndim == 1 and array.shape[0] == length:
            batch, array = False, array.reshape(shape)
        elif length is not None and array.ndim == 2 and array.shape[1] == length:
            batch, array = True, array.reshape((array.shape[0],) + shape)
        else:
            forms = [_shape_text(shape) or "scalar", f"(N, {', '.join(map(str, shape))})" if shape else "(N,)"]
            if length is not None:
                forms.append(f"(N, {length})")
            raise ArgumentShapeError(
                f"input {arg.name!r} has shape {array.shape}; expected one example of shape {shape} "
                f"or a batch of shape {' or '.join(forms[1:])}"
            )
        return np.ascontiguousarray(array, dtype=self.dtype), batch

    # --- results -------------------------------------------------------------------------

    def _results(self, outputs, batched, given_shapes, batched_names) -> list:
        results = []
        for arg in self._outputs:
            value = outputs[arg.name]
            if arg.kind == "gradient":
                value = self._gradient(arg, value, batched, given_shapes[arg.name], arg.name in batched_names)
            elif arg.per_example and not batched:
                value = value[0]
            results.append((arg.name, float(value) if np.ndim(value) == 0 else value))
        return results

    def _gradient(self, arg, value, batched, given, was_batched):
        """A gradient in the shape its symbol was passed in."""
        if not arg.per_example:  # a param's gradient, reduced over the batch
            return value.reshape(given)
        if self.declared[arg.name][0] == "param":  # per-example gradients (reduce=None)
            return value.reshape((value.shape[0],) + given) if batched else value[0].reshape(given)
        if was_batched:
            return value.reshape(given)
        # An input given once and repeated over the batch: its gradient sums over the batch.
        return (value.sum(axis=0) if batched else value[0]).reshape(given)
