"""Flat-vector calls: a module's kernels over one float64 vector theta, with the data bound once.

Optimizers (``scipy.optimize`` and most others) speak in one flat vector of
unknowns. :class:`Flat` binds a generated module's data (every symbol that
is not differentiated) once, and then calls the C wrappers of
``<model>_flat.c`` with theta as one pointer: no keyword dictionaries, no
per-symbol conversions, one pointer in and one array out per call.

Layout of theta: the ``wrt`` symbols of the model in ``wrt`` order, each in
C order (row by row) within its matrix (:func:`theta_layout`). The same
layout holds for gradients, Hessian-vector products and the tangent ``v``;
a dense Hessian is ``(len(theta), len(theta))`` and the Jacobian of an
output is ``(N * output size, len(theta))`` with the rows of example 0
first.

This file is copied into every generated package as ``_flatcall.py`` (with
``_runtime.py`` and ``_callplan.py``); it needs only NumPy and cffi. The
code generator (``symgrad.flat``) reads the same layout functions, so the C
wrappers and these calls agree on where every number goes.

A :class:`Flat` keeps one scratch area for its calls: use one per thread.
"""

from __future__ import annotations

import numpy as np

try:  # in a generated package, where this file is _flatcall.py
    from . import _callplan as callplan
    from . import _runtime as runtime
except ImportError:  # symgrad.flatcall
    from . import callplan, runtime

ArgumentError = callplan.ArgumentError
ArgumentShapeError = callplan.ArgumentShapeError
ArgumentDtypeError = callplan.ArgumentDtypeError

#: Kernel kinds that get a flat wrapper ``<kernel>_flat``; the dense Hessian comes from the hvp
#: kernel (``<model>_hessian_flat``), the dense Jacobian from the jacobian kernel
#: (``<model>_jacobian_dense``).
FLAT_KINDS = ("forward", "value_and_grad", "hvp", "jacobian")
#: The prefixes of the tangent arguments of the derivative kernels (symgrad.forward names them).
TANGENT_PREFIXES = ("v[", "tangents[", "cotangents[")

#: The error code of <model>_loss_flat for a model with one loss per example and several examples
#: (SG_ERROR_FLAT_LOSS of flat.c.j2; Python asks for no such loss).
LOSS_ERROR = 100

_ndarray = np.ndarray
_FLOAT64 = np.dtype(np.float64)


def size_of(shape) -> int:
    size = 1
    for d in shape:
        size *= int(d)
    return size


def theta_layout(wrt, declared) -> tuple:
    """``([(name, offset, shape), ...], total size)`` of theta: the ``wrt`` symbols in order,
    each in C order; ``declared`` maps a symbol's name to ``(role, shape)``."""
    layout, offset = [], 0
    for name in wrt:
        shape = tuple(declared[name][1])
        layout.append((name, offset, shape))
        offset += size_of(shape)
    return layout, offset


def is_tangent(name: str) -> bool:
    """Whether a kernel argument is a tangent of a derivative kernel (``v[x]``, ``tangents[x]``...)."""
    return name.startswith(TANGENT_PREFIXES)


def tangent_of(name: str) -> str:
    """``x`` of the tangent argument ``v[x]``."""
    return name[name.index("[") + 1:-1]


def result_places(kind: str, results) -> list:
    """Where the flat wrapper of a ``kind`` kernel writes each result (kernel result order):
    ``(place, per-example elements before it, fixed elements before it)``, with place
    ``"value"`` (the loss: the wrapper's ``value`` argument) or ``"out"`` (its ``out``
    argument). A result holds n x its size when it is per example (n: examples bound),
    else its size; the results of a place follow each other in result order, so that the
    offset of a result is ``n * (per-example elements before) + (fixed elements before)``."""
    before = {"value": [0, 0], "out": [0, 0]}
    places = []
    for r in results:
        place = "value" if r.kind == "loss" and kind in ("forward", "value_and_grad") else "out"
        counts = before[place]
        places.append((place, counts[0], counts[1]))
        counts[0 if r.per_example else 1] += size_of(r.shape)
    return places


def place_size(kind: str, results, place: str, n: int) -> int:
    """Elements of the ``value`` or ``out`` array a ``kind`` wrapper writes for n examples."""
    total = 0
    for r, (where, _, _) in zip(results, result_places(kind, results)):
        if where == place:
            total += size_of(r.shape) * (n if r.per_example else 1)
    return total


def partial_size(kernels_results) -> int:
    """Elements of the struct's ``partial`` array: the batch sums of one slice of the largest kernel."""
    return max([sum(size_of(r.shape) for r in results if not r.per_example) for results in kernels_results] + [1])


def jacobian_rows(symbols, results) -> tuple:
    """``(mode, [(row name, row size), ...])`` of a jacobian kernel: ``"forward"`` (its results
    are the rows' tangents, one column per sweep) or ``"reverse"`` (its cotangent arguments
    are the rows, one row per sweep), and the rows (the outputs and the loss) in the order of
    the dense Jacobians of ``<model>_jacobian_dense``."""
    cotangents = [a for a in symbols if a.name.startswith("cotangents[")]
    if cotangents:
        return "reverse", [(tangent_of(a.name), size_of(a.shape)) for a in cotangents]
    return "forward", [(r.name, size_of(r.shape)) for r in results]


def jacobian_spare_size(mode: str, rows, theta_size: int, n: int) -> int:
    """Elements of the struct's ``spare`` array the dense Jacobian needs for n examples: the
    rows' values of one forward sweep; or the cotangents and the gradients of one reverse sweep."""
    row_total = sum(size for _, size in rows)
    return n * row_total + (n * theta_size if mode == "reverse" else 0)


class Flat:
    """A module's kernels as functions of one flat vector theta, with ``data`` bound once.

    ``data`` gives every param and input that is not differentiated (not in the
    module's ``WRT``), as the module's functions take them; they are checked and
    converted here, once (later changes to the arrays given are not seen: bind
    again). theta holds the ``WRT`` symbols (:func:`theta_layout`).
    """

    def __init__(self, module, data):
        self.module = module
        self._ffi, self._lib = module._ffi, module._lib
        if np.dtype(module.DTYPE) != _FLOAT64:
            raise ArgumentDtypeError(f"flat-vector calls need a float64 build; the module {module.MODEL!r} is "
                                     f"{module.DTYPE}: build it without --dtype float32")
        self.declared = dict(module._DECLARED)
        self.wrt = tuple(module.WRT)
        self.layout, self.size = theta_layout(self.wrt, self.declared)
        self.shape = (self.size,)
        self.kernels = {kind: getattr(module, f"_{kind}") for kind in FLAT_KINDS
                        if getattr(module, f"_{kind}", None) is not None}
        first = next(iter(self.kernels.values()))._function.__name__
        self.prefix = first[:-len("_forward")]
        self._check_data(data)
        self.n, values = self._bind(dict(data))
        self._keep = []  # every array and cdata the struct points into
        self.struct = self._ffi.new(f"struct {self.prefix}_flat_data *")
        self.struct.n = self.struct.batch = self.n
        self.arrays = {}  # name -> the array the struct reads the symbol from
        for index, name in enumerate(self.declared):
            if name in values:
                value = values[name]
                array = np.array(value if type(value) is _ndarray else [value], dtype=np.float64, order="C")  # a copy
                self.arrays[name] = array
                self.struct.symbol[index] = self._pointer(array)
        results = [k.outputs for k in self.kernels.values()]
        self.struct.partial = self._pointer(np.zeros(partial_size(results)))
        self.columns = getattr(module, "_hessian", None)  # the hessian kernel of a model without inputs
        if self.columns is not None:
            self.kernels["hessian"] = self.columns
        unit = 2 * self.size * self.size if self.columns is not None else self.size
        self.struct.unit = self._pointer(np.zeros(max(unit, 1)))
        self.struct.work = self._pointer(np.zeros(max(k.work_size for k in self.kernels.values()) + 1))
        self._spare = None

    # --- binding ---------------------------------------------------------------------------

    def _check_data(self, data) -> None:
        if not hasattr(data, "items"):
            raise ArgumentError(f"data must be a dict {{name: array}}; got {type(data).__name__}")
        for name in data:
            if name not in self.declared:
                raise ArgumentError(f"data names {name!r}, which the model {self.module.MODEL!r} does not declare; "
                                    f"it takes: {', '.join(self.declared)}")
            if name in self.wrt:
                raise ArgumentError(f"data names {name!r}, which is differentiated (in WRT) and so is part of "
                                    f"theta; give its starting value with the other unknowns, not in data")
        missing = [n for n in self.declared if n not in self.wrt and n not in data]
        if missing:
            described = ", ".join(f"{n!r} ({self.declared[n][0]}, {callplan.shape_text(self.declared[n][1])})"
                                  for n in missing)
            raise ArgumentError(f"data is missing {described}: every symbol outside theta "
                                f"({', '.join(self.wrt)}) must be bound")

    def _bind(self, data) -> tuple:
        """(examples, {name: the value C reads}) of the data, checked by each kernel's call plan."""
        stand_ins = {name: (0.0 if shape == () else np.zeros(shape)) for name, _, shape in self.layout}
        values, n = {}, None
        for kernel in self.kernels.values():
            arrays = dict(data)
            arrays.update((k, v) for k, v in stand_ins.items() if k in kernel.declared)
            for a in kernel.symbols:  # tangents: one example, so that the data alone set the batch
                if is_tangent(a.name):
                    arrays[a.name] = 0.0 if a.shape == () else np.zeros(a.shape)
            given, extras = kernel._values(arrays)
            plan, given = kernel._lookup(given, extras)
            given = list(given)
            for position, convert in plan.converters:
                given[position] = convert(given[position])
            for a, value in zip(kernel.symbols, given):
                if a.name in data and a.name not in values:
                    values[a.name] = value
            n = plan.n if n is None else n
        if n == 0:
            raise ArgumentShapeError("data holds 0 examples; an objective needs at least one")
        inputs = [name for name in self.wrt if self.declared[name][0] == "input"]
        if inputs and n != 1:
            raise ArgumentShapeError(f"theta holds the input {inputs[0]!r} (it is in WRT), which is one example, "
                                     f"but data holds {n} examples; bind one example, or differentiate "
                                     f"params only")
        return n, values

    def _pointer(self, array):
        self._keep.append(array)
        pointer = self._ffi.from_buffer("double *", array, require_writable=True)
        self._keep.append(pointer)
        return pointer

    def spare(self):
        """The struct's ``spare`` array (what the dense Jacobian needs), allocated on first use."""
        if self._spare is None:
            kernel = self.kernels["jacobian"]
            mode, rows = jacobian_rows(kernel.symbols, kernel.outputs)
            self._spare = np.zeros(max(jacobian_spare_size(mode, rows, self.size, self.n), 1))
            self.struct.spare = self._pointer(self._spare)
        return self._spare

    # --- theta -----------------------------------------------------------------------------

    def check(self, theta, what="theta"):
        """``theta`` as a C-contiguous float64 vector of the layout's length (converted if it can
        be without loss), or an error naming what is wrong."""
        if type(theta) is not _ndarray:
            if theta is None or isinstance(theta, (str, bytes, dict)):
                raise ArgumentError(f"{what} must be a 1-D array of {self.size} floats; got {type(theta).__name__}")
            theta = np.asarray(theta)
        if theta.dtype.kind not in "biuf":
            raise ArgumentDtypeError(f"{what} has dtype {theta.dtype}; expected {self.size} real numbers "
                                     f"(float64)")
        if theta.shape != self.shape:
            raise ArgumentShapeError(
                f"{what} has shape {theta.shape}; expected ({self.size},): " + self.describe())
        if theta.dtype.kind in "iu":
            callplan.check_integers(callplan.Argument("param", what, (), False, False, "", ""), theta, _FLOAT64)
        return np.ascontiguousarray(theta, dtype=np.float64)

    def describe(self) -> str:
        """The layout of theta in words: ``x[0:100] (100x1)``."""
        return ", ".join(f"{name} at [{offset}:{offset + size_of(shape)}] ({callplan.shape_text(shape)})"
                         for name, offset, shape in self.layout)

    def pack(self, values) -> np.ndarray:
        """theta from ``{name: value}`` over the WRT symbols (each of its shape)."""
        if not hasattr(values, "items"):
            raise ArgumentError(f"pack takes a dict {{name: value}} over {', '.join(self.wrt)}; "
                                f"got {type(values).__name__}")
        unknown = [k for k in values if k not in self.wrt]
        if unknown:
            raise ArgumentError(f"{unknown[0]!r} is not a differentiated symbol of {self.module.MODEL!r}; theta holds "
                                f"{', '.join(self.wrt)}" + (" (put the others in data)" if unknown[0] in self.declared
                                                            else ""))
        missing = [k for k in self.wrt if k not in values]
        if missing:
            raise ArgumentError(f"missing a value for {', '.join(map(repr, missing))}: theta holds {self.describe()}")
        theta = np.empty(self.size)
        for name, offset, shape in self.layout:
            value = np.asarray(values[name])
            if value.dtype.kind not in "biuf":
                raise ArgumentDtypeError(f"{name!r} has dtype {value.dtype}; expected real numbers")
            length = callplan.vector_length(shape)
            if value.shape != shape and not (length is not None and value.shape == (length,)):
                raise ArgumentShapeError(f"{name!r} must have shape {shape}; got {value.shape}")
            theta[offset:offset + size_of(shape)] = value.reshape(-1)
        return theta

    def unpack(self, theta) -> dict:
        """``{name: value}`` of theta: floats for scalars, arrays (copies) of their declared shapes."""
        theta = self.check(theta)
        out = {}
        for name, offset, shape in self.layout:
            block = theta[offset:offset + size_of(shape)]
            out[name] = float(block[0]) if shape == () else block.reshape(shape).copy()
        return out

    # --- the calls -------------------------------------------------------------------------

    def kernel(self, kind: str):
        try:
            return self.kernels[kind]
        except KeyError:
            raise ArgumentError(f"the module {self.module.MODEL!r} has no {kind} kernel") from None

    def wrapper(self, kind: str):
        """The C function ``<kernel>_flat`` (or ``<model>_hessian_flat``, ``<model>_jacobian_dense``)."""
        if kind == "hessian":
            return getattr(self._lib, f"{self.prefix}_hessian_flat")
        if kind == "jacobian_dense":
            return getattr(self._lib, f"{self.prefix}_jacobian_dense")
        return getattr(self._lib, f"{self.kernel(kind)._function.__name__}_flat")

    def jacobian_rows(self) -> tuple:
        kernel = self.kernel("jacobian")
        return jacobian_rows(kernel.symbols, kernel.outputs)

    def _locals(self) -> tuple:
        """What every flat function keeps in its closure: the calls look up nothing."""
        return self._ffi.from_buffer, self.check, self.size, self.struct, self._ffi.NULL

    @staticmethod
    def raise_status(status) -> None:
        errors = {**runtime.KERNEL_ERRORS, LOSS_ERROR: "one loss per example and several examples: no one value"}
        raise runtime.KernelError(f"the kernel failed: {errors.get(status, f'error code {status}')}")

    def value_function(self):
        """``f(theta) -> float``: the loss (reduced over the data), from the forward kernel through
        ``<model>_loss_flat``, which returns it as a number."""
        kernel = self.kernel("forward")
        outputs = kernel.outputs
        if not any(r.kind == "loss" for r in outputs):
            raise ArgumentError(f"the model {self.module.MODEL!r} has no loss")
        self._require_scalar_loss(kernel)
        results = np.zeros(max(place_size("forward", outputs, "out", self.n), 1))
        self.struct.results = self._pointer(results)
        call, (fb, check, size, struct, _) = getattr(self._lib, f"{self.prefix}_loss_flat"), self._locals()
        fail = self.raise_status

        def f(theta):
            try:
                if theta.dtype is not _FLOAT64 or theta.ndim != 1 or theta.size != size:
                    theta = check(theta)
                pointer = fb("double *", theta)
            except (AttributeError, ValueError):  # not an array, or not C-contiguous
                pointer = fb("double *", check(theta))
            value = call(pointer, struct)
            if value != value and struct.status:  # NaN: a kernel error, or the loss's own NaN
                fail(struct.status)
            return value

        return f

    def _require_scalar_loss(self, kernel) -> None:
        loss = next(r for r in kernel.outputs if r.kind == "loss")
        if loss.per_example and self.n != 1:
            raise ArgumentShapeError(f"the model {self.module.MODEL!r} has reduce=None (one loss per example) and "
                                     f"data holds {self.n} examples, so there is no one value to minimize; build it "
                                     f"with reduce='sum' or 'mean', or bind one example")

    def gradient_function(self, with_value: bool):
        """``g(theta) -> gradient`` (or ``-> (value, gradient)``), from the value_and_grad kernel."""
        kernel = self.kernel("value_and_grad")
        self._require_scalar_loss(kernel)
        self._check_order(kernel, "value_and_grad")
        call, (fb, check, size, struct, null) = self.wrapper("value_and_grad"), self._locals()
        value = self._ffi.new("double[1]")
        empty, fail = np.empty, self.raise_status

        if with_value:
            def g(theta):
                try:
                    if theta.dtype is not _FLOAT64 or theta.ndim != 1 or theta.size != size:
                        theta = check(theta)
                    pointer = fb("double *", theta)
                except (AttributeError, ValueError):  # not an array, or not C-contiguous
                    pointer = fb("double *", check(theta))
                out = empty(size)
                status = call(pointer, null, struct, value, fb("double *", out))
                if status:
                    fail(status)
                return value[0], out
        else:
            def g(theta):
                try:
                    if theta.dtype is not _FLOAT64 or theta.ndim != 1 or theta.size != size:
                        theta = check(theta)
                    pointer = fb("double *", theta)
                except (AttributeError, ValueError):  # not an array, or not C-contiguous
                    pointer = fb("double *", check(theta))
                out = empty(size)
                status = call(pointer, null, struct, value, fb("double *", out))
                if status:
                    fail(status)
                return out

        return g

    def _check_order(self, kernel, kind) -> None:
        """The gradients of the kernel, in result order, are theta's layout (never otherwise: the
        reverse pass returns them in wrt order); checked once, since the flat results rely on it."""
        names = [r.name for r in kernel.outputs if r.kind == "gradient"]
        if names != list(self.wrt) or any(r.per_example and self.n != 1 for r in kernel.outputs
                                          if r.kind == "gradient"):
            raise ArgumentShapeError(f"the {kind} kernel's gradients ({', '.join(names)}) are not one value per "
                                     f"symbol of theta ({', '.join(self.wrt)}): per-example gradients "
                                     f"(reduce=None) need one example bound")

    def hvp_function(self):
        """``h(theta, v) -> Hessian(theta) @ v`` from the hvp kernel."""
        kernel = self.kernel("hvp")
        self._check_order(kernel, "hvp")
        call, (fb, check, size, struct, null) = self.wrapper("hvp"), self._locals()
        empty, fail = np.empty, self.raise_status

        def h(theta, v):
            try:
                if theta.dtype is not _FLOAT64 or theta.ndim != 1 or theta.size != size:
                    theta = check(theta)
                pointer = fb("double *", theta)
            except (AttributeError, ValueError):  # not an array, or not C-contiguous
                pointer = fb("double *", check(theta))
            try:
                if v.dtype is not _FLOAT64 or v.ndim != 1 or v.size != size:
                    v = check(v, "v")
                v_pointer = fb("double *", v)
            except (AttributeError, ValueError):  # not an array, or not C-contiguous
                v_pointer = fb("double *", check(v, "v"))
            out = empty(size)
            status = call(pointer, v_pointer, struct, null, fb("double *", out))
            if status:
                fail(status)
            return out

        return h

    def hessian_function(self):
        """``H(theta) -> (n, n) array``: one call of the hessian kernel (a model without inputs) or one
        hvp sweep per element of theta, symmetric from one triangle."""
        if self.columns is None:
            self._check_order(self.kernel("hvp"), "hvp")
        call, (fb, check, size, struct, _) = self.wrapper("hessian"), self._locals()
        empty, fail = np.empty, self.raise_status

        def H(theta):
            try:
                if theta.dtype is not _FLOAT64 or theta.ndim != 1 or theta.size != size:
                    theta = check(theta)
                pointer = fb("double *", theta)
            except (AttributeError, ValueError):  # not an array, or not C-contiguous
                pointer = fb("double *", check(theta))
            out = empty((size, size))
            status = call(pointer, struct, fb("double *", out))
            if status:
                fail(status)
            return out

        return H

    def outputs_function(self):
        """``o(theta) -> {output: array}``: the outputs of every example (the forward kernel), each of
        shape ``(N, *shape)``, views of one fresh array."""
        kernel = self.kernel("forward")
        results = kernel.outputs
        places = result_places("forward", results)
        n = self.n
        total = max(place_size("forward", results, "out", n), 1)
        slices = {}
        for r, (where, per, fixed) in zip(results, places):
            if where == "out":
                start = n * per + fixed
                rows = n if r.per_example else 1
                slices[r.name] = (start, start + rows * size_of(r.shape), (rows,) + tuple(r.shape))
        call, (fb, check, size, struct, null) = self.wrapper("forward"), self._locals()
        value = self._ffi.new("double[]", max(place_size("forward", results, "value", n), 1))
        fail = self.raise_status

        def o(theta):
            try:
                if theta.dtype is not _FLOAT64 or theta.ndim != 1 or theta.size != size:
                    theta = check(theta)
                pointer = fb("double *", theta)
            except (AttributeError, ValueError):  # not an array, or not C-contiguous
                pointer = fb("double *", check(theta))
            out = np.empty(total)
            status = call(pointer, null, struct, value, fb("double *", out))
            if status:
                fail(status)
            return {name: out[a:b].reshape(s) for name, (a, b, s) in slices.items()}

        return o

    def jacobian_function(self, only=None):
        """``J(theta) -> {row: (N * row size, len(theta)) array}`` for every output and the loss (or
        the rows named in ``only``), from the jacobian kernel's sweeps (views of one fresh array).
        Reverse sweeps are made only for the rows asked for."""
        mode, rows = self.jacobian_rows()
        names = [name for name, _ in rows]
        wanted = names if only is None else [name for name in names if name in only]
        skip = sum(1 << r for r, name in enumerate(names) if name not in wanted and r < 63)
        n, size = self.n, self.size
        self.spare()
        slices, start = {}, 0
        for name, row_size in rows:
            slices[name] = (start, start + n * row_size * size, (n * row_size, size))
            start += n * row_size * size
        call, (fb, check, size, struct, _) = self.wrapper("jacobian_dense"), self._locals()
        fail = self.raise_status

        def J(theta):
            try:
                if theta.dtype is not _FLOAT64 or theta.ndim != 1 or theta.size != size:
                    theta = check(theta)
                pointer = fb("double *", theta)
            except (AttributeError, ValueError):  # not an array, or not C-contiguous
                pointer = fb("double *", check(theta))
            out = np.empty(max(start, 1))
            struct.skip = skip
            status = call(pointer, struct, fb("double *", out))
            if status:
                fail(status)
            return {name: out[a:b].reshape(s) for name, (a, b, s) in slices.items() if name in wanted}

        return J
