"""Reading what symgrad derived: passes node by node, gradient formulas, DOT, op counts, docstrings.

Every view renders a graph it is handed: the gradient graph
:func:`symgrad.autodiff.derive` made, one example's (``reduce=None``) for
the formulas and the kernels' own for op counts. None of them differentiates.

A deep model's gradient is a large DAG whose expanded formula is
exponentially long, so the primary view is node by node: the forward pass in
topological order, then the backward pass as adjoint assignments that reuse
forward values by name. Text is written in the display dialect of the op
entries (:mod:`symgrad.ops.text`), the notation of the C comments too;
gradient formulas name the values they share instead of writing them out
again. LaTeX and SymPy expressions are in :mod:`symgrad.symbolic`.
"""

from __future__ import annotations

from . import ops
from .graph import Graph, live_nodes
from .naming import display_names, formula_text, inline_text, name_of, operand_text
from .ops.text import ATOM, NEGATION, binding
from .plan import kernel_results

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


# --- sizes ---------------------------------------------------------------------------


def tree_size(graph: Graph, node_id: int, cap: int = 10**9) -> int:
    """The number of nodes of a node's expression written out as a tree (capped)."""
    return tree_sizes(graph, [node_id], cap)[node_id]


def tree_sizes(graph: Graph, roots, cap: int = 10**9) -> dict:
    """Node id -> tree size (capped at cap + 1) for ``roots`` and all they depend on, in one pass."""
    sizes: dict = {}
    for nid in graph.ancestors(roots):
        sizes[nid] = min(cap + 1, 1 + sum(sizes[a] for a in graph.nodes[nid].args))
    return sizes


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
        text = inline_text(graph, n, names, named, line_limit)
        if text is None:
            return None
        if len(text) <= SHORT_FORMULA and binding(text) in (NEGATION, ATOM):
            named.discard(n)
        else:
            where.append((name_of(names, n), text))
            if len(where) > shared_limit:
                return None
    formulas = {r.name: name_of(names, r.node) if r.node in named else inline_text(graph, r.node, names, named,
                                                                                   line_limit)
                for r in results}
    if None in formulas.values():
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


class _TextRenderer:
    """Formats node formulas in the display dialect, with the names of the C comments.

    :func:`passes` asks a renderer for names, node formulas, operands, inlined
    formulas and gradient lines; :mod:`symgrad.symbolic` has the LaTeX one.
    """

    eq = " = "

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

    @staticmethod
    def bar(name: str) -> str:
        return f"{name}_bar"

    def gradients(self, model) -> list:
        return _gradient_lines(self.graph, model.wrt, indent="")


def passes(model, graph: Graph, renderer=None) -> dict:
    """The forward pass, backward pass and final gradients of one example, as lines.

    ``graph``: the model's graph derived with ``reduce=None`` (its plain graph
    without a loss); ``renderer``: how to write them, by default as text.
    """
    r = _TextRenderer(graph) if renderer is None else renderer
    forward = _forward_nodes(graph)
    lines_forward = [f"{r.name(n)}{r.eq}{r.node(n)}" for n in forward]
    backward, gradients = [], []
    if model.loss is not None:
        named = set(forward) | set(graph.adjoints.values())
        for fwd in sorted(graph.adjoints, reverse=True):
            adjoint = graph.adjoints[fwd]
            label = r.bar(r.name(fwd))
            own = r.name(adjoint) == label
            rhs = r.inline(adjoint, named - {adjoint}) if own else r.operand(adjoint)
            backward.append(f"{label}{r.eq}{rhs}")
        gradients = r.gradients(model)
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
    return sum(_node_cost(graph, n) for n in live_nodes(graph, results))


def _node_cost(graph: Graph, n: int) -> int:
    node = graph.nodes[n]
    if node.args or ops.get(node.op).kind == "tensor":
        return ops.get(node.op).cost(node, [graph.nodes[a].shape for a in node.args])
    return 0


def stats(model, graph: Graph, extra: dict | None = None) -> dict:
    """Op counts of the forward code and of the forward+gradient code, and their ratio,
    from the graph the kernels are made of (derived with the model's reduction); and of the
    extra kernels, from ``extra`` (kernel kind -> the graph it is planned from)."""
    forward = op_count(graph, kernel_results(graph, "forward"))
    result = {"nodes": len(graph.nodes), "forward_ops": forward}
    loss_only = None
    if model.loss is not None:
        loss_only = op_count(graph, list(graph.results["loss"]))
        both = op_count(graph, kernel_results(graph, "value_and_grad"))
        result.update(loss_ops=loss_only, value_and_grad_ops=both,
                      ratio=both / loss_only if loss_only else float("nan"))
    for kind, g in (extra or {}).items():
        ops_ = op_count(g, kernel_results(g, kind))
        base = forward if kind in ("jvp", "jacobian") else loss_only
        if kind == "hessian":  # the columns kernel: its shared passes once, its tangents per column
            live = live_nodes(g, kernel_results(g, kind))
            per_column = sum(_node_cost(g, n) for n in live if g.nodes[n].varying)
            columns = sum(g.nodes[g.symbols[name]].size for name in model.wrt)
            total = result["value_and_grad_ops"] + ops_ - per_column + columns * per_column
            result.update(hessian_columns=columns, hessian_shared_ops=ops_ - per_column,
                          hessian_column_ops=per_column, hessian_ops=total,
                          hessian_ratio=total / base if base else float("nan"))
            continue
        result[f"{kind}_ops"] = ops_
        result[f"{kind}_ratio"] = ops_ / base if base else float("nan")
        if kind == "hvp" and "hessian" not in (extra or {}):
            sweeps = sum(g.nodes[g.symbols[name]].size for name in model.wrt)
            result.update(hessian_sweeps=sweeps, hessian_ops=result["value_and_grad_ops"] + sweeps * ops_,
                          hessian_ratio=(result["value_and_grad_ops"] + sweeps * ops_) / base if base else float("nan"))
        if kind == "jacobian":
            result["jacobian_mode"] = "forward" if "jacobian" in g.results else "reverse"
            result["jacobian_sweeps"] = sum(g.nodes[n].size for name, n in g.symbols.items()
                                            if name.startswith(("tangents[", "cotangents[")))
    return result


def format_stats(model, graph: Graph, extra: dict | None = None) -> str:
    """What ``symgrad show --stats`` adds for one model; ``graph`` and ``extra`` as for :func:`stats`."""
    s = stats(model, graph, extra)
    lines = [f"Model {model.name}: {s['nodes']} graph nodes",
             f"  forward kernel (outputs and loss): {s['forward_ops']} ops per example"]
    if "ratio" in s:
        lines += [f"  loss alone: {s['loss_ops']} ops",
                  f"  value_and_grad (loss and gradients): {s['value_and_grad_ops']} ops",
                  f"  gradient cost ratio: {s['ratio']:.2f}x the loss alone"]
    if "jvp_ops" in s:
        lines.append(f"  jvp (outputs, loss and their tangents): {s['jvp_ops']} ops, "
                     f"{s['jvp_ratio']:.2f}x the forward kernel")
    if "hvp_ops" in s:
        lines.append(f"  hvp (Hessian times v, forward over reverse): {s['hvp_ops']} ops, "
                     f"{s['hvp_ratio']:.2f}x the loss alone")
    if "hessian_sweeps" in s:
        lines.append(f"  hessian: value_and_grad and {s['hessian_sweeps']} hvp sweeps, {s['hessian_ops']} ops, "
                     f"{s['hessian_ratio']:.2f}x the loss alone")
    if "hessian_columns" in s:
        lines.append(f"  hessian: value_and_grad and one call of the hessian kernel, {s['hessian_columns']} columns "
                     f"({s['hessian_shared_ops']} ops once, {s['hessian_column_ops']} per column), "
                     f"{s['hessian_ops']} ops, {s['hessian_ratio']:.2f}x the loss alone")
    if "jacobian_ops" in s:
        side = "tangents of the wrt symbols" if s["jacobian_mode"] == "forward" else "cotangents of the rows"
        lines.append(f"  jacobian: {s['jacobian_mode']} mode, {s['jacobian_sweeps']} sweep{'s' if s['jacobian_sweeps'] != 1 else ''} (unit {side}; "
                     f"the fewer), {s['jacobian_ops']} ops per sweep, {s['jacobian_ratio']:.2f}x the forward kernel")
    return "\n".join(lines) + "\n"


def format_second_order(model, graph: Graph, tangents: dict) -> str:
    """What ``symgrad show --hessian`` prints: the second-order pass of one example, from
    :func:`symgrad.forward.second_order` of its ``reduce=None`` gradient graph. Each value's
    tangent along v is named after it: ``h_dot``, ``h_bar_dot`` for its adjoint's."""
    names = display_names(graph)
    for node in sorted(tangents):
        t = tangents[node]
        if t not in names and graph.nodes[t].op not in ("symbol", "const"):
            names[t] = f"{name_of(names, node)}_dot"
    first = set(graph.ancestors([r.node for r in graph.results["gradients"]]))
    hvp = graph.results["hvp"]
    steps = [n for n in graph.ancestors([r.node for r in hvp])
             if n not in first and graph.nodes[n].op not in ("symbol", "const")
             and (ops.get(graph.nodes[n].op).kind != "view" or n in tangents.values())]
    v = ", ".join(f"v[{name}]" for name in model.wrt)
    out = [f"Model {model.name}: second-order pass of one example, the tangents along {v} of the values of",
           f"the forward and backward passes (forward over reverse; {len(steps)} steps):"]
    out += [f"  {name_of(names, n)} = {formula_text(graph, n, names)}" for n in steps]
    out += ["", "Hessian of one example's loss times v:"]
    out += [f"  (H v)[{r.name}] = {operand_text(graph, r.node, names)}" for r in hvp]
    return "\n".join(out) + "\n"


