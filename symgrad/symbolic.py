"""The views that go through SymPy: a node's SymPy expression, ``Model.gradients()``, LaTeX.

Like :mod:`symgrad.views`, these render a gradient graph they are handed
(one example's, derived with ``reduce=None``). A gradient is expanded into
one SymPy formula only when its expanded tree is small, and SymPy tidies it
for display: ``(A + A.T)*x``.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from . import ops
from .graph import Graph
from .naming import display_names, formula, name_of, placeholder
from .views import passes, short_text, tree_size, tree_sizes

#: Expanded formulas with more tree nodes than this are not printed.
FORMULA_LIMIT = 400


def expression(graph: Graph, node_id: int, memo: dict | None = None):
    """The SymPy expression of a node in terms of the model's symbols (a shared DAG)."""
    memo = {} if memo is None else memo
    for nid in graph.ancestors([node_id]):
        if nid not in memo:
            node = graph.nodes[nid]
            memo[nid] = ops.get(node.op).to_sympy([memo[a] for a in node.args], node.attrs)
    return memo[node_id]


#: What SymPy raises where its automatic rewriting has gaps (products of 1x1 matrices,
#: comparisons it canonicalizes into an undefined value...).
_SYMPY_GAPS = (TypeError, ValueError, NotImplementedError, AttributeError)


def simplify_for_display(expr):
    """Tidy a small matrix expression: write 1x1 matrices of numbers that multiply
    a matrix as numbers, distribute transposes, and factor shared left or right
    factors out of sums: A.T*x + A*x -> (A.T + A)*x."""
    if not isinstance(expr, (MatrixExpr, sp.MatrixBase)) and not expr.has(MatrixExpr):
        return expr
    expr = expr.replace(lambda e: isinstance(e, sp.MatMul), _scalar_factors)
    expr = expr.replace(lambda e: isinstance(e, sp.MatMul), lambda e: e.doit(deep=False))  # flatten
    # Distribute transposes only: a full doit() would multiply explicit matrices out entry by
    # entry, and SymPy's assumption queries on the entries can take minutes.
    expr = expr.replace(lambda e: isinstance(e, sp.Transpose), lambda e: e.doit(deep=False))
    return expr.replace(lambda e: isinstance(e, sp.MatAdd), _factor_common)


def _is_one_by_one(e) -> bool:
    return isinstance(e, sp.ImmutableMatrix) and e.shape == (1, 1)


def _scalar_factors(product):
    """A product with its 1x1 explicit factors written as scalars, if a matrix factor remains."""
    factors = product.args
    if not any(_is_one_by_one(f) for f in factors):
        return product
    if not any(isinstance(f, (MatrixExpr, sp.MatrixBase)) and not _is_one_by_one(f) for f in factors):
        return product
    return sp.MatMul(*[f[0, 0] if _is_one_by_one(f) else f for f in factors]).doit(deep=False)


def _factor_common(expr):
    """A sum with a factor shared on the right or the left pulled out, or the sum unchanged.

    Only a display tidy-up: where the remainders mix matrices and scalars, or SymPy cannot
    rebuild them (its rewriting of products of 1x1 matrices has gaps), the sum is kept.
    """
    terms = [t.args if isinstance(t, sp.MatMul) else (t,) for t in expr.args]
    if len(terms) < 2 or any(len(t) < 2 for t in terms):
        return expr
    try:
        if all(t[-1] == terms[0][-1] for t in terms):
            rest = _sum_of_products([t[:-1] for t in terms])
            return expr if rest is None else sp.MatMul(rest, terms[0][-1])
        if all(t[0] == terms[0][0] for t in terms):
            rest = _sum_of_products([t[1:] for t in terms])
            return expr if rest is None else sp.MatMul(terms[0][0], rest)
    except _SYMPY_GAPS:
        pass
    return expr


def _sum_of_products(factor_lists):
    """The sum of the products of each factor list, if all are matrices or all scalars."""
    parts = [sp.MatMul(*factors).doit() for factors in factor_lists]
    matrices = [isinstance(p, (MatrixExpr, sp.MatrixBase)) for p in parts]
    if all(matrices):
        return sp.MatAdd(*parts)
    return None if any(matrices) else sp.Add(*parts)


def gradient_expressions(graph: Graph, symbols: dict) -> dict:
    """Symbol -> SymPy gradient of one example's loss, from a graph derived with
    ``reduce=None`` (see :meth:`symgrad.Model.gradients`); ``symbols``: name -> symbol."""
    memo: dict = {}
    result = {}
    for r in graph.results["gradients"]:
        expr = expression(graph, r.node, memo)
        if tree_size(graph, r.node, FORMULA_LIMIT) <= FORMULA_LIMIT:
            expr = simplify_for_display(expr)
        result[symbols[r.name]] = expr
    return result


def hessian_expressions(graph: Graph, symbols: dict, shapes: dict) -> dict:
    """``{a: {b: second derivative}}`` of one example's loss from :func:`symgrad.forward.hessian_graph`
    of its ``reduce=None`` graph: a SymPy expression for two scalars, else a ``sympy.Array`` of
    shape ``shape(a) + shape(b)``; ``symbols``: name -> symbol, ``shapes``: name -> shape."""
    memo: dict = {}
    entries: dict = {}
    for r in graph.results["hessian"]:
        a, i, b, j = r.name
        expr = expression(graph, r.node, memo)
        if tree_size(graph, r.node, FORMULA_LIMIT) <= FORMULA_LIMIT:  # small: elements written out
            try:
                expr = expr.doit()
            except _SYMPY_GAPS:
                pass
        entries[(a, i, b, j)] = expr
    result = {}
    for a in shapes:
        row = {}
        for b in shapes:
            sa, sb = shapes[a], shapes[b]
            if sa == () and sb == ():
                row[symbols[b]] = entries[(a, 0, b, 0)]
                continue
            size_a, size_b = sp.prod(sa) if sa else 1, sp.prod(sb) if sb else 1
            flat = [entries[(a, i, b, j)] for i in range(size_a) for j in range(size_b)]
            row[symbols[b]] = sp.Array(flat, tuple(sa) + tuple(sb))
        result[symbols[a]] = row
    return result


def latex_gradient_formulas(graph: Graph, limit: int = FORMULA_LIMIT) -> dict:
    """Name -> the gradient as LaTeX, or a note when it is too large to write out."""
    results = graph.results["gradients"]
    sizes = tree_sizes(graph, [r.node for r in results], limit)
    memo: dict = {}
    texts = {}
    for r in results:
        if sizes[r.node] > limit:
            texts[r.name] = rf"\text{{(more than {limit} terms written out; see the backward pass)}}"
            continue
        texts[r.name] = _latex_formula(lambda: expression(graph, r.node, memo))
    return texts


def _latex_formula(build) -> str:
    """The gradient ``build()`` makes, as LaTeX, tidied for display where SymPy can, else a note
    pointing to the backward pass: a formula shown for reading never stops a build."""
    try:
        expr = build()
    except _SYMPY_GAPS:
        expr = None
    for tidy in (simplify_for_display, lambda e: e):
        if expr is None:
            break
        try:
            return sp.latex(tidy(expr))
        except _SYMPY_GAPS:
            continue
    return r"\text{(SymPy cannot print this formula; see the backward pass)}"


# --- LaTeX ------------------------------------------------------------------------------


def _latex_name(name: str) -> str:
    if name.endswith("_bar"):
        return rf"\bar{{{_latex_name(name[:-4])}}}"
    if name[:1] == "v" and name[1:].isdigit():
        return f"v_{{{name[1:]}}}"
    return sp.latex(sp.Symbol(name))


class _LatexRenderer:
    """Formats node formulas as LaTeX (through SymPy) with consistent names, for
    :func:`symgrad.views.passes`."""

    eq = " &= "

    def __init__(self, graph: Graph):
        self.graph = graph
        self.names = {k: _latex_name(v) for k, v in display_names(graph).items()}
        self.placeholders = {n: self.name(n) for n in range(len(graph.nodes))}

    def name(self, node_id: int) -> str:
        return self.names[node_id] if node_id in self.names else _latex_name(name_of(self.names, node_id))

    def node(self, node_id: int) -> str:
        return sp.latex(formula(self.graph, node_id, self.placeholders))

    def operand(self, node_id: int) -> str:
        return sp.latex(placeholder(self.graph, node_id, self.placeholders))

    def inline(self, node_id: int, named: set) -> str:
        """A node's formula with unnamed intermediate nodes written out in place."""
        memo: dict = {}
        for nid in self.graph.ancestors([node_id]):
            node = self.graph.nodes[nid]
            if nid != node_id and (nid in named or ops.get(node.op).kind == "leaf"):
                memo[nid] = placeholder(self.graph, nid, self.placeholders)
            elif all(a in memo for a in node.args):
                memo[nid] = ops.get(node.op).to_sympy([memo[a] for a in node.args], node.attrs)
        return sp.latex(memo[node_id])

    @staticmethod
    def bar(name: str) -> str:
        return rf"\bar{{{name}}}"

    def gradients(self, model) -> list:
        symbols = {name: self.name(self.graph.symbols[name]) for name in model.wrt}
        return [rf"\frac{{\partial \ell}}{{\partial {symbols[name]}}}{self.eq}{text}"
                for name, text in latex_gradient_formulas(self.graph).items()]


def format_latex(model, graph: Graph) -> str:
    """The same as :func:`format_text`, as LaTeX ``aligned`` blocks."""
    p = passes(model, graph, _LatexRenderer(graph))
    title = model.name.replace("_", r"\_")
    out = [rf"% symgrad model {title}", r"\paragraph{Forward pass}", r"\begin{aligned}"]
    out += [line + r" \\" for line in p["forward"]]
    out.append(r"\end{aligned}")
    if model.loss is not None:
        out += [r"\paragraph{Backward pass}", r"\begin{aligned}"]
        out += [line + r" \\" for line in p["backward"]]
        out += [r"\end{aligned}", r"\paragraph{Gradients}", r"\begin{aligned}"]
        out += [line + r" \\" for line in p["gradients"]]
        out.append(r"\end{aligned}")
    return "\n".join(out) + "\n"


def latex_summary(model, graph: Graph) -> str:
    """The loss and its gradients as LaTeX, for notebooks, from the graph derived with ``reduce=None``."""
    parts = []
    if model.loss is not None:
        parts.append(rf"\ell = {sp.latex(model.loss)}" if _small(model.loss) else r"\ell = \dots")
        for name, text in latex_gradient_formulas(graph).items():
            symbol = sp.latex(model.symbols[name])
            parts.append(rf"\frac{{\partial \ell}}{{\partial {symbol}}} = {text}")
    for name, expr in model.outputs.items():
        body = sp.latex(expr) if _small(expr) else r"\dots"
        parts.append(rf"\mathrm{{{name}}} = {body}")
    return "$\\displaystyle " + r" \quad ".join(parts) + "$" if parts else f"Model {model.name}"


def _small(expr) -> bool:
    return not short_text(expr, 10**6).endswith("(...)")
