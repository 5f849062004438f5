"""Fused training from Python: ``sgd_step`` and ``train_epoch`` of a generated package.

This file is copied verbatim into every generated package as ``_train.py``
(next to ``_runtime.py``); it needs only NumPy and cffi. It checks the
arguments, makes the permutation of a shuffled epoch and the optimizer
state, and calls the package's ``<model>_train`` C function (see
:mod:`symgrad.train`), which runs the minibatches and updates in C.

What an epoch computes is this NumPy loop over ``value_and_grad``, operation
for operation (so the params agree to the bit)::

    order = np.random.default_rng(seed).permutation(n)      # shuffle=seed (None: range(n))
    for start in range(0, n, batch_size):                    # the last minibatch may be smaller
        idx = order[start:start + batch_size]
        loss, g = value_and_grad(**params, **{k: v[idx] for k, v in data.items()})
        t += 1
        for name in trained:
            p, g = params[name], g[name]
            # sgd:      p -= lr * g
            # momentum: v = momentum * v + g;  p -= lr * v
            # adam:     m = beta1 * m + (1 - beta1) * g
            #           v = beta2 * v + (1 - beta2) * (g * g)
            #           p -= (lr / (1 - beta1 ** t)) * (m / (np.sqrt(v) / math.sqrt(1 - beta2 ** t) + eps))

(``momentum`` is PyTorch's SGD with momentum and no dampening; ``adam``
follows PyTorch's Adam.) Every operation is in the kernel's precision, with
the gradients as arrays of it: value_and_grad returns a scalar's gradient as
a Python float, and in a float32 build a loop that multiplies two of those
(adam's ``g * g``) would do it in double, so such a loop agrees with the
epoch only after ``g = np.float32(g)``. The optimizer state lives in arrays the caller
owns: ``train_epoch`` makes a dict on first use, ``{"optimizer": name,
"step": t, "velocity" | "m", "v": {param: array}}``, updates it in place and
returns it; pass it back for the next epoch.
"""

from __future__ import annotations

import math
import numbers
import threading

import numpy as np

try:  # in a generated package
    from . import _callplan as callplan
    from . import _runtime as runtime
except ImportError:  # symgrad.train_runtime
    from . import callplan, runtime

ArgumentError = callplan.ArgumentError
ArgumentShapeError = callplan.ArgumentShapeError
ArgumentDtypeError = callplan.ArgumentDtypeError

#: The optimizers, in the order of the C function's codes, and the arrays of state each keeps per param.
OPTIMIZERS = ("sgd", "momentum", "adam")
STATE_SLOTS = {"sgd": (), "momentum": ("velocity",), "adam": ("m", "v")}

_ndarray = np.ndarray


def _number(what: str, value, *, low=None, high=None, high_open=False) -> float:
    """``value`` as a float, after checking it is a finite real number in its range."""
    if type(value) is not float or not math.isfinite(value):
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ArgumentError(f"{what} must be a finite real number; got {value!r}")
        value = float(value)
    if (low is not None and value < low) or (high is not None and (value >= high if high_open else value > high)):
        interval = f"[{low}, {high})" if high_open else f">= {low}"
        raise ArgumentError(f"{what} must be {'in ' if high_open else ''}{interval}; got {value!r}")
    return value


class Trainer:
    """The training kernel of a package, with the calls around it."""

    def __init__(self, ffi, function, work_size, *, dtype, params, inputs, declared, model):
        self._ffi = ffi
        self._function = function
        self._work_size = work_size
        self.dtype = np.dtype(dtype)
        self.model = model
        self.declared = dict(declared)
        # (name, trained, declared shape) in the order of the C function's params array
        self.params = [(name, trained, tuple(self.declared[name][1])) for name, trained in params]
        # the shapes a trained param's array may have: its own, a vector's 1-D form; () or (1,) for a scalar
        self._shapes = [((), (1,)) if shape == () else
                        (shape, callplan.Argument("param", name, shape, False, False, "", "").flat)
                        for name, _, shape in self.params]
        self.trained = [name for name, trained, _ in self.params if trained]
        self.inputs = [callplan.Argument("input", name, self.declared[name][1], True, False, "", "")
                       for name in inputs]
        self._real = "float" if self.dtype == np.float32 else "double"
        self._pointer = self._real + " *"
        self._pointer_array = self._real + " *[]"
        self._local = threading.local()
        self._arguments = {}  # input name -> callplan.Argument, made on first use
        # the per-example shapes of an input given as a batch: declared, or a vector's 1-D form
        self._batch_tails = [(a.shape, a.flat) for a in self.inputs]

    # --- the functions of a generated module --------------------------------------------

    def sgd_step(self, params, lr, batch) -> float:
        """One SGD step on ``batch``: ``p -= lr * g`` for every trained param, in place; the loss."""
        lr = _number("lr", lr)
        inputs, n = self._data(batch, "batch")
        buffers, numbers_back = self._params(params)
        losses, done, status = self._run(n, n, None, 0, (lr, 0.0, 0.0, 0.0, 0.0), 0, buffers, inputs, [])
        self._finish(params, buffers, numbers_back, status)
        return float(losses[0])

    def train_epoch(self, params, data, batch_size, lr, optimizer, shuffle, state, momentum, beta1, beta2,
                    eps):
        """One epoch of minibatches (see the module docstring); returns (losses, state)."""
        if optimizer not in OPTIMIZERS:
            raise ArgumentError(f"unknown optimizer {optimizer!r}; choose one of "
                                f"{', '.join(map(repr, OPTIMIZERS))}")
        lr = _number("lr", lr)
        hyper = (lr, _number("momentum", momentum, low=0.0), _number("beta1", beta1, low=0.0, high=1.0, high_open=True),
                 _number("beta2", beta2, low=0.0, high=1.0, high_open=True), _number("eps", eps, low=0.0))
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ArgumentError(f"batch_size must be a whole number >= 1; got {batch_size!r}")
        if not isinstance(data, dict):
            names = ", ".join(a.name for a in self.inputs)
            raise ArgumentError(f"data must be a dict of the inputs' arrays ({names}), "
                                f"examples along the first axis; got {type(data).__name__}")
        inputs, n = self._data(data, "data")
        order = self._order(shuffle, n)
        buffers, numbers_back = self._params(params)
        state = self._state(state, optimizer, buffers)
        slots = [state[slot][name] for slot in STATE_SLOTS[optimizer] for name in self.trained]
        losses, done, status = self._run(n, int(batch_size), order, OPTIMIZERS.index(optimizer), hyper,
                                         state["step"], buffers, inputs, slots)
        state["step"] += done
        self._finish(params, buffers, numbers_back, status)
        return losses, state

    # --- the call ------------------------------------------------------------------------

    def _run(self, n, batch_size, order, optimizer, hyper, step, buffers, inputs, slots):
        """Run the C function; (losses, minibatches done, status)."""
        ffi, fb, pointer = self._ffi, self._ffi.from_buffer, self._pointer
        batch_size = min(batch_size, n)  # the scratch memory is laid out for it
        steps = -(-n // batch_size)
        local = self._local
        if getattr(local, "hyper", None) is None:  # per thread: the small arrays every call passes
            local.hyper, local.done = ffi.new("double[5]"), ffi.new("int64_t *")
        hyper_c, done = local.hyper, local.done
        hyper_c[0:5] = hyper
        losses = np.empty(steps, self.dtype)
        keep = self._param_pointers(buffers)
        keep_inputs = [fb(pointer, x) for x in inputs]
        keep_state = [fb(pointer, s, require_writable=True) for s in slots]
        if slots:
            written = [(c, b.nbytes) for c, b, (_, trained, _) in zip(keep[1], buffers, self.params) if trained]
            self._check_disjoint(written + [(c, s.nbytes) for c, s in zip(keep_state, slots)])
        status = self._function(
            n, batch_size, ffi.NULL if order is None else fb("int64_t *", order), optimizer, hyper_c, step,
            keep[0], ffi.new(self._pointer_array, keep_inputs), ffi.new(self._pointer_array, keep_state or 1),
            fb(pointer, losses, require_writable=True), done, self._workspace(batch_size, order is not None))
        return losses, int(done[0]), status

    def _param_pointers(self, buffers):
        """(the C array of the params' pointers, their pointers): made again only when the arrays are not
        those of the thread's previous call (a training loop passes the same ones), and then checked for
        trained params that share memory."""
        local = self._local
        last = getattr(local, "params", None)
        if last is not None and len(last[0]) == len(buffers) and all(a is b for a, b in zip(last[0], buffers)):
            return last[1]
        fb, pointer = self._ffi.from_buffer, self._pointer
        keep = [fb(pointer, b, require_writable=trained) for b, (_, trained, _) in zip(buffers, self.params)]
        written = [(c, b.nbytes) for c, b, (_, trained, _) in zip(keep, buffers, self.params) if trained]
        if len(written) > 1:
            self._check_disjoint(written)
        made = (self._ffi.new(self._pointer_array, keep), keep)
        local.params = (list(buffers), made)
        return made

    def _finish(self, params, buffers, numbers_back, status) -> None:
        """Write the new values of params given as numbers back into the dict; raise a kernel error."""
        for name, position in numbers_back:
            params[name] = float(buffers[position])
        if status != 0:
            why = runtime.KERNEL_ERRORS.get(status, f"error code {status}")
            raise runtime.KernelError(f"the kernel failed: {why}; the params hold the updates of the "
                                      f"minibatches before the one that failed")

    def _workspace(self, batch_size, shuffled):
        """Scratch memory for this thread, kept and grown as minibatches need."""
        local = self._local
        if getattr(local, "for_batch", None) == (batch_size, shuffled):
            return local.work
        size = max(int(self._work_size(batch_size, 1 if shuffled else 0)), 1)
        local.for_batch = (batch_size, shuffled)
        if getattr(local, "size", 0) < size:
            local.array = np.empty(size, self.dtype)
            local.size = size
            local.work = self._ffi.from_buffer(self._pointer, local.array, require_writable=True)
        return local.work

    # --- arguments -------------------------------------------------------------------------

    def _params(self, params):
        """(one array per param of the C function, [(name, position)] of params given as numbers)."""
        if not isinstance(params, dict):
            names = ", ".join(n for n, _, _ in self.params)
            raise ArgumentError(f"params must be a dict of the params' arrays ({names}), "
                                f"updated in place; got {type(params).__name__}")
        for name in params:
            role = self.declared.get(name, (None,))[0]
            if role != "param":
                fix = ("it is an input: pass it with the data" if role == "input" else
                       f"the params of {self.model!r} are: "
                       f"{', '.join(n for n, (r, _) in self.declared.items() if r == 'param')}")
                raise ArgumentError(f"params: unknown param {name!r}; {fix}")
        missing = [name for name, _, _ in self.params if name not in params]
        if missing:
            raise ArgumentError(f"params: missing {', '.join(map(repr, missing))} (every param the loss reads "
                                f"or that is trained must be in the dict)")
        buffers, numbers_back = [], []
        for position, (name, trained, shape) in enumerate(self.params):
            value = params[name]
            if trained:
                if (type(value) is _ndarray and value.dtype == self.dtype and value.shape in self._shapes[position]
                        and value.flags.num & callplan.WRITABLE == callplan.WRITABLE):
                    buffers.append(value)  # as the kernel updates it: nothing to check further
                    continue
                buffers.append(self._trained(name, value, shape, self._shapes[position]))
                if buffers[-1] is not value:  # a number: its new value goes back into the dict
                    numbers_back.append((name, position))
            else:
                arg = callplan.Argument("param", name, shape, False, False, "", "")
                array = callplan.as_array(arg, value, self.dtype)
                if array.shape not in (((), (1,)) if shape == () else (shape, arg.flat)):
                    raise ArgumentShapeError(f"param {name!r} must have shape {shape}; got {array.shape}")
                callplan.check_integers(arg, array, self.dtype)
                buffers.append(np.ascontiguousarray(array.reshape(shape), dtype=self.dtype))
        return buffers, numbers_back

    def _trained(self, name, value, shape, shapes):
        """The array a trained param is updated in (``shapes``: those it may have); a 0-d copy of a
        number (written back after)."""
        if type(value) is not _ndarray:
            if shape == () and isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
                return np.array(value, dtype=self.dtype)
            raise ArgumentError(f"param {name!r} is trained in place, so it must be a NumPy array of "
                                f"{self.dtype} and shape {shape}" + (" (or a number, which is replaced in the dict "
                                                                       "by its new value)" if shape == () else "")
                                + f"; got {type(value).__name__}")
        if value.shape not in shapes:
            raise ArgumentShapeError(f"param {name!r} must have shape {shape}; got {value.shape}")
        if value.dtype != self.dtype:
            raise ArgumentDtypeError(f"param {name!r} is updated in place, so it must be a {self.dtype} array; "
                                     f"got {value.dtype}: pass {name}.astype(np.{self.dtype}) (and keep that array)")
        if value.flags.num & callplan.WRITABLE != callplan.WRITABLE:
            raise ArgumentError(f"param {name!r} is updated in place, so it must be a writable, C-contiguous array; "
                                f"pass a copy: np.array({name}, order='C')")
        return value

    def _data(self, data, what):
        """(one C-ordered array per input of the C function, n examples each; n)."""
        if len(data) == len(self.inputs):  # every input a batch, as the kernel reads it: taken as it is
            try:
                values = [data[a.name] for a in self.inputs]
            except KeyError:
                values = ()
            n = values[0].shape[0] if values and type(values[0]) is _ndarray and values[0].ndim else 0
            if n and all(type(v) is _ndarray and v.dtype == self.dtype and v.shape[:1] == (n,)
                         and v.shape[1:] in tails and v.flags.num & callplan.READABLE == callplan.READABLE
                         for v, tails in zip(values, self._batch_tails)):
                return values, n
        for name in data:
            role = self.declared.get(name, (None,))[0]
            if role != "input":
                fix = ("it is a param: pass it in params" if role == "param" else
                       f"the inputs of {self.model!r} are: "
                       f"{', '.join(n for n, (r, _) in self.declared.items() if r == 'input')}")
                raise ArgumentError(f"{what}: unknown input {name!r}; {fix}")
        missing = [a.name for a in self.inputs if a.name not in data]
        if missing:
            raise ArgumentError(f"{what}: missing input{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(map(repr, missing))}")
        arrays, batch = {}, None
        for name, value in data.items():
            arg = self._arguments.get(name)
            if arg is None:
                arg = self._arguments[name] = callplan.Argument("input", name, self.declared[name][1], True, False,
                                                                "", "")
            array = callplan.as_array(arg, value, self.dtype)
            size = callplan._input_form(arg, array.shape)
            if size is not None:
                batch = callplan._agree(batch, size, name)
            arrays[name] = (arg, array, size)
        n = 1 if batch is None else batch[0]
        if n == 0:
            raise ArgumentShapeError(f"{what} has 0 examples: the mean over no examples is undefined; "
                                     f"pass at least one example")
        out = []
        for a in self.inputs:
            arg, array, size = arrays[a.name]
            if array.dtype.kind in "iu":
                callplan.check_integers(arg, array, self.dtype)
            shaped = array.reshape(a.shape) if size is None else array.reshape((n,) + a.shape)
            if size is None:
                shaped = np.broadcast_to(shaped, (n,) + a.shape)
            out.append(np.ascontiguousarray(shaped, dtype=self.dtype))
        return out, n

    @staticmethod
    def _order(shuffle, n):
        """The epoch's order of examples: None (as they lie) or a permutation from NumPy's generator."""
        if shuffle is None:
            return None
        if isinstance(shuffle, np.random.Generator):
            return np.ascontiguousarray(shuffle.permutation(n), dtype=np.int64)
        if isinstance(shuffle, numbers.Integral) and not isinstance(shuffle, (bool, np.bool_)) and shuffle >= 0:
            return np.ascontiguousarray(np.random.default_rng(int(shuffle)).permutation(n), dtype=np.int64)
        raise ArgumentError(f"shuffle must be None (the examples in order), a seed (a whole number >= 0: the "
                            f"order np.random.default_rng(seed).permutation(n)) or a numpy.random.Generator "
                            f"(a new permutation of it every epoch); got {shuffle!r}")

    def _state(self, state, optimizer, buffers):
        """The optimizer state dict: a new one when ``state`` is None, else ``state`` after checking it."""
        trained = {name: buffers[k] for k, (name, t, _) in enumerate(self.params) if t}
        if state is None:
            state = {"optimizer": optimizer, "step": 0}
            for slot in STATE_SLOTS[optimizer]:
                state[slot] = {name: np.zeros_like(b) for name, b in trained.items()}
            return state
        if not isinstance(state, dict) or "optimizer" not in state:
            raise ArgumentError("state must be the dict an earlier train_epoch returned (or None to start)")
        if state["optimizer"] != optimizer:
            raise ArgumentError(f"state holds the state of optimizer {state['optimizer']!r}, but this epoch's "
                                f"optimizer is {optimizer!r}: pass state=None to start afresh")
        step = state.get("step")
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, numbers.Integral) or step < 0:
            raise ArgumentError(f"state['step'] must be a whole number >= 0 (the steps taken); got {step!r}")
        for slot in STATE_SLOTS[optimizer]:
            arrays = state.get(slot)
            if not isinstance(arrays, dict):
                raise ArgumentError(f"state[{slot!r}] must be a dict of arrays, one per trained param")
            for name, b in trained.items():
                a = arrays.get(name)
                if (type(a) is not _ndarray or a.dtype != self.dtype or a.size != b.size
                        or a.flags.num & callplan.WRITABLE != callplan.WRITABLE):
                    got = f"{a.dtype} array of shape {a.shape}" if type(a) is _ndarray else type(a).__name__
                    raise ArgumentError(f"state[{slot!r}][{name!r}] must be a writable, C-contiguous {self.dtype} "
                                        f"array of {b.size} elements (the shape of param {name!r}); got {got}")
        return state

    def _check_disjoint(self, arrays) -> None:
        """Refuse trained params and state arrays that share memory: each is updated on its own.
        ``arrays``: (pointer, bytes) of each."""
        cast = self._ffi.cast
        spans = sorted((int(cast("uintptr_t", c)), size) for c, size in arrays)
        for (start, size), (next_start, _) in zip(spans, spans[1:]):
            if start + size > next_start:
                raise ArgumentError("params and the optimizer state must be separate arrays: two of them share "
                                    "memory (pass copies)")
