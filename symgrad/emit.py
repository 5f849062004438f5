"""Writing the C of a kernel plan: one statement (or one segment line) per node.

:func:`emit_kernel` turns a :class:`symgrad.plan.KernelPlan` into a
:class:`KernelSpec`: the statements of the prologue, tile body and epilogue,
each under a comment naming the node and its formula, plus the data the
templates lay out around them. All C text comes from the printer or from an
op's registry entry (its ``c`` form, ``emit``, ``emit_batch_sum``); loops
carry their variable and bound as data, so templates never read C back.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ops
from .naming import c_identifiers, display_names, formula_text, name_of, node_var
from .ops import size_of
from .plan import FUSED, SCALAR_ACC, KernelPlan, dense
from .printer import CArg, CPrinter, Operand, comment_text

COMMENT_LIMIT = 110


@dataclass(frozen=True)
class Pointer:
    """A pointer into the workspace: ``c_name = work + offset``, with what it holds."""

    c_name: str
    offset: int
    per_tile: bool
    comment: str


@dataclass(frozen=True)
class Statement:
    """C lines computing one node (or writing one result), under one comment."""

    comment: str
    lines: tuple
    kind: str = "statement"


@dataclass(frozen=True)
class Segment:
    """Element-wise statements of one shape, run as one loop nest over a tile.

    For scalars the loop runs over the examples of the tile; for matrices
    over their elements too (or one flat loop when every operand is dense).
    ``loops`` are (variable, bound) pairs, outermost first; the innermost
    gets the SIMD pragma. ``lines`` are ``code  /* comment */``;
    ``reductions`` names the batch accumulators the loop adds to (they go
    into the SIMD reduction clause).
    """

    comment: str
    lines: tuple
    reductions: tuple
    loops: tuple = (("e", "nt"),)
    kind: str = "segment"


@dataclass(frozen=True)
class KernelSpec:
    """Everything the templates need to write one C kernel function."""

    function: str
    kind: str
    dtype: str
    real: str
    tile: int
    arguments: tuple
    buffers: tuple  # Pointer
    uniform_size: int
    tile_size: int
    prologue: tuple
    tile_pointers: tuple
    body: tuple
    epilogue: tuple

    @property
    def work_size(self) -> int:
        """Elements of scratch memory the kernel needs."""
        return self.uniform_size + self.tile * self.tile_size


def emit_kernel(plan: KernelPlan) -> KernelSpec:
    """The C statements of ``plan``, ready for the templates."""
    return _Emitter(plan).run()


class _Emitter:
    def __init__(self, plan: KernelPlan):
        self.plan = plan
        self.g = plan.graph
        self.p = CPrinter(plan.dtype)
        self.names = display_names(plan.graph)
        self.operands = dict(plan.operands)
        for nid in plan.live:
            if nid not in self.operands and ops.get(self.g.nodes[nid].op).kind == "leaf":
                self.operands[nid] = self._literal(nid)

    def run(self) -> KernelSpec:
        plan, p = self.plan, self.p
        sections = {"prologue": [], "body": [], "epilogue": []}
        for step in plan.steps:
            if step.what == "zero":
                item = self._zero(step.nodes[0])
            elif step.what == "segment":
                item = self._segment(step.nodes)
            elif step.what == "write":
                item = self._write(step.result, step.nodes[0])
            else:
                item = self._compute(step.nodes[0])
            sections[step.section].append(item)
        pointers = tuple(Pointer(b.c_name, b.offset, b.per_tile,
                                 "packing space for matrix products" if b.node is None else self._label(b.node))
                         for b in plan.buffers)
        return KernelSpec(
            function=f"{c_identifiers([plan.model])[plan.model]}_{plan.kind}",
            kind=plan.kind,
            dtype=plan.dtype,
            real=p.real,
            tile=plan.tile,
            arguments=tuple(plan.arguments),
            buffers=pointers,
            uniform_size=plan.uniform_size,
            tile_size=plan.tile_size,
            prologue=tuple(sections["prologue"]),
            tile_pointers=tuple(self._tile_pointers()),
            body=tuple(sections["body"]),
            epilogue=tuple(sections["epilogue"]),
        )

    # --- operands and comments --------------------------------------------------------

    def _literal(self, nid) -> Operand:
        node = self.g.nodes[nid]
        if node.op != "const":  # the example counts
            return Operand(ops.get(node.op).c(self.p, (), node.attrs), (), "literal", False)
        value = float(node.attrs[0])
        return Operand(self.p.literal(value), (), "literal", False, const=value)

    def _label(self, nid) -> str:
        """``v12 (h)``: the node's C variable and its display name, safe inside a C comment."""
        name = name_of(self.names, nid)
        var = node_var(nid)
        return var if name == var else comment_text(f"{var} ({name})")

    def _comment(self, nid) -> str:
        node = self.g.nodes[nid]
        label = f"{node_var(nid)} ({name_of(self.names, nid)})" if nid in self.names else node_var(nid)
        if node.op == "reduce_batch" and self.plan.role.get(node.args[0]) == FUSED:
            text = f"{label} = batch_sum({formula_text(self.g, node.args[0], self.names)})"
        else:
            text = f"{label} = {formula_text(self.g, nid, self.names)}"
        if len(text) > COMMENT_LIMIT:
            text = text[: COMMENT_LIMIT - 3] + "..."
        return comment_text(text)

    @staticmethod
    def _result_text(arg) -> str:
        if arg.kind == "gradient":
            return f"result: gradient with respect to {arg.name}"
        return "result: loss" if arg.kind == "loss" else f"result: output {arg.name}"

    # --- statements -----------------------------------------------------------------------

    def _tile_pointers(self) -> list:
        """Pointers to the current tile's examples of every input and per-example result."""
        p, lines = self.p, []
        for arg in self.plan.arguments:
            size = size_of(arg.shape)
            if arg.role == "input":
                lines.append(p.tile_pointer(f"x_{arg.c_name[len('in_'):]}", arg.c_name, size, const=True))
            elif arg.role == "output" and arg.per_example:
                lines.append(p.tile_pointer(f"o_{arg.c_name}", arg.c_name, size, const=False))
        return lines

    def _zero(self, nid) -> Statement:
        out = self.operands[nid]
        comment = f"{self._label(nid)}: batch sum starts at zero"
        if self.plan.role[nid] == SCALAR_ACC:
            return Statement(comment, (self.p.accumulator(out.text),))
        return Statement(comment, tuple(self.p.fill(out, 0)))

    def _compute(self, nid) -> Statement:
        node = self.g.nodes[nid]
        out = self.operands[nid]
        if node.op == "reduce_batch" and self.plan.role.get(node.args[0]) == FUSED:
            inner = self.g.nodes[node.args[0]]
            args = [self.operands[a] for a in inner.args]
            lines = ops.get(inner.op).emit_batch_sum(self.p, out, args, inner.attrs)
            return Statement(self._comment(nid), tuple(lines))
        op = ops.get(node.op)
        args = [self.operands[a] for a in node.args]
        if op.kind == "elementwise":
            lines = self.p.elementwise(op.c, node.attrs, out, args)
        else:
            lines = op.emit(self.p, out, args, node.attrs)
        return Statement(self._comment(nid), tuple(lines))

    def _segment(self, nodes) -> Segment:
        p, g = self.p, self.g
        shape = g.nodes[nodes[0]].shape
        reads = [self.operands[a] for n in nodes for a in g.nodes[n].args]
        flat = shape != () and all(_flat_compatible(o, shape) for o in reads)
        if flat:
            index = ("k",)
        elif shape == ():
            index = ("e", None, None)
        else:
            index = ("e", "i" if shape[0] > 1 else 0, "j" if shape[1] > 1 else 0)

        def element(operand):
            if flat:
                return p.flat_element(operand, "k")
            return operand.element(*index)

        lines, reductions = [], []
        for nid in nodes:
            node = g.nodes[nid]
            comment = self._comment(nid)
            if self.plan.role[nid] == SCALAR_ACC:
                acc = self.operands[nid].text
                lines.append(p.commented(p.add_to(acc, element(self.operands[node.args[0]])), comment))
                reductions.append(acc)
                continue
            args = [CArg(element(self.operands[a]), self.operands[a].const) for a in node.args]
            expr = ops.get(node.op).c(p, args, node.attrs)
            if self.plan.storage[nid] == "local":
                lines.append(p.commented(p.local(node_var(nid), expr), comment))
            else:
                lines.append(p.commented(p.store(element(self.operands[nid]), expr), comment))
            for arg in self.plan.segment_writes.get(nid, ()):
                target = dense(f"o_{arg.c_name}", arg.shape, True)
                lines.append(p.commented(p.store(element(target), element(self.operands[nid])),
                                         comment_text(self._result_text(arg))))
        first, last = node_var(nodes[0]), node_var(nodes[-1])
        span = first if first == last else f"{first} .. {last}"
        if flat:
            loops = (("k", f"nt * {size_of(shape)}"),)
        else:
            loops = (("e", "nt"),) + tuple((v, d) for v, d in zip("ij", shape) if d > 1)
        where = "per example" if shape == () else f"per element of {shape[0]}x{shape[1]}"
        return Segment(f"{where}: {span}", tuple(lines), tuple(reductions), loops)

    def _write(self, arg, nid) -> Statement:
        source = self.operands[nid]
        out = dense(f"o_{arg.c_name}", arg.shape, True) if arg.per_example else dense(arg.c_name, arg.shape, False)
        lines = self.p.elementwise(lambda p, a, attrs: str(a[0]), (), out, [source])
        return Statement(comment_text(self._result_text(arg)), tuple(lines))


def _flat_compatible(operand, shape) -> bool:
    """Read with one flat index k over (example, element): dense and full shape, or a scalar."""
    if operand.storage != "buffer":
        return operand.storage == "literal" or not operand.varying or operand.shape == shape
    return operand.is_dense() and operand.varying and operand.shape == shape
