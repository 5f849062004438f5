"""Checking compiled gradients against independent references.

At random points of a model's domain, the compiled ``value_and_grad`` is
compared with central finite differences of the compiled loss (Richardson
extrapolated, along each element of small symbols and along random
directions of large ones) and, for small scalar models, with ``sympy.diff``
of the per-example loss evaluated by ``lambdify``. Nothing is expanded for
large models: the symbolic reference is skipped when the loss's expanded
tree is big.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from . import functions as sgf
from . import ops, runtime
from .errors import OptionError
from .views import tree_size
from .model import Model

#: Expanded loss trees larger than this are not handed to sympy.diff.
SYMPY_LIMIT = 3000

#: What lambdify needs beyond NumPy: symgrad's functions, and the derivative of a
#: step, which is zero at the random points the check draws.
_LAMBDIFY_EXTRAS = {**sgf.NUMPY_FUNCTIONS, "DiracDelta": lambda x, *k: np.zeros_like(np.asarray(x, dtype=float))}
#: SciPy, when installed, evaluates the special functions NumPy lacks (erf, gamma...).
_LAMBDIFY_MODULES = [_LAMBDIFY_EXTRAS] + (["scipy"] if importlib.util.find_spec("scipy") else []) + ["numpy"]

#: Ranges tried in order for random points; the first that gives finite values is used.
_RANGES = ((0.3, 0.9), (-0.9, 0.9), (1.2, 2.0))


@dataclass
class CheckReport:
    """The worst disagreement found for one model, or why nothing could be compared."""

    model: str
    finite_difference_error: float = 0.0
    sympy_error: float | None = None
    directions: int = 0
    skipped_directions: int = 0
    tolerance: float = 1e-6
    notes: list = field(default_factory=list)
    #: Set when the model has nothing to check (no loss, nothing to differentiate): not a failure.
    nothing_to_check: str | None = None
    #: Set when nothing could be compared although there was something to check.
    unchecked: str | None = None
    #: Why the sympy.diff reference was not used, when it was not.
    sympy_skipped: str = "not compared"
    #: Worst relative difference between a point's batch and the same examples repeated into a
    #: batch that runs as several kernel calls (and on two threads); None if not compared.
    large_batch_error: float | None = None
    large_batch: int = 0
    #: Worst relative error of each extra kernel (jvp, hvp, hessian, jacobian) against central
    #: differences of the kernel one order below (forward, grad).
    extra_errors: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        if self.nothing_to_check:
            return True
        worst = max(self.finite_difference_error, self.sympy_error or 0.0, self.large_batch_error or 0.0,
                    *self.extra_errors.values())
        return worst <= self.tolerance and self.directions > 0 and not self.unchecked

    def line(self) -> str:
        if self.nothing_to_check:
            return f"{self.model}: nothing to check: {self.nothing_to_check}"
        if self.unchecked:
            return f"{self.model}: NOT CHECKED: {self.unchecked}"
        sym = f"skipped ({self.sympy_skipped})" if self.sympy_error is None else f"{self.sympy_error:.2e}"
        verdict = "ok" if self.ok else "MISMATCH"
        extra = f", {self.skipped_directions} directions skipped near kinks" if self.skipped_directions else ""
        large = ("" if self.large_batch_error is None else
                 f"; vs the same examples in a batch of {self.large_batch:,} {self.large_batch_error:.2e}")
        kinds = "".join(f"; {kind} vs central differences of {_BELOW[kind]} {error:.2e}"
                        for kind, error in self.extra_errors.items())
        return (f"{self.model}: {verdict}: worst relative error vs finite differences "
                f"{self.finite_difference_error:.2e} over {self.directions} directions{extra}; "
                f"vs sympy.diff {sym}{large}{kinds}")


def _class_index_inputs(model: Model) -> dict:
    """Inputs used as class indices (cross_entropy targets): name -> number of classes."""
    graph = model.graph
    found = {}
    names = {nid: name for name, nid in graph.symbols.items()}
    for node in graph.nodes:
        if node.op == "take" and node.args[1] in names:
            found[names[node.args[1]]] = graph.nodes[node.args[0]].size
    return found


def _direct_domains(model: Model) -> dict:
    """Symbol name -> the intersection of the domains of the ops that read it directly.

    Each op's registry entry says where it is defined and tested (log on
    positive numbers, acosh above 1...); a symbol fed straight into such ops
    is sampled there.
    """
    graph = model.graph
    names = {nid: name for name, nid in graph.symbols.items()}
    domains: dict = {}
    for node in graph.nodes:
        op = ops.get(node.op)
        if op.domain is None or op.kind != "elementwise":
            continue
        for k, arg in enumerate(node.args):
            if arg in names:
                low, high = op.domain[min(k, len(op.domain) - 1)]
                old_low, old_high = domains.get(names[arg], (-np.inf, np.inf))
                domains[names[arg]] = (max(low, old_low), min(high, old_high))
    return {k: v for k, v in domains.items() if v[0] < v[1]}


def random_point(model: Model, rng, low: float, high: float, batch: int, *, op_domains: bool = True) -> dict:
    """Random values for every symbol: params shared, inputs with a batch axis.

    Symbols read directly by ops with a domain are drawn from it (unless
    ``op_domains`` is False); the others from [low, high]. Class indices are
    whole numbers of their range.
    """
    classes = _class_index_inputs(model)
    domains = _direct_domains(model) if op_domains else {}
    values = {}
    for symbol in model.params + model.inputs:
        name = str(symbol.name)
        shape = tuple(int(d) for d in symbol.shape) if hasattr(symbol, "shape") else ()
        is_input = symbol in model.inputs
        full = ((batch,) if is_input else ()) + shape
        if name in classes:
            values[name] = rng.integers(0, classes[name], size=full).astype(float)
        else:
            values[name] = rng.uniform(*domains.get(name, (low, high)), size=full)
        if full == ():
            values[name] = float(values[name])
    return values


#: The kernel one order below each extra kernel, whose central differences check it.
_BELOW = {"jvp": "forward", "jacobian": "forward", "hvp": "grad", "hessian": "grad"}


def _central(f, values: dict, direction: dict, scale: float) -> dict:
    """Richardson-extrapolated central differences of ``f`` (values -> {name: array}) along
    ``direction`` ({name: array}), and estimates of their own errors."""

    def central(h):
        plus = {**values, **{k: values[k] + h * d for k, d in direction.items()}}
        minus = {**values, **{k: values[k] - h * d for k, d in direction.items()}}
        fp, fm = f(plus), f(minus)
        return {k: (np.asarray(fp[k], dtype=float) - np.asarray(fm[k], dtype=float)) / (2 * h) for k in fp}

    h = 1e-4 * max(1.0, scale)
    d1, d2 = central(h), central(h / 2)
    return {k: ((4 * d2[k] - d1[k]) / 3, np.max(np.abs((4 * d2[k] - d1[k]) / 3 - d2[k]), initial=0.0)) for k in d1}


def _relative(analytic, numeric, noise, floor: float):
    """The relative error of ``analytic`` against ``numeric``, or None when the differences are noise."""
    analytic, numeric = np.asarray(analytic, dtype=float), np.asarray(numeric, dtype=float)
    scale = max(float(np.max(np.abs(analytic), initial=0.0)), float(np.max(np.abs(numeric), initial=0.0)), floor)
    if noise > 1e-4 * scale + 1e-9:
        return None
    return float(np.max(np.abs(analytic - numeric), initial=0.0)) / scale


def _check_extra_kernels(model: Model, module, values: dict, rng, report: CheckReport) -> None:
    """Each extra kernel at the point ``values`` against central differences of the kernel one
    order below, along a random direction of the wrt symbols: jvp and jacobian (contracted with
    the direction) against forward; hvp and hessian (times the direction) against grad."""
    wrt = [name for name in model.wrt if name not in _class_index_inputs(model)]
    direction = {name: rng.standard_normal(np.shape(values[name])) for name in wrt}
    tangents = {name: (float(d) if np.ndim(d) == 0 else d) for name, d in direction.items()}
    scale = max(float(np.max(np.abs(values[name]))) for name in wrt) if wrt else 1.0
    inputs = {str(s.name) for s in model.inputs}
    floor = 1e-7
    found = {}
    if "jvp" in model.kernels or "jacobian" in model.kernels:
        numeric = _central(lambda v: module.forward(**v), values, direction, scale)
        if "jvp" in model.kernels:
            _, got = module.jvp(tangents, **values)
            found["jvp"] = [_relative(got[k], n, noise, floor) for k, (n, noise) in numeric.items()]
        if "jacobian" in model.kernels:
            J = module.jacobian(**values)
            errors = []
            for row, (n, noise) in numeric.items():
                if row == "loss" and model.reduce is not None:  # the jacobian's loss is per example
                    continue
                total = 0.0
                for name in wrt:
                    block, d = np.asarray(J[row][name], dtype=float), np.asarray(direction[name], dtype=float)
                    per = name in inputs and np.ndim(d) > len(_symbol_shape(model, name))
                    axes = np.ndim(d) - (1 if per else 0)
                    if per:  # one example's block against its own direction
                        total = total + np.einsum("n...k,nk->n...", block.reshape(block.shape[:block.ndim - axes] + (-1,)),
                                                  d.reshape(d.shape[0], -1))
                    else:
                        total = total + np.tensordot(block, d, axes=axes) if axes else total + block * d
                errors.append(_relative(total, np.reshape(n, np.shape(total)), noise, floor))
            found["jacobian"] = errors
    if "hvp" in model.kernels or "hessian" in model.kernels:
        numeric = _central(lambda v: module.grad(**v), values, direction, scale)
        hv = module.hvp(tangents, **values)
        found["hvp"] = [_relative(hv[k], n, noise, floor) for k, (n, noise) in numeric.items()]
        if "hessian" in model.kernels:
            _, _, H = module.hessian(**values)
            errors = []
            for a, (n, noise) in numeric.items():  # (H d)[a] from the blocks, as hvp would give it
                total = np.zeros(np.shape(n))
                keep = np.ndim(n) > len(_symbol_shape(model, a))  # a's gradient is per example
                for b in wrt:
                    block, d = np.asarray(H[a][b], dtype=float), np.asarray(direction[b], dtype=float)
                    sb = len(_symbol_shape(model, b))
                    flat = block.reshape(block.shape[:block.ndim - sb] + (-1,))
                    if b in inputs and d.ndim > sb:  # a direction per example, against its own block
                        product = np.einsum("n...k,nk->n..." if keep else "n...k,nk->...", flat, d.reshape(d.shape[0], -1))
                    else:
                        product = flat @ d.reshape(-1)
                    total = total + np.reshape(product, np.shape(total))
                errors.append(_relative(total, n, noise, floor))
            found["hessian"] = errors
    for kind, errors in found.items():
        measured = [e for e in errors if e is not None]
        if measured:
            report.extra_errors[kind] = max(report.extra_errors.get(kind, 0.0), *measured)


def _symbol_shape(model: Model, name: str) -> tuple:
    symbol = model.symbols[name]
    return tuple(int(d) for d in symbol.shape) if hasattr(symbol, "shape") else ()


def _scalar_objective(module, model: Model, values: dict) -> float:
    """The reduced loss (per-example losses summed when the model does not reduce)."""
    loss = module.forward(**values)["loss"]
    return float(np.sum(loss))


def _directions(shape, rng, is_input: bool, batch: int, count: int = 3) -> list:
    full = ((batch,) if is_input else ()) + tuple(shape)
    size = int(np.prod(full)) if full else 1
    directions = []
    if size <= 12:
        for k in range(size):
            d = np.zeros(size)
            d[k] = 1.0
            directions.append(d.reshape(full))
    for _ in range(count if size > 12 else 1):
        d = rng.standard_normal(full)
        directions.append(d / np.linalg.norm(d))
    return directions


def _richardson(f, x0: dict, name: str, d, scale: float) -> tuple:
    """Central-difference derivative of f along d, and an estimate of its own error."""

    def central(h):
        plus = dict(x0)
        minus = dict(x0)
        plus[name] = x0[name] + h * d
        minus[name] = x0[name] - h * d
        return (f(plus) - f(minus)) / (2 * h)

    h = 1e-4 * max(1.0, scale)
    d1, d2 = central(h), central(h / 2)
    estimate = (4 * d2 - d1) / 3
    return estimate, abs(estimate - d2)


def check_model(model: Model, module, *, points: int = 3, batch: int = 3, seed: int = 0,
                tolerance: float = 1e-6, ranges=None) -> CheckReport:
    """Compare ``module``'s gradients of ``model`` with finite differences and sympy.diff.

    ``ranges``: (low, high) intervals tried in order for every random value;
    the first where the loss and its gradient are finite is used. By default
    a few ranges around 0 and 1 are tried, and symbols read directly by an op
    with a domain (log, acosh...) are drawn from that domain.
    """
    for value, what in ((points, "points"), (batch, "batch")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise OptionError(f"{what} must be a whole number, at least 1; got {value!r}")
    if not (isinstance(tolerance, (int, float)) and 0 < tolerance < float("inf")):
        raise OptionError(f"tolerance must be a relative error above 0 such as 1e-6; got {tolerance!r}")
    chosen = ranges is not None  # the user's ranges hold for every symbol
    ranges = tuple(ranges) if chosen else _RANGES
    for low, high in ranges:
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise OptionError(f"a range of random values needs finite low < high; got ({low}, {high})")
    rng = np.random.default_rng(seed)
    report = CheckReport(model.name, tolerance=tolerance)
    if model.loss is None:
        report.nothing_to_check = "the model has no loss, so it has no gradient (it computes outputs only)"
        return report
    inputs = {str(s.name) for s in model.inputs}
    class_indices = _class_index_inputs(model)  # whole numbers: no derivative to check
    checkable = [name for name in model.wrt if name not in class_indices]
    if not checkable:
        report.nothing_to_check = ("it differentiates with respect to nothing (no params, and wrt= names "
                                   "none)" if not model.wrt else "its only wrt= symbols are class indices")
        return report
    missed = 0
    for _ in range(points):
        values, loss, grads = _finite_point(model, module, rng, batch, ranges, op_domains=not chosen)
        if values is None:
            missed += 1
            continue
        objective = lambda v: _scalar_objective(module, model, v)  # noqa: E731
        for name in checkable:
            grad = np.asarray(grads[name], dtype=float)
            for d in _directions(np.shape(values[name])[1:] if name in inputs else np.shape(values[name]),
                                 rng, name in inputs, batch):
                d = d.reshape(np.shape(values[name]))
                analytic = float(np.sum(grad * d))
                numeric, noise = _richardson(objective, values, name, d, float(np.max(np.abs(values[name]))))
                # Below ~1e-5 of the loss, differences of the loss are dominated by rounding.
                scale = max(abs(analytic), abs(numeric), 1e-5 * (1 + abs(loss)))
                if noise > 1e-4 * scale + 1e-9:
                    report.skipped_directions += 1
                    continue
                report.directions += 1
                report.finite_difference_error = max(report.finite_difference_error,
                                                     abs(analytic - numeric) / scale)
        sym = _sympy_error(model, values, grads, batch, report)
        if sym is not None:
            report.sympy_error = max(report.sympy_error or 0.0, sym)
        if report.large_batch_error is None and inputs:
            _compare_large_batch(model, module, values, loss, grads, batch, report)
        if model.kernels:
            _check_extra_kernels(model, module, values, rng, report)
    tried = ", ".join(f"[{low:g}, {high:g}]" for low, high in ranges)
    if not chosen:
        tried += ", and from each op's own domain for symbols read directly by log, sqrt, acosh..."
    if missed == points:
        report.unchecked = (
            f"no random point gave a finite loss and gradient (values drawn from {tried}). If the model is defined "
            f"elsewhere, draw the points there (symgrad check --range LOW:HIGH; ranges= in Python); if its "
            f"loss is NaN or infinite wherever you expect it to be defined, look for a log or sqrt of a "
            f"negative value or a division by zero in the model")
    elif report.directions == 0:
        report.unchecked = (f"finite differences were too noisy along all {report.skipped_directions} "
                            f"directions tried (the loss has a step or kink near every point drawn)")
    elif missed:
        report.notes.append(f"{missed} of {points} random points had no finite loss and gradient "
                            f"and were skipped")
    return report


def _compare_large_batch(model: Model, module, values: dict, loss: float, grads: dict, batch: int,
                         report: CheckReport) -> None:
    """The point's examples repeated into a batch of more than two kernel calls' slices.

    A large batch runs as several kernel calls whose batch sums are added (on
    one thread, and on two): a sum that counts a term once per example of the
    whole batch in each call (a loss term of params only) shows here, where
    small batches cannot show it. Repeated examples give known results: a mean
    is unchanged, a sum grows with the repeats, per-example values repeat.
    """
    repeats = 2 * runtime.CHUNK // batch + 1
    inputs = {str(s.name) for s in model.inputs}
    big = {k: (np.concatenate([np.asarray(v)] * repeats) if k in inputs else v) for k, v in values.items()}
    n = batch * repeats
    scale_sum = repeats if model.reduce == "sum" else 1
    worst = 0.0
    try:
        for threads in (1, 2):
            big_loss, big_grads = module.value_and_grad(**big, threads=threads)
            expected_loss = (np.tile(np.asarray(module.forward(**values)["loss"]), repeats)
                             if model.reduce is None else loss * scale_sum)
            pairs = [(big_loss, expected_loss)]
            for name, g in grads.items():
                g = np.asarray(g, dtype=float)
                if name in inputs or model.reduce is None:  # per example: repeated; a mean's share shrinks
                    expected = np.concatenate([g] * repeats) / (repeats if model.reduce == "mean" and name in inputs else 1)
                else:
                    expected = g * scale_sum
                pairs.append((big_grads[name], expected))
            for got, expected in pairs:
                got, expected = np.asarray(got, dtype=float), np.asarray(expected, dtype=float)
                size = max(float(np.max(np.abs(expected))), 1e-300)
                worst = max(worst, float(np.max(np.abs(got - expected))) / size)
    except MemoryError:
        report.notes.append(f"a batch of {n:,} examples did not fit in memory: not compared")
        return
    report.large_batch_error, report.large_batch = worst, n


def _finite_point(model, module, rng, batch, ranges, *, op_domains: bool):
    for low, high in ranges:
        for _ in range(3):
            values = random_point(model, rng, low, high, batch, op_domains=op_domains)
            try:
                loss, grads = module.value_and_grad(**values)
            except Exception:  # e.g. an argument combination the domain forbids
                continue
            finite = np.all(np.isfinite(loss)) and all(np.all(np.isfinite(g)) for g in grads.values())
            if finite:
                return values, float(np.sum(loss)), grads
    return None, None, None


def _sympy_error(model: Model, values: dict, grads: dict, batch: int, report: CheckReport):
    """Worst relative error of the compiled gradients against sympy.diff, or None if skipped.

    The loss is differentiated with respect to real stand-ins of its symbols:
    SymPy's derivative of ``Abs(u)`` for a complex ``u`` involves ``re`` and
    ``im`` and cannot be evaluated, while for a real ``u`` it is
    ``sign(u)*u'``. The derivatives of steps (``DiracDelta``) are zero at the
    random points drawn. A reference that SymPy cannot produce or NumPy cannot
    evaluate is skipped with a note, never an error.
    """
    if any(isinstance(s, sp.MatrixSymbol) for s in model.params + model.inputs):
        report.sympy_skipped = "matrix symbols: SymPy's matrix calculus is no reliable reference"
        return None
    loss_node = model.graph.results["example_loss"][0].node
    if tree_size(model.graph, loss_node, SYMPY_LIMIT) > SYMPY_LIMIT:
        report.sympy_skipped = f"the loss written out has more than {SYMPY_LIMIT:,} terms"
        return None
    symbols = list(model.params + model.inputs)
    real = {s: sp.Dummy(str(s.name), real=True) for s in symbols}
    arguments = [real[s] for s in symbols]
    inputs = set(model.inputs)
    worst = 0.0
    n = batch
    try:
        loss = model.loss.xreplace(real)
        for name in model.wrt:
            symbol = model.symbols[name]
            derivative = sp.lambdify(arguments, sp.diff(loss, real[symbol]), modules=_LAMBDIFY_MODULES)
            with np.errstate(all="ignore"):
                per_example = np.array([
                    derivative(*[values[str(s.name)][e] if s in inputs else values[str(s.name)] for s in symbols])
                    for e in range(n)
                ], dtype=float)
            if symbol in inputs or model.reduce is None:
                expected = per_example / (n if model.reduce == "mean" else 1)
            else:
                expected = per_example.mean() if model.reduce == "mean" else per_example.sum()
            got = np.asarray(grads[name], dtype=float)
            scale = np.maximum(np.maximum(np.abs(expected), np.abs(got)), 1e-12)
            worst = max(worst, float(np.max(np.abs(expected - got) / scale)))
    except Exception as exc:  # SymPy or its NumPy printer cannot handle the derivative: skip it
        reason = f"sympy.diff's derivative could not be evaluated ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
        report.sympy_skipped = "SymPy could not evaluate it"
        if reason not in report.notes:
            report.notes.append(reason)
        return None
    return worst
