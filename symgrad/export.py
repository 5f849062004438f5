"""Exporting a model as a self-contained C99 library (``symgrad export MODEL.py --c DIR``).

The library is made of the very kernel sources the Python build compiles
(``symgrad.pipeline.generate(model).package``), with three changes of
packaging, none of code:

* the public header ``<name>.h`` is rendered from ``templates/export/``: the
  same prototypes (without ``restrict``, which C++ lacks and which a
  declaration may omit), ``extern "C"`` guards, the ABI in words, the return
  codes, and functions returning each kernel's scratch size;
* ``symgrad_runtime.h`` is rendered with ``portable=True``: plain ISO C99,
  no GCC vector types, target attributes or CPU dispatch;
* a Makefile, a CMakeLists.txt and ``example_main.c``, which calls every
  kernel on fixed inputs and prints the results with ``%.17g``.

Every exported name starts with the model's C prefix (the kernels'
``<prefix>_forward`` ...). Nothing in the folder needs Python, NumPy or
symgrad, and it compiles warning-free at ``-std=c99 -Wall -Wextra
-pedantic`` with GCC and Clang, and from C++.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from . import render as _render
from .errors import OutputDirectoryError
from .model import Model
from .naming import c_identifiers
from .printer import comment_text
from .runtime import KERNEL_ERRORS

#: Examples of the fixed batch ``example_main.c`` runs each kernel on.
EXAMPLE_BATCH = 3

_DTYPE_TEXT = {"float64": "IEEE 754 binary64", "float32": "IEEE 754 binary32"}
_REDUCE_TEXT = {
    "mean": "This model's loss is the mean over the batch (reduce=\"mean\"): a call returns the sum over "
            "its n examples divided by batch.",
    "sum": "This model's loss is the sum over the batch (reduce=\"sum\"): batch does not change the results.",
    None: "This model has one loss per example (reduce=None): batch does not change the results.",
}
_NO_LOSS_TEXT = "This model has no loss: batch does not change the results."
_RETURN_CODE = re.compile(r"^#define SG_(OK|ERROR_[A-Z0-9_]+) (\d+)$", re.M)


@dataclass
class ExportResult:
    """Where a model's C library was written, and its files."""

    path: Path
    files: list = field(default_factory=list)


def export_c(model: Model, out_dir, *, dtype: str = "float64") -> ExportResult:
    """Write the C library of ``model`` into ``out_dir/<model name>``."""
    from .pipeline import generate

    files = library_files(generate(model, dtype=dtype))
    path = Path(out_dir).absolute() / model.name
    try:
        path.mkdir(parents=True, exist_ok=True)
        written = [_write_atomically(path / name, text) for name, text in files.items()]
    except OSError as exc:
        raise OutputDirectoryError(
            f"cannot write the C library of {model.name!r} to {path}: {exc.strerror or exc}. "
            f"Choose another folder (symgrad export MODEL_FILE --c DIR)."
        ) from None
    return ExportResult(path, written)


def library_files(generated) -> dict:
    """File name -> text of the C library of a generated model (:func:`symgrad.pipeline.generate`)."""
    package = generated.package
    spec = package.spec
    prefix = c_identifiers([spec.name])[spec.name]
    runtime = runtime_header(spec, portable=True)
    kernels = [_kernel_view(k, prefix, spec) for k in spec.kernels]
    info_name = f"{spec.name}_info.c"
    common = dict(
        version=__version__,
        model_comment=comment_text(spec.name),
        header_name=f"{spec.name}.h",
        prefix=prefix,
        prefix_upper=prefix.upper(),
        real=spec.kernels[0].real,
        kernels=kernels,
        codes=return_codes(runtime),
        sources=list(package.kernel_sources) + [info_name],
    )
    env = _render.environment()

    def text(template, **extra):
        return env.get_template(f"export/{template}").render(**common, **extra)

    files = {name: package.files[name] for name in package.kernel_sources}
    files["symgrad_runtime.h"] = runtime
    files[f"{spec.name}.h"] = text(
        "header.h.j2",
        guard=f"{prefix.upper()}_SYMGRAD_H",
        dtype_text=_DTYPE_TEXT[spec.dtype],
        reduce_text=_REDUCE_TEXT[spec.reduce] if spec.has_loss else _NO_LOSS_TEXT,
        summary=[comment_text(line.strip()) for line in spec.summary.splitlines() if line.strip()],
    )
    files[info_name] = text("info.c.j2", source_name=info_name)
    files["example_main.c"] = text("example_main.c.j2", batch=EXAMPLE_BATCH,
                                   values=_example_declarations(generated))
    files["Makefile"] = text("Makefile.j2")
    files["CMakeLists.txt"] = text("CMakeLists.txt.j2")
    return files


def runtime_header(spec, *, portable: bool) -> str:
    """``symgrad_runtime.h`` for ``spec``: with ``portable=False`` exactly the text the
    Python build compiles; with ``portable=True`` plain C99 (baseline matrix product only)."""
    levels = _render.gemm_levels(spec.dtype)
    if portable:
        levels = [level for level in levels if level["target"] is None]
    return _render.environment().get_template("symgrad_runtime.h.j2").render(
        version=__version__, real=spec.kernels[0].real, f="f" if spec.dtype == "float32" else "",
        gemm=_render.GEMM_BLOCKS, vector_functions=_render.VECTOR_FUNCTIONS, gemm_levels=levels,
        portable=portable)


def return_codes(runtime: str) -> list:
    """``(name, value, description)`` of every kernel return code the runtime header defines."""
    codes = [(name, int(value), KERNEL_ERRORS.get(int(value), "")) for name, value in _RETURN_CODE.findall(runtime)]
    if not codes or codes[0][:2] != ("OK", 0):
        raise RuntimeError("symgrad_runtime.h must define SG_OK 0 first; the export reads its return codes")
    return codes


def example_inputs(generated) -> dict:
    """The fixed params and inputs ``example_main.c`` passes (inputs as a batch of
    EXAMPLE_BATCH examples): exact binary fractions in (0, 1), the same in C and NumPy;
    an input used as a class index gets whole numbers in its range."""
    import numpy as np

    spec = generated.package.spec
    classes = class_index_inputs(generated.graph)
    values = {}
    for k, (name, role, shape) in enumerate(spec.declared):
        full = shape if role == "param" else (EXAMPLE_BATCH,) + tuple(shape)
        count = int(np.prod(full, dtype=np.int64))
        if name in classes:
            numbers = [float((3 * i + k) % classes[name]) for i in range(count)]
        else:
            numbers = [((29 * k + 37 * i) % 61 + 2) / 64 for i in range(count)]
        values[name] = np.array(numbers, dtype=spec.dtype).reshape(full)
    for a in (a for kernel in spec.kernels for a in kernel.arguments):  # tangents of derivative kernels (v[x])
        if a.role in ("param", "input") and a.name not in values:
            full = a.shape if a.role == "param" else (EXAMPLE_BATCH,) + tuple(a.shape)
            count = int(np.prod(full, dtype=np.int64))
            values[a.name] = np.array([((13 * i) % 61 + 2) / 64 for i in range(count)], dtype=spec.dtype).reshape(full)
    return values


def class_index_inputs(graph) -> dict:
    """Symbol name -> number of classes, for every symbol that indexes a matrix (a class index)."""
    names = {node: name for name, node in graph.symbols.items()}
    found = {}
    for node in graph.nodes:
        if node.op == "take" and node.args[1] in names:
            shape = graph.nodes[node.args[0]].shape
            classes = _size(shape)
            name = names[node.args[1]]
            found[name] = min(found.get(name, classes), classes)
    return found


def _example_declarations(generated) -> list:
    """C declarations of the example's params and inputs, by the kernels' argument names."""
    spec = generated.package.spec
    values = example_inputs(generated)
    suffix = "f" if spec.dtype == "float32" else ""
    real = spec.kernels[0].real
    seen, declarations = set(), []
    for k in spec.kernels:
        for a in k.arguments:
            if a.role not in ("param", "input") or a.c_name in seen:
                continue
            seen.add(a.c_name)
            numbers = [f"{float(v)!r}{suffix}" for v in values[a.name].reshape(-1)]
            if a.by_value:
                text = f"static const {real} {a.c_name} = {numbers[0]};"
            else:
                rows = ",\n    ".join(", ".join(numbers[i:i + 8]) for i in range(0, len(numbers), 8))
                text = f"static const {real} {a.c_name}[{len(numbers)}] = {{\n    {rows}\n}};"
            declarations.append({"role": a.role, "declaration": text})
    return declarations


def _size(shape) -> int:
    size = 1
    for d in shape:
        size *= int(d)
    return size


def _shape_text(shape) -> str:
    return "x".join(str(d) for d in shape)


def _describe(a, spec) -> str:
    """One argument of a kernel, in words: what it is, its shape and how many values it holds."""
    name = comment_text(a.name)
    size = _size(a.shape)
    if a.role == "count":
        mean = spec.has_loss and spec.reduce == "mean"
        return (("examples in this call" + (" (at least 1)" if mean else "")) if a.name == "n"
                else "examples of the whole batch: the N of means (pass n for one call)")
    if a.role == "param":
        if a.by_value:
            return f"param {name}: one number, by value"
        return f"param {name} ({_shape_text(a.shape)}): {size} values, shared by all examples"
    if a.role == "input":
        if not a.shape:
            return f"input {name}: one number per example, n values"
        return f"input {name} ({_shape_text(a.shape)}): {size} values per example, n*{size} values"
    what = {"loss": "the loss", "gradient": f"d loss / d {name}", "output": f"output {name}",
            "tangent": f"tangent of {name}"}[a.kind]
    if a.kind == "gradient" and a.c_name.startswith("d_"):  # the hvp, hessian and reverse Jacobian kernels
        what = f"derivative along the tangents, for {name}"
    shape = f" ({_shape_text(a.shape)})" if a.shape else ""
    if a.per_example:
        count = "n values" if size == 1 else f"{size} values per example, n*{size} values"
        return f"{what}{shape}: {count}, written"
    reduction = {"mean": "the mean over the batch", "sum": "the sum over the batch",
                 None: "one value"}[spec.reduce]
    return f"{what}{shape}: {size} value{'s' if size > 1 else ''}, written: {reduction}"


def _kernel_view(k, prefix: str, spec) -> dict:
    """What the export templates need of one kernel."""
    arguments = [(a.c_name, a.c_type, _describe(a, spec)) for a in k.arguments]
    arguments.append(("work", f"{k.real} *", f"scratch memory: {k.work_size} values ({prefix.upper()}_"
                                             f"{k.kind.upper()}_WORK_SIZE); NULL allowed when 0"))
    outputs = [a for a in k.arguments if a.role == "output"]
    return dict(
        spec=k,
        kind=k.kind,
        function=k.function,
        doc=_render.KERNEL_DOCS[k.kind],
        work_size=k.work_size,
        work_macro=f"{k.function.upper()}_WORK_SIZE",
        arguments=arguments,
        point=_render.has_point_entry(k),
        point_results=[_describe(a, spec).split(":")[0] for a in outputs],
        call=[a.c_name for a in k.arguments if a.role in ("param", "input")]
        + [a.c_name for a in outputs],
        results=[dict(c_name=a.c_name, count=(f"EXAMPLES * {_size(a.shape)}" if a.per_example
                                              else str(_size(a.shape))))
                 for a in outputs],
    )


def _write_atomically(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename (readers never see half a file)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
