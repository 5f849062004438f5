"""Reading SymPy expressions into a graph.

:class:`SympyReader` walks an expression DAG once, iteratively, with a memo
keyed by sub-expression, so a value shared by many parts of a model is read
once however many paths lead to it (SymPy's own tree walks are exponential on
such DAGs). What each SymPy head becomes is not decided here: every op entry
names the heads it reads (``sympy_heads``, with a ``from_sympy`` hook where
reading takes more than the head), and constructs that lower to several ops
(``cross_entropy``, explicit matrices, ``applyfunc``) register a reading
beside the ops they use (:func:`symgrad.ops.reads`). The reader looks a head
up in that table, :data:`symgrad.ops.READINGS`.

:func:`build_graph` reads a whole model: its symbols, loss and outputs.
"""

from __future__ import annotations

import difflib

import sympy as sp
from sympy.concrete.expr_with_limits import ExprWithLimits
from sympy.core.function import AppliedUndef

from . import ops
from .errors import ModelShapeError, UndeclaredSymbolError, UnsupportedFunctionError
from .graph import Builder, Graph, Result, reduce_over_batch
from .views import short_text


def supported_functions() -> list:
    """Names of the SymPy functions and constructs a model may use."""
    return ops.supported_heads()


class SympyReader:
    """Reads SymPy expressions into a graph, one memoized visit per sub-expression.

    Reading hooks (``from_sympy``) use :attr:`b`, :meth:`node`, :meth:`dim`,
    :meth:`fold`, :meth:`read_bound` and :meth:`describe`.
    """

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
        # named as written, before its bound variables or ranges are read (Sum and Product have readings)
        if isinstance(e, _NOT_READ) and ops.reading_for(e) is None:
            raise self._unsupported(e)
        if isinstance(e, (sp.Symbol, sp.MatrixSymbol, sp.Number, sp.NumberSymbol)) or e.is_Atom:
            return []
        reading = ops.reading_for(e)
        if reading is None:
            raise self._unsupported(e)
        return list(reading.children(e)) if reading.children is not None else list(e.args)

    def _convert(self, e) -> int:
        """The node of ``e``, whose children are read."""
        b = self.b
        if isinstance(e, (sp.Symbol, sp.MatrixSymbol)):
            raise self._undeclared(e)
        if e in (sp.oo, -sp.oo):  # SymPy calls them extended reals, not reals: not complex numbers
            raise UnsupportedFunctionError(f"the infinite constant {e} cannot appear in a model: constants must be "
                                           f"finite real numbers (write a large finite number, or a Piecewise "
                                           f"that does not need it)")
        if e.is_Atom and e.is_number and e.is_real is False:
            raise UnsupportedFunctionError(f"the complex number {e} cannot appear in a model: symgrad works in real numbers")
        if e.is_Number or e.is_NumberSymbol:
            return b.const(e)
        if e is sp.true or e is sp.false:
            return b.const(1 if e is sp.true else 0)
        reading = ops.reading_for(e)
        if reading is None:  # an atom no op reads
            raise self._unsupported(e)
        if reading.from_sympy is not None:
            return reading.from_sympy(self, e)
        children = reading.children(e) if reading.children is not None else e.args
        return b.apply(reading.op, *[self.memo[a] for a in children])

    # --- what reading hooks use ------------------------------------------------------------

    def node(self, expr) -> int:
        """The node of a sub-expression the reader has read (a child of the current one)."""
        return self.memo[expr]

    def dim(self, value) -> int:
        """A matrix dimension as an int; symbolic dimensions are an error."""
        if not getattr(value, "is_Integer", False) and not isinstance(value, int):
            raise ModelShapeError(f"matrix dimensions must be whole numbers, got {value}")
        return int(value)

    def fold(self, op_name: str, args) -> int:
        """``op(op(a1, a2), a3) ...``: an n-ary SymPy head read as a binary op."""
        ids = [self.memo[a] for a in args]
        result = ids[0]
        for other in ids[1:]:
            result = self.b.apply(op_name, result, other)
        return result

    def read_bound(self, expr, bindings: dict) -> int:
        """``expr`` read with some symbols bound to nodes (a Lambda's variables), by a fresh
        reader that shares the builder: the same Lambda may be applied to several matrices."""
        symbols = {k: v for k, v in self.memo.items() if isinstance(k, (sp.Symbol, sp.MatrixSymbol))}
        return SympyReader(self.b, {**symbols, **bindings}, self.declared_names).read(expr)

    @staticmethod
    def describe(expr) -> str:
        """A bounded description of ``expr`` for messages."""
        return short_text(expr)

    # --- errors --------------------------------------------------------------------------

    def _undeclared(self, symbol) -> UndeclaredSymbolError:
        name = str(symbol.name)
        hint = "declare it in params=[...] or inputs=[...]"
        by_folded = {declared.casefold(): declared for declared in self.declared_names}
        close = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=0.6)
        if close and by_folded[close[0]] != name:
            hint += f" (or did you mean {by_folded[close[0]]!r}?)"
        same_name = self.declared_names.get(name)
        if same_name is not None:
            hint = (f"a symbol named {name!r} is declared, but this one differs from it "
                    f"(assumptions or shape: declared {same_name!r}, used {symbol!r}); use the same object")
        return UndeclaredSymbolError(f"symbol {name!r} is used but not declared: {hint}")

    def _unsupported(self, e) -> UnsupportedFunctionError:
        construct = _construct_advice(e)
        if construct is not None:
            what, advice = construct
            return UnsupportedFunctionError(f"{what} {short_text(e)} cannot be read: {advice}")
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


#: Constructs that are not values symgrad can read: unevaluated calculus (they bind variables
#: of their own), functions without a formula. Reported as the user wrote them.
_NOT_READ = (sp.Derivative, ExprWithLimits, sp.Subs, sp.Limit, sp.Lambda, sp.Tuple,
             AppliedUndef, sp.Indexed)


def _construct_advice(e):
    """(what the user wrote, what to do instead) for the constructs of _NOT_READ, else None."""
    if isinstance(e, sp.Derivative):
        return ("the unevaluated derivative", "symgrad differentiates the model itself; write the formula "
                "of this derivative instead (call .doit() on it, or use sp.diff)")
    if isinstance(e, sp.Integral):
        return ("the integral", "symgrad does not integrate; write the integral's closed form instead "
                "(sp.integrate or .doit() finds it when there is one)")
    if isinstance(e, ExprWithLimits):
        return (f"the {type(e).__name__}", "it binds a variable of its own; evaluate it (.doit()) first")
    if isinstance(e, sp.Subs):
        return ("the unevaluated substitution", "call .doit() on it to substitute, or use .subs(...)")
    if isinstance(e, sp.Limit):
        return ("the unevaluated limit", "evaluate it with .doit() and use its value")
    if isinstance(e, sp.Lambda):
        return ("the Lambda", "a Lambda is a function, not a value; apply it to arguments, f(x)")
    if isinstance(e, sp.Tuple):
        return ("the tuple", "a tuple holds several values, not one; a loss or output is one expression "
                "(several values go into outputs={...}; a vector is a sp.Matrix)")
    if isinstance(e, AppliedUndef):
        return ("the undefined function", f"{e.func.__name__} was made with "
                f"sp.Function({e.func.__name__!r}) and has no formula; write its expression instead")
    if isinstance(e, sp.Indexed):
        return ("the indexed element", "IndexedBase elements are not read; declare a MatrixSymbol and use "
                "its elements M[i, j]")
    return None


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
