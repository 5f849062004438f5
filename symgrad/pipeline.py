"""The stages in order: model -> graph -> gradient graph -> kernel specs -> files -> module.

Each stage is a function of the previous stage's result; this module only
strings them together and times them, for ``symgrad build`` and
:func:`symgrad.compile`, and hands the views of :mod:`symgrad.views` the
gradient graphs they render (``symgrad show``, and :mod:`symgrad.symbolic`'s
``Model.gradients()`` and LaTeX).

A model is differentiated at most once per reduction (:func:`derived`): the
kernels read the graph of the model's own reduction, the formulas that of
one example (``reduce=None``), and a command that needs both, or one of them
twice, derives each once.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import forward, symbolic, views
from .autodiff import derive
from .build import BuildResult, build, compiler_flags, load
from .graph import Graph
from .render import PackageSpec, RenderedPackage, render
from .emit import emit_kernel
from .plan import plan_kernel

if TYPE_CHECKING:
    from .model import Model

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


#: Model -> {reduction: its gradient graph}; a model's declaration never changes once made.
_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def derived(model: Model, reduce) -> Graph:
    """``model``'s graph with the gradients of its loss reduced by ``reduce`` (``None``: per
    example), or its plain graph without a loss; derived on first use, then reused."""
    graphs = _DERIVED.setdefault(model, {})
    if reduce not in graphs:
        graphs[reduce] = derive(model.graph, model.wrt, reduce)
    return graphs[reduce]


#: A requested extra kernel -> the kernel kinds it needs beyond forward and value_and_grad.
_KINDS_OF = {"jvp": ("jvp",), "hvp": ("hvp",), "hessian": ("hvp",), "jacobian": ("jacobian",)}


def kernel_kinds(model: Model) -> tuple:
    """The kernel kinds of ``model``'s package: forward, value_and_grad when it has a loss, and
    those its ``kernels=`` asks for (``hessian``: its own kernel for a model without inputs,
    else ``hvp`` sweeps with unit vectors)."""
    kinds = ["forward"] + (["value_and_grad"] if model.loss is not None else [])
    for extra in getattr(model, "kernels", ()):
        needed = _KINDS_OF[extra]
        if extra == "hessian" and not model.inputs:  # every column in one call
            needed = ("hessian",)
        kinds += [k for k in needed if k not in kinds]
    return tuple(kinds)


def kernel_graph(model: Model, kind: str) -> Graph:
    """The graph the ``kind`` kernel of ``model`` is planned from, derived on first use."""
    graphs = _DERIVED.setdefault(model, {})
    key = ("kernel", kind)
    if key not in graphs:
        if kind in ("forward", "value_and_grad"):
            graphs[key] = derived(model, model.reduce)
        elif kind == "jvp":
            graphs[key] = forward.jvp_graph(model.graph, model.wrt)
        elif kind == "hvp":
            graphs[key] = forward.hvp_graph(derived(model, model.reduce), model.wrt)
        elif kind == "jacobian":
            graphs[key] = forward.jacobian_graph(model.graph, model.wrt)
        elif kind == "hessian":
            graphs[key] = forward.hessian_columns_graph(derived(model, None), model.wrt)
        else:
            raise ValueError(f"unknown kernel kind {kind!r}")
    return graphs[key]


def generate(model: Model, *, dtype: str = "float64") -> Generated:
    """Differentiate, plan, emit and render ``model`` (no compiler involved)."""
    if dtype not in DTYPES:
        from .errors import ModelError

        raise ModelError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    clock = _Stopwatch()
    graph = derived(model, model.reduce)
    one_example = derived(model, None)
    clock.lap("differentiate")
    kinds = kernel_kinds(model)
    graphs = {kind: kernel_graph(model, kind) for kind in kinds}
    clock.lap("differentiate")
    plans = [plan_kernel(graphs[kind], kind, model=model.name, dtype=dtype) for kind in kinds]
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
        summary=views.summary(model),
        gradient_doc=views.gradient_doc(model, one_example),
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

    The module offers ``forward``, ``value_and_grad`` and ``grad``, and the
    ``jacobian``, ``jvp``, ``hvp`` and ``hessian`` functions the model's
    ``kernels=`` asks for; see its docstring. ``dtype="float32"`` makes single-precision kernels;
    ``native=True`` compiles for this machine's CPU; ``fast_math=True``
    relaxes IEEE semantics (see :func:`symgrad.build.compiler_flags`).
    """
    _, result = build_model(model, out_dir, dtype=dtype, native=native, fast_math=fast_math, flags=flags,
                            force=force)
    return load(result.path)


def _shape(symbol) -> tuple:
    return tuple(int(d) for d in symbol.shape) if hasattr(symbol, "shape") else ()


# --- views of a model, each from the graph it renders ------------------------------------


def show_text(model: Model) -> str:
    """What ``symgrad show`` prints: the passes and gradients of one example."""
    text = views.format_text(model, derived(model, None))
    if "jacobian" in model.kernels:
        mode = forward.jacobian_mode(model.graph, model.wrt)
        sweeps = forward.jacobian_sweeps(model.graph, model.wrt)
        per = "element of the wrt symbols (tangents)" if mode == "forward" else "element of the outputs and the loss (cotangents)"
        text += (f"The compiled jacobian takes {mode} sweeps: {sweeps}, one per {per}, the fewer of the two.\n")
    return text


def show_latex(model: Model) -> str:
    """``symgrad show --format latex``."""
    return symbolic.format_latex(model, derived(model, None))


def show_dot(model: Model) -> str:
    """``symgrad show --format dot``: a Graphviz picture of both passes."""
    return views.format_dot(model, derived(model, None))


def show_stats(model: Model) -> str:
    """``symgrad show --stats``: op counts of the kernels, from the graphs they are made of."""
    extra = {kind: kernel_graph(model, kind) for kind in kernel_kinds(model)
             if kind not in ("forward", "value_and_grad")}
    return views.format_stats(model, derived(model, model.reduce), extra)


def gradients(model: Model) -> dict:
    """Symbol -> SymPy gradient of one example's loss (see :meth:`Model.gradients`)."""
    return symbolic.gradient_expressions(derived(model, None), model.symbols)


def hessian(model: Model) -> dict:
    """Symbol -> symbol -> SymPy second derivative of one example's loss (see :meth:`Model.hessian`)."""
    from .errors import ModelError

    if model.loss is None:
        raise ModelError(f"model {model.name!r} has no loss, so it has no Hessian; declare loss=...")
    shapes = {name: _shape(model.symbols[name]) for name in model.wrt}
    graph = forward.hessian_graph(derived(model, None), model.wrt, shapes)
    return symbolic.hessian_expressions(graph, model.symbols, shapes)


def show_hessian(model: Model) -> str:
    """``symgrad show --hessian``: the second-order pass of one example, node by node."""
    if model.loss is None:
        return f"Model {model.name}: no loss, so no second-order pass\n"
    graph, tangents = forward.second_order(derived(model, None), model.wrt)
    return views.format_second_order(model, graph, tangents)


def latex_summary(model: Model) -> str:
    """The loss and its gradients as LaTeX (a model's notebook display)."""
    return symbolic.latex_summary(model, derived(model, None))
