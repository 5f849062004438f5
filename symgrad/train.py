"""Fused training: the C of a step and epoch kernel around a model's value_and_grad kernel.

:func:`train_spec` describes, as plain data, the function ``<model>_train``
that ``templates/train.c.j2`` writes into ``<model>_train.c``. One call of it
runs one epoch: it cuts the n examples it is given into minibatches of
``batch_size`` (the last one smaller when batch_size does not divide n; its
mean is over its own examples, as PyTorch's DataLoader gives it with
``drop_last=False``), takes the examples in a given order (gathered into
scratch memory) or as they lie, calls the value_and_grad kernel on each
minibatch and applies the optimizer's update to the params in place. A
single step (``sgd_step``) is an epoch whose one minibatch is the whole batch.

The value_and_grad kernel is called on the very slices a Python call of
``value_and_grad`` cuts a minibatch into (see ``runtime.chunks``) and their
sums are added in the same order, and the updates do the NumPy operations of
:mod:`symgrad.train_runtime` in the same order, without fused multiply-adds:
an epoch gives the params of a Python loop over ``value_and_grad`` to the bit.
The Python side of the kernel (checking arguments, the permutation of an
epoch, the optimizer state) is :mod:`symgrad.train_runtime`, vendored into
every package as ``_train.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import runtime
from .emit import KernelSpec
from .ops import size_of
from .printer import comment_text

#: Optimizer codes of the C function, in the order train_runtime.OPTIMIZERS names them.
OPTIMIZER_CODES = {"sgd": 0, "momentum": 1, "adam": 2}
ALIGN = 8  # elements: every scratch buffer starts on a 64-byte boundary (for doubles)


@dataclass(frozen=True)
class TrainSpec:
    """Everything ``train.c.j2`` and the package's ``__init__.py`` need for the training kernel.

    ``params``: dicts (name, comment, c_name, index, size, shape, trained,
    by_value, grad, part, state) for every param the value_and_grad kernel
    reads or differentiates, in declaration order; ``inputs``: dicts (name,
    comment, c_name, x, gather, index, size) for the inputs it reads;
    ``results``: the value_and_grad kernel's results as (first slice, later
    slices) C expressions, in its argument order; ``sums``: (buffer, part,
    size) of the array results that slices add; ``fixed_size`` the scratch
    elements that do not depend on the batch size, ``gather_row`` and
    ``example_row`` the elements per example of gathered inputs and of
    per-example gradients.
    """

    function: str
    kernel: str
    model_comment: str
    real: str
    dtype: str
    params: tuple
    inputs: tuple
    call: tuple
    results: tuple
    sums: tuple
    example_gradients: tuple
    fixed_size: int
    gather_row: int
    example_row: int
    kernel_work: int
    trained: int
    chunk: int
    max_chunks: int


def trainable(kernel: KernelSpec) -> bool:
    """Whether a value_and_grad kernel gets a training kernel: one loss for the batch (reduce
    "mean" or "sum") and a gradient with respect to at least one param."""
    loss = [a for a in kernel.arguments if a.kind == "loss"]
    gradients = [a for a in kernel.arguments if a.kind == "gradient" and not a.per_example]
    return bool(loss) and not loss[0].per_example and bool(gradients)


def unavailable(model: str, has_loss: bool, reduce) -> str:
    """Why a package without a training kernel has none (the error its sgd_step and train_epoch raise)."""
    if not has_loss:
        return f"the model {model!r} has no loss, so there is nothing to train; declare loss=... in its Model"
    if reduce is None:
        return (f"the model {model!r} has reduce=None (one loss per example); training steps need one loss for "
                f"the minibatch: declare reduce='mean' or reduce='sum'")
    return f"the model {model!r} differentiates no param (wrt names none), so a step would change nothing"


def _aligned(n: int) -> int:
    return -(-max(n, 1) // ALIGN) * ALIGN


def train_spec(kernel: KernelSpec, declared, model: str) -> TrainSpec:
    """The :class:`TrainSpec` of ``kernel`` (a value_and_grad KernelSpec of ``model``), whose
    symbols are ``declared`` ((name, role, shape) in declaration order)."""
    args = [a for a in kernel.arguments if a.role != "count"]
    read = {a.name: a for a in args if a.role == "param"}
    gradients = {a.name: a for a in args if a.kind == "gradient"}
    params, inputs, at = [], [], 0
    for name, role, shape in declared:
        if role != "param" or (name not in read and name not in gradients):
            continue
        trained = name in gradients
        ident = (read[name].c_name if name in read else gradients[name].c_name)
        ident = ident.split("_", 1)[1]
        size = size_of(shape)
        entry = dict(name=name, comment=comment_text(name), c_name=f"p_{ident}", index=len(params), size=size,
                     shape="scalar" if shape == () else "x".join(map(str, shape)), trained=trained,
                     by_value=name in read and read[name].by_value, grad=None, part=None, state=None)
        if trained:
            entry.update(grad=(f"grad_{ident}", at), part=(f"part_{ident}", at + _aligned(size)))
            at += 2 * _aligned(size)
        params.append(entry)
    trained = [p for p in params if p["trained"]]
    for k, p in enumerate(trained):
        p["state"] = k
    for a in args:
        if a.role == "input":
            ident = a.c_name[len("in_"):]
            inputs.append(dict(name=a.name, comment=comment_text(a.name), c_name=a.c_name, x=f"x_{ident}",
                               gather=f"gather_{ident}", index=len(inputs), size=size_of(a.shape)))
    by_name = {p["name"]: p for p in params}
    by_input = {i["name"]: i for i in inputs}
    call, results, sums, example_gradients, example_row = [], [], [], [], 0
    for a in args:
        if a.role == "param":
            p = by_name[a.name]
            call.append(f"{p['c_name']}[0]" if a.by_value else p["c_name"])
        elif a.role == "input":
            i = by_input[a.name]
            call.append(f"{i['x']} + a * {i['size']}" if i["size"] != 1 else f"{i['x']} + a")
        elif a.kind == "loss":
            results.append(("&loss", "&part_loss"))
        elif a.kind == "gradient" and not a.per_example:
            p = by_name[a.name]
            results.append((p["grad"][0], p["part"][0]))
            sums.append((p["grad"][0], p["part"][0], p["size"]))
        else:  # a per-example gradient (an input in wrt): written, not used
            size = size_of(a.shape)
            name = f"example_{a.c_name}"
            example_gradients.append(dict(c_name=name, offset=example_row, size=size, comment=comment_text(a.name)))
            expression = f"{name} + a * {size}" if size != 1 else f"{name} + a"
            results.append((expression, expression))
            example_row += size
    return TrainSpec(
        function=f"{kernel.function[:-len('_value_and_grad')]}_train",
        kernel=kernel.function,
        model_comment=comment_text(model),
        real=kernel.real,
        dtype=kernel.dtype,
        params=tuple(params),
        inputs=tuple(inputs),
        call=tuple(call),
        results=tuple(results),
        sums=tuple(sums),
        example_gradients=tuple(example_gradients),
        fixed_size=at,
        gather_row=sum(i["size"] for i in inputs),
        example_row=example_row,
        kernel_work=kernel.work_size,
        trained=len(trained),
        chunk=runtime.CHUNK,
        max_chunks=runtime.MAX_CHUNKS,
    )


def runtime_arguments(spec: TrainSpec) -> dict:
    """What the generated ``__init__.py`` hands ``_train.Trainer``: the params and inputs in the
    order of the C function's pointer arrays."""
    return dict(
        function=spec.function,
        params=[(p["name"], p["trained"]) for p in spec.params],
        inputs=[i["name"] for i in spec.inputs],
        trained=[p["name"] for p in spec.params if p["trained"]],
    )
