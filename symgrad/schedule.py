"""Lowering a graph to a kernel: statement order, storage, buffers and loops.

:func:`schedule` turns the part of a graph that one kernel needs into a
:class:`KernelSpec`: plain strings and numbers that the templates lay out,
with no SymPy in sight. A kernel walks the batch in tiles of ``tile``
examples and has three phases:

* prologue: values shared by all examples (functions of params only),
  computed once per call; batch accumulators set to zero;
* tile body: per-example values, each node one loop over the tile (and over
  its elements for matrices), accumulating batch sums and writing
  per-example results;
* epilogue: values that depend on batch sums (parameter gradients and
  everything upstream of them), and the per-call results.

Scratch memory is planned here: buffers whose lifetimes do not overlap share
memory, so the workspace a call needs is known when the code is generated.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ops
from .graph import Graph
from .naming import c_identifiers, display_names, formula, name_of, node_var
from .optimize import live_nodes
from .printer import CPrinter, Operand, comment_text

KINDS = ("forward", "value_and_grad")
_ALIGN = 8  # elements; buffers start on 64-byte boundaries for doubles
_TILE_BUDGET = 65536  # elements of per-tile scratch to aim for (512 KiB of doubles)
_COMMENT_LIMIT = 110


@dataclass(frozen=True)
class Argument:
    """One parameter of a kernel's C signature.

    ``role`` is ``"param"``, ``"input"`` or ``"output"``; ``name`` the user's
    name for it (symbol, output, ``"loss"``); ``kind`` says what an output
    holds (``"output"``, ``"loss"`` or ``"gradient"``).
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
    c_name: str
    offset: int
    per_tile: bool
    comment: str


@dataclass(frozen=True)
class Statement:
    comment: str
    lines: tuple


@dataclass(frozen=True)
class KernelSpec:
    """Everything the templates need to write one C kernel function."""

    function: str
    kind: str
    dtype: str
    real: str
    tile: int
    arguments: tuple
    buffers: tuple
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


def kernel_results(graph: Graph, kind: str) -> list:
    """The results a kernel of this kind returns, in argument order."""
    if kind == "forward":
        return list(graph.results.get("outputs", ())) + list(graph.results.get("loss", ()))
    if kind == "value_and_grad":
        return list(graph.results.get("loss", ())) + list(graph.results.get("gradients", ()))
    raise ValueError(f"kernel kind must be one of {KINDS}, got {kind!r}")


def _result_kind(graph: Graph, result) -> str:
    if result in graph.results.get("gradients", ()):
        return "gradient"
    if result in graph.results.get("loss", ()):
        return "loss"
    return "output"


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class _Arena:
    """Assigns offsets to buffers, reusing the space of buffers that are dead."""

    def __init__(self):
        self.size = 0
        self._free: list = []  # (size, offset)

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


def schedule(graph: Graph, kind: str, *, model: str, dtype: str = "float64") -> KernelSpec:
    """The :class:`KernelSpec` of the ``kind`` kernel of ``model``'s graph."""
    return _Scheduler(graph, kind, model, dtype).run()


class _Scheduler:
    def __init__(self, graph: Graph, kind: str, model: str, dtype: str):
        self.g = graph
        self.kind = kind
        self.model = model
        self.p = CPrinter(dtype)
        self.results = kernel_results(graph, kind)
        self.live = live_nodes(graph, self.results)
        self.names = display_names(graph)
        self.symbol_ids = c_identifiers(list(graph.symbols))

    # --- classification ------------------------------------------------------------

    def _phases(self) -> dict:
        """Node -> "param", "input", "literal", "pre", "tile", "acc" or "post"."""
        phase = {}
        for nid in self.live:
            node = self.g.nodes[nid]
            if node.op == "symbol":
                phase[nid] = "input" if node.varying else "param"
            elif node.op in ("const", "batch_size"):
                phase[nid] = "literal"
            elif node.op == "reduce_batch":
                phase[nid] = "acc"
            elif node.varying:
                phase[nid] = "tile"
            elif any(phase[a] in ("acc", "post") for a in node.args):
                phase[nid] = "post"
            else:
                phase[nid] = "pre"
        return phase

    def _fused_products(self, phase) -> set:
        """Matrix products whose only use is a batch sum: emitted as one accumulating product."""
        users = self.g.consumers(self.live)
        result_nodes = {r.node for r in self.results}
        fused = set()
        for nid in self.live:
            node = self.g.nodes[nid]
            if node.op != "reduce_batch":
                continue
            (arg,) = node.args
            if (self.g.nodes[arg].op == "matmul" and users.get(arg) == [nid]
                    and arg not in result_nodes):
                fused.add(arg)
        return fused

    # --- the whole kernel ------------------------------------------------------------------

    def run(self) -> KernelSpec:
        g, p = self.g, self.p
        phase = self._phases()
        fused = self._fused_products(phase)
        operands: dict = {}
        arguments = [self._argument_n()]
        storage: dict = {}  # node -> ("scalar" | "uniform" | "tile")

        for nid in self.live:
            node = g.nodes[nid]
            op = ops.get(node.op)
            if nid in fused:
                continue
            ph = phase[nid]
            if ph in ("param", "input"):
                continue
            if ph == "literal":
                operands[nid] = self._literal(nid)
            elif op.kind == "view":
                continue
            elif ph == "tile":
                storage[nid] = "tile"
            elif op.kind == "elementwise" and node.shape == () and ph != "acc":
                storage[nid] = "scalar"
            else:
                storage[nid] = "uniform"

        # Arguments for the symbols this kernel reads, in declaration order.
        used = set(self.live)
        for name, nid in g.symbols.items():
            if nid in used:
                arg, operand = self._symbol_argument(name, nid)
                arguments.append(arg)
                operands[nid] = operand
        output_args = self._output_arguments()
        arguments += output_args

        # Statement order: prologue (pre + accumulator zeroing), body (tile + acc), epilogue (post).
        prologue, body, epilogue = [], [], []
        order = []  # (phase list, node, action)
        for nid in self.live:
            ph = phase[nid]
            if nid in fused or ph in ("param", "input", "literal"):
                continue
            if ops.get(g.nodes[nid].op).kind == "view":
                continue
            if ph == "pre":
                order.append(("prologue", nid, "compute"))
            elif ph == "acc":
                order.append(("prologue", nid, "zero"))
                order.append(("body", nid, "compute"))
            elif ph == "tile":
                order.append(("body", nid, "compute"))
            else:
                order.append(("epilogue", nid, "compute"))
        section_rank = {"prologue": 0, "body": 1, "epilogue": 2}
        order.sort(key=lambda item: section_rank[item[0]])  # stable: keeps topological order inside
        writes = self._result_writes(output_args)
        steps = order[:]
        insert_at = max([k for k, s in enumerate(steps) if s[0] != "epilogue"], default=-1) + 1
        steps[insert_at:insert_at] = [("body", r, "write") for r in writes["body"]]
        steps += [("epilogue", r, "write") for r in writes["epilogue"]]

        # Buffer lifetimes over the step sequence; values read in the body live through all of it.
        position = {}
        for k, (section, item, action) in enumerate(steps):
            if action in ("compute", "zero") and item not in position:
                position[item] = k
        body_steps = [k for k, s in enumerate(steps) if s[0] == "body"]
        body_end = body_steps[-1] if body_steps else -1
        last_use = {}

        def reads(step):
            section, item, action = step
            if action == "write":
                return [item[1]]
            if action == "zero":
                return []
            node = g.nodes[item]
            args = list(node.args)
            if g.nodes[args[0]].op == "matmul" and args[0] in fused:
                args = list(g.nodes[args[0]].args)
            return args

        def resolve(nid):
            """The node whose storage a (possibly view) node reads."""
            while nid not in storage and g.nodes[nid].op != "symbol" and ops.get(g.nodes[nid].op).kind == "view":
                nid = g.nodes[nid].args[0]
            return nid

        for k, step in enumerate(steps):
            for a in reads(step):
                a = resolve(a)
                if a in storage:
                    last = k
                    if step[0] == "body" and position.get(a, k) < body_steps[0]:
                        last = max(last, body_end)
                    last_use[a] = max(last_use.get(a, -1), last)
        for nid in storage:
            last_use.setdefault(nid, position.get(nid, 0))
            if storage[nid] == "uniform" and phase[nid] == "acc":
                last_use[nid] = max(last_use[nid], body_end)

        # Allocate: uniform buffers and per-tile buffers in two arenas.
        arenas = {"uniform": _Arena(), "tile": _Arena()}
        offsets = {}
        frees: dict = {}
        for nid, last in last_use.items():
            frees.setdefault(last, []).append(nid)
        for k, step in enumerate(steps):
            section, item, action = step
            if action in ("compute", "zero") and item in storage and item not in offsets:
                kind = storage[item]
                if kind != "scalar":
                    offsets[item] = arenas[kind].take(g.nodes[item].size)
            for nid in sorted(frees.get(k, ())):
                if nid in offsets:
                    arenas[storage[nid]].give_back(g.nodes[nid].size, offsets[nid])
        tile = self._tile_size(arenas["tile"].size)

        buffers = []
        for nid in sorted(offsets):
            per_tile = storage[nid] == "tile"
            base = arenas["uniform"].size + tile * offsets[nid] if per_tile else offsets[nid]
            buffers.append(Buffer(node_var(nid), base, per_tile, self._label(nid)))
        for nid, kind in storage.items():
            node = g.nodes[nid]
            if kind == "scalar":
                operands[nid] = Operand(node_var(nid), (), "scalar", False)
            else:
                operands[nid] = self._dense(node_var(nid), node.shape, kind == "tile")

        def operand(nid):
            if nid in operands:
                return operands[nid]
            node = g.nodes[nid]
            if ops.get(node.op).kind == "view":
                operands[nid] = self._view(operand(node.args[0]), node)
                return operands[nid]
            raise AssertionError(f"node {nid} has no storage")

        sections = {"prologue": prologue, "body": body, "epilogue": epilogue}
        for section, item, action in steps:
            if action == "write":
                sections[section].append(self._write(item, operand))
            elif action == "zero":
                out = operand(item)
                lines = p.loop_nest(out, lambda e, i, j: p.assign(out, p.literal(0), e, i, j))
                sections[section].append(Statement(f"{self._label(item)}: batch sum starts at zero", tuple(lines)))
            else:
                sections[section].append(self._compute(item, operand, fused))

        return KernelSpec(
            function=f"{c_identifiers([self.model])[self.model]}_{self.kind}",
            kind=self.kind,
            dtype=p.dtype,
            real=p.real,
            tile=tile,
            arguments=tuple(arguments),
            buffers=tuple(buffers),
            uniform_size=arenas["uniform"].size,
            tile_size=arenas["tile"].size,
            prologue=tuple(prologue),
            tile_pointers=tuple(self._tile_pointers(arguments)),
            body=tuple(body),
            epilogue=tuple(epilogue),
        )

    # --- pieces -----------------------------------------------------------------------------

    def _tile_size(self, per_example: int) -> int:
        tile = 256
        while tile > 8 and tile * per_example > _TILE_BUDGET:
            tile //= 2
        return tile

    def _argument_n(self) -> Argument:
        return Argument("n", "int64_t", "count", "n", (), False, by_value=True)

    def _symbol_argument(self, name, nid):
        node = self.g.nodes[nid]
        ident = self.symbol_ids[name]
        real = self.p.real
        if not node.varying:
            c_name = f"p_{ident}"
            if node.shape == ():
                return (Argument(c_name, real, "param", name, (), False, by_value=True),
                        Operand(c_name, (), "scalar", False))
            return (Argument(c_name, f"const {real} *", "param", name, node.shape, False),
                    self._dense(c_name, node.shape, False))
        arg = Argument(f"in_{ident}", f"const {real} *", "input", name, node.shape, True)
        return arg, self._dense(f"x_{ident}", node.shape, True)

    def _output_arguments(self) -> list:
        kinds = [_result_kind(self.g, r) for r in self.results]
        plain = [r.name for r, k in zip(self.results, kinds) if k != "gradient"]
        plain_ids = c_identifiers(plain)
        args = []
        for r, k in zip(self.results, kinds):
            c_name = f"grad_{self.symbol_ids[r.name]}" if k == "gradient" else f"out_{plain_ids[r.name]}"
            shape = self.g.nodes[r.node].shape
            args.append(Argument(c_name, f"{self.p.real} *", "output", r.name, shape, r.per_example, kind=k))
        return args

    def _result_writes(self, output_args) -> dict:
        writes = {"body": [], "epilogue": []}
        for arg, r in zip(output_args, self.results):
            writes["body" if r.per_example else "epilogue"].append((arg, r.node))
        return writes

    def _tile_pointers(self, arguments) -> list:
        lines = []
        for arg in arguments:
            size = _size(arg.shape)
            if arg.role == "input":
                ident = arg.c_name[len("in_"):]
                lines.append(f"const {self.p.real} *restrict x_{ident} = {arg.c_name} + t0 * {size};")
            elif arg.role == "output" and arg.per_example:
                lines.append(f"{self.p.real} *restrict o_{arg.c_name} = {arg.c_name} + t0 * {size};")
        return lines

    def _dense(self, text, shape, varying) -> Operand:
        cols = shape[1] if shape else 1
        return Operand(text, shape, "buffer", varying, row_stride=cols, col_stride=1,
                       example_stride=_size(shape) if varying else 0)

    def _literal(self, nid) -> Operand:
        node = self.g.nodes[nid]
        if node.op == "batch_size":
            return Operand(f"(({self.p.real}) n)", (), "literal", False)
        value = float(node.attrs[0])
        return Operand(self.p.literal(value), (), "literal", False, const=value)

    def _view(self, base: Operand, node) -> Operand:
        if node.op != "transpose":
            raise AssertionError(f"unknown view op {node.op}")
        return Operand(base.text, node.shape, base.storage, base.varying,
                       row_stride=base.col_stride, col_stride=base.row_stride,
                       example_stride=base.example_stride, const=base.const)

    def _label(self, nid) -> str:
        name = name_of(self.names, nid)
        var = node_var(nid)
        return var if name == var else f"{var} ({name})"

    def _comment(self, nid) -> str:
        try:
            text = f"{self._label(nid)} = {formula(self.g, nid, self.names)}"
        except Exception:  # display only: an op without a readable form still compiles
            text = f"{self._label(nid)} = {self.g.nodes[nid].op}(...)"
        if len(text) > _COMMENT_LIMIT:
            text = text[: _COMMENT_LIMIT - 3] + "..."
        return comment_text(text)

    def _compute(self, nid, operand, fused) -> Statement:
        node = self.g.nodes[nid]
        op = ops.get(node.op)
        out = operand(nid)
        if node.op == "reduce_batch" and node.args[0] in fused:
            product = self.g.nodes[node.args[0]]
            a, b = (operand(x) for x in product.args)
            lines = [f"sg_matmul_batch_sum(nt, {a.rows}, {b.cols}, {a.cols}, {a.strides_text()}, "
                     f"{b.strides_text()}, {out.text}, {b.cols}, 1);"]
            return Statement(self._comment(nid) + " (accumulated product)", tuple(lines))
        args = [operand(a) for a in node.args]
        if op.kind == "elementwise":
            lines = self.p.elementwise(op.c, node.attrs, out, args)
        else:
            lines = op.emit(self.p, out, args, node.attrs)
        return Statement(self._comment(nid), tuple(lines))

    def _write(self, item, operand) -> Statement:
        arg, nid = item
        source = operand(nid)
        if arg.per_example:
            out = self._dense(f"o_{arg.c_name}", arg.shape, True)
        else:
            out = self._dense(arg.c_name, arg.shape, False)
        lines = self.p.elementwise(lambda p, a, attrs: str(a[0]), (), out, [source])
        what = {"gradient": f"gradient with respect to {arg.name}", "loss": "loss"}.get(arg.kind, f"output {arg.name}")
        return Statement(comment_text(f"result: {what}"), tuple(lines))


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
