"""The flat-vector wrappers of a package: what ``templates/flat.c.j2`` writes, as plain data.

For each kernel whose kind is in :data:`symgrad.flatcall.FLAT_KINDS` the
package gets ``<kernel>_flat(theta, tangent, data, value, out)``: the kernel
called with the ``wrt`` symbols read from one vector theta, the other symbols
from a struct bound once (``struct <model>_flat_data``), and its results
written one after the other into ``value`` (the loss) and ``out`` (see
:func:`symgrad.flatcall.result_places`). A batch larger than the runtime's
slice (``CHUNK``) is run in the same slices as the keyword call and the
slices' batch sums are added in the same order, so the two agree to the bit.
With an hvp kernel the package also gets ``<model>_hessian_flat`` (one hvp
per unit vector) and with a jacobian kernel ``<model>_jacobian_dense`` (one
sweep per column or row), both into dense row-major matrices.

The layout functions are those of :mod:`symgrad.flatcall`, which the
generated package runs: C and Python read one definition.
"""

from __future__ import annotations

from . import flatcall
from .printer import comment_text
from .runtime import CHUNK, MAX_CHUNKS


def _offset(base: str, per_example: int, fixed: int) -> str:
    """``base + d->n * per_example + fixed``, without the terms that are zero."""
    terms = [base] + ([f"d->n * {per_example}"] if per_example else []) + ([str(fixed)] if fixed else [])
    return " + ".join(terms)


def _describe(shape) -> str:
    return "scalar" if shape == () else "x".join(map(str, shape))


def flat_context(spec) -> dict:
    """The template data of ``<model>_flat.c`` and of the declarations in the header and cdef."""
    declared = [(name, role, tuple(shape)) for name, role, shape in spec.declared]
    shapes = {name: (role, shape) for name, role, shape in declared}
    layout, size = flatcall.theta_layout(spec.wrt, shapes)
    offset = {name: off for name, off, _ in layout}
    index = {name: k for k, (name, _, _) in enumerate(declared)}
    kernels = [k for k in spec.kernels if k.kind in flatcall.FLAT_KINDS]
    prefix = kernels[0].function[:-len("_" + kernels[0].kind)]
    functions = [_function(k, offset, index) for k in kernels]
    by_kind = {f["kind"]: f for f in functions}
    context = dict(
        prefix=prefix,
        real=spec.kernels[0].real,
        symbols=[dict(index=index[name], text=comment_text(f"{role} {name} ({_describe(shape)})"),
                      theta=name in offset) for name, role, shape in declared],
        symbol_count=max(len(declared), 1),
        theta=[comment_text(f"{name} at [{off}:{off + flatcall.size_of(shape)}] ({_describe(shape)})")
               for name, off, shape in layout],
        theta_size=size,
        partial=flatcall.partial_size([[a for a in k.arguments if a.role == "output"] for k in kernels]),
        work=max(k.work_size for k in kernels) + 1,
        chunk=CHUNK,
        max_chunks=MAX_CHUNKS,
        functions=functions,
        hessian=by_kind.get("hvp"),
        loss=_loss(by_kind.get("forward")),
        columns=_columns(next((k for k in spec.kernels if k.kind == "hessian"), None), offset, size),
        jacobian=(dict(jacobian_context(next(k for k in kernels if k.kind == "jacobian"), offset, size),
                       function=by_kind["jacobian"]) if "jacobian" in by_kind else None),
    )
    return context


def _function(k, offset: dict, index: dict) -> dict:
    """One ``<kernel>_flat`` wrapper: its call's argument expressions and its results' places."""
    results = [a for a in k.arguments if a.role == "output"]
    places = flatcall.result_places(k.kind, results)
    cotangents = [a for a in k.arguments if a.role in ("param", "input") and a.name.startswith("cotangents[")]
    cotangent_before, running = {}, 0
    for a in cotangents:
        cotangent_before[a.name] = running
        running += flatcall.size_of(a.shape)
    call, outputs, partial = [], [], 0
    uses_tangent = False
    for a in k.arguments:
        size = flatcall.size_of(a.shape)
        what = comment_text(f"{a.role} {a.name} ({_describe(a.shape)})")
        if a.role == "count":
            expr = "m" if a.name == "n" else "d->batch"
            what = "examples in this slice" if a.name == "n" else "examples of the whole batch (the N of means)"
        elif a.role in ("param", "input") and a.name in offset:
            expr = f"theta[{offset[a.name]}]" if a.by_value else f"theta + {offset[a.name]}"
            what += ", from theta"
        elif a.role in ("param", "input") and flatcall.is_tangent(a.name):
            uses_tangent = True
            if a.name in cotangent_before:
                expr = f"{_offset('tangent', cotangent_before[a.name], 0)} + start * {size}"
            else:
                base = offset[flatcall.tangent_of(a.name)]
                expr = f"tangent[{base}]" if a.by_value else f"tangent + {base}"
            what += ", from tangent"
        elif a.role in ("param", "input"):
            slot = f"d->symbol[{index[a.name]}]"
            expr = f"*{slot}" if a.by_value else (f"{slot} + start * {size}" if a.per_example else slot)
            what += ", from the bound data"
        else:
            j = len(outputs)
            place, per, fixed = places[j]
            outputs.append(dict(var=f"r{j}", place=place, start=_offset(place, per, fixed), size=size,
                                per_example=a.per_example, partial=None if a.per_example else partial,
                                text=comment_text(f"{'loss' if a.kind == 'loss' else f'{a.kind} {a.name}'} ({_describe(a.shape)}"
                                                  f"{', per example' if a.per_example else ''})")))
            if a.per_example:
                expr = f"r{j} + start * {size}"
            else:
                expr = f"part ? part + {partial} : r{j}"
                partial += size
            what = outputs[-1]["text"]
        call.append(dict(expr=expr, text=what))
    return dict(kind=k.kind, kernel=k.function, name=f"{k.function}_flat", call=call, outputs=outputs,
                reduced=[o for o in outputs if o["partial"] is not None], uses_tangent=uses_tangent,
                places=sorted({o["place"] for o in outputs}))


def jacobian_context(k, offset: dict, theta_size: int) -> dict:
    """The rows and columns of the dense Jacobians of the jacobian kernel ``k``."""
    symbols = [a for a in k.arguments if a.role in ("param", "input")]
    results = [a for a in k.arguments if a.role == "output"]
    mode, rows = flatcall.jacobian_rows(symbols, results)
    row_items, per_example = [], 0
    for name, row_size in rows:
        row_items.append(dict(text=comment_text(f"{name} ({row_size} per example)"), size=row_size,
                              source=f"d->n * {per_example}" if per_example else "0",
                              dense=f"d->n * {theta_size * per_example}" if per_example else "0"))
        per_example += row_size
    columns, before = [], 0
    for r in results:
        r_size = flatcall.size_of(r.shape)
        if mode == "reverse":
            columns.append(dict(text=comment_text(f"gradient with respect to {r.name}"), size=r_size,
                                source=f"d->n * {before}" if before else "0", column=offset[r.name]))
        before += r_size
    return dict(mode=mode, rows=row_items, columns=columns, row_total=per_example)


def _columns(k, offset: dict, theta_size: int):
    """The one call of the ``hessian`` kernel (a model without inputs) that ``<model>_hessian_flat``
    makes: its examples are the unit vectors, held per symbol in ``unit`` (the block of e_j that is
    the symbol's, for every j), and its results are the rows of the Hessian."""
    if k is None:
        return None
    call, blocks, results = [], [], []
    for a in k.arguments:
        size = flatcall.size_of(a.shape)
        if a.role == "count":
            call.append(dict(expr="size", text="examples: one unit vector each" if a.name == "n"
                             else "examples of the whole batch"))
        elif a.role in ("param", "input") and a.name in offset:
            call.append(dict(expr=f"theta[{offset[a.name]}]" if a.by_value else f"theta + {offset[a.name]}",
                             text=comment_text(f"{a.role} {a.name}, from theta")))
        elif a.role in ("param", "input"):
            name = flatcall.tangent_of(a.name)
            blocks.append(dict(offset=offset[name], size=size, base=theta_size * offset[name]))
            call.append(dict(expr=f"d->unit + {theta_size * offset[name]}",
                             text=comment_text(f"{a.name}: the block of {name} of each unit vector")))
        else:
            results.append(dict(offset=offset[a.name], size=size, base=theta_size * theta_size
                                + theta_size * offset[a.name]))
            target = "out" if len(offset) == 1 else f"d->unit + {results[-1]['base']}"
            call.append(dict(expr=target, text=comment_text(f"row blocks of {a.name}")))
    return dict(kernel=k.function, call=call, blocks=blocks, results=results, direct=len(offset) == 1)


def _loss(function):
    """``<model>_loss_flat``: the forward wrapper's loss returned as a number (None without a loss)."""
    if function is None:
        return None
    losses = [o for o in function["outputs"] if o["place"] == "value"]
    if not losses:
        return None
    return dict(forward=function["name"], per_example=losses[0]["per_example"])
