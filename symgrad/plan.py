"""Planning a kernel: what each node is, where it lives, and in which order it runs.

:func:`plan_kernel` decides, for the part of a graph that one kernel needs,
everything about the kernel that is not C text, as plain data that can be
printed and tested on its own (:class:`KernelPlan`). :mod:`symgrad.emit`
then writes the C of that plan through the printer.

A kernel walks the batch in tiles of ``tile`` examples and has three parts:

* prologue: values shared by all examples (functions of params only),
  computed once per call; batch accumulators set to zero;
* tile body: per-example values. Scalar nodes are grouped into *segments*:
  one loop over the examples of the tile whose body is straight-line code,
  one statement per node, values kept in local variables unless a later
  part of the body needs them. Matrix nodes are tile-level operations (one
  loop nest or one runtime call over the whole tile). Batch sums accumulate
  here and per-example results are written out;
* epilogue: values that depend on batch sums (parameter gradients and
  everything upstream of them), and the per-call results.

Scratch memory is planned here: buffers whose lifetimes do not overlap share
memory (:class:`Arena`), so the workspace a call needs is known when the
code is generated.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import ops
from .graph import Graph, live_nodes
from .naming import c_identifiers, node_var
from .ops import MAX_TILE, size_of
from .printer import REAL_TYPES, Operand

KINDS = ("forward", "value_and_grad", "jvp", "hvp", "jacobian", "hessian")
ALIGN = 8  # elements; buffers start on 64-byte boundaries for doubles
TILE_BUDGET = 65536  # elements of per-tile scratch to aim for (512 KiB of doubles)
STREAMED_BUDGET = 1 << 22  # elements of per-tile scratch at most, with a scan's stored carries (32 MiB)

# Roles of a live node in a kernel.
ARG, LITERAL, VIEW, FUSED = "arg", "literal", "view", "fused"
SEGMENT, TILE, SCALAR_ACC, TILE_ACC = "segment", "tile", "scalar_acc", "tile_acc"
PROLOGUE, EPILOGUE = "prologue", "epilogue"
IN_BODY = (SEGMENT, TILE, SCALAR_ACC, TILE_ACC)


@dataclass(frozen=True)
class Argument:
    """One parameter of a kernel's C signature.

    ``role`` is ``"count"``, ``"param"``, ``"input"`` or ``"output"``; ``name``
    the user's name for it (symbol, output, ``"loss"``); ``kind`` says what an
    output holds (``"output"``, ``"loss"`` or ``"gradient"``).
    """

    c_name: str
    c_type: str
    role: str
    name: str
    shape: tuple
    per_example: bool
    by_value: bool = False
    kind: str = ""


@dataclass(frozen=True)
class Buffer:
    """A pointer into the workspace: ``c_name = work + offset``."""

    c_name: str
    offset: int
    per_tile: bool
    node: int | None  # the node stored there, or None for the shared scratch of runtime helpers


@dataclass(frozen=True)
class Step:
    """One step of a kernel in execution order.

    ``section`` is ``"prologue"``, ``"body"`` or ``"epilogue"``; ``what`` is
    ``"node"`` (compute one node), ``"zero"`` (start a batch sum),
    ``"segment"`` (element-wise nodes in one loop; ``nodes`` holds them) or
    ``"write"`` (copy ``nodes[0]`` into the result argument ``result``).
    """

    section: str
    what: str
    nodes: tuple
    result: Argument | None = None


@dataclass
class KernelPlan:
    """Everything decided about one kernel before any C is written."""

    graph: Graph
    kind: str
    model: str
    dtype: str
    results: list
    live: list
    role: dict  # node -> role
    storage: dict  # node -> "local", "scalar", "accumulator", "tile" or "uniform"
    arguments: list
    steps: list
    buffers: list
    uniform_size: int
    tile_size: int
    tile: int
    operands: dict = field(default_factory=dict)  # node -> Operand (literals are left to the emitter)
    segment_writes: dict = field(default_factory=dict)  # node -> [Argument] written in its segment

    @property
    def real(self) -> str:
        return REAL_TYPES[self.dtype]

    @property
    def work_size(self) -> int:
        """Elements of scratch memory the kernel needs."""
        return self.uniform_size + self.tile * self.tile_size

    def base(self, nid: int) -> int:
        """The node whose storage a view reads."""
        while self.role.get(nid) == VIEW:
            nid = self.graph.nodes[nid].args[0]
        return nid

    def reads(self, nid: int) -> list:
        """The stored nodes a node's code reads (through views and fused ops)."""
        args = []
        for a in self.graph.nodes[nid].args:
            args.extend(self.graph.nodes[a].args if self.role.get(a) == FUSED else [a])
        return [self.base(a) for a in args]


def kernel_results(graph: Graph, kind: str) -> list:
    """The results a kernel of this kind returns, in argument order."""
    if kind == "forward":
        return list(graph.results.get("outputs", ())) + list(graph.results.get("loss", ()))
    if kind == "value_and_grad":
        return list(graph.results.get("loss", ())) + list(graph.results.get("gradients", ()))
    if kind == "jvp":  # graphs of symgrad.forward: the outputs and the loss, then their tangents
        return kernel_results(graph, "forward") + list(graph.results["tangents"])
    if kind == "hvp":
        return list(graph.results["hvp"])
    if kind == "hessian":  # a model without inputs: one column per example of the call
        return list(graph.results["hessian_columns"])
    if kind == "jacobian":  # columns by forward sweeps, or rows by reverse ones
        return list(graph.results.get("jacobian") or graph.results["jacobian_rows"])
    raise ValueError(f"kernel kind must be one of {KINDS}, got {kind!r}")


def plan_kernel(graph: Graph, kind: str, *, model: str, dtype: str = "float64") -> KernelPlan:
    """The :class:`KernelPlan` of the ``kind`` kernel of ``model``'s graph."""
    if dtype not in REAL_TYPES:
        raise ValueError(f"dtype must be one of {sorted(REAL_TYPES)}, got {dtype!r}")
    results = kernel_results(graph, kind)
    live = live_nodes(graph, results)
    plan = KernelPlan(graph, kind, model, dtype, results, live, role={}, storage={}, arguments=[],
                      steps=[], buffers=[], uniform_size=0, tile_size=0, tile=MAX_TILE)
    _assign_roles(plan)
    items = _body_items(plan)
    plan.arguments = _arguments(plan)
    outputs = plan.arguments[-len(results):] if results else []
    segment_of = {n: k for k, (what, nodes) in enumerate(items) if what == "segment" for n in nodes}
    tile_writes, call_writes = [], []
    for arg, r in zip(outputs, results):
        if not r.per_example:
            call_writes.append(Step("epilogue", "write", (r.node,), arg))
        elif plan.role.get(r.node) == SEGMENT:
            plan.segment_writes.setdefault(r.node, []).append(arg)
        else:
            tile_writes.append(Step("body", "write", (r.node,), arg))
    plan.storage = _storage(plan, segment_of, tile_writes)
    plan.steps = _steps(plan, items, tile_writes, call_writes)
    _allocate(plan)
    _make_operands(plan)
    return plan


# --- what each node is ----------------------------------------------------------------


def _assign_roles(plan: KernelPlan) -> None:
    g = plan.graph
    users = g.consumers(plan.live)
    result_nodes = {r.node for r in plan.results}
    after_batch = {}  # node -> depends on a batch sum
    for nid in plan.live:
        node = g.nodes[nid]
        op = ops.get(node.op)
        late = False
        if node.op == "symbol":
            role = ARG
        elif op.kind == "leaf":
            role = LITERAL
        elif op.kind == "view":
            role = VIEW
            late = after_batch[node.args[0]]
        elif node.op == "reduce_batch":
            (arg,) = node.args
            # An op that can sum itself over the batch (a matrix product) does, instead of
            # storing one value per example, when nothing else reads it.
            if ops.get(g.nodes[arg].op).emit_batch_sum is not None and users.get(arg) == [nid] \
                    and arg not in result_nodes:
                plan.role[arg] = FUSED
            role = SCALAR_ACC if node.shape == () else TILE_ACC
            late = True
        elif node.varying:
            role = SEGMENT if op.kind == "elementwise" else TILE
        elif any(after_batch[a] for a in node.args):
            role, late = EPILOGUE, True
        else:
            role = PROLOGUE
        plan.role.setdefault(nid, role)
        after_batch[nid] = late


def _body_items(plan: KernelPlan) -> list:
    """Body items in order: ("segment", [nodes]) or ("tile", [node]).

    A segment holds element-wise nodes of one shape that can run in the
    same loop; ready element-wise nodes are gathered before the next
    tile-level node, so segments are as long as the dependencies allow.
    """
    g = plan.graph
    body = [n for n in plan.live if plan.role[n] in IN_BODY]
    in_body = set(body)
    deps = {n: [r for r in plan.reads(n) if r in in_body] for n in body}
    # A value read through a view (an element, a transpose) is read at other indices than the
    # loop that computes it is at: it must be complete, so it cannot come from the same loop.
    viewed = {n: {plan.base(a) for a in g.nodes[n].args if plan.role.get(a) == VIEW} & in_body for n in body}
    fusible = {n for n in body if plan.role[n] in (SEGMENT, SCALAR_ACC)}
    done: set = set()
    items = []
    remaining = body
    while remaining:
        first = next((n for n in remaining if n in fusible and all(d in done for d in deps[n])), None)
        if first is not None:
            shape = g.nodes[first].shape
            segment, taken = [], set()
            for n in remaining:
                if (n in fusible and g.nodes[n].shape == shape
                        and all(d in done or d in taken for d in deps[n]) and not (viewed[n] & taken)):
                    segment.append(n)
                    taken.add(n)
            items.append(("segment", segment))
        else:
            n = next(r for r in remaining if all(d in done for d in deps[r]))
            items.append(("tile", [n]))
            taken = {n}
        done |= taken
        remaining = [r for r in remaining if r not in taken]
    return items


# --- the C signature ------------------------------------------------------------------


def _arguments(plan: KernelPlan) -> list:
    """Counts, then the symbols the kernel reads, then its results."""
    g, real = plan.graph, REAL_TYPES[plan.dtype]
    arguments = [Argument("n", "int64_t", "count", "n", (), False, by_value=True),
                 Argument("batch", "int64_t", "count", "batch", (), False, by_value=True)]
    symbol_ids = c_identifiers(list(g.symbols))
    used = set(plan.live)
    for name, nid in g.symbols.items():
        if nid not in used:
            continue
        node = g.nodes[nid]
        ident = symbol_ids[name]
        if node.varying:
            arguments.append(Argument(f"in_{ident}", f"const {real} *", "input", name, node.shape, True))
            plan.operands[nid] = dense(f"x_{ident}", node.shape, True)
        elif node.shape == ():
            arguments.append(Argument(f"p_{ident}", real, "param", name, (), False, by_value=True))
            plan.operands[nid] = Operand(f"p_{ident}", (), "scalar", False)
        else:
            arguments.append(Argument(f"p_{ident}", f"const {real} *", "param", name, node.shape, False))
            plan.operands[nid] = dense(f"p_{ident}", node.shape, False)
    # A result's group is known by identity, not equality: an output that is the constant 0 and
    # its tangent (the same zero node, under the same name) are equal Results of two groups.
    def group(*names):
        return {id(r) for name in names for r in g.results.get(name, ())}

    gradients, losses, tangents = group("gradients"), group("loss"), group("tangents", "jacobian")
    # Second-order and Jacobian results: gradients (shaped like their symbol) or tangents of outputs.
    per_symbol = group("hvp", "jacobian_rows", "hessian_columns")
    plain_ids = c_identifiers([r.name for r in plan.results if id(r) not in gradients | per_symbol | tangents])
    tangent_ids = c_identifiers([r.name for r in plan.results if id(r) in tangents])
    for r in plan.results:
        if id(r) in gradients:
            kind, c_name = "gradient", f"grad_{symbol_ids[r.name]}"
        elif id(r) in per_symbol:
            kind, c_name = "gradient", f"d_{symbol_ids[r.name]}"
        elif id(r) in tangents:
            kind, c_name = "tangent", f"tan_{tangent_ids[r.name]}"
        else:
            kind, c_name = ("loss" if id(r) in losses else "output"), f"out_{plain_ids[r.name]}"
        arguments.append(Argument(c_name, f"{real} *", "output", r.name, g.nodes[r.node].shape, r.per_example,
                                  kind=kind))
    return arguments


# --- storage and order --------------------------------------------------------------------


def _storage(plan: KernelPlan, segment_of: dict, tile_writes: list) -> dict:
    """Node -> "local" (segment variable), "scalar", "accumulator", "tile" or "uniform"."""
    readers: dict = {}
    for nid in plan.live:
        if plan.role[nid] not in (ARG, LITERAL, VIEW, FUSED):
            for r in plan.reads(nid):
                readers.setdefault(r, []).append(nid)
    for step in tile_writes:
        readers.setdefault(plan.base(step.nodes[0]), []).append(None)
    storage = {}
    for nid in plan.live:
        role = plan.role[nid]
        node = plan.graph.nodes[nid]
        if role == SEGMENT:
            here = segment_of[nid]
            private = all(r is not None and segment_of.get(r) == here for r in readers.get(nid, ()))
            storage[nid] = "local" if private else "tile"
        elif role == TILE:
            storage[nid] = "tile"
        elif role == SCALAR_ACC:
            storage[nid] = "accumulator"
        elif role == TILE_ACC:
            storage[nid] = "uniform"
        elif role in (PROLOGUE, EPILOGUE):
            is_scalar = node.shape == () and ops.get(node.op).kind == "elementwise"
            storage[nid] = "scalar" if is_scalar else "uniform"
    return storage


def _steps(plan: KernelPlan, items: list, tile_writes: list, call_writes: list) -> list:
    steps = []
    for nid in plan.live:
        if plan.role[nid] == PROLOGUE:
            steps.append(Step("prologue", "node", (nid,)))
        elif plan.role[nid] in (SCALAR_ACC, TILE_ACC):
            steps.append(Step("prologue", "zero", (nid,)))
    steps += [Step("body", "segment" if what == "segment" else "node", tuple(nodes)) for what, nodes in items]
    steps += tile_writes
    steps += [Step("epilogue", "node", (n,)) for n in plan.live if plan.role[n] == EPILOGUE]
    steps += call_writes
    return steps


class Arena:
    """Assigns offsets to buffers, reusing the space of buffers that are dead."""

    def __init__(self):
        self.size = 0
        self._free: list = []  # (size, offset), kept sorted

    def take(self, size: int) -> int:
        size = _align(max(size, 1))
        for k, (free_size, offset) in enumerate(self._free):
            if free_size == size:
                del self._free[k]
                return offset
        offset = self.size
        self.size += size
        return offset

    def give_back(self, size: int, offset: int) -> None:
        self._free.append((_align(max(size, 1)), offset))
        self._free.sort()


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _step_reads(plan: KernelPlan, step: Step) -> list:
    if step.what == "write":
        return [plan.base(step.nodes[0])]
    if step.what == "zero":
        return []
    return [r for n in step.nodes for r in plan.reads(n)]


def _allocate(plan: KernelPlan) -> None:
    """Offsets of every buffer; buffers whose lifetimes do not overlap share space."""
    steps, storage = plan.steps, plan.storage
    defined_at, last_use = {}, {}
    body = [k for k, s in enumerate(steps) if s.section == "body"]
    body_start, body_end = (body[0], body[-1]) if body else (len(steps), -1)
    for k, step in enumerate(steps):
        if step.what != "write":
            for n in step.nodes:
                defined_at.setdefault(n, k)
        for n in _step_reads(plan, step):
            last = k
            if step.section == "body" and defined_at.get(n, k) < body_start:
                last = max(last, body_end)  # read by every tile
            last_use[n] = max(last_use.get(n, -1), last)
    for n in storage:
        if plan.role[n] == TILE_ACC:
            last_use[n] = max(last_use.get(n, -1), body_end)

    arenas = {"uniform": Arena(), "tile": Arena()}
    offsets = {}
    frees: dict = {}
    for n, k in last_use.items():
        frees.setdefault(k, []).append(n)
    for k, step in enumerate(steps):
        if step.what != "write":
            for n in step.nodes:
                if storage.get(n) in ("tile", "uniform") and n not in offsets:
                    offsets[n] = arenas[storage[n]].take(plan.graph.nodes[n].size)
        for n in sorted(frees.get(k, ())):
            if n in offsets and k >= defined_at.get(n, k):
                arenas[storage[n]].give_back(plan.graph.nodes[n].size, offsets[n])
    scratch = max((ops.get(plan.graph.nodes[n].op).scratch(plan.graph.nodes[n]) for n in plan.live
                   if ops.get(plan.graph.nodes[n].op).scratch is not None), default=0)
    buffers = [Buffer("scratch", arenas["uniform"].take(scratch), False, None)] if scratch else []
    # A scan's value (its stored carries) is written and read one row per step, so it need not
    # stay in cache: it counts against the budget by one row, and the tile's whole workspace
    # stays under STREAMED_BUDGET.
    streamed = sum(plan.graph.nodes[n].size - plan.graph.nodes[n].size // (plan.graph.nodes[n].attrs[0].steps + 1)
                   for n in offsets if storage[n] == "tile" and plan.graph.nodes[n].op == "scan")
    cached = max(arenas["tile"].size - streamed, 0)
    tile = MAX_TILE
    while tile > 8 and (tile * cached > TILE_BUDGET or tile * arenas["tile"].size > STREAMED_BUDGET):
        tile //= 2
    for n in sorted(offsets):
        per_tile = storage[n] == "tile"
        base = arenas["uniform"].size + tile * offsets[n] if per_tile else offsets[n]
        buffers.append(Buffer(node_var(n), base, per_tile, n))
    plan.buffers, plan.tile = buffers, tile
    plan.uniform_size, plan.tile_size = arenas["uniform"].size, arenas["tile"].size


def dense(text: str, shape, varying: bool) -> Operand:
    """A row-major buffer operand, examples back to back when it is varying."""
    cols = shape[1] if shape else 1
    return Operand(text, shape, "buffer", varying, row_stride=cols, col_stride=1,
                   example_stride=size_of(shape) if varying else 0)


def _make_operands(plan: KernelPlan) -> None:
    """Where every stored node and every view lives (literals get theirs when printed)."""
    g = plan.graph
    for nid in plan.live:
        kind = plan.storage.get(nid)
        if kind in ("local", "scalar", "accumulator"):
            plan.operands[nid] = Operand(node_var(nid), (), "scalar", kind == "local")
        elif kind is not None:
            plan.operands[nid] = dense(node_var(nid), g.nodes[nid].shape, kind == "tile")
    for nid in plan.live:
        if plan.role[nid] == VIEW:
            node = g.nodes[nid]
            plan.operands[nid] = ops.get(node.op).view(plan.operands[node.args[0]], node.attrs, node.shape)
