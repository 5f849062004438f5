"""The stages in order: model -> graph -> gradient graph -> kernel specs -> files -> module.

Each stage is a function of the previous stage's result; this module only
strings them together and times them, for ``symgrad build`` and
:func:`symgrad.compile`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .autodiff import differentiate
from .build import BuildResult, build, compiler_flags, load
from .frontend import short_text
from .graph import Graph
from .model import Model
from .render import PackageSpec, RenderedPackage, render
from .emit import emit_kernel
from .plan import plan_kernel

DTYPES = ("float64", "float32")


@dataclass
class Generated:
    """A model's differentiated graph and rendered package, with stage timings in seconds."""

    model: Model
    graph: Graph
    package: RenderedPackage
    timings: dict = field(default_factory=dict)


class _Stopwatch:
    def __init__(self):
        self.timings: dict = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self._last
        self._last = now


def gradient_graph(model: Model) -> Graph:
    """The model's graph with the gradients of its loss (or the plain graph without a loss)."""
    if model.loss is None:
        return model.graph
    return differentiate(model.graph, model.wrt, model.reduce)


def generate(model: Model, *, dtype: str = "float64") -> Generated:
    """Differentiate, plan, emit and render ``model`` (no compiler involved)."""
    if dtype not in DTYPES:
        from .errors import ModelError

        raise ModelError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    clock = _Stopwatch()
    graph = gradient_graph(model)
    clock.lap("differentiate")
    kinds = ("forward", "value_and_grad") if model.loss is not None else ("forward",)
    plans = [plan_kernel(graph, kind, model=model.name, dtype=dtype) for kind in kinds]
    clock.lap("plan")
    kernels = tuple(emit_kernel(plan) for plan in plans)
    clock.lap("emit")
    spec = PackageSpec(
        name=model.name,
        kernels=kernels,
        dtype=dtype,
        reduce=model.reduce,
        declared=tuple((str(s.name), "param", _shape(s)) for s in model.params)
        + tuple((str(s.name), "input", _shape(s)) for s in model.inputs),
        outputs=tuple(model.outputs),
        wrt=model.wrt,
        has_loss=model.loss is not None,
        summary=_summary(model),
        gradient_doc=_gradient_doc(model),
        source=model.source,
    )
    package = render(spec)
    clock.lap("render")
    return Generated(model, graph, package, clock.timings)


def build_model(model: Model, out_dir="generated", *, dtype: str = "float64", native: bool = False,
                fast_math: bool = False, flags=None, force: bool = False) -> tuple:
    """Generate and compile ``model`` into ``out_dir/<name>``; returns (Generated, BuildResult).

    ``native`` and ``fast_math`` are described at :func:`symgrad.build.compiler_flags`;
    ``flags`` replaces the compiler flags altogether.
    """
    generated = generate(model, dtype=dtype)
    start = time.perf_counter()
    if flags is None:
        package = generated.package
        flags = compiler_flags(native=native, fast_math=fast_math, source_size=package.source_size(),
                               vector_math=package.calls_vector_math())
    result: BuildResult = build(generated.package, out_dir, flags=flags, force=force)
    generated.timings["compile" if not result.cached else "cache check"] = time.perf_counter() - start
    return generated, result


def compile(model: Model, out_dir="generated", *, dtype: str = "float64", native: bool = False,
            fast_math: bool = False, flags=None, force: bool = False):
    """Build ``model`` (or reuse the cached build) and import its generated module.

    The module offers ``forward``, ``value_and_grad`` and ``grad``; see its
    docstring. ``dtype="float32"`` makes single-precision kernels;
    ``native=True`` compiles for this machine's CPU; ``fast_math=True``
    relaxes IEEE semantics (see :func:`symgrad.build.compiler_flags`).
    """
    _, result = build_model(model, out_dir, dtype=dtype, native=native, fast_math=fast_math, flags=flags,
                            force=force)
    return load(result.path)


def _shape(symbol) -> tuple:
    return tuple(int(d) for d in symbol.shape) if hasattr(symbol, "shape") else ()


def _summary(model: Model) -> str:
    lines = []
    if model.loss is not None:
        lines.append(f"    loss = {short_text(model.loss, 200)}   (reduce={model.reduce!r})")
    for name, expr in model.outputs.items():
        lines.append(f"    {name} = {short_text(expr, 200)}")
    params = ", ".join(f"{s.name}{_shape_note(s)}" for s in model.params) or "none"
    inputs = ", ".join(f"{s.name}{_shape_note(s)}" for s in model.inputs) or "none"
    lines.append(f"    params: {params}")
    lines.append(f"    inputs: {inputs}")
    return "\n".join(lines)


def _shape_note(symbol) -> str:
    shape = _shape(symbol)
    return f" ({shape[0]}x{shape[1]})" if shape else ""


def _gradient_doc(model: Model) -> str:
    if model.loss is None:
        return ""
    from .inspect import gradient_formulas

    shown = 20
    lines = ["    Gradients of one example's loss:"]
    for name, text in gradient_formulas(model, limit=200, most=shown).items():
        lines.append(f"        d loss / d {name} = {text}")
    if len(model.wrt) > shown:
        lines.append(f"        ... and {len(model.wrt) - shown} more (symgrad show prints them all)")
    scale = {"mean": "averaged over the batch", "sum": "summed over the batch",
             None: "one per example"}[model.reduce]
    lines.append(f"    Parameter gradients are {scale}; input gradients are per example.")
    return "\n".join(lines)
