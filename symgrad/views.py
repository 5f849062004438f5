"""Reading what symgrad derived: passes node by node, gradient formulas, LaTeX, DOT, op counts.

Every view renders a graph it is handed: the gradient graph
:func:`symgrad.autodiff.derive` made, one example's (``reduce=None``) for
the formulas and the kernels' own for op counts. None of them differentiates.

A deep model's gradient is a large DAG whose expanded formula is
exponentially long, so the primary view is node by node: the forward pass in
topological order, then the backward pass as adjoint assignments that reuse
forward values by name. Text is written in the display dialect of the op
entries (:mod:`symgrad.ops.text`), the notation of the C comments too;
gradient formulas name the values they share instead of writing them out
again. LaTeX and :func:`gradient_expressions` go through SymPy.
"""

from __future__ import annotations

import sympy as sp
from sympy.matrices.expressions.matexpr import MatrixExpr

from . import ops
from .graph import Graph, live_nodes
from .naming import display_names, formula, formula_text, inline_text, name_of, operand_text, placeholder
from .ops.text import ATOM, NEGATION, binding
from .plan import kernel_results

#: Expanded formulas with more tree nodes than this are not printed (LaTeX).
FORMULA_LIMIT = 400

#: Gradient formulas that need more named intermediate values than this are not written out.
SHARED_LIMIT = 24

#: Gradient formulas (and intermediate values) longer than this are not written out.
LINE_LIMIT = 400

#: A shared value whose formula is at most this long and has no operator between two
#: operands (``-y``, ``exp(v3)``, ``[[1]]``) is written out at each use.
SHORT_FORMULA = 8


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


# --- gradient formulas in the display dialect -------------------------------------------


def gradient_formulas(graph: Graph, most: int | None = None, shared_limit: int = SHARED_LIMIT,
                      line_limit: int = LINE_LIMIT):
    """The gradients as text in the model's symbols: ``(formulas, where)``, or None when too large.

    ``formulas``: name -> text, for the first ``most`` gradients; ``where``:
    ``(name, text)`` of each value the formulas (or other values) use more
    than once, in the order they are computed. A value shared is named
    there once, not written out at every use; a value used once is written
    in place. None when more than ``shared_limit`` values are shared or a
    line is longer than ``line_limit``.
    """
    results = graph.results["gradients"][:most]
    names = display_names(graph)
    named = set(_shared_values(graph, [r.node for r in results]))
    where = []
    for n in sorted(named):  # arguments first: a value's text is final before its users are written
        text = inline_text(graph, n, names, named)
        if len(text) <= SHORT_FORMULA and binding(text) in (NEGATION, ATOM):
            named.discard(n)
        else:
            where.append((name_of(names, n), text))
    if len(where) > shared_limit:
        return None
    formulas = {r.name: name_of(names, r.node) if r.node in named else inline_text(graph, r.node, names, named)
                for r in results}
    if any(len(text) > line_limit for text in list(formulas.values()) + [t for _, t in where]):
        return None
    return formulas, where


def _shared_values(graph: Graph, roots: list) -> list:
    """The nodes that writing ``roots`` out would write more than once, in topological order.

    Counts how often each node would appear if every node used once were
    written in place (leaves and views always are).
    """
    appearances: dict = {}
    for root in roots:
        appearances[root] = appearances.get(root, 0) + 1
    shared = []
    for n in reversed(graph.ancestors(roots)):
        node = graph.nodes[n]
        kind = ops.get(node.op).kind
        inlined = kind in ("leaf", "view") or appearances.get(n, 0) <= 1
        if not inlined:
            shared.append(n)
        for a in node.args:
            appearances[a] = appearances.get(a, 0) + (appearances.get(n, 0) if inlined else 1)
    return shared[::-1]


def _gradient_lines(graph: Graph, wrt, indent: str, most: int | None = None, shared_limit: int = SHARED_LIMIT,
                    line_limit: int = LINE_LIMIT) -> list:
    """``d loss / d <name> = ...`` lines for the first ``most`` of ``wrt``, then their ``where`` block."""
    found = gradient_formulas(graph, most, shared_limit, line_limit)
    if found is None:
        note = f"(too large to write out: more than {shared_limit} shared values or {line_limit} characters)"
        return [f"{indent}d loss / d {name} = {note}" for name in list(wrt)[:most]]
    formulas, where = found
    lines = [f"{indent}d loss / d {name} = {text}" for name, text in formulas.items()]
    if where:
        lines.append(f"{indent}where")
        lines += [f"{indent}  {name} = {text}" for name, text in where]
    return lines


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


class _LatexRenderer:
    """Formats node formulas as LaTeX (through SymPy) with consistent names."""

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


class _TextRenderer:
    """Formats node formulas in the display dialect, with the names of the C comments."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.names = display_names(graph)

    def name(self, node_id: int) -> str:
        return name_of(self.names, node_id)

    def node(self, node_id: int) -> str:
        return formula_text(self.graph, node_id, self.names)

    def operand(self, node_id: int) -> str:
        return operand_text(self.graph, node_id, self.names)

    def inline(self, node_id: int, named: set) -> str:
        return inline_text(self.graph, node_id, self.names, named)


def passes(model, graph: Graph, latex: bool = False) -> dict:
    """The forward pass, backward pass and final gradients of one example, as lines.

    ``graph``: the model's graph derived with ``reduce=None`` (its plain graph without a loss).
    """
    r = _LatexRenderer(graph) if latex else _TextRenderer(graph)
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
            rhs = r.inline(adjoint, named - {adjoint}) if own else r.operand(adjoint)
            backward.append(f"{label}{eq}{rhs}")
        if latex:
            symbols = {name: r.name(graph.symbols[name]) for name in model.wrt}
            for name, text in latex_gradient_formulas(graph).items():
                gradients.append(rf"\frac{{\partial \ell}}{{\partial {symbols[name]}}}{eq}{text}")
        else:
            gradients = _gradient_lines(graph, model.wrt, indent="")
    return {"forward": lines_forward, "backward": backward, "gradients": gradients}


def format_text(model, graph: Graph) -> str:
    """What ``symgrad show`` prints for one model, from its graph derived with ``reduce=None``."""
    p = passes(model, graph)
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
        out += _numerics_notes(graph)
        note = {"mean": "averages them over the batch (input gradients are divided by N)",
                "sum": "sums them over the batch",
                None: "returns them per example"}[model.reduce]
        out += ["", f"The compiled value_and_grad {note}."]
    return "\n".join(out) + "\n"


def _numerics_notes(graph: Graph) -> list:
    """Lines on the numerically stable forms the graph was built with, and on the ops
    on the gradient's path whose derivative is taken as zero almost everywhere."""
    lines = []
    rewrites = list(getattr(graph, "rewrites", ()))
    if rewrites:
        lines += ["", "Numerically stable forms used:"]
        lines += [f"  {_rewrite_text(item)}" for item in rewrites]
    names = display_names(graph)
    flat = sorted(n for n in graph.adjoints if not ops.get(graph.nodes[n].op).differentiable)
    if flat:
        lines += ["", "Derivative taken as zero almost everywhere (piecewise constant):"]
        lines += [f"  {name_of(names, n)} = {formula_text(graph, n, names)}" for n in flat]
    return lines


def _rewrite_text(item) -> str:
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return f"{item[0]} -> {item[1]}"
    return str(item)


def format_latex(model, graph: Graph) -> str:
    """The same as :func:`format_text`, as LaTeX ``aligned`` blocks."""
    p = passes(model, graph, latex=True)
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


# --- docstrings of the generated package ---------------------------------------------------


def summary(model) -> str:
    """The model's formulas, params and inputs, for the generated package's docstring."""
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
    shape = tuple(int(d) for d in symbol.shape) if hasattr(symbol, "shape") else ()
    return f" ({shape[0]}x{shape[1]})" if shape else ""


#: The docstring of value_and_grad writes out the first this many gradients.
DOC_GRADIENTS = 20


def gradient_doc(model, graph: Graph) -> str:
    """The gradient formulas for the docstring of value_and_grad, from the graph derived with
    ``reduce=None``: the same formulas as ``symgrad show`` prints."""
    if model.loss is None:
        return ""
    lines = ["    Gradients of one example's loss:"]
    lines += _gradient_lines(graph, model.wrt, indent=" " * 8, most=DOC_GRADIENTS, line_limit=200)
    if len(model.wrt) > DOC_GRADIENTS:
        lines.append(f"        ... and {len(model.wrt) - DOC_GRADIENTS} more (symgrad show prints them all)")
    scale = {"mean": "averaged over the batch", "sum": "summed over the batch",
             None: "one per example"}[model.reduce]
    lines.append(f"    Parameter gradients are {scale}; input gradients are per example.")
    return "\n".join(lines)


# --- Graphviz ------------------------------------------------------------------------


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_dot(model, graph: Graph) -> str:
    """A Graphviz picture of the forward graph (ellipses) and the backward graph (boxes),
    from the model's graph derived with ``reduce=None``."""
    names = display_names(graph)
    results = [r for group in ("outputs", "example_loss", "gradients") for r in graph.results.get(group, ())]
    live = live_nodes(graph, results)
    forward = set(_forward_nodes(graph)) | {n for n in live if graph.nodes[n].op in ("symbol", "const")}
    lines = [f'digraph "{_dot_escape(model.name)}" {{', "  rankdir=LR;", '  node [fontname="Helvetica"];']
    for n in live:
        node = graph.nodes[n]
        if node.op == "const":
            label, style = operand_text(graph, n, names), 'shape=plaintext'
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


def stats(model, graph: Graph) -> dict:
    """Op counts of the forward code and of the forward+gradient code, and their ratio,
    from the graph the kernels are made of (derived with the model's reduction)."""
    forward = op_count(graph, kernel_results(graph, "forward"))
    result = {"nodes": len(graph.nodes), "forward_ops": forward}
    if model.loss is not None:
        loss_only = op_count(graph, list(graph.results["loss"]))
        both = op_count(graph, kernel_results(graph, "value_and_grad"))
        result.update(loss_ops=loss_only, value_and_grad_ops=both,
                      ratio=both / loss_only if loss_only else float("nan"))
    return result


def format_stats(model, graph: Graph) -> str:
    """What ``symgrad show --stats`` adds for one model; ``graph`` as for :func:`stats`."""
    s = stats(model, graph)
    lines = [f"Model {model.name}: {s['nodes']} graph nodes",
             f"  forward kernel (outputs and loss): {s['forward_ops']} ops per example"]
    if "ratio" in s:
        lines += [f"  loss alone: {s['loss_ops']} ops",
                  f"  value_and_grad (loss and gradients): {s['value_and_grad_ops']} ops",
                  f"  gradient cost ratio: {s['ratio']:.2f}x the loss alone"]
    return "\n".join(lines) + "\n"
