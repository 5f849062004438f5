"""Lowering a graph to a kernel: statement order, storage, buffers and loops.

:func:`schedule` turns the part of a graph that one kernel needs into a
:class:`KernelSpec`: plain strings and numbers that the templates lay out,
with no SymPy in sight. A kernel walks the batch in tiles of ``tile``
examples and has three parts:

* prologue: values shared by all examples (functions of params only),
  computed once per call; batch accumulators set to zero;
* tile body: per-example values. Scalar nodes are grouped into *segments*:
  one loop over the examples of the tile whose body is straight-line code,
  one C statement per node, values kept in local variables unless a later
  part of the body needs them. Matrix nodes are tile-level operations (one
  loop nest or one matrix product over the whole tile). Batch sums
  accumulate here and per-example results are written out;
* epilogue: values that depend on batch sums (parameter gradients and
  everything upstream of them), and the per-call results.

Scratch memory is planned here: buffers whose lifetimes do not overlap share
memory, so the workspace a call needs is known when the code is generated.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import ops
from .graph import Graph
from .naming import c_identifiers, display_names, formula_text, name_of, node_var
from .optimize import live_nodes
from .printer import CArg, CPrinter, Operand, comment_text

KINDS = ("forward", "value_and_grad")
#: Block sizes of the packed matrix product in the runtime header, and the scratch it needs.
GEMM_BLOCKS = {"mr": 4, "kc": 256, "nc": 512}
GEMM_SCRATCH = GEMM_BLOCKS["kc"] * GEMM_BLOCKS["nc"] + GEMM_BLOCKS["mr"] * GEMM_BLOCKS["kc"]
_ALIGN = 8  # elements; buffers start on 64-byte boundaries for doubles
_TILE_BUDGET = 65536  # elements of per-tile scratch to aim for (512 KiB of doubles)
_MAX_TILE = 256
_COMMENT_LIMIT = 110


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
    ``lines`` are ``code  /* comment */``; ``reductions`` names the batch
    accumulators the loop adds to (they go into the SIMD reduction clause).
    """

    comment: str
    lines: tuple
    reductions: tuple
    loops: tuple = ("e < nt",)  # loop conditions, outermost first; the last gets the SIMD pragma
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


def schedule(graph: Graph, kind: str, *, model: str, dtype: str = "float64") -> KernelSpec:
    """The :class:`KernelSpec` of the ``kind`` kernel of ``model``'s graph."""
    return _Scheduler(graph, kind, model, dtype).run()


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _size(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _Arena:
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


# Roles of a live node in a kernel.
ARG, LITERAL, VIEW, FUSED = "arg", "literal", "view", "fused"
SEGMENT, TILE, SCALAR_ACC, TILE_ACC = "segment", "tile", "scalar_acc", "tile_acc"
PROLOGUE, EPILOGUE = "prologue", "epilogue"
_IN_BODY = (SEGMENT, TILE, SCALAR_ACC, TILE_ACC)


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
        self.role: dict = {}
        self.operands: dict = {}

    # --- what each node is ------------------------------------------------------------

    def _assign_roles(self) -> None:
        g = self.g
        users = g.consumers(self.live)
        result_nodes = {r.node for r in self.results}
        after_batch = {}  # node -> depends on a batch sum
        for nid in self.live:
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
                if g.nodes[arg].op == "matmul" and users.get(arg) == [nid] and arg not in result_nodes:
                    self.role[arg] = FUSED
                role = SCALAR_ACC if node.shape == () else TILE_ACC
                late = True
            elif node.varying:
                role = SEGMENT if op.kind == "elementwise" else TILE
            elif any(after_batch[a] for a in node.args):
                role, late = EPILOGUE, True
            else:
                role = PROLOGUE
            self.role.setdefault(nid, role)
            after_batch[nid] = late

    def _base(self, nid: int) -> int:
        """The node whose storage a view reads."""
        while self.role.get(nid) == VIEW:
            nid = self.g.nodes[nid].args[0]
        return nid

    def _reads(self, nid: int) -> list:
        """The stored nodes a node's code reads (through views and fused products)."""
        node = self.g.nodes[nid]
        args = []
        for a in node.args:
            if self.role.get(a) == FUSED:
                args.extend(self.g.nodes[a].args)
            else:
                args.append(a)
        return [self._base(a) for a in args]

    # --- the tile body: segments and tile-level nodes -----------------------------------

    def _plan_body(self) -> list:
        """Body items in order: ("segment", [nodes]) or ("tile", node).

        A segment holds element-wise nodes of one shape that can run in the
        same loop; ready element-wise nodes are gathered before the next
        tile-level node, so segments are as long as the dependencies allow.
        """
        body = [n for n in self.live if self.role[n] in _IN_BODY]
        in_body = set(body)
        deps = {n: [r for r in self._reads(n) if r in in_body] for n in body}
        # A value read through a view (an element, a transpose) is read at other indices than the
        # loop that computes it is at: it must be complete, so it cannot come from the same loop.
        viewed = {n: {self._base(a) for a in self.g.nodes[n].args if self.role.get(a) == VIEW} & in_body
                  for n in body}
        fusible = {n for n in body if self.role[n] in (SEGMENT, SCALAR_ACC)}
        done: set = set()
        items = []
        remaining = body
        while remaining:
            first = next((n for n in remaining if n in fusible and all(d in done for d in deps[n])), None)
            if first is not None:
                shape = self.g.nodes[first].shape
                segment, taken = [], set()
                for n in remaining:
                    if (n in fusible and self.g.nodes[n].shape == shape
                            and all(d in done or d in taken for d in deps[n])
                            and not (viewed[n] & taken)):
                        segment.append(n)
                        taken.add(n)
                items.append(("segment", segment))
            else:
                n = next(r for r in remaining if all(d in done for d in deps[r]))
                items.append(("tile", n))
                taken = {n}
            done |= taken
            remaining = [r for r in remaining if r not in taken]
        return items

    # --- the whole kernel ---------------------------------------------------------------

    def run(self) -> KernelSpec:
        g, p = self.g, self.p
        self._assign_roles()
        items = self._plan_body()
        arguments = [Argument("n", "int64_t", "count", "n", (), False, by_value=True),
                     Argument("batch", "int64_t", "count", "batch", (), False, by_value=True)]
        used = set(self.live)
        for name, nid in g.symbols.items():
            if nid in used:
                arg, operand = self._symbol_argument(name, nid)
                arguments.append(arg)
                self.operands[nid] = operand
        outputs = self._output_arguments()
        arguments += outputs

        segment_of = {n: k for k, (what, nodes) in enumerate(items) if what == "segment" for n in nodes}
        per_example_writes = [(a, r.node) for a, r in zip(outputs, self.results) if r.per_example]
        in_segment_writes = {}  # node -> [argument]
        tile_writes = []
        for arg, nid in per_example_writes:
            if self.role.get(nid) == SEGMENT:
                in_segment_writes.setdefault(nid, []).append(arg)
            else:
                tile_writes.append((arg, nid))
        call_writes = [(a, r.node) for a, r in zip(outputs, self.results) if not r.per_example]

        storage = self._storage(items, segment_of, tile_writes)

        # Steps in execution order, for buffer lifetimes.
        steps = []  # (section, what, payload)
        for nid in self.live:
            if self.role[nid] == PROLOGUE:
                steps.append(("prologue", "node", nid))
            elif self.role[nid] in (SCALAR_ACC, TILE_ACC):
                steps.append(("prologue", "zero", nid))
        for what, payload in items:
            steps.append(("body", what, payload))
        steps += [("body", "write", w) for w in tile_writes]
        steps += [("epilogue", "node", n) for n in self.live if self.role[n] == EPILOGUE]
        steps += [("epilogue", "write", w) for w in call_writes]

        offsets, arenas, tile = self._allocate(steps, storage)
        buffers = []
        if self._uses_products():
            buffers.append(Buffer("scratch", arenas["uniform"].take(GEMM_SCRATCH), False,
                                  "packing space for matrix products"))
        for nid in sorted(offsets):
            per_tile = storage[nid] == "tile"
            base = arenas["uniform"].size + tile * offsets[nid] if per_tile else offsets[nid]
            buffers.append(Buffer(node_var(nid), base, per_tile, self._label(nid)))
        self._make_operands(storage)

        prologue, body, epilogue = [], [], []
        for section, what, payload in steps:
            if section == "prologue":
                prologue.append(self._zero(payload) if what == "zero" else self._compute(payload))
            elif section == "epilogue":
                epilogue.append(self._write(payload) if what == "write" else self._compute(payload))
            elif what == "segment":
                body.append(self._segment(payload, storage, in_segment_writes))
            elif what == "tile":
                body.append(self._compute(payload))
            else:
                body.append(self._write(payload))

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

    def _uses_products(self) -> bool:
        return any(self.g.nodes[n].op == "matmul" for n in self.live)

    # --- storage ---------------------------------------------------------------------------

    def _storage(self, items, segment_of, tile_writes) -> dict:
        """Node -> "local" (segment variable), "scalar", "accumulator", "tile" or "uniform"."""
        g = self.g
        storage = {}
        readers: dict = {}
        for nid in self.live:
            if self.role[nid] not in (ARG, LITERAL, VIEW, FUSED):
                for r in self._reads(nid):
                    readers.setdefault(r, []).append(nid)
        for _, nid in tile_writes:
            readers.setdefault(self._base(nid), []).append(None)
        for nid in self.live:
            role = self.role[nid]
            node = g.nodes[nid]
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

    def _allocate(self, steps, storage):
        """Offsets of every buffer; buffers whose lifetimes do not overlap share space."""
        defined_at, last_use = {}, {}
        body_steps = [k for k, s in enumerate(steps) if s[0] == "body"]
        body_start = body_steps[0] if body_steps else len(steps)
        body_end = body_steps[-1] if body_steps else -1

        def defines(step):
            section, what, payload = step
            if what == "segment":
                return list(payload)
            if what in ("node", "tile", "zero"):
                return [payload]
            return []

        def reads(step):
            section, what, payload = step
            if what == "write":
                return [self._base(payload[1])]
            if what == "zero":
                return []
            nodes = payload if what == "segment" else [payload]
            found = []
            for n in nodes:
                found += self._reads(n)
            return found

        for k, step in enumerate(steps):
            for n in defines(step):
                defined_at.setdefault(n, k)
            for n in reads(step):
                last = k
                if step[0] == "body" and defined_at.get(n, k) < body_start:
                    last = max(last, body_end)  # read by every tile
                last_use[n] = max(last_use.get(n, -1), last)
        for n, kind in storage.items():
            if kind == "uniform" and self.role[n] == TILE_ACC:
                last_use[n] = max(last_use.get(n, -1), body_end)

        arenas = {"uniform": _Arena(), "tile": _Arena()}
        offsets = {}
        frees: dict = {}
        for n, k in last_use.items():
            frees.setdefault(k, []).append(n)
        for k, step in enumerate(steps):
            for n in defines(step):
                if storage.get(n) in ("tile", "uniform") and n not in offsets:
                    offsets[n] = arenas[storage[n]].take(self.g.nodes[n].size)
            for n in sorted(frees.get(k, ())):
                if n in offsets and k >= defined_at.get(n, k):
                    arenas[storage[n]].give_back(self.g.nodes[n].size, offsets[n])
        tile = _MAX_TILE
        while tile > 8 and tile * arenas["tile"].size > _TILE_BUDGET:
            tile //= 2
        return offsets, arenas, tile

    def _make_operands(self, storage) -> None:
        g = self.g
        for nid in self.live:
            node = g.nodes[nid]
            role = self.role[nid]
            if role == LITERAL:
                self.operands[nid] = self._literal(nid)
            elif nid in storage:
                kind = storage[nid]
                if kind in ("local", "scalar", "accumulator"):
                    self.operands[nid] = Operand(node_var(nid), (), "scalar", kind == "local")
                else:
                    self.operands[nid] = self._dense(node_var(nid), node.shape, kind == "tile")
        for nid in self.live:
            if self.role[nid] == VIEW:
                node = g.nodes[nid]
                self.operands[nid] = ops.get(node.op).view(self.operands[node.args[0]], node.attrs, node.shape)

    # --- arguments ---------------------------------------------------------------------------

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
        gradients = set(self.g.results.get("gradients", ()))
        losses = set(self.g.results.get("loss", ()))
        plain_ids = c_identifiers([r.name for r in self.results if r not in gradients])
        args = []
        for r in self.results:
            if r in gradients:
                kind, c_name = "gradient", f"grad_{self.symbol_ids[r.name]}"
            else:
                kind, c_name = ("loss" if r in losses else "output"), f"out_{plain_ids[r.name]}"
            shape = self.g.nodes[r.node].shape
            args.append(Argument(c_name, f"{self.p.real} *", "output", r.name, shape, r.per_example, kind=kind))
        return args

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

    # --- operands ------------------------------------------------------------------------------

    def _dense(self, text, shape, varying) -> Operand:
        cols = shape[1] if shape else 1
        return Operand(text, shape, "buffer", varying, row_stride=cols, col_stride=1,
                       example_stride=_size(shape) if varying else 0)

    def _literal(self, nid) -> Operand:
        node = self.g.nodes[nid]
        if node.op != "const":  # the example counts
            return Operand(ops.get(node.op).c(self.p, (), node.attrs), (), "literal", False)
        value = float(node.attrs[0])
        return Operand(self.p.literal(value), (), "literal", False, const=value)

    # --- comments --------------------------------------------------------------------------------

    def _label(self, nid) -> str:
        """``v12 (h)``: the node's C variable and its display name, safe inside a C comment."""
        name = name_of(self.names, nid)
        var = node_var(nid)
        return var if name == var else comment_text(f"{var} ({name})")

    def _comment(self, nid) -> str:
        node = self.g.nodes[nid]
        label = f"{node_var(nid)} ({name_of(self.names, nid)})" if nid in self.names else node_var(nid)
        try:
            if node.op == "reduce_batch" and self.role.get(node.args[0]) == FUSED:
                text = f"{label} = batch_sum({formula_text(self.g, node.args[0], self.names)})"
            else:
                text = f"{label} = {formula_text(self.g, nid, self.names)}"
        except Exception:  # display only: an op without a readable form still compiles
            text = f"{label} = {self.g.nodes[nid].op}(...)"
        if len(text) > _COMMENT_LIMIT:
            text = text[: _COMMENT_LIMIT - 3] + "..."
        return comment_text(text)

    # --- emission ---------------------------------------------------------------------------------

    def _zero(self, nid) -> Statement:
        out = self.operands[nid]
        if self.role[nid] == SCALAR_ACC:
            return Statement(f"{self._label(nid)}: batch sum starts at zero", (f"sg_acc {out.text} = 0;",))
        p = self.p
        lines = p.loop_nest(out, lambda e, i, j: p.assign(out, p.literal(0), e, i, j))
        return Statement(f"{self._label(nid)}: batch sum starts at zero", tuple(lines))

    def _compute(self, nid) -> Statement:
        node = self.g.nodes[nid]
        op = ops.get(node.op)
        out = self.operands[nid]
        if node.op == "reduce_batch" and self.role.get(node.args[0]) == FUSED:
            product = self.g.nodes[node.args[0]]
            a, b = (self.operands[x] for x in product.args)
            lines = (f"sg_matmul_batch_sum(nt, {a.rows}, {b.cols}, {a.cols}, {a.strides_text()}, "
                     f"{b.strides_text()}, {out.text}, {b.cols}, 1, scratch);",)
            return Statement(self._comment(nid), lines)
        args = [self.operands[a] for a in node.args]
        if op.kind == "elementwise":
            lines = self.p.elementwise(op.c, node.attrs, out, args)
        else:
            lines = op.emit(self.p, out, args, node.attrs)
        return Statement(self._comment(nid), tuple(lines))

    def _segment(self, nodes, storage, writes) -> Segment:
        p = self.p
        shape = self.g.nodes[nodes[0]].shape
        reads = [self.operands[a] for n in nodes for a in self.g.nodes[n].args]
        flat = shape != () and all(self._flat_compatible(o, shape) for o in reads)
        if shape == () or flat:
            index = ("k",) if flat else ("e", None, None)
        else:
            index = ("e", "i" if shape[0] > 1 else 0, "j" if shape[1] > 1 else 0)

        def element(operand):
            if flat:
                return f"{operand.text}[k]" if operand.storage == "buffer" else operand.text
            return operand.element(*index)

        lines, reductions = [], []
        for nid in nodes:
            node = self.g.nodes[nid]
            comment = self._comment(nid)
            if self.role[nid] == SCALAR_ACC:
                acc = self.operands[nid].text
                lines.append(f"{acc} += {element(self.operands[node.args[0]])};  /* {comment} */")
                reductions.append(acc)
                continue
            args = [CArg(element(self.operands[a]), self.operands[a].const) for a in node.args]
            expr = ops.get(node.op).c(p, args, node.attrs)
            if storage[nid] == "local":
                lines.append(f"const {p.real} {node_var(nid)} = {expr};  /* {comment} */")
            else:
                lines.append(f"{element(self.operands[nid])} = {expr};  /* {comment} */")
            for arg in writes.get(nid, ()):
                target = self._dense(f"o_{arg.c_name}", arg.shape, True)
                lines.append(f"{element(target)} = {element(self.operands[nid])};  "
                             f"/* {comment_text(self._result_text(arg))} */")
        first, last = node_var(nodes[0]), node_var(nodes[-1])
        span = first if first == last else f"{first} .. {last}"
        if flat:
            loops = (f"k < nt * {_size(shape)}",)
        else:
            loops = ("e < nt",) + tuple(f"{v} < {d}" for v, d in zip("ij", shape) if d > 1)
        where = "per example" if shape == () else f"per element of {shape[0]}x{shape[1]}"
        return Segment(f"{where}: {span}", tuple(lines), tuple(reductions), loops)

    @staticmethod
    def _flat_compatible(operand, shape) -> bool:
        """Read with one flat index k over (example, element): dense and full shape, or a scalar."""
        if operand.storage != "buffer":
            return operand.storage == "literal" or not operand.varying or operand.shape == shape
        return operand.is_dense() and operand.varying and operand.shape == shape

    def _result_text(self, arg) -> str:
        if arg.kind == "gradient":
            return f"result: gradient with respect to {arg.name}"
        return "result: loss" if arg.kind == "loss" else f"result: output {arg.name}"

    def _write(self, item) -> Statement:
        arg, nid = item
        source = self.operands[nid]
        if arg.per_example:
            out = self._dense(f"o_{arg.c_name}", arg.shape, True)
        else:
            out = self._dense(arg.c_name, arg.shape, False)
        lines = self.p.elementwise(lambda p, a, attrs: str(a[0]), (), out, [source])
        return Statement(comment_text(self._result_text(arg)), tuple(lines))
