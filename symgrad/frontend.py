"""Reading SymPy expressions into a graph.

:class:`SympyReader` walks an expression DAG once, iteratively, with a memo
keyed by sub-expression, so a value shared by many parts of a model is read
once however many paths lead to it (SymPy's own tree walks are exponential on
such DAGs). Each SymPy construct becomes graph nodes through the builder:
scalar functions by their registry entry, matrix constructs (``MatMul``,
``Transpose``, ``M[i, j]``, ``applyfunc``...) by the rules below, and
symgrad's composite functions (``cross_entropy``, ``mse``) by lowering them to
simpler ops.

:func:`build_graph` reads a whole model: its symbols, loss and outputs.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.hadamard import HadamardPower, HadamardProduct
from sympy.matrices.expressions.matexpr import MatrixElement

from . import functions as sgf
from .errors import ModelShapeError, UndeclaredSymbolError, UnsupportedFunctionError
from .graph import Builder, Graph, Result
from .ops import elementwise as _elementwise

#: Heads read one-to-one into the op of the same meaning.
_DIRECT = dict(_elementwise.SYMPY_HEADS)
_DIRECT.update({sgf.softmax: "softmax", sgf.log_softmax: "log_softmax",
                sgf.logsumexp: "logsumexp", sgf.sum: "sum", sp.Trace: "trace"})


def supported_functions() -> list:
    """Names of the SymPy functions and constructs a model may use."""
    names = {getattr(h, "__name__", str(h)) for h in _DIRECT}
    names |= {"Add", "Mul", "Pow", "Max", "Min", "Piecewise", "Heaviside", "MatMul", "MatAdd",
              "Transpose", "HadamardProduct", "HadamardPower", "MatPow", "applyfunc",
              "Identity", "ZeroMatrix", "OneMatrix", "Matrix", "cross_entropy", "mse", "broadcast_to", "scalar", "ITE"}
    return sorted(names)


def short_text(expr, limit: int = 80) -> str:
    """A bounded description of ``expr`` (printing a large shared DAG would take forever)."""
    budget = [200]

    def small(e) -> bool:
        stack = [e]
        while stack:
            budget[0] -= 1
            if budget[0] < 0:
                return False
            stack.extend(getattr(stack.pop(), "args", ()))
        return True

    if small(expr):
        text = str(expr)
        return text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(expr).__name__}(...)"


def _is_matrix(expr) -> bool:
    return isinstance(expr, sp.MatrixExpr)


class SympyReader:
    """Reads SymPy expressions into a graph, one memoized visit per sub-expression."""

    def __init__(self, builder: Builder, symbols: dict, declared_names: dict | None = None):
        """``symbols``: SymPy symbol -> leaf node id; ``declared_names``: name -> symbol, for errors."""
        self.b = builder
        self.memo: dict = dict(symbols)
        self.declared_names = declared_names or {}

    # --- traversal ---------------------------------------------------------------

    def read(self, expr) -> int:
        """The node id of ``expr``."""
        expr = sp.sympify(expr)
        memo = self.memo
        stack = [(expr, False)]
        while stack:
            e, children_done = stack.pop()
            if e in memo:
                continue
            if children_done:
                memo[e] = self._convert(e)
                continue
            stack.append((e, True))
            for child in reversed(self._children(e)):
                if child not in memo:
                    stack.append((child, False))
        return memo[expr]

    def _children(self, e) -> list:
        if isinstance(e, (sp.Symbol, sp.MatrixSymbol, sp.Number, sp.NumberSymbol)) or e.is_Atom:
            return []
        if isinstance(e, MatrixElement):
            return [e.parent]
        if isinstance(e, ElementwiseApplyFunction):
            return [e.expr]
        if isinstance(e, sp.Piecewise):
            return [part for pair in e.args for part in (pair.cond, pair.expr)]
        if isinstance(e, (sp.Identity, sp.ZeroMatrix, sp.OneMatrix)):
            return []
        if isinstance(e, sp.ImmutableDenseMatrix):
            return [v for v in e if not v.is_Number]
        if isinstance(e, (sp.MatPow, HadamardPower)):
            return [e.args[0], e.args[1]] if isinstance(e, HadamardPower) else [e.args[0]]
        if isinstance(e, sp.Heaviside):
            return [e.args[0]]
        if isinstance(e, sgf.broadcast_to):
            return [e.args[0]]
        return list(e.args)

    # --- conversion of one construct whose children are read ------------------------

    def _convert(self, e) -> int:
        b = self.b
        n = self.memo.__getitem__
        if isinstance(e, (sp.Symbol, sp.MatrixSymbol)):
            raise self._undeclared(e)
        if e.is_Atom and e.is_number and e.is_real is False:
            raise UnsupportedFunctionError(f"the complex number {e} cannot appear in a model: symgrad works in real numbers")
        if e.is_Number or e.is_NumberSymbol:
            return b.const(e)
        if e is sp.true or e is sp.false:
            return b.const(1 if e is sp.true else 0)
        # Matrix products and powers first: SymPy's MatMul is a subclass of Mul.
        if isinstance(e, sp.MatMul):
            return self._matmul(e)
        if isinstance(e, sp.MatPow):
            return self._matpow(e)
        if isinstance(e, (sp.Add, sp.MatAdd)):
            return b.add(*[n(a) for a in e.args])
        if isinstance(e, (sp.Mul, HadamardProduct)):
            return b.mul(*[n(a) for a in e.args])
        if isinstance(e, (sp.Pow, HadamardPower)):
            return b.apply("pow", n(e.args[0]), n(e.args[1]))
        if isinstance(e, (sp.Transpose, sp.Adjoint)):
            return b.transpose(n(e.args[0]))
        if isinstance(e, MatrixElement):
            return self._element(e)
        if isinstance(e, ElementwiseApplyFunction):
            return self._applyfunc(e)
        if isinstance(e, sp.Identity):
            return b.apply("identity", attrs=(self._dim(e.rows),))
        if isinstance(e, (sp.ZeroMatrix, sp.OneMatrix)):
            value = 0 if isinstance(e, sp.ZeroMatrix) else 1
            return b.broadcast(b.const(value), (self._dim(e.rows), self._dim(e.cols)))
        if isinstance(e, sp.ImmutableDenseMatrix):
            return self._explicit_matrix(e)
        if isinstance(e, sp.Piecewise):
            return self._piecewise(e)
        if isinstance(e, (sp.Max, sp.Min)):
            op = "max" if isinstance(e, sp.Max) else "min"
            ids = [n(a) for a in e.args]
            result = ids[0]
            for other in ids[1:]:
                result = b.apply(op, result, other)
            return result
        if isinstance(e, sp.Heaviside):
            h0 = e.args[1] if len(e.args) > 1 else sp.Rational(1, 2)
            return b.apply("heaviside", n(e.args[0]), attrs=(h0,))
        if isinstance(e, sp.ITE):  # if-then-else of truth values, as SymPy rewrites some conditions
            return b.apply("select", n(e.args[0]), n(e.args[1]), n(e.args[2]))
        if isinstance(e, sgf.cross_entropy):
            return self._cross_entropy(e)
        if isinstance(e, sgf.mse):
            return self._mse(e)
        if isinstance(e, sgf.broadcast_to):
            return b.broadcast(n(e.args[0]), (int(e.args[1]), int(e.args[2])))
        if isinstance(e, sgf.scalar):
            return b.apply("index", n(e.args[0]), attrs=(0, 0))
        head = _DIRECT.get(e.func)
        if head is not None:
            return b.apply(head, *[n(a) for a in e.args])
        raise self._unsupported(e)

    def _dim(self, value) -> int:
        if not getattr(value, "is_Integer", False) and not isinstance(value, int):
            raise ModelShapeError(f"matrix dimensions must be whole numbers, got {value}")
        return int(value)

    def _matmul(self, e) -> int:
        b = self.b
        ids = [self.memo[a] for a in e.args]
        scalars = [i for i in ids if b.shape(i) == ()]
        matrices = [i for i in ids if b.shape(i) != ()]
        result = matrices[0] if matrices else None
        for m in matrices[1:]:
            result = b.matmul(result, m)
        factors = scalars + ([result] if result is not None else [])
        return b.mul(*factors)

    def _matpow(self, e) -> int:
        base, power = e.args
        if not (power.is_Integer and power > 0):
            raise UnsupportedFunctionError(
                f"matrix power {short_text(e)}: only positive whole powers are supported"
            )
        result = self.memo[base]
        for _ in range(int(power) - 1):
            result = self.b.matmul(result, self.memo[base])
        return result

    def _element(self, e) -> int:
        parent = self.memo[e.parent]
        i, j = e.i, e.j
        if not (i.is_Integer and j.is_Integer):
            raise UnsupportedFunctionError(
                f"element {short_text(e)} has a symbolic index; indices must be whole numbers"
            )
        return self.b.apply("index", parent, attrs=(int(i), int(j)))

    def _applyfunc(self, e) -> int:
        lam = e.function
        if not isinstance(lam, sp.Lambda):
            lam = sp.Lambda(sp.Dummy("d"), lam(sp.Dummy("d")))
        (variable,) = lam.variables
        # A fresh reader for the body: the same Lambda may be applied to several matrices.
        inner = SympyReader(self.b, {**self._symbols_only(), variable: self.memo[e.expr]}, self.declared_names)
        return inner.read(lam.expr)

    def _symbols_only(self) -> dict:
        return {k: v for k, v in self.memo.items() if isinstance(k, (sp.Symbol, sp.MatrixSymbol))}

    def _explicit_matrix(self, e) -> int:
        shape = (int(e.rows), int(e.cols))
        values = list(e)
        if all(v.is_Number for v in values):
            return self.b.apply("matrix_const", attrs=(shape, tuple(values)))
        positions = tuple((k // shape[1], k % shape[1]) for k in range(len(values)))
        ids = [self.b.const(v) if v.is_Number else self.memo[v] for v in values]
        for v, i in zip(values, ids):
            if self.b.shape(i) != ():
                raise ModelShapeError(f"explicit matrix entries must be scalars, got {short_text(v)}")
        return self.b.apply("assemble", *ids, attrs=(shape, positions))

    def _piecewise(self, e) -> int:
        b = self.b
        args = []
        default = None
        for pair in e.args:
            if pair.cond is sp.true:
                default = self.memo[pair.expr]
                break
            args += [self.memo[pair.cond], self.memo[pair.expr]]
        if default is None:
            default = b.const(sp.nan)
        if not args:
            return default
        return b.apply("select", *args, default)

    def _cross_entropy(self, e) -> int:
        b = self.b
        logits, target = (self.memo[a] for a in e.args)
        log_p = b.call("log_softmax", logits)
        if b.shape(target) == ():
            index = b.const_value(target)
            if index is not None:
                size = b.node(log_p).size
                if not (index.is_Integer and 0 <= int(index) < size):
                    raise ModelShapeError(f"cross_entropy: class index {index} is outside 0..{size - 1}")
                cols = b.shape(log_p)[1]
                picked = b.apply("index", log_p, attrs=(int(index) // cols, int(index) % cols))
            else:
                picked = b.apply("take", log_p, target)
            return b.neg(picked)
        return b.neg(b.sum(b.mul(target, log_p)))

    def _mse(self, e) -> int:
        b = self.b
        prediction, target = (self.memo[a] for a in e.args)
        diff = b.sub(prediction, target)
        squared = b.mul(diff, diff)
        size = b.node(diff).size
        if b.shape(diff) == ():
            return squared
        return b.mul(b.const(sp.Rational(1, size)), b.sum(squared))

    # --- errors --------------------------------------------------------------------------

    def _undeclared(self, symbol) -> UndeclaredSymbolError:
        name = str(symbol.name)
        hint = "declare it in params=[...] or inputs=[...]"
        same_name = self.declared_names.get(name)
        if same_name is not None:
            hint = (f"a symbol named {name!r} is declared, but this one differs from it "
                    f"(assumptions or shape: declared {same_name!r}, used {symbol!r}); use the same object")
        return UndeclaredSymbolError(f"symbol {name!r} is used but not declared: {hint}")

    def _unsupported(self, e) -> UnsupportedFunctionError:
        head = getattr(e.func, "__name__", type(e).__name__)
        no_derivative = {"floor", "ceiling", "frac", "Mod", "round"}
        if head in no_derivative:
            reason = f"{head} has a zero derivative almost everywhere and no derivative at its jumps"
        else:
            reason = f"symgrad has no rule for {head}"
        return UnsupportedFunctionError(
            f"unsupported function {head} in {short_text(e)}: {reason}. "
            f"Supported: {', '.join(supported_functions())}"
        )


def build_graph(*, params, inputs, loss, outputs, reduce, labels=None) -> Graph:
    """The graph of a model: one leaf per declared symbol, its loss and outputs as results.

    Results: ``"outputs"`` (one per output, per example), ``"example_loss"``
    (the loss of one example), and ``"loss"`` (the loss as the forward kernel
    returns it: averaged or summed over the batch, or per example when
    ``reduce`` is None).
    """
    graph = Graph()
    b = Builder(graph)
    symbols = {}
    for role, declared in (("param", params), ("input", inputs)):
        for s in declared:
            shape = (int(s.rows), int(s.cols)) if isinstance(s, sp.MatrixSymbol) else ()
            node = b.apply("symbol", attrs=(str(s.name), role, shape, s))
            symbols[s] = node
            graph.symbols[str(s.name)] = node
    reader = SympyReader(b, symbols, {str(s.name): s for s in symbols})
    output_results = []
    for name, expr in (outputs or {}).items():
        output_results.append(Result(name, reader.read(expr), True))
    graph.results["outputs"] = tuple(output_results)
    if loss is not None:
        example_loss = reader.read(loss)
        if graph.nodes[example_loss].shape not in ((), (1, 1)):
            raise ModelShapeError(
                f"the loss must be a scalar, but it is a matrix of shape {graph.nodes[example_loss].shape}"
            )
        if graph.nodes[example_loss].shape == (1, 1):
            example_loss = b.apply("index", example_loss, attrs=(0, 0))
        graph.results["example_loss"] = (Result("loss", example_loss, True),)
        graph.results["loss"] = (Result("loss", reduce_over_batch(b, example_loss, reduce), reduce is None),)
    for expr, name in (labels or {}).items():
        node = reader.memo.get(expr)
        if node is not None and graph.nodes[node].op not in ("symbol", "const"):
            graph.labels.setdefault(node, name)
    if loss is not None and graph.nodes[example_loss].op not in ("symbol", "const"):
        graph.labels.setdefault(example_loss, "loss")
    return graph


def reduce_over_batch(b: Builder, value: int, reduce) -> int:
    """``value`` (one per example) averaged or summed over the batch, or as it is for None."""
    if reduce is None:
        return value
    total = b.apply("reduce_batch", value)
    if reduce == "mean":
        total = b.mul(b.recip(b.apply("batch_size")), total)
    return total
