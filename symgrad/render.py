"""Rendering kernel specs into the files of a generated package.

The Jinja2 environment is strict (an undefined name is an error, never an
empty string) and its templates live in the top-level ``templates/`` folder
of a checkout (``symgrad/templates`` in an installed wheel): one template
per generated file, named after it, plus ``macros.j2``. Templates receive
only strings, numbers and lists; user text reaches them through the
``pyrepr`` and ``pystr`` filters (Python) or is already escaped by the
printer (C comments).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2

from . import __version__
from . import train as _train
from .naming import c_identifiers
from .printer import comment_text
from .emit import KernelSpec
from .flat import flat_context
from .ops.linalg import GEMM_BLOCKS

#: Functions of one argument with SIMD variants in glibc 2.35's libmvec.
VECTOR_FUNCTIONS = ("exp", "log", "log1p", "expm1", "sin", "cos", "tan", "sinh", "cosh", "tanh",
                    "asin", "acos", "atan", "asinh", "acosh", "atanh", "erf", "erfc")

_VECTOR_CALL = re.compile(r"\b(?:%s)f?\(" % "|".join(VECTOR_FUNCTIONS))

#: The runtime helpers compiled once per machine and flag set (see split_runtime).
RUNTIME_SOURCE = "symgrad_runtime.c"

_TARGET_ATTRIBUTE = re.compile(r"__attribute__\(\(target\(\"[^\"]*\"\)\)\)\s*")

#: Scratch elements a one-example entry point may keep on the C stack.
POINT_STACK_LIMIT = 16384

KERNEL_DOCS = {
    "forward": "the outputs and the loss of every example of the batch.",
    "value_and_grad": "the loss and its gradients, reduced over the batch as the model says.",
    "jvp": "the outputs and the loss with their directional derivatives along the tangents.",
    "hvp": "the Hessian of the reduced loss times v (forward over reverse), reduced like the gradients.",
    "jacobian": "per example, one sweep of the Jacobian of the outputs and the loss (a column or a row).",
    "hessian": "the Hessian of the loss times each example's v: one column of the Hessian per example.",
}


@dataclass(frozen=True)
class PackageSpec:
    """What the generated package of one model contains, as plain data."""

    name: str
    kernels: tuple  # KernelSpec, one per kernel kind
    dtype: str
    reduce: object
    declared: tuple  # (name, role, shape) per symbol, in declaration order
    outputs: tuple
    wrt: tuple
    has_loss: bool
    summary: str  # the model's formulas, for docstrings
    gradient_doc: str
    source: str = ""


@dataclass(frozen=True)
class RenderedPackage:
    """The text of every file of a package, and what cffi needs to compile it."""

    name: str
    files: dict  # file name -> text; __init__.py is rendered by finish()
    cdef: str
    c_sources: tuple  # names in ``files`` that are compiled
    spec: PackageSpec

    @property
    def kernel_sources(self) -> tuple:
        """The kernels' C files, without the flat-vector wrappers and the training kernel (which only
        the Python package uses)."""
        return tuple(name for name in self.c_sources if name not in (f"{self.name}_flat.c", f"{self.name}_train.c"))

    @property
    def python_source(self) -> str:
        """The file of CPython entry points, compiled inside cffi's wrapper (not one of c_sources)."""
        return f"{self.name}_python.c"

    def source_size(self) -> int:
        """Characters of the kernels' C source: how long they take to compile."""
        return sum(len(self.files[name]) for name in self.kernel_sources)

    def calls_vector_math(self) -> bool:
        """Whether the kernels call a math function that has SIMD variants (tanh, exp...):
        their loops gain the most from wide vector instructions."""
        return any(_VECTOR_CALL.search(self.files[name]) for name in self.c_sources)

    def source_digest(self) -> str:
        """A digest of everything that goes into the compiled extension."""
        h = hashlib.sha256()
        for name in sorted(self.c_sources) + ["symgrad_runtime.h", RUNTIME_SOURCE, f"{self.name}.h",
                                              self.python_source]:
            h.update(name.encode() + b"\0" + self.files[name].encode() + b"\0")
        h.update(self.cdef.encode())
        return h.hexdigest()


def _pystr(text) -> str:
    """Text made safe inside a Python string literal or docstring (newlines kept)."""
    out = []
    for ch in str(text):
        if ch in "\\\"'":
            out.append("\\" + ch)
        elif ch == "\n" or ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def template_folder() -> Path:
    """Where the templates are: ``symgrad/templates`` in a wheel, ``templates/`` beside the
    package in a checkout or an editable install."""
    package = Path(__file__).resolve().parent
    for folder in (package / "templates", package.parent / "templates"):
        if (folder / "kernels.c.j2").is_file():
            return folder
    raise FileNotFoundError(f"symgrad's templates are missing: neither {package / 'templates'} nor "
                            f"{package.parent / 'templates'} holds kernels.c.j2; reinstall symgrad")


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(str(template_folder()))
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["pyrepr"] = repr
    env.filters["pystr"] = _pystr
    return env


def gemm_levels(dtype: str) -> list:
    """The versions of the matrix product, one per CPU level: its vector width in
    elements (a register's bytes over the element size), the columns of its
    micro-kernel (two vectors), and the test that picks it."""
    element = 4 if dtype == "float32" else 8
    levels = [("avx512", "arch=x86-64-v4", 64, '__builtin_cpu_supports("avx512f")'),
              ("avx2", "arch=x86-64-v3", 32, '__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")'),
              ("baseline", None, 16, "1")]
    return [{"name": name, "target": target, "width": size // element, "nr": 2 * size // element, "check": check}
            for name, target, size, check in levels]


def split_runtime(header: str) -> tuple:
    """(the runtime header the kernels include, the C source of the runtime object).

    Every helper whose parameters include a pointer (it works on arrays and is
    called once per tile: matrix products, reductions, the softmax family) is
    defined once, in the source, which the build compiles once per machine and
    flag set into a cached object that every extension links; the kernels'
    header keeps only its prototype. Helpers of scalars stay ``static inline``
    in both, so that SIMD loops inline them. A helper is recognized by its
    layout in ``symgrad_runtime.h.j2``: a ``static`` definition at column 0
    whose body opens with ``{`` and closes with ``}`` alone on their lines, so
    a helper added to the header is split without further work.
    """
    lines = header.split("\n")
    kernel_view, source, i = [], [], 0
    while i < len(lines):
        end = _definition_head(lines, i)
        if end is None:
            kernel_view.append(lines[i])
            source.append(lines[i])
            i += 1
            continue
        close = lines.index("}", end)
        head = "\n".join(lines[i:end])
        body = lines[end:close + 1]
        parameters = head[head.index("("):]
        if "*" not in parameters:  # a scalar helper: inline everywhere
            kernel_view += lines[i:close + 1]
            source += lines[i:close + 1]
        else:
            external = "SG_RUNTIME_API " + re.sub(r"\b(?:static|inline)\s+", "", head)
            kernel_view.append(_TARGET_ATTRIBUTE.sub("", external) + ";")
            source += [external] + body
        i = close + 1
    source_text = "\n".join(source).replace("symgrad_runtime.h:", "symgrad_runtime.c, the source of the runtime "
                                                                 "object; symgrad_runtime.h:", 1)
    return "\n".join(kernel_view), source_text


def _definition_head(lines, i):
    """The index of the ``{`` line of a function definition starting at line i, else None."""
    line = lines[i]
    if not line or line[0] in " \t#/*{}" or not re.search(r"\bstatic\b", line):
        return None
    for j in range(i, min(i + 12, len(lines))):
        if lines[j] == "{":
            return j if "(" in "".join(lines[i:j]) else None
        if lines[j].rstrip().endswith((";", "}")) or (j > i and lines[j][:1] not in (" ", "\t", "")):
            return None
    return None


def has_point_entry(k: KernelSpec) -> bool:
    """Whether a kernel gets a one-example entry point: every argument and result a scalar."""
    return all(a.shape == () for a in k.arguments) and k.work_size <= POINT_STACK_LIMIT


#: A one-example kernel of more scalar symbols than this runs without the GIL when called from
#: the CPython entry point: releasing and taking it back costs about 0.05 µs, more than the
#: C of a small kernel takes.
RELEASE_GIL_SYMBOLS = 16


def releases_gil(k: KernelSpec) -> bool:
    """Whether the CPython entry point of ``k`` releases the GIL while its kernel runs."""
    return sum(1 for a in k.arguments if a.role in ("param", "input")) > RELEASE_GIL_SYMBOLS


def _kernel_arguments(k: KernelSpec) -> list:
    return [
        (a.role, a.name, a.shape, a.per_example, a.by_value, a.kind, a.c_type)
        for a in k.arguments
        if a.role != "count"
    ]


def render(spec: PackageSpec) -> RenderedPackage:
    """The C sources, header, runtime header and cffi declarations of a package."""
    env = environment()
    real = spec.kernels[0].real
    suffix = "f" if spec.dtype == "float32" else ""
    common = dict(
        point={k.kind: has_point_entry(k) for k in spec.kernels},
        version=__version__,
        model_comment=comment_text(spec.name),
        kernels=spec.kernels,
        docs=KERNEL_DOCS,
        header_name=f"{spec.name}.h",
        guard=f"SYMGRAD_{c_identifiers([spec.name])[spec.name].upper()}_H",
        train=train_spec(spec),
    )
    # The flat-vector wrappers of the kernels (symgrad.flat): declared in the header and the cdef.
    flat = flat_context(spec)
    common["flat_declarations"] = env.get_template("flat.h.j2").render(**flat)
    kernel_files = {}
    for k in spec.kernels:  # one C file per kernel: they compile in parallel
        name = f"{spec.name}_{k.kind}.c"
        kernel_files[name] = env.get_template("kernels.c.j2").render(**{**common, "kernels": (k,), "source_name": name})
    if common["train"] is not None:  # the fused training kernel (symgrad.train)
        name = f"{spec.name}_train.c"
        kernel_files[name] = env.get_template("train.c.j2").render(
            spec=common["train"], version=__version__, source_name=name, header_name=common["header_name"],
            align=_train.ALIGN)
    files = {
        **kernel_files,
        f"{spec.name}.h": env.get_template("kernels.h.j2").render(**common),
        **dict(zip(("symgrad_runtime.h", RUNTIME_SOURCE), split_runtime(
            env.get_template("symgrad_runtime.h.j2").render(
                version=__version__, real=real, f=suffix, gemm=GEMM_BLOCKS, vector_functions=VECTOR_FUNCTIONS,
                gemm_levels=gemm_levels(spec.dtype))))),
        "_runtime.py": (resources.files("symgrad") / "runtime.py").read_text(),
        "_callplan.py": (resources.files("symgrad") / "callplan.py").read_text(),
        "_train.py": (resources.files("symgrad") / "train_runtime.py").read_text(),
    }
    flat_name = f"{spec.name}_flat.c"
    files[flat_name] = env.get_template("flat.c.j2").render(**common, **flat, source_name=flat_name)
    # The CPython entry points of the one-example kernels, compiled inside cffi's wrapper (see build.py).
    python_name = f"{spec.name}_python.c"
    files[python_name] = env.get_template("python.c.j2").render(
        **common, source_name=python_name, release={k.kind: releases_gil(k) for k in spec.kernels})
    files["_flatcall.py"] = (resources.files("symgrad") / "flatcall.py").read_text()
    cdef = env.get_template("cdef.h.j2").render(kernels=spec.kernels, point=common["point"],
                                                flat_declarations=common["flat_declarations"],
                                                train=common["train"])
    return RenderedPackage(spec.name, files, cdef, tuple(kernel_files) + (flat_name,), spec)


def train_spec(spec: PackageSpec):
    """The :class:`symgrad.train.TrainSpec` of a package whose value_and_grad kernel can train
    (one loss for the batch, a param gradient), else None."""
    kernel = next((k for k in spec.kernels if k.kind == "value_and_grad"), None)
    if kernel is None or not _train.trainable(kernel):
        return None
    return _train.train_spec(kernel, spec.declared, spec.name)


def _model_file(source: str) -> str:
    """The model file as the package names it: relative to the working folder when it is inside it,
    so that a package built from a checkout's root is the same text wherever the checkout is."""
    path = Path(source)
    if source and path.is_absolute():
        try:
            return str(path.relative_to(Path.cwd()))
        except ValueError:
            pass
    return source


def finish(rendered: RenderedPackage) -> str:
    """The package's ``__init__.py``. It depends only on the model (golden copies are kept in
    ``generated/``): it reads the compiled extension's name and key from the build manifest,
    which must record the SHA-256 of this file as ``init_sha256``."""
    spec = rendered.spec
    params = {name: shape for name, role, shape in spec.declared if role == "param"}
    inputs = {name: shape for name, role, shape in spec.declared if role == "input"}
    reduction = {"mean": "averaged over the batch", "sum": "summed over the batch",
                 None: "one value per example"}[spec.reduce]
    return environment().get_template("__init__.py.j2").render(
        name=spec.name,
        version=__version__,
        source=_model_file(spec.source),
        summary=spec.summary,
        gradient_doc=spec.gradient_doc,
        has_loss=spec.has_loss,
        dtype=spec.dtype,
        reduce=spec.reduce,
        params=params,
        inputs=inputs,
        outputs=tuple(spec.outputs),
        wrt=tuple(spec.wrt),
        declared={name: (role, shape) for name, role, shape in spec.declared},
        kernels=[dict(kind=k.kind, function=k.function, arguments=_kernel_arguments(k), work_size=k.work_size,
                      point=has_point_entry(k))
                 for k in spec.kernels],
        loss_reduction=reduction,
        train=None if (train := train_spec(spec)) is None else _train.runtime_arguments(train),
        train_unavailable=_train.unavailable(spec.name, spec.has_loss, spec.reduce),
    )
