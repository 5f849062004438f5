"""Models: what a user declares, and loading them from model files.

A :class:`Model` names the symbols of a model by role (params shared by a
batch, inputs given per example), its per-example loss and outputs, how the
loss is reduced over a batch, and what to differentiate with respect to. It
is checked when it is made: an undeclared symbol, a clash of names, a
non-scalar loss or an unsupported function is an error right there, naming
the culprit.

:func:`load_model` runs a model file and collects the models it makes.
"""

from __future__ import annotations

import contextvars
import importlib.util
import keyword
import runpy
import site
import sys
import sysconfig
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path

import sympy as sp
from sympy.logic.boolalg import Boolean

from .errors import ModelError, ModelFileError, SymgradError
from .frontend import build_graph, short_text

REDUCTIONS = ("mean", "sum", None)

_collector: contextvars.ContextVar = contextvars.ContextVar("symgrad_model_collector", default=None)


def _as_symbol_list(value, what: str) -> list:
    if value is None:
        return []
    if isinstance(value, (sp.Symbol, sp.MatrixSymbol)):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise ModelError(f"{what} must be a list of SymPy symbols, got {value!r}") from None
    for item in items:
        if not isinstance(item, (sp.Symbol, sp.MatrixSymbol)):
            raise ModelError(
                f"{what} must hold SymPy Symbols or MatrixSymbols; {item!r} is a {type(item).__name__}"
            )
        if isinstance(item, sp.MatrixSymbol):
            for dim in item.shape:
                if not getattr(dim, "is_Integer", False):
                    raise ModelError(f"{what}: matrix symbol {item.name} has a symbolic shape {item.shape}; "
                                     f"give it whole-number dimensions")
    return items


#: Top-level modules a generated package imports, or that its users need next to it.
_NEEDED_MODULES = ("numpy", "cffi", "_cffi_backend", "sympy", "symgrad")


def _module_clash(name: str) -> str | None:
    """What importable module the package ``name`` would shadow, or None.

    Checked: the modules generated packages need, the standard library, and
    modules installed in this Python's library folders (``site-packages``).
    A folder of generated packages on ``sys.path`` is not a clash.
    """
    if name in _NEEDED_MODULES:
        return f"the module {name}, which generated packages import"
    if name in sys.stdlib_module_names or name in sys.builtin_module_names:
        return f"the standard-library module {name}"
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    if spec is None or origin in (None, "namespace", "built-in", "frozen"):
        return None
    where = Path(origin).resolve()
    libraries = {Path(p).resolve() for p in sysconfig.get_paths().values()}
    libraries |= {Path(p).resolve() for p in site.getsitepackages() + [site.getusersitepackages()]}
    if any(where.is_relative_to(folder) for folder in libraries):
        return f"the installed module {name} ({where})"
    return None


def _caller_labels(depth: int) -> dict:
    """Expressions bound to names in the caller's namespace: expression -> name, for display."""
    frame = sys._getframe(depth)
    labels = {}
    for name, value in list(frame.f_locals.items()):
        if name.startswith("_") or not isinstance(value, sp.Basic):
            continue
        if isinstance(value, (sp.Symbol, sp.MatrixSymbol)) or value.is_Number:
            continue
        labels.setdefault(value, name)
    return labels


class Model:
    """A differentiable model: symbols by role, a per-example loss, outputs.

    Args:
        name: a Python identifier; the generated package is ``generated/<name>``.
        params: symbols shared by every example of a batch (weights, coefficients).
        inputs: per-example data; batched along a leading axis at call time.
        loss: a scalar expression of one example (a 1x1 matrix counts as a scalar).
        outputs: name -> expression, evaluated per example.
        reduce: how the loss is combined over a batch: ``"mean"`` (default),
            ``"sum"``, or ``None`` for one loss (and one gradient) per example.
        wrt: the symbols to differentiate with respect to (default: all
            params); inputs are allowed and get per-example gradients.
        kernels: extra kernels to build beside forward, value_and_grad and
            grad, any of ``"jacobian"``, ``"jvp"``, ``"hvp"``, ``"hessian"``
            (see the generated module's docstring); the default builds none,
            so a build costs what it did.

    Intermediate expressions bound to variable names where the model is made
    (``h = sg.sigmoid(W1*x + b1)``) keep those names in ``symgrad show`` and in
    comments of the generated C.
    """

    def __init__(self, name, *, params=(), inputs=(), loss=None, outputs=None, reduce="mean", wrt=None,
                 kernels=()):
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise ModelError(f"model name {name!r} must be a Python identifier (letters, digits, _), "
                             f"e.g. {'linear_fit'!r}: it names the generated package")
        clash = _module_clash(name)
        if clash:
            raise ModelError(f"model name {name!r} is the name of {clash}: its generated package would shadow "
                             f"that module wherever the output folder is on sys.path (and break what "
                             f"imports it); choose another name, e.g. {name + '_model'!r}")
        self.name = name
        self.params = tuple(_as_symbol_list(params, "params"))
        self.inputs = tuple(_as_symbol_list(inputs, "inputs"))
        self._check_names()
        if reduce not in REDUCTIONS:
            raise ModelError(f"reduce must be 'mean', 'sum' or None, got {reduce!r}")
        self.reduce = reduce
        self.loss = None if loss is None else self._sympify(loss, "loss")
        if outputs is not None and not isinstance(outputs, Mapping):
            raise ModelError(f"outputs must map names to expressions, e.g. outputs={{'p': p}}; got a "
                             f"{type(outputs).__name__}: {short_text(outputs) if isinstance(outputs, sp.Basic) else repr(outputs)[:80]}")
        outputs = dict(outputs or {})
        for key in outputs:
            if not isinstance(key, str) or not key:
                raise ModelError(f"output names must be non-empty strings, got {key!r}")
            if key == "loss":
                raise ModelError("'loss' is reserved for the model's loss; give the output another name")
        self.outputs = {k: self._sympify(v, f"output {k!r}") for k, v in outputs.items()}
        if self.loss is None and not self.outputs:
            raise ModelError(f"model {name!r} has neither a loss nor outputs: give it loss=... or outputs={{...}}")
        self.wrt = self._resolve_wrt(wrt)
        self.kernels = self._resolve_kernels(kernels)
        self.source = ""
        self.graph = build_graph(
            params=self.params,
            inputs=self.inputs,
            loss=self.loss,
            outputs=self.outputs,
            reduce=self.reduce,
            labels=_caller_labels(2),
        )
        collected = _collector.get()
        if collected is not None:
            collected.append(self)

    # --- validation ------------------------------------------------------------------

    def _check_names(self) -> None:
        seen = {}
        for role, symbols in (("param", self.params), ("input", self.inputs)):
            for s in symbols:
                name = str(s.name)
                if name in seen:
                    other = seen[name]
                    if other == role:
                        raise ModelError(f"symbol {name!r} is declared twice as a {role}")
                    raise ModelError(f"symbol {name!r} is declared both as a param and as an input; "
                                     f"a value is either shared by the batch (param) or per example (input)")
                seen[name] = role

    def _sympify(self, value, what: str):
        try:
            expr = sp.sympify(value, strict=True)
        except (sp.SympifyError, TypeError) as exc:
            if isinstance(value, str):
                raise ModelError(f"{what} must be a SymPy expression, got the string {value!r}: build it from "
                                 f"the symbols you declare (w = sp.Symbol('w'); loss=w**2), so that its "
                                 f"symbols are those objects") from None
            if isinstance(value, (list, tuple, set)) or getattr(value, "ndim", 0):
                raise ModelError(f"{what} must be one SymPy expression, got a {type(value).__name__}: "
                                 f"{repr(value)[:80]}; several values go into outputs={{name: expression}}, "
                                 f"a vector into a sp.Matrix") from None
            raise ModelError(f"{what} must be a SymPy expression, got {value!r} ({exc})") from None
        if not isinstance(expr, sp.Basic):
            raise ModelError(f"{what} must be one SymPy expression, got a {type(value).__name__}: {value!r}")
        if isinstance(expr, Boolean) and not isinstance(expr, sp.Expr):  # relations (Eq, <), logic
            raise ModelError(
                f"{what} is the condition {short_text(expr)}, which is true or false, not a number to "
                f"differentiate. For a distance write e.g. (w - x)**2; to use a condition as a value write "
                f"sp.Piecewise((1, condition), (0, True))")
        return expr

    def _resolve_wrt(self, wrt) -> tuple:
        if wrt is None:
            return tuple(str(s.name) for s in self.params)
        declared = {str(s.name): s for s in self.params + self.inputs}
        if isinstance(wrt, (str, sp.Symbol, sp.MatrixSymbol)):
            items = [wrt]
        else:
            try:
                items = list(wrt)
            except TypeError:
                raise ModelError(f"wrt must be a symbol, a name, or a list of them; got {wrt!r}") from None
        names = []
        for item in items:
            name = item if isinstance(item, str) else str(getattr(item, "name", item))
            if name not in declared or (not isinstance(item, str) and declared[name] != item):
                raise ModelError(f"wrt names {name!r}, which is not a declared param or input of {self.name!r}")
            if name in names:
                raise ModelError(f"wrt names {name!r} twice")
            names.append(name)
        if self.loss is None and names and wrt is not None:
            raise ModelError("wrt needs a loss to differentiate; give the model loss=...")
        return tuple(names)

    def _resolve_kernels(self, kernels) -> tuple:
        from .forward import EXTRA_KERNELS

        items = [kernels] if isinstance(kernels, str) else kernels
        try:
            items = list(items)
        except TypeError:
            raise ModelError(f"kernels must be a list of kernel names among {', '.join(EXTRA_KERNELS)}; "
                             f"got {kernels!r}") from None
        for item in items:
            if item not in EXTRA_KERNELS:
                raise ModelError(f"kernels names {item!r}, which is not a kernel symgrad builds; the extra kernels "
                                 f"are {', '.join(map(repr, EXTRA_KERNELS))} (forward, value_and_grad and grad "
                                 f"are always built)")
            if item in ("hvp", "hessian") and self.loss is None:
                raise ModelError(f"kernels={item!r} differentiates the loss twice; give the model loss=...")
            if not self.wrt:
                raise ModelError(f"kernels={item!r} differentiates with respect to wrt, which is empty; "
                                 f"name the symbols in wrt=...")
        return tuple(k for k in EXTRA_KERNELS if k in items)

    # --- views -----------------------------------------------------------------------

    @property
    def symbols(self) -> dict:
        """Declared name -> SymPy symbol, params first."""
        return {str(s.name): s for s in self.params + self.inputs}

    def gradients(self) -> dict:
        """Symbol -> the gradient of one example's loss with respect to it, as a SymPy expression.

        Each equals ``sympy.diff`` of the per-example loss (for matrices, the
        matrix of those derivatives). Built from the graph, without expression
        swell: on a deep model the result is a large shared DAG, so print it
        with care (``symgrad show`` prints it node by node).
        """
        from .pipeline import gradients

        return gradients(self)

    def hessian(self) -> dict:
        """``{a: {b: SymPy expression}}``: the second derivatives of one example's loss with
        respect to the ``wrt`` symbols a and b (for matrices, the derivative of each element of
        a's gradient with respect to each element of b, as an array of shape ``shape(a) + shape(b)``).

        Built from the graph of the ``hvp`` kernel (forward over reverse) with unit tangents, so
        it is meant for small models, like :meth:`gradients`.
        """
        from .pipeline import hessian

        return hessian(self)

    def __repr__(self) -> str:
        params = ", ".join(str(s.name) for s in self.params)
        inputs = ", ".join(str(s.name) for s in self.inputs)
        return f"Model({self.name!r}, params=[{params}], inputs=[{inputs}], reduce={self.reduce!r})"

    def _repr_latex_(self) -> str:
        from .pipeline import latex_summary

        return latex_summary(self)


#: SymPy builds and hashes expressions recursively, so a deep model (a chain of
#: hundreds of layers) needs more than Python's default recursion limit and
#: stack. Model files run on a thread with this much stack and recursion.
MODEL_FILE_STACK = 512 * 1024 * 1024
MODEL_FILE_RECURSION = 200_000


def _with_deep_recursion(function):
    """``function()`` run on a thread with a large stack and a high recursion limit."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = function()
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    old_stack = threading.stack_size()
    old_limit = sys.getrecursionlimit()
    try:
        threading.stack_size(MODEL_FILE_STACK)
        thread = threading.Thread(target=target, name="symgrad-model-file")
        sys.setrecursionlimit(max(old_limit, MODEL_FILE_RECURSION))
        thread.start()
        thread.join()
    finally:
        sys.setrecursionlimit(old_limit)
        threading.stack_size(old_stack)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def load_model(path) -> list:
    """Run the model file at ``path``; returns the models it made, in order.

    A model file is Python: it runs with the permissions of the caller.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {path} does not exist" if not path.exists()
                             else f"model file {path} is not a file")
    return _with_deep_recursion(lambda: _run_model_file(path))


def _run_model_file(path: Path) -> list:
    models: list = []
    token = _collector.set(models)
    try:
        runpy.run_path(str(path), run_name=f"__symgrad_model_{path.stem}__")
    except SyntaxError as exc:
        raise ModelFileError(f"{path}, line {exc.lineno}: syntax error: {exc.msg}") from None
    except SymgradError as exc:
        line = _line_in(path, exc.__traceback__)
        raise type(exc)(f"{path}{f', line {line}' if line else ''}: {exc}") from None
    except SystemExit as exc:
        raise ModelFileError(f"{path} called exit({exc.code}) while it ran") from None
    except Exception as exc:
        line = _line_in(path, exc.__traceback__)
        raise ModelFileError(
            f"{path}{f', line {line}' if line else ''}: the model file raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _collector.reset(token)
    if not models:
        raise ModelFileError(f"{path} defines no model: create one with symgrad.Model(name, loss=..., ...)")
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelFileError(f"{path} defines two models named {duplicates[0]!r}; model names must be unique")
    for m in models:
        m.source = str(path)
    return models


def _line_in(path: Path, tb) -> int | None:
    """The last line of ``path`` in a traceback: where the model file went wrong."""
    line = None
    for frame, lineno in traceback.walk_tb(tb):
        if Path(frame.f_code.co_filename).resolve() == path.resolve():
            line = lineno
    return line
