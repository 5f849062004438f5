"""Reading what symgrad derived: passes node by node, gradient formulas, LaTeX, DOT, op counts.

A deep model's gradient is a large DAG whose expanded formula is
exponentially long, so the primary view is node by node: the forward pass in
topological order, then the backward pass as adjoint assignments that reuse
forward values by name. A gradient is expanded into one formula only when
its expanded tree is small.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from . import ops
from .autodiff import differentiate
from .graph import Graph, live_nodes
from .naming import display_names, formula, name_of, placeholder
from .plan import kernel_results

#: Expanded formulas with more tree nodes than this are not printed.
FORMULA_LIMIT = 400


# --- expressions ------------------------------------------------------------------


def expression(graph: Graph, node_id: int, memo: dict | None = None):
    """The SymPy expression of a node in terms of the model's symbols (a shared DAG)."""
    memo = {} if memo is None else memo
    for nid in graph.ancestors([node_id]):
        if nid not in memo:
            node = graph.nodes[nid]
            memo[nid] = ops.get(node.op).to_sympy([memo[a] for a in node.args], node.attrs)
    return memo[node_id]


def tree_size(graph: Graph, node_id: int, cap: int = 10**9) -> int:
    """The number of nodes of a node's expression written out as a tree (capped)."""
    return tree_sizes(graph, [node_id], cap)[node_id]


def tree_sizes(graph: Graph, roots, cap: int = 10**9) -> dict:
    """Node id -> tree size (capped at cap + 1) for ``roots`` and all they depend on, in one pass."""
    sizes: dict = {}
    for nid in graph.ancestors(roots):
        sizes[nid] = min(cap + 1, 1 + sum(sizes[a] for a in graph.nodes[nid].args))
    return sizes


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


def per_example_gradients(model) -> Graph:
    """The model's graph differentiated for one example (no batch reduction)."""
    return differentiate(model.graph, model.wrt, None)


def gradient_expressions(model) -> dict:
    """Symbol -> SymPy gradient of one example's loss (see :meth:`Model.gradients`)."""
    graph = per_example_gradients(model)
    symbols = model.symbols
    memo: dict = {}
    result = {}
    for r in graph.results["gradients"]:
        expr = expression(graph, r.node, memo)
        if tree_size(graph, r.node, FORMULA_LIMIT) <= FORMULA_LIMIT:
            expr = simplify_for_display(expr)
        result[symbols[r.name]] = expr
    return result


def gradient_formulas(model, limit: int = FORMULA_LIMIT, latex: bool = False, most: int | None = None) -> dict:
    """Name -> the gradient formula as text, or a note when it is too large to write out.

    ``most`` limits how many gradients are given (the first ones of ``wrt``).
    """
    graph = per_example_gradients(model)
    results = graph.results["gradients"][:most]
    sizes = tree_sizes(graph, [r.node for r in results], limit)
    memo: dict = {}
    texts = {}
    for r in results:
        size = sizes[r.node]
        if size > limit:
            texts[r.name] = (rf"\text{{(more than {limit} terms written out; see the backward pass)}}"
                             if latex else f"(more than {limit} terms written out; see the backward pass)")
            continue
        texts[r.name] = _formula_text(lambda: expression(graph, r.node, memo), latex)
    return texts


def _formula_text(build, latex: bool) -> str:
    """The gradient ``build()`` makes, as text, tidied for display where SymPy can, else a note
    pointing to the backward pass: a formula shown for reading never stops a build."""
    show = sp.latex if latex else sp.sstr
    try:
        expr = build()
    except _SYMPY_GAPS:
        expr = None
    for tidy in (simplify_for_display, lambda e: e):
        if expr is None:
            break
        try:
            return show(tidy(expr))
        except _SYMPY_GAPS:
            continue
    return (r"\text{(SymPy cannot print this formula; see the backward pass)}" if latex
            else "(SymPy cannot print this formula; see the backward pass)")


# --- the passes, node by node -----------------------------------------------------------


def _forward_nodes(graph: Graph) -> list:
    """Forward nodes worth a line: not leaves, and views only when the model named them."""
    roots = [r.node for group in ("outputs", "example_loss") for r in graph.results.get(group, ())]
    return [n for n in graph.ancestors(roots)
            if graph.nodes[n].op not in ("symbol", "const")
            and (ops.get(graph.nodes[n].op).kind != "view" or n in graph.labels)]


def _latex_name(name: str) -> str:
    if name.endswith("_bar"):
        return rf"\bar{{{_latex_name(name[:-4])}}}"
    if name[:1] == "v" and name[1:].isdigit():
        return f"v_{{{name[1:]}}}"
    return sp.latex(sp.Symbol(name))


class _Renderer:
    """Formats node formulas as text or LaTeX with consistent names."""

    def __init__(self, graph: Graph, latex: bool):
        self.graph = graph
        self.latex = latex
        self.names = display_names(graph)
        if latex:
            self.names = {k: _latex_name(v) for k, v in self.names.items()}
            self._print = sp.latex
            self._placeholders = {n: self.name(n) for n in range(len(graph.nodes))}
        else:
            self._print = sp.sstr
            self._placeholders = self.names

    def name(self, node_id: int) -> str:
        name = name_of(self.names, node_id)
        return name if not self.latex or node_id in self.names else _latex_name(name)

    def text(self, expr) -> str:
        return self._print(expr)

    def node(self, node_id: int) -> str:
        return self.text(formula(self.graph, node_id, self._placeholder_names()))

    def _placeholder_names(self) -> dict:
        return self._placeholders

    def inline(self, node_id: int, named: set) -> str:
        """A node's formula with unnamed intermediate nodes written out in place."""
        names = self._placeholder_names()
        memo: dict = {}
        for nid in self.graph.ancestors([node_id]):
            node = self.graph.nodes[nid]
            if nid != node_id and (nid in named or ops.get(node.op).kind == "leaf"):
                memo[nid] = placeholder(self.graph, nid, names)
            elif all(a in memo for a in node.args):
                memo[nid] = ops.get(node.op).to_sympy([memo[a] for a in node.args], node.attrs)
        return self.text(memo[node_id])


def passes(model, latex: bool = False) -> dict:
    """The forward pass, backward pass and final gradients of one example, as lines."""
    graph = per_example_gradients(model) if model.loss is not None else model.graph
    r = _Renderer(graph, latex)
    eq = " &= " if latex else " = "
    forward = _forward_nodes(graph)
    lines_forward = [f"{r.name(n)}{eq}{r.node(n)}" for n in forward]
    backward, gradients = [], []
    if model.loss is not None:
        named = set(forward) | set(graph.adjoints.values())
        bar = (lambda s: rf"\bar{{{s}}}") if latex else (lambda s: f"{s}_bar")
        for fwd in sorted(graph.adjoints, reverse=True):
            adjoint = graph.adjoints[fwd]
            label = bar(r.name(fwd))
            own = r.name(adjoint) == label
            rhs = r.inline(adjoint, named - {adjoint}) if own else r.text(placeholder(graph, adjoint, r._placeholder_names()))
            backward.append(f"{label}{eq}{rhs}")
        symbols = {name: r.name(graph.symbols[name]) for name in model.wrt}
        for name, text in gradient_formulas(model, latex=latex).items():
            lhs = (rf"\frac{{\partial \ell}}{{\partial {symbols[name]}}}" if latex else f"d loss / d {name}")
            gradients.append(f"{lhs}{eq}{text}")
    return {"forward": lines_forward, "backward": backward, "gradients": gradients}


def format_text(model) -> str:
    """What ``symgrad show`` prints for one model."""
    p = passes(model)
    roles = f"params: {', '.join(str(s.name) for s in model.params) or 'none'}; " \
            f"inputs: {', '.join(str(s.name) for s in model.inputs) or 'none'}"
    out = [f"Model {model.name} ({roles}; reduce={model.reduce!r})", ""]
    out.append(f"Forward pass, one example ({len(p['forward'])} nodes):")
    out += [f"  {line}" for line in p["forward"]]
    if model.loss is not None:
        out += ["", f"Backward pass: adjoints in reverse topological order ({len(p['backward'])} steps):"]
        out += [f"  {line}" for line in p["backward"]]
        out += ["", "Gradients of one example's loss:"]
        out += [f"  {line}" for line in p["gradients"]]
        note = {"mean": "averages them over the batch (input gradients are divided by N)",
                "sum": "sums them over the batch",
                None: "returns them per example"}[model.reduce]
        out += ["", f"The compiled value_and_grad {note}."]
    return "\n".join(out) + "\n"


def format_latex(model) -> str:
    """The same as :func:`format_text`, as LaTeX ``aligned`` blocks."""
    p = passes(model, latex=True)
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


def latex_summary(model) -> str:
    """The loss and its gradients as LaTeX, for notebooks."""
    parts = []
    if model.loss is not None:
        parts.append(rf"\ell = {sp.latex(model.loss)}" if _small(model.loss) else r"\ell = \dots")
        for name, text in gradient_formulas(model, latex=True).items():
            symbol = sp.latex(model.symbols[name])
            parts.append(rf"\frac{{\partial \ell}}{{\partial {symbol}}} = {text}")
    for name, expr in model.outputs.items():
        body = sp.latex(expr) if _small(expr) else r"\dots"
        parts.append(rf"\mathrm{{{name}}} = {body}")
    return "$\\displaystyle " + r" \quad ".join(parts) + "$" if parts else f"Model {model.name}"


def _small(expr) -> bool:
    from .frontend import short_text

    return not short_text(expr, 10**6).endswith("(...)")


# --- Graphviz ------------------------------------------------------------------------


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_dot(model) -> str:
    """A Graphviz picture of the forward graph (ellipses) and the backward graph (boxes)."""
    graph = per_example_gradients(model) if model.loss is not None else model.graph
    names = display_names(graph)
    results = [r for group in ("outputs", "example_loss", "gradients") for r in graph.results.get(group, ())]
    live = live_nodes(graph, results)
    forward = set(_forward_nodes(graph)) | {n for n in live if graph.nodes[n].op in ("symbol", "const")}
    lines = [f'digraph "{_dot_escape(model.name)}" {{', "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for n in live:
        node = graph.nodes[n]
        if node.op == "const":
            label, style = sp.sstr(node.attrs[0]), 'shape=plaintext'
        elif node.op == "symbol":
            label, style = name_of(names, n), 'shape=invhouse, style=filled, fillcolor="#e8f0fe"'
        else:
            label = f"{name_of(names, n)}\n{node.op}"
            style = 'shape=ellipse' if n in forward else 'shape=box, style=filled, fillcolor="#fde8e8"'
        lines.append(f'  n{n} [label="{_dot_escape(label)}", {style}];')
    for n in live:
        for a in graph.nodes[n].args:
            color = "" if n in forward else ' [color="#c0392b"]'
            lines.append(f"  n{a} -> n{n}{color};")
    for r in results:
        lines.append(f'  out_{r.node}_{len(lines)} [label="{_dot_escape(r.name)}", shape=note];')
        lines.append(f"  n{r.node} -> out_{r.node}_{len(lines) - 1};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- op counts ------------------------------------------------------------------------


def op_count(graph: Graph, results) -> int:
    """Arithmetic operations (and function calls) to compute ``results`` for one example."""
    total = 0
    for n in live_nodes(graph, results):
        node = graph.nodes[n]
        if node.args or ops.get(node.op).kind == "tensor":
            total += ops.get(node.op).cost(node, [graph.nodes[a].shape for a in node.args])
    return total


def stats(model) -> dict:
    """Op counts of the forward code and of the forward+gradient code, and their ratio."""
    from .pipeline import gradient_graph

    graph = gradient_graph(model)
    forward = op_count(graph, kernel_results(graph, "forward"))
    result = {"nodes": len(graph.nodes), "forward_ops": forward}
    if model.loss is not None:
        loss_only = op_count(graph, list(graph.results["loss"]))
        both = op_count(graph, kernel_results(graph, "value_and_grad"))
        result.update(loss_ops=loss_only, value_and_grad_ops=both,
                      ratio=both / loss_only if loss_only else float("nan"))
    return result


def format_stats(model) -> str:
    s = stats(model)
    lines = [f"Model {model.name}: {s['nodes']} graph nodes",
             f"  forward kernel (outputs and loss): {s['forward_ops']} ops per example"]
    if "ratio" in s:
        lines += [f"  loss alone: {s['loss_ops']} ops",
                  f"  value_and_grad (loss and gradients): {s['value_and_grad_ops']} ops",
                  f"  gradient cost ratio: {s['ratio']:.2f}x the loss alone"]
    return "\n".join(lines) + "\n"
