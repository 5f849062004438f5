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
input was batched, and plain floats for scalars otherwise. Gradients have
the shape their symbol was passed in.

The per-call path is kept short: arrays that already have the right dtype
and layout are passed to C without a copy, and the generated module calls
one-example kernels directly with Python numbers (see ``SCALAR_TYPES``).
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


#: Python and NumPy scalar types a one-example call may pass straight to C.
SCALAR_TYPES = frozenset(
    [float, int, bool, np.float64, np.float32, np.float16, np.bool_]
    + [getattr(np, f"{kind}{bits}") for kind in ("int", "uint") for bits in (8, 16, 32, 64)]
)

#: Batches larger than CHUNK are run as at most MAX_CHUNKS calls over slices
#: whose boundaries depend only on the batch size, and their batch sums are
#: added in slice order: the result is the same whether the slices run one
#: after the other or on several threads (threads=).
CHUNK = 16384
MAX_CHUNKS = 16

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


def chunks(n: int) -> list:
    """The (start, end) slices a batch of n examples is run in."""
    if n <= CHUNK:
        return [(0, n)]
    size = max(CHUNK, -(-n // MAX_CHUNKS))
    return [(start, min(start + size, n)) for start in range(0, n, size)]


_pools: dict = {}
_pools_lock = threading.Lock()


def _pool(threads: int):
    """A shared pool of worker threads (kernels release the GIL while they run)."""
    from concurrent.futures import ThreadPoolExecutor

    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="symgrad")
        return pool


class Argument:
    """One kernel parameter: role, user name, C type and per-example shape."""

    __slots__ = ("role", "name", "shape", "flat", "per_example", "by_value", "kind", "c_type")

    def __init__(self, role, name, shape, per_example, by_value, kind, c_type):
        self.role = role
        self.name = name
        self.shape = tuple(shape)
        length = _vector_length(self.shape)
        self.flat = (length,) if length is not None else self.shape  # a vector's 1-D form
        self.per_example = per_example
        self.by_value = by_value
        self.kind = kind
        self.c_type = c_type


class Kernel:
    """A compiled kernel with the Python-side checks around it."""

    def __init__(self, ffi, function, *, dtype, arguments, declared, work_size, reduce):
        self._ffi = ffi
        self._function = function
        self.dtype = np.dtype(dtype)
        self.arguments = [Argument(*a) for a in arguments]
        self.declared = dict(declared)  # every symbol of the model: name -> (role, shape)
        self.work_size = work_size
        self._local = threading.local()
        self._symbols = [a for a in self.arguments if a.role in ("param", "input")]
        self._names = frozenset(a.name for a in self._symbols)
        self._outputs = [a for a in self.arguments if a.role == "output"]
        self._pointer = "float *" if self.dtype == np.float32 else "double *"
        self._mean_results = reduce == "mean" and any(not a.per_example for a in self._outputs)

    # --- the call -----------------------------------------------------------------

    def __call__(self, arrays: dict, out=None, threads: int = 1) -> list:
        """Run the kernel on keyword ``arrays``; returns ``[(result name, value), ...]``.

        ``out``, if given, holds one array (or None) per result, in result
        order: results are written into them instead of new arrays.
        ``threads`` > 1 runs the chunks of a large batch on that many threads.
        """
        if type(threads) is not int or threads < 1:
            raise ArgumentError(f"threads must be a whole number >= 1, got {threads!r}")
        try:
            raw = [arrays[a.name] for a in self._symbols]
        except KeyError:
            self._check_names(arrays)
            raise
        extra = None
        if len(arrays) != len(raw):
            self._check_names(arrays)
            extra = {k: v for k, v in arrays.items() if k not in self._names}  # declared, unused here
        else:
            exact = self._exact(raw, out, threads)
            if exact is not None:
                return exact
        values = []
        shapes = []  # the shape each symbol came in
        shapes_of_unread = {}  # the same, for declared symbols this kernel does not read
        batch = None  # (N, name of the input that set it)
        batched = set()
        for arg, value in zip(self._symbols, raw):
            if arg.by_value:
                values.append(value if type(value) in SCALAR_TYPES else self._param_scalar(arg, value))
                shapes.append(())
                continue
            if arg.role == "param":
                array, is_batch = self._param(arg, value), False
            else:
                array, is_batch = self._input(arg, value)
            if is_batch:
                batched.add(arg.name)
                if batch is None:
                    batch = (array.shape[0], arg.name)
                elif batch[0] != array.shape[0]:
                    raise ArgumentShapeError(
                        f"batch sizes disagree: input {arg.name!r} has {array.shape[0]} examples "
                        f"but input {batch[1]!r} has {batch[0]}"
                    )
            values.append(array)
            shapes.append(np.shape(value) if type(value) is not np.ndarray else value.shape)
        for name, value in (extra or {}).items():
            role, shape = self.declared[name]
            shapes_of_unread[name] = np.shape(value)
            if role == "input":  # an input this kernel does not read still says how many examples there are
                array, is_batch = self._input(Argument("input", name, shape, True, False, "", ""), value)
                if is_batch:
                    batched.add(name)
                    if batch is not None and batch[0] != array.shape[0]:
                        raise ArgumentShapeError(
                            f"batch sizes disagree: input {name!r} has {array.shape[0]} examples "
                            f"but input {batch[1]!r} has {batch[0]}"
                        )
                    batch = batch or (array.shape[0], name)
        n = batch[0] if batch else 1
        if batch:  # an input given as one example next to a batch is repeated over it
            for k, arg in enumerate(self._symbols):
                if arg.role == "input" and arg.name not in batched:
                    values[k] = np.ascontiguousarray(np.broadcast_to(values[k], (n,) + values[k].shape))
        if n == 0 and self._mean_results:
            raise ArgumentShapeError(
                "the batch has 0 examples: the mean over no examples is undefined; pass at least one example"
            )
        outputs = self._result_arrays(n, out)
        self._launch(n, values, outputs, threads)
        given = {a.name: s for a, s in zip(self._symbols, shapes)}
        given.update(shapes_of_unread)
        return self._results(outputs, batch is not None, given, batched)

    def out_arrays(self, out, form: str):
        """A call's ``out=`` as one array (or None) per result, in result order.

        ``out`` is what an earlier call returned: for ``form="dict"`` a dict
        of results by name; for ``"loss_and_dict"`` a ``(loss, gradients)``
        pair; for ``"dict_after_loss"`` a dict of every result but the first.
        """
        if out is None:
            return None
        names = [a.name for a in self._outputs]
        try:
            if form == "loss_and_dict":
                loss, rest = out
                return [loss] + [rest.get(name) for name in names[1:]]
            if form == "dict_after_loss":
                return [None] + [out.get(name) for name in names[1:]]
            return [out.get(name) for name in names]
        except (TypeError, ValueError, AttributeError):
            raise ArgumentError(
                "out must be what an earlier call of the same function returned "
                "(a dict of arrays, or a (loss, dict) pair for value_and_grad)"
            ) from None

    def _result_arrays(self, n, out) -> list:
        """Arrays the kernel writes its results into: the caller's ``out`` arrays, or new ones."""
        dtype = self.dtype
        if out is None:
            return [np.empty((n,) + a.shape if a.per_example else a.shape, dtype=dtype) for a in self._outputs]
        arrays = []
        for arg, given in zip(self._outputs, out):
            shape = (n,) + arg.shape if arg.per_example else arg.shape
            if given is None or type(given) is float:
                arrays.append(np.empty(shape, dtype=dtype))
                continue
            if (type(given) is not np.ndarray or given.dtype != dtype or given.size != int(np.prod(shape))
                    or not given.flags.c_contiguous or not given.flags.writeable):
                raise ArgumentError(
                    f"out: the array for {arg.name!r} must be a writable, C-contiguous {dtype} array with "
                    f"{int(np.prod(shape))} elements (shape {shape}); got "
                    f"{getattr(given, 'shape', type(given).__name__)}"
                    f"{' of ' + str(given.dtype) if hasattr(given, 'dtype') else ''}"
                )
            arrays.append(given.reshape(shape))
        return arrays

    def _exact(self, raw, out=None, threads=1):
        """The results when every argument already has a layout the kernel reads as it is, else None.

        That is: C-contiguous arrays of the kernel's dtype; params of their
        declared shape (a vector may be 1-D); inputs as batches (N, *shape)
        (a vector may be (N, length)). Most calls in a training loop look like
        this, and they skip the flexible path's conversions.
        """
        dtype = self.dtype
        n = -1
        reshaped = None  # symbol name -> the shape its gradient must take
        for arg, value in zip(self._symbols, raw):
            if arg.by_value:
                if type(value) not in SCALAR_TYPES:
                    return None
                continue
            if type(value) is not np.ndarray or value.dtype is not dtype or not value.flags.c_contiguous:
                return None
            shape = value.shape
            if arg.role == "param":
                if shape != arg.shape:
                    if shape != arg.flat:
                        return None
                    reshaped = reshaped or {}
                    reshaped[arg.name] = shape
            else:
                rest = shape[1:]
                if shape == arg.shape or (rest != arg.shape and rest != arg.flat) or len(shape) < 2 and arg.shape:
                    return None  # one example (its declared shape), or a shape the flexible path sorts out
                if n < 0:
                    n = shape[0]
                elif shape[0] != n:
                    return None
                if rest != arg.shape:
                    reshaped = reshaped or {}
                    reshaped[arg.name] = shape
        if n <= 0:  # no batched input, or an empty batch: the flexible path handles these
            return None
        outputs = self._result_arrays(n, out)
        self._launch(n, raw, outputs, threads)
        results = []
        for arg, out in zip(self._outputs, outputs):
            if reshaped is not None and arg.kind == "gradient" and arg.name in reshaped:
                given = reshaped[arg.name]
                out = out.reshape(given if not arg.per_example or self.declared[arg.name][0] == "input"
                                  else (n,) + given)
            results.append((arg.name, float(out) if out.ndim == 0 else out))
        return results

    def _launch(self, n, values, outputs, threads) -> None:
        """Run the kernel on n examples: ``values`` per symbol (C-ordered arrays
        with the batch axis first for inputs, or numbers), into ``outputs``."""
        from_buffer = self._ffi.from_buffer
        pointer = self._pointer
        slices = chunks(n)
        if len(slices) == 1:
            call = [n, n] + [from_buffer(pointer, v) if type(v) is np.ndarray else v for v in values]
            call += [from_buffer(pointer, o) for o in outputs]
            call.append(self._workspace())
            self._check(self._function(*call))
            return
        shared = [from_buffer(pointer, v) if type(v) is np.ndarray and a.role == "param" else v
                  for a, v in zip(self._symbols, values)]
        per_call = [k for k, a in enumerate(self._outputs) if not a.per_example]
        parts = [[np.empty(self._outputs[k].shape, dtype=self.dtype) for k in per_call] for _ in slices]

        def run(index):
            start, end = slices[index]
            call = [end - start, n]
            for arg, value, fixed in zip(self._symbols, values, shared):
                call.append(from_buffer(pointer, value[start:end]) if arg.role == "input" else fixed)
            partial = iter(parts[index])
            for arg, o in zip(self._outputs, outputs):
                call.append(from_buffer(pointer, o[start:end] if arg.per_example else next(partial)))
            call.append(self._workspace())
            return self._function(*call)

        if threads > 1:
            statuses = list(_pool(threads).map(run, range(len(slices))))
        else:
            statuses = [run(index) for index in range(len(slices))]
        for status in statuses:
            self._check(status)
        for position, k in enumerate(per_call):  # batch sums, added in slice order
            total = parts[0][position]
            for part in parts[1:]:
                total += part[position]
            outputs[k][...] = total

    @staticmethod
    def _check(status) -> None:
        if status != 0:
            raise KernelError(f"the kernel failed: {KERNEL_ERRORS.get(status, f'error code {status}')}")

    def _workspace(self):
        """Scratch memory for this thread, allocated on its first call and kept."""
        local = self._local
        work = getattr(local, "work", None)
        if work is None:
            local.array = np.empty(max(self.work_size, 1), dtype=self.dtype)
            work = local.work = self._ffi.from_buffer(self._pointer, local.array, require_writable=True)
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
        if type(raw) is np.ndarray:
            array = raw
        else:
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

    def _contiguous(self, array):
        if array.dtype == self.dtype and array.flags.c_contiguous:
            return array
        return np.ascontiguousarray(array, dtype=self.dtype)

    def _param_scalar(self, arg, raw) -> float:
        if type(raw) is np.ndarray and raw.ndim == 0 and raw.dtype.kind in "biuf":
            return float(raw)
        array = self._as_array(arg, raw)
        if array.size != 1 or array.ndim > 1:
            raise ArgumentShapeError(
                f"param {arg.name!r} is one number shared by all examples; got an array of shape {array.shape}"
            )
        return float(array.reshape(()))

    def _param(self, arg, raw):
        """A matrix param as a C-ordered array of the kernel's dtype."""
        array = self._as_array(arg, raw)
        if array.shape != arg.shape and not (array.ndim == 1 and array.shape[0] == _vector_length(arg.shape)):
            raise ArgumentShapeError(
                f"param {arg.name!r} must have shape {arg.shape}; got {array.shape}"
                + ("" if array.ndim <= 2 else " (params are shared by all examples and have no batch axis)")
            )
        return self._contiguous(array)

    def _input(self, arg, raw):
        """An input as a C-ordered array of (N, *shape) or (*shape), and whether it is a batch."""
        array = self._as_array(arg, raw)
        shape = arg.shape
        given = array.shape
        length = _vector_length(shape)
        if given == shape:
            batch = False
        elif array.ndim == len(shape) + 1 and given[1:] == shape:
            batch = True
        elif length is not None and array.ndim == 1 and given[0] == length:
            batch, array = False, array.reshape(shape)
        elif length is not None and array.ndim == 2 and given[1] == length:
            batch, array = True, array.reshape((given[0],) + shape)
        else:
            forms = [f"(N, {', '.join(map(str, shape))})" if shape else "(N,)"]
            if length is not None:
                forms.append(f"(N, {length})")
            raise ArgumentShapeError(
                f"input {arg.name!r} has shape {given}; expected one example of shape {shape} "
                f"or a batch of shape {' or '.join(forms)}"
            )
        return self._contiguous(array), batch

    # --- results -------------------------------------------------------------------------

    def _results(self, outputs, batched, given_shapes, batched_names) -> list:
        results = []
        for arg, value in zip(self._outputs, outputs):
            if arg.kind == "gradient":
                given = given_shapes.get(arg.name, self.declared[arg.name][1])  # unread symbols: as declared
                value = self._gradient(arg, value, batched, given, arg.name in batched_names)
            elif arg.per_example and not batched:
                value = value[0]
            results.append((arg.name, float(value) if value.ndim == 0 else value))
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
