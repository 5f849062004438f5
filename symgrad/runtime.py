"""Calling compiled kernels from Python: call options, plans, batching and results.

This file is copied verbatim into every generated package as ``_runtime.py``
(with ``callplan.py`` as ``_callplan.py``), so that a generated module needs
only NumPy and cffi. It must not import symgrad (except for the exception
classes, when symgrad happens to be there).

Calling convention (what a user passes):

* a param: a Python or NumPy number for a scalar; an array of the declared
  shape for a matrix (a vector may also be given 1-D);
* an input: one example (a number, or an array of the declared shape) or a
  batch with a leading axis of N examples; a column or row vector may be
  given as ``(N, length)``. Single examples next to batched inputs are
  repeated over the batch;
* dtype: booleans, floating point and integers are converted to the
  kernel's precision; integers the kernel's dtype cannot represent exactly
  (beyond 2**53 for float64, 2**24 for float32) and complex, object and
  string data are refused;
* options: ``out=`` (what an earlier call returned: results are written
  into those arrays, which are returned), ``threads=K`` and, for
  ``reduce="mean"`` models, ``mean_over=N`` (the number of examples the
  mean divides by: a caller that splits a batch into parts adds the parts'
  results) and ``inputs=`` (the model's scalar inputs as the columns of one
  (N, k) array, in declaration order). A symbol of the same name takes the name.

Results are new arrays the caller owns (views of one block per call), or the ``out=`` arrays, with the
batch axis first when any input was batched, and plain floats for scalars
otherwise. Gradients have the shape their symbol was passed in.

Every call goes one way: its arguments' signature selects a cached
:class:`callplan.Plan`, which runs the one-example entry point (every
argument a number), or the kernel, after converting only the arguments C
cannot read as they are. Ahead of it, the module functions of an all-scalar
kernel are CPython entry points compiled into the extension
(``templates/python.c.j2``): a call of floats and booleans by name runs
there, without a Python frame; every other call is handed to the Python
function (:meth:`Kernel.function`) as it came.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import keyword
import operator
import sys
import threading
import unicodedata
from pathlib import Path

import numpy as np

try:  # in a generated package, where this file is _runtime.py
    from . import _callplan as callplan
except ImportError:  # symgrad.runtime
    from . import callplan

ArgumentError = callplan.ArgumentError
ArgumentShapeError = callplan.ArgumentShapeError
ArgumentDtypeError = callplan.ArgumentDtypeError

try:
    from symgrad.errors import KernelError, MissingKernelError
except ImportError:  # a standalone generated module

    class KernelError(RuntimeError):
        """A kernel reported a failure while running."""

    class MissingKernelError(AttributeError):
        """The module was built without the kernel a function needs (add it to the Model's kernels=)."""


SCALAR_TYPES = callplan.SCALAR_TYPES

#: Batches larger than CHUNK are run as at most MAX_CHUNKS calls over slices
#: whose boundaries depend only on the batch size, and their batch sums are
#: added in slice order: the result is the same whether the slices run one
#: after the other or on several threads (threads=).
CHUNK = 16384
MAX_CHUNKS = 16
#: Plans kept per kernel (one per call signature); more signatures start over.
MAX_PLANS = 64
MANIFEST = ".symgrad-build.json"

KERNEL_ERRORS = {
    1: "a class index is not a whole number between 0 and the number of classes - 1",
}

_ndarray = np.ndarray
_PLAIN = callplan.SCALAR_TYPES | {_ndarray}  # values a plan takes as they are


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


def _sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_extension(package: str, init_file: str, *, model: str, model_file: str, dtype: str):
    """``(ffi, lib, build key)`` of a generated package's compiled extension.

    The package's files are checked against the build manifest first: the
    SHA-256 of ``init_file`` (so an ``__init__.py`` and a manifest of two
    different builds are never used together) and of the extension, so that
    a truncated, corrupted or mismatched file raises an ImportError naming
    the rebuild command instead of crashing the interpreter when it loads.
    """
    folder = Path(init_file).resolve().parent
    if model_file:
        rebuild = f"symgrad build {model_file} --model {model} -o {folder.parent}"
        rebuild += " --dtype float32" if dtype == "float32" else ""
    else:
        rebuild = f"symgrad.compile(model, out_dir={str(folder.parent)!r}"
        rebuild += ", dtype='float32')" if dtype == "float32" else ")"

    def fail(why):
        raise ImportError(f"the generated package {folder} cannot be loaded: {why}. Rebuild it: {rebuild}")

    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        extension, file_name = manifest["extension"], manifest["extension_file"]
        expected, key = manifest["extension_sha256"], manifest["key"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        fail(f"its build manifest {MANIFEST} is missing or unreadable ({exc})")
    if manifest.get("init_sha256") != _sha256(init_file):
        fail(f"its __init__.py and its {MANIFEST} come from different builds (an interrupted build, or "
             f"files copied from another build)")
    try:
        digest = _sha256(folder / file_name)
    except OSError as exc:
        fail(f"its compiled extension {file_name} cannot be read ({exc.strerror})")
    if digest != expected:
        fail(f"its compiled extension {file_name} is truncated or corrupted (its SHA-256 is not the one "
             f"in {MANIFEST})")
    module = importlib.import_module(f".{extension}", package)
    return module.ffi, module.lib, key


_MISSING = object()  # a symbol not passed to a keyword function
#: Kernels of at most this many symbols get a function with one keyword parameter per symbol.
KEYWORD_LIMIT = 16


def _parameter_name(name: str) -> bool:
    """Whether a symbol's name can be a Python parameter that binds a keyword argument of that name."""
    return (name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_sg_")
            and unicodedata.normalize("NFKC", name) == name)


def _getter(names):
    """A function of a dict that returns the tuple of its values under ``names``."""
    if len(names) == 1:
        name = names[0]
        return lambda arrays: (arrays[name],)
    if not names:
        return lambda arrays: ()
    return operator.itemgetter(*names)


class Kernel:
    """A compiled kernel and its one-example entry point (or None), with the calls around them."""

    def __init__(self, ffi, function, point, *, dtype, arguments, declared, work_size, reduce, entry=None):
        self._ffi = ffi
        self._function = function
        self._point = point
        # The maker of CPython entry points (``<model>_python.c``), for kernels with a one-example entry.
        self._entry = entry if sys.implementation.name == "cpython" else None
        self.has_point = point is not None
        self.dtype = np.dtype(dtype)
        arguments = [callplan.Argument(*a) for a in arguments]
        self.symbols = [a for a in arguments if a.role in ("param", "input")]
        self.outputs = [a for a in arguments if a.role == "output"]
        self.declared = dict(declared)  # every symbol of the model: name -> (role, shape)
        for a in self.symbols:  # and the tangent arguments of the derivative kernels (``v[x]``)
            self.declared.setdefault(a.name, (a.role, a.shape))
        self.work_size = work_size
        self._count = len(self.symbols)
        self._names = frozenset(a.name for a in self.symbols)
        self._take = _getter([a.name for a in self.symbols])
        self._results = [a.name for a in self.outputs]
        self._gradients = self._results[1:]
        self._result_count = len(self._results)
        self._pointer = "float *" if self.dtype == np.float32 else "double *"
        self._reduce = reduce
        self._mean_results = reduce == "mean" and any(not a.per_example for a in self.outputs)
        # Call options; a symbol of the same name takes the name (None: never popped).
        self._out, self._threads, self._mean_over, self._columns = (
            None if name in declared else name for name in ("out", "threads", "mean_over", "inputs"))
        # The model's scalar inputs, in declaration order: the columns of an ``inputs=`` array.
        self._scalar_inputs = [name for name, (role, shape) in dict(declared).items()
                               if role == "input" and tuple(shape) == ()]
        self._plans = {}
        # Per param position: (the array of the last call, its cffi pointer). A param array passed
        # again (the same object: a training loop's weights) reuses its pointer; the reference
        # kept here keeps its memory alive, so the pointer stays valid.
        self._params = frozenset(k for k, a in enumerate(self.symbols) if a.role == "param" and not a.by_value)
        self._last = [(None, None)] * len(self.symbols)
        self._local = threading.local()

    # --- the functions of a generated module --------------------------------------------

    def function(self, form: str):
        """A decorator that makes a module function (a stub that has only its docstring) call this kernel.

        ``form`` says what it returns: ``"dict"`` ({result name: value},
        ``forward``), ``"loss_and_dict"`` ((loss, {name: gradient}),
        ``value_and_grad``) or ``"dict_after_loss"`` ({name: gradient}, ``grad``).
        The plan of every call whose arguments are all floats or booleans
        (no integers to check) is the one-example entry point, when the
        kernel has one: the function calls it right away. Every other call
        goes through the plan of its signature in :meth:`_call`.
        """
        if form not in ("dict", "loss_and_dict", "dict_after_loss"):
            raise ValueError(f"unknown form {form!r}")
        take, point, unpack = self._take, self._point, self._ffi.unpack
        count, results = self._count, self._result_count
        first = 0 if form == "dict" else 1  # the loss is not among the gradients
        # {name: results[k]} as a dict display: a third of the time of dict(zip(...)). Names are
        # inserted with repr(), as string literals.
        display = "{%s}" % ", ".join(f"{name!r}: _sg_v[{k}]" for k, name in enumerate(self._results) if k >= first)
        returned = f"_sg_v[0], {display}" if form == "loss_and_dict" else display
        named = eval(f"lambda _sg_v: {display}")
        floats = callplan.FLOAT_TYPES if point is not None else frozenset()
        call = self._call
        kernel_function = self._keyword_function(form, returned)
        if kernel_function is None:
            def kernel_function(**arrays):
                if len(arrays) == count:
                    try:
                        values = take(arrays)
                    except KeyError:
                        values = ()
                    if floats.issuperset(map(type, values)) and values:
                        struct = point(*values)  # the results are read while the struct is alive
                        values = unpack(struct.v, results)
                        return (values[0], named(values)) if form == "loss_and_dict" else named(values)
                values = call(arrays, form)
                return (values[0], named(values)) if form == "loss_and_dict" else named(values)

        def decorate(stub):
            for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
                setattr(kernel_function, attribute, getattr(stub, attribute))
            entry = self._entry_function(form, kernel_function)
            if entry is None:
                return kernel_function
            for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
                setattr(entry, attribute, getattr(stub, attribute))
            entry.__wrapped__ = kernel_function  # inspect.signature reads the parameters there
            return entry

        return decorate

    def _entry_function(self, form: str, general):
        """The module function as a CPython entry point of the one-example kernel (see
        ``templates/python.c.j2``), or None without one: a call whose arguments are all floats or
        booleans, by the symbols' names, is run there in C; any other call is passed on to
        ``general``, the Python function, unchanged."""
        if self._entry is None:
            return None
        first = 0 if form == "dict" else 1
        forms = {"dict": 0, "loss_and_dict": 1, "dict_after_loss": 2}
        request = [forms[form], tuple(a.name for a in self.symbols), tuple(self._results[first:]), general]
        # CPython: id() of the request is its address; the C function fills in request[0].
        status = self._entry(self._ffi.cast("void *", id(request)))
        if status == 2:  # no entry: more numbers than its C stack holds, or not CPython (PyPy)
            return None
        if status != 0:
            raise request[0]
        return request[0]

    def _keyword_function(self, form: str, returned: str):
        """The module function as Python code with one keyword parameter per symbol, or None
        when a symbol's name cannot be a parameter (a keyword, not an identifier, changed by
        Python's NFKC normalization of identifiers, or beginning with ``_sg_``).

        Python binds the keywords of a call to the parameters itself (comparing each keyword
        with the parameter names in turn: up to KEYWORD_LIMIT symbols that is quicker than a dict), so a call of numbers
        costs binding, one type check over all values, the one-example entry point and the
        dict of results (``returned``, the expression of ``form``'s value in terms of the
        results ``_sg_v``). Any other call (arrays, integers, options, a missing or unknown
        name) builds the keyword dict and goes through :meth:`_call`, as a call of the
        generic function does.
        """
        names = [a.name for a in self.symbols]
        if not 0 < len(names) <= KEYWORD_LIMIT or not all(_parameter_name(name) for name in names):
            return None
        values = ", ".join(names) + ","
        lines = [f"def kernel_function(*, {', '.join(f'{n}=_sg_missing' for n in names)}, **_sg_options):"]
        if self._point is not None:
            lines += [f"    if not _sg_options and _sg_floats.issuperset(map(type, ({values}))):",
                      f"        _sg_v = _sg_unpack(_sg_point({values}).v, {self._result_count})",
                      f"        return {returned}"]
        lines += [f"    _sg_arrays = {{_sg_k: _sg_x for _sg_k, _sg_x in zip({tuple(names)!r}, ({values})) "
                  f"if _sg_x is not _sg_missing}}",
                  "    _sg_arrays.update(_sg_options)",
                  f"    _sg_v = _sg_call(_sg_arrays, {form!r})",
                  f"    return {returned}"]
        namespace = {"_sg_missing": _MISSING, "_sg_floats": callplan.FLOAT_TYPES, "_sg_unpack": self._ffi.unpack,
                     "_sg_point": self._point, "_sg_call": self._call}
        exec("\n".join(lines), namespace)  # names are checked identifiers; no other user text
        return namespace["kernel_function"]

    def tangent_function(self, option: str, wrt, form: str):
        """A decorator like :meth:`function` for the functions that take tangents: ``jvp``
        (``option="tangents"``, ``form="outputs_and_tangents"``: (outputs and loss, their
        tangents)) and ``hvp`` (``option="v"``, ``form="dict"``: {name: Hessian times v}).

        The tangents come as a dict by the names of ``wrt`` symbols, each of its symbol's shape
        (an input's: one example, or one per example); a name left out has a zero tangent.
        ``option`` may also be given first, by position (a symbol of that name takes the keyword).
        """
        if form not in ("outputs_and_tangents", "dict"):
            raise ValueError(f"unknown form {form!r}")
        primal = sum(1 for a in self.outputs if a.kind != "tangent")
        names = self._results

        def kernel_function(*given, **arrays):
            values = self.call_with(option, wrt, self._tangents_given(option, given, arrays), arrays)
            if form == "dict":
                return dict(zip(names, values))
            return dict(zip(names[:primal], values[:primal])), dict(zip(names[primal:], values[primal:]))

        def decorate(stub):
            for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
                setattr(kernel_function, attribute, getattr(stub, attribute))
            return kernel_function

        return decorate

    def _tangents_given(self, option, given, arrays):
        if len(given) > 1:
            raise ArgumentError(f"pass the {option} dict as the one positional argument and every param and "
                                f"input by name; got {len(given)} positional arguments")
        if given:
            return given[0]
        if option in self.declared or option not in arrays:
            raise ArgumentError(f"{option}= is missing: pass {option}={{name: array}} with a tangent for "
                                f"(some of) the symbols differentiated")
        return arrays.pop(option)

    def call_with(self, option: str, wrt, tangents, arrays) -> list:
        """The results, in result order, of a call with ``arrays`` and the tangents ``tangents``
        ({wrt name: value}) as the kernel arguments ``option[name]``; zeros where left out."""
        if not hasattr(tangents, "items"):
            raise ArgumentError(f"{option} must be a dict {{name: array}} over the symbols differentiated "
                                f"({', '.join(wrt)}); got {type(tangents).__name__}")
        unknown = [name for name in tangents if name not in wrt]
        if unknown:
            raise ArgumentError(f"{option}: {unknown[0]!r} is not among the symbols differentiated; "
                                f"{option} takes: {', '.join(wrt)}")
        if self._out is not None and self._out in arrays:
            raise ArgumentError("out= is not an option of the functions that take tangents")
        arrays = dict(arrays)
        for name in wrt:
            key = f"{option}[{name}]"
            if key in self._names:
                value = tangents.get(name)
                if value is None:
                    shape = self.declared[key][1]
                    value = 0.0 if shape == () else np.zeros(shape, self.dtype)
                arrays[key] = value
            elif tangents.get(name) is not None:
                self._check_unread_tangent(key, name, tangents[name])
        return self._call(arrays, "dict")

    def _check_unread_tangent(self, key, name, value) -> None:
        """Refuse a tangent the kernel does not read (its symbol enters the result linearly or
        not at all) as it would refuse one it reads: real numbers of its symbol's shape."""
        role, shape = self.declared[name]
        arg = callplan.Argument(role, key, shape, role == "input", False, "", "")
        array = callplan.as_array(arg, value, self.dtype)
        callplan.check_integers(arg, array, self.dtype)
        if role == "input":
            callplan._input_form(arg, array.shape)  # raises the shape error
        elif shape == () and (array.size != 1 or array.ndim > 1):
            raise ArgumentShapeError(f"param {key!r} is one number shared by all examples; "
                                     f"got an array of shape {array.shape}")
        elif shape != () and array.shape not in (arg.shape, arg.flat):
            raise ArgumentShapeError(f"param {key!r} must have shape {arg.shape}; got {array.shape}")

    def sweeper(self, option: str, names, arrays):
        """``(run, plan)`` for calls that differ only in the tangent arguments ``option[name]``:
        ``run(name, value)`` returns the results, in result order, of the call with ``arrays``,
        ``value`` as the tangent of ``name`` and zero tangents elsewhere. The call's plan is
        made once, so a Hessian or Jacobian costs one kernel run per sweep and little more.
        ``value`` must have the symbol's declared shape and the kernel's dtype (a float for a
        scalar), as the zeros the plan was made with."""
        arrays = dict(arrays)
        threads, mean_over = (arrays.pop(name, None) if name is not None else None
                              for name in (self._threads, self._mean_over))
        if threads is not None and (type(threads) is not int or threads < 1):
            raise ArgumentError(f"threads must be a whole number >= 1, got {threads!r}")
        if self._out is not None and self._out in arrays:
            raise ArgumentError("out= is not an option of the functions that take tangents")
        positions = {}
        for name in names:
            key = f"{option}[{name}]"
            if key in self._names:
                shape = self.declared[key][1]
                arrays[key] = 0.0 if shape == () else np.zeros(shape, self.dtype)
                positions[name] = next(k for k, a in enumerate(self.symbols) if a.name == key)
        plan, values = self._lookup(*self._values(arrays))
        point = plan.point and mean_over is None
        if point:
            for position in plan.point_checks:
                callplan.check_integers(self.symbols[position], values[position], self.dtype)
        zeros = {position: values[position] for position in positions.values()}
        current = list(values)

        def run(name, value):
            position = positions.get(name)
            if position is not None:
                current[position] = value
            try:
                if point:
                    struct = self._point(*current)  # the results are read while the struct is alive
                    return self._ffi.unpack(struct.v, self._result_count)
                return self._run(plan, current, None, threads or 1, mean_over)
            finally:
                if position is not None:
                    current[position] = zeros[position]

        return run, plan

    def plan(self, arrays: dict) -> callplan.Plan:
        """The :class:`callplan.Plan` a call with these keyword arguments runs (for tests and tools)."""
        arrays = dict(arrays)
        for name in (self._out, self._threads, self._mean_over):
            arrays.pop(name, None)
        if self._columns in arrays:
            arrays.update(self._split_columns(arrays.pop(self._columns), arrays))
        return self._lookup(*self._values(arrays))[0]

    # --- the call ------------------------------------------------------------------------

    def _call(self, arrays, form) -> list:
        """The results, in result order, of a call with keyword ``arrays``."""
        out = threads = mean_over = None
        if len(arrays) != self._count:
            out, threads, mean_over = (arrays.pop(self._out, None), arrays.pop(self._threads, None),
                                       arrays.pop(self._mean_over, None))
            if threads is not None and (type(threads) is not int or threads < 1):
                raise ArgumentError(f"threads must be a whole number >= 1, got {threads!r}")
        if self._columns in arrays:
            arrays.update(self._split_columns(arrays.pop(self._columns), arrays))
        values, extras = self._values(arrays)
        key = callplan.signature(values)
        plan = self._plans.get(key) if extras is None else None
        if plan is None:
            plan, values = self._lookup(values, extras)
        if out is not None:
            out = self._out_list(out, form)
        if plan.point and mean_over is None:
            for position in plan.point_checks:
                callplan.check_integers(self.symbols[position], values[position], self.dtype)
            if out is not None:
                for k, given in enumerate(out):
                    self._out_number(k, given)
            struct = self._point(*values)  # the results are read while the struct is alive
            return self._ffi.unpack(struct.v, self._result_count)
        return self._run(plan, values, out, threads or 1, mean_over)

    def _values(self, arrays):
        """(the values of the symbols the kernel reads, the others as arrays or None)."""
        try:
            values = self._take(arrays)
        except KeyError:
            self._check_names(arrays)
            raise
        if len(arrays) == self._count:
            return values, None
        self._check_names(arrays)
        extras = {}
        for name, value in arrays.items():
            if name not in self._names:  # declared, not read by this kernel
                role, shape = self.declared[name]
                extras[name] = callplan.as_array(callplan.Argument(role, name, shape, True, False, "", ""),
                                                 value, self.dtype)
        return values, extras

    def _lookup(self, values, extras):
        """(the plan of a call with these values, the values as the plan takes them)."""
        if not _PLAIN.issuperset(map(type, values)):  # lists and the like: as arrays first
            values = tuple(v if type(v) in _PLAIN else callplan.as_array(arg, v, self.dtype)
                           for arg, v in zip(self.symbols, values))
        key = callplan.signature(values)
        if extras:
            key += tuple((name, v.dtype, v.shape) for name, v in extras.items())
        plan = self._plans.get(key)
        if plan is None:
            plan = callplan.make_plan(self, values, extras or {})
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[key] = plan
        return plan, values

    def _run(self, plan, values, out, threads, mean_over) -> list:
        """Run the kernel as ``plan`` says; returns the results in result order."""
        n = plan.n
        batch = n if mean_over is None else self._check_mean_over(mean_over, n)
        if batch == 0 and self._mean_results:
            raise ArgumentShapeError(
                "the batch has 0 examples: the mean over no examples is undefined; pass at least one example")
        if plan.converters:
            values = list(values)
            for position, convert in plan.converters:
                values[position] = convert(values[position])
        dtype = self.dtype
        # Every fresh result lives in one block: the numbers first, then the arrays; the kernel gets
        # one pointer into it per result (one allocation and one buffer conversion per call).
        buffers = []  # per result: its offset in ``block``, or the array the kernel writes it into
        fresh = []  # (result, offset, shape) of the arrays in the block
        end = plan.float_count
        for k, (mode, shape) in enumerate(plan.outputs):
            if mode == "float":
                if out is not None:
                    self._out_number(k, out[k])
                buffers.append(shape)
            elif mode == "sum":
                buffers.append(np.empty((n,) + self.outputs[k].shape, dtype))
            elif out is not None and out[k] is not None:
                buffers.append(self._out_array(k, out[k], shape))
            else:
                buffers.append(end)
                fresh.append((k, end, shape))
                end += plan.sizes[k]
        block = np.empty(end, dtype) if end or fresh else None
        if fresh and n > CHUNK:  # slices write into the arrays themselves
            for k, start, shape in fresh:
                buffers[k] = block[start:start + plan.sizes[k]].reshape(shape)
        self._launch(n, batch, values, block, buffers, threads, plan.float_count)
        results = list(buffers)
        for k, start, shape in fresh:
            results[k] = block[start:start + plan.sizes[k]].reshape(shape)
        if plan.float_count:
            numbers = block[:plan.float_count].tolist()
            for k, slot in plan.float_outputs:
                results[k] = numbers[slot]
        for k, (mode, shape) in enumerate(plan.outputs):
            if mode == "sum":  # an input repeated over the batch: its gradient sums over it
                target = None if out is None or out[k] is None else self._out_array(k, out[k], shape)
                total = np.sum(buffers[k], axis=0, out=None if target is None else
                               target.reshape(self.outputs[k].shape))
                results[k] = float(total) if shape == () else target if target is not None else total.reshape(shape)
        return results

    def _launch(self, n, batch, values, block, buffers, threads, float_count) -> None:
        """Run the kernel on n examples (``batch``: the N of means): ``values`` per symbol (C-ordered
        arrays with the batch axis first for inputs, or numbers), into ``buffers``: per result an
        offset into ``block`` (whose first ``float_count`` elements are the numbers), or an array.
        A batch of several slices gets only the numbers as offsets."""
        fb = self._ffi.from_buffer
        pointer = self._pointer
        slices = chunks(n)
        if len(slices) == 1:
            if self._params:
                call = [n, batch] + list(values)
                last = self._last
                for k, v in enumerate(values):
                    if type(v) is _ndarray:
                        seen, converted = last[k]
                        if seen is not v:
                            converted = fb(pointer, v)
                            if k in self._params:
                                last[k] = (v, converted)
                        call[k + 2] = converted
            else:
                call = [n, batch] + [fb(pointer, v) if type(v) is _ndarray else v for v in values]
            base = None if block is None else fb(pointer, block, require_writable=True)
            call += [base + b if type(b) is int else fb(pointer, b, require_writable=True) for b in buffers]
            call.append(self._workspace())
            self._check(self._function(*call))  # ``base`` stays referenced while the kernel runs
            return
        floats = block[:float_count] if float_count else None
        shared = [fb(pointer, v) if type(v) is _ndarray and a.role == "param" else v
                  for a, v in zip(self.symbols, values)]
        reduced = [k for k, (a, b) in enumerate(zip(self.outputs, buffers)) if not a.per_example and type(b) is not int]
        parts = [(None if floats is None else np.empty_like(floats),
                  {k: np.empty_like(buffers[k]) for k in reduced}) for _ in slices]

        def run(index):
            start, end = slices[index]
            call = [end - start, batch]
            for arg, value, fixed in zip(self.symbols, values, shared):
                call.append(fb(pointer, value[start:end]) if arg.role == "input" else fixed)
            part_floats, part_arrays = parts[index]
            base = None if part_floats is None else fb(pointer, part_floats, require_writable=True)
            for k, (arg, b) in enumerate(zip(self.outputs, buffers)):
                if type(b) is int:
                    call.append(base + b)
                else:
                    call.append(fb(pointer, b[start:end] if arg.per_example else part_arrays[k],
                                   require_writable=True))
            call.append(self._workspace())
            return self._function(*call)

        if threads > 1:
            statuses = list(_pool(threads).map(run, range(len(slices))))
        else:
            statuses = [run(index) for index in range(len(slices))]
        for status in statuses:
            self._check(status)
        # Batch sums, added in slice order.
        if floats is not None:
            total = parts[0][0]
            for part, _ in parts[1:]:
                total += part
            floats[...] = total
        for k in reduced:
            total = parts[0][1][k]
            for _, part in parts[1:]:
                total += part[k]
            buffers[k][...] = total

    @staticmethod
    def _check(status) -> None:
        if status != 0:
            raise KernelError(f"the kernel failed: {KERNEL_ERRORS.get(status, f'error code {status}')}")

    def _workspace(self):
        """Scratch memory for this thread, allocated on its first call and kept with the array it lives in."""
        local = self._local
        work = getattr(local, "work", None)
        if work is None:
            local.array = np.empty(max(self.work_size, 1), dtype=self.dtype)
            work = local.work = self._ffi.from_buffer(self._pointer, local.array, require_writable=True)
        return work

    # --- options -------------------------------------------------------------------------

    def _split_columns(self, columns, arrays) -> dict:
        """The scalar inputs given as the columns of one ``inputs=`` array, by name.

        ``columns`` is an (N, k) array whose column j is the j-th of the model's k
        scalar inputs (declaration order), or a length-k vector for one example. It is
        turned once into a C-ordered (k, N) array of the kernel's dtype (no copy when it
        is a Fortran-ordered array of that dtype) whose rows the kernel reads as they
        are, instead of k strided columns converted one by one.
        """
        names = self._scalar_inputs
        array = callplan.as_array(callplan.Argument("input", "inputs", (), True, False, "", ""), columns, self.dtype)
        if not names or array.ndim not in (1, 2) or array.shape[-1] != len(names):
            expected = f"(N, {len(names)}) or ({len(names)},)" if names else "nothing: the model has no scalar inputs"
            raise ArgumentShapeError(f"inputs= takes the model's scalar inputs ({', '.join(names) or 'none'}) as the "
                                     f"columns of one array of shape {expected}; got shape {array.shape}")
        twice = [name for name in names if name in arrays]
        if twice:
            raise ArgumentError(f"input {twice[0]!r} is given twice: by name and as a column of inputs=")
        callplan.check_integers(callplan.Argument("input", "inputs", (), True, False, "", ""), array, self.dtype)
        rows = np.ascontiguousarray(array.T, dtype=self.dtype)
        return dict(zip(names, rows))

    def _check_mean_over(self, mean_over, n) -> int:
        if self._reduce != "mean":
            raise ArgumentError(f"mean_over= is an option of models with reduce='mean'; this model's "
                                f"reduce is {self._reduce!r}")
        try:
            count = operator.index(mean_over) if type(mean_over) is not bool else None
        except TypeError:
            count = None
        if count is None or count < max(n, 1):
            raise ArgumentError(f"mean_over must be a whole number of examples, at least the {n} of this call "
                                f"(and at least 1); got {mean_over!r}")
        return count

    def _out_list(self, out, form) -> list:
        """A call's ``out=`` as one value (or None) per result, in result order.

        ``out`` is what an earlier call returned: for ``form="dict"`` a dict
        of results by name; for ``"loss_and_dict"`` a ``(loss, gradients)``
        pair; for ``"dict_after_loss"`` a dict of every result but the first.
        """
        try:
            if form == "loss_and_dict":
                loss, rest = out
                return [loss, *map(rest.get, self._gradients)]
            if form == "dict_after_loss":
                return [None, *map(out.get, self._gradients)]
            return list(map(out.get, self._results))
        except (TypeError, ValueError, AttributeError):
            raise ArgumentError(
                "out must be what an earlier call of the same function returned "
                "(a dict of arrays, or a (loss, dict) pair for value_and_grad)"
            ) from None

    def _out_array(self, k, given, shape):
        """The ``out=`` array of result k, after checking the kernel can write result k into it as it is."""
        if (type(given) is _ndarray and given.shape == shape and given.dtype == self.dtype
                and given.flags.num & callplan.WRITABLE == callplan.WRITABLE):
            return given
        got = f"{given.shape} of {given.dtype}" if type(given) is _ndarray else type(given).__name__
        raise ArgumentError(f"out: the array for {self.outputs[k].name!r} must be a writable, C-contiguous "
                            f"{self.dtype} array of shape {shape}, as an earlier call with arguments of "
                            f"these shapes returned; got {got}")

    def _out_number(self, k, given) -> None:
        """Check the ``out=`` entry of result k, a number: numbers are returned anew."""
        if given is not None and not isinstance(given, (float, np.floating)):
            self._out_array(k, given, ())  # a 0-d array passes; anything else raises the error naming it

    # --- arguments -------------------------------------------------------------------------

    def _check_names(self, arrays) -> None:
        unknown = [k for k in arrays if k not in self.declared]
        if unknown:
            raise ArgumentError(
                f"unknown argument {unknown[0]!r}; this model takes: {', '.join(sorted(self.declared))}"
            )
        missing = [a for a in self.symbols if a.name not in arrays]
        if missing:
            described = ", ".join(f"{a.name!r} ({a.role}, {callplan.shape_text(a.shape)})" for a in missing)
            raise ArgumentError(f"missing argument{'s' if len(missing) > 1 else ''}: {described}")


# --- Hessians and Jacobians from sweeps of the hvp and jacobian kernels ------------------------


#: The derivative functions a build may lack, and the kernels= entries that give each.
EXTRA_FUNCTIONS = {"jvp": ("jvp",), "hvp": ("hvp",), "hessian": ("hvp", "hessian"), "jacobian": ("jacobian",)}


def missing_attribute(module: str, model: str, name: str) -> AttributeError:
    """The error for ``module.<name>`` that does not exist: for a derivative function the
    build left out, which ``kernels=`` entry of the Model builds it."""
    if name not in EXTRA_FUNCTIONS:
        return AttributeError(f"module {module!r} has no attribute {name!r}")
    asked = " or ".join(repr(k) for k in EXTRA_FUNCTIONS[name])
    return MissingKernelError(f"the model {model!r} was built without {name}(): add {asked} to the kernels=(...) "
                              f"of its Model and rebuild")


def _units(shape, dtype):
    """The unit vectors of a value of ``shape``, in C order, each of that shape (floats for ())."""
    size = int(np.prod(shape, dtype=np.int64))
    for k in range(size):
        if shape == ():
            yield 1.0
        else:
            e = np.zeros(size, dtype)
            e[k] = 1.0
            yield e.reshape(shape)


def _lead(kernel, plan, position) -> tuple:
    """The batch axis (or none) of result ``position`` of a call planned as ``plan``."""
    arg = kernel.outputs[position]
    mode = plan.outputs[position][0]
    return (plan.n,) if arg.per_example and plan.batched and mode != "sum" else ()


def _swap(block, lead: int, first: tuple, second: tuple):
    """``block`` of shape lead + first + second as lead + second + first."""
    a, b = len(first), len(second)
    return np.transpose(block, tuple(range(lead)) + tuple(range(lead + a, lead + a + b))
                        + tuple(range(lead, lead + a)))


def hessian_of(value_and_grad, hvp: Kernel, wrt):
    """A decorator that makes a module's ``hessian`` function (a stub with its docstring):
    ``(loss, grads, H)`` with ``H[a][b]`` of shape ``shape(a) + shape(b)`` (a batch axis first for
    blocks of an input: the examples' blocks, those between different examples being zero).

    One ``hvp`` sweep per element of the ``wrt`` symbols, with a unit vector for v; block
    ``[a][b]`` comes from b's sweeps where that is right for every example, else it is the
    transpose of block ``[b][a]`` (a param's row against an input's column sums over the
    examples), and the Hessian is made symmetric from one triangle.
    """
    wrt = tuple(wrt)
    position = {name: k for k, name in enumerate(hvp._results)}

    def hessian(**arrays):
        loss, grads = value_and_grad(**dict(arrays))
        run, plan = hvp.sweeper("v", wrt, arrays)
        shapes = {name: tuple(hvp.declared[name][1]) for name in wrt}
        leads = {name: _lead(hvp, plan, position[name]) for name in wrt}
        varying = {name: hvp.declared[name][0] == "input" and plan.batched for name in wrt}
        columns = {}
        for b in wrt:
            sweeps = []
            for unit in _units(shapes[b], hvp.dtype):
                values = run(b, unit)
                sweeps.append({a: np.asarray(values[position[a]], dtype=hvp.dtype).reshape(leads[a] + shapes[a])
                               for a in wrt})
            columns[b] = {a: np.stack([s[a] for s in sweeps], axis=-1).reshape(leads[a] + shapes[a] + shapes[b])
                          for a in wrt}

        def right(a, b):  # block [a][b] read from b's sweeps holds every example's own block
            return not (varying[b] and not leads[a])

        H = {a: {} for a in wrt}
        for i, a in enumerate(wrt):
            for b in wrt[i:]:
                if a == b:
                    block = columns[a][a]
                    size = int(np.prod(shapes[a], dtype=np.int64))
                    square = block.reshape(leads[a] + (size, size))
                    square = np.triu(square) + np.swapaxes(np.triu(square, 1), -1, -2)  # the upper triangle, mirrored
                    H[a][a] = square.reshape(block.shape)
                    continue
                if right(a, b):
                    block = columns[b][a]
                    H[a][b], H[b][a] = block, _swap(block, len(leads[a]), shapes[a], shapes[b])
                else:
                    block = columns[a][b]
                    H[b][a], H[a][b] = block, _swap(block, len(leads[b]), shapes[b], shapes[a])
        for a in wrt:
            for b in wrt:
                if H[a][b].shape == ():
                    H[a][b] = float(H[a][b])
        return loss, grads, {a: {b: H[a][b] for b in wrt} for a in wrt}

    def decorate(stub):
        for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(hessian, attribute, getattr(stub, attribute))
        return hessian

    return decorate


def jacobian_of(kernel: Kernel, wrt, rows):
    """A decorator that makes a module's ``jacobian`` function: ``{row: {symbol: array}}`` for every
    output and "loss" (the rows: ``(name, shape)`` pairs) and every ``wrt`` symbol, of shape
    ``(N, *row_shape, *symbol_shape)`` per example (no N for one example). The kernel is a forward
    one (its tangents, one sweep per element of the wrt symbols) or a reverse one (gradients
    weighted by cotangents, one sweep per element of the rows); the module's build chose the one
    with fewer sweeps. A model without inputs runs every sweep as an example of one call."""
    wrt_shapes = {name: tuple(kernel.declared[name][1]) for name in wrt}
    row_shapes = {name: tuple(shape) for name, shape in rows}
    reverse = all(a.kind == "gradient" for a in kernel.outputs)
    option = "cotangents" if reverse else "tangents"
    over, result_shapes = (row_shapes, wrt_shapes) if reverse else (wrt_shapes, row_shapes)
    position = {name: k for k, name in enumerate(kernel._results)}
    batched = all(role == "param" for name, (role, _) in kernel.declared.items() if "[" not in name) and \
        all(a.role == "input" for a in kernel.symbols if "[" in a.name)

    def jacobian(**arrays):
        if batched:
            J = _batched_jacobian(kernel, option, over, result_shapes, arrays, reverse)
        else:
            run, plan = kernel.sweeper(option, over, arrays)
            leads = {a.name: _lead(kernel, plan, k) for k, a in enumerate(kernel.outputs)}
            J = {}
            for name, shape in over.items():
                sweeps = [run(name, unit) for unit in _units(shape, kernel.dtype)]
                for r, k in position.items():
                    lead = leads[r]
                    parts = [np.asarray(s[k], dtype=kernel.dtype).reshape(lead + result_shapes[r]) for s in sweeps]
                    if reverse:  # row ``name``, column ``r``: the sweeps on the row axis
                        J[(name, r)] = np.stack(parts, axis=len(lead)).reshape(lead + shape + result_shapes[r])
                    else:
                        J[(r, name)] = np.stack(parts, axis=-1).reshape(lead + result_shapes[r] + shape)
        out = {}
        for row in row_shapes:
            out[row] = {}
            for b in wrt_shapes:
                block = J.get((row, b))
                if block is None:  # a symbol or row the kernel does not read: zero
                    lead = () if batched else _lead(kernel, plan, 0)
                    block = np.zeros(lead + row_shapes[row] + wrt_shapes[b], kernel.dtype)
                out[row][b] = float(block) if block.shape == () else block
        return out

    def decorate(stub):
        for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(jacobian, attribute, getattr(stub, attribute))
        return jacobian

    return decorate


def _unit_batches(names, shapes, dtype) -> dict:
    """{name: a batch of tangents}: one example per element of all the ``names`` together, the
    unit vector of that element (zeros for the other names)."""
    sizes = {name: int(np.prod(shapes[name], dtype=np.int64)) for name in names}
    total = sum(sizes.values())
    batches, start = {}, 0
    for name in names:
        flat = np.zeros((total, sizes[name]), dtype)
        flat[start:start + sizes[name]] = np.eye(sizes[name], dtype=dtype)
        batches[name] = flat.reshape((total,) + tuple(shapes[name]))
        start += sizes[name]
    return batches


def _segments(names, shapes) -> dict:
    """{name: (start, end)}: the examples of a unit batch that belong to each name."""
    out, start = {}, 0
    for name in names:
        size = int(np.prod(shapes[name], dtype=np.int64))
        out[name] = (start, start + size)
        start += size
    return out


def _batched_jacobian(kernel, option, over, result_shapes, arrays, reverse) -> dict:
    """{(row, symbol): block} of a model without inputs, from one call whose examples are the
    sweeps over ``over`` ({name: shape}); a name the kernel does not read has no sweeps."""
    used = [name for name in over if f"{option}[{name}]" in kernel._names]
    if not used:
        return {}
    batches = _unit_batches(used, over, kernel.dtype)
    values = kernel._call({**arrays, **{f"{option}[{name}]": batches[name] for name in used}}, "dict")
    J = {}
    for name, (start, end) in _segments(used, over).items():
        for r, value in zip(kernel._results, values):
            part = np.asarray(value, dtype=kernel.dtype).reshape((-1,) + result_shapes[r])[start:end]
            if reverse:  # sweep k of row ``name`` holds d row[k] / d r
                J[(name, r)] = part.reshape(over[name] + result_shapes[r])
            else:  # sweep k along element k of ``name`` holds d r / d name[k]
                J[(r, name)] = np.moveaxis(part, 0, -1).reshape(result_shapes[r] + over[name])
    return J


def hessian_from_columns(value_and_grad, columns: Kernel, wrt):
    """A decorator that makes the ``hessian`` function of a model without inputs: ``(loss, grads,
    H)`` as :func:`hessian_of` gives them, from one call of the ``hessian`` kernel whose examples
    are the unit vectors (one column each); symmetric from one triangle, mirrored."""
    wrt = tuple(wrt)
    shapes = {name: tuple(columns.declared[name][1]) for name in wrt}
    segments = _segments(wrt, shapes)
    sizes = {name: end - start for name, (start, end) in segments.items()}
    total = sum(sizes.values())
    batches = _unit_batches(wrt, shapes, columns.dtype)
    names = {name: f"v[{name}]" for name in wrt}
    lower = np.tril_indices(total, -1)

    def hessian(**arrays):
        loss, grads = value_and_grad(**dict(arrays))
        arrays.pop(columns._mean_over, None)  # one example: its mean is itself
        # The v of a symbol the gradient does not depend on is not read: its columns are zero.
        given = {names[name]: batches[name] for name in wrt if names[name] in columns._names}
        if given:
            values = columns._call({**arrays, **given}, "dict")
            flat = np.concatenate([np.asarray(v, dtype=columns.dtype).reshape(total, -1) for v in values], axis=1).T
        else:
            flat = np.zeros((total, total), columns.dtype)
        full = flat.copy()  # row i: gradient element i; column j: unit vector j
        full[lower] = flat.T[lower]  # the lower triangle mirrors the upper one
        H = {}
        for a in wrt:
            ra = segments[a]
            H[a] = {}
            for b in wrt:
                rb = segments[b]
                block = np.ascontiguousarray(full[ra[0]:ra[1], rb[0]:rb[1]]).reshape(shapes[a] + shapes[b])
                H[a][b] = float(block) if block.shape == () else block
        return loss, grads, H

    def decorate(stub):
        for attribute in ("__name__", "__qualname__", "__doc__", "__module__"):
            setattr(hessian, attribute, getattr(stub, attribute))
        return hessian

    return decorate
