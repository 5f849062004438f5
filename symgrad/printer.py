"""C formatting: literals, function names, element indexing and loop nests.

Templates never format C expressions; ops never spell C types or function
names. An op's emission asks this printer for ``call("tanh", x)`` or
``literal(0.5)`` and gets the spelling for the kernel's precision; the
planner hands it :class:`Operand` records saying where each value lives.

Loop variables in generated kernels: ``e`` runs over the examples of the
current tile (``nt`` of them), ``i`` and ``j`` over rows and columns, ``k``
over the elements of a flattened loop.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

from .ops import Shape, size_of

REAL_TYPES = {"float64": "double", "float32": "float"}


@dataclass(frozen=True)
class Operand:
    """Where a value lives in the generated C, and how to reach one of its elements.

    Attributes:
        text: the C name of the buffer or scalar variable, or a literal.
        shape: the per-example shape.
        storage: ``"literal"``, ``"scalar"`` (a C scalar variable) or ``"buffer"``.
        varying: one value per example (indexed by ``e``) rather than one per call.
        row_stride, col_stride: element strides within one example.
        example_stride: element stride from one example to the next.
        offset: element offset of element (0, 0) of example 0 (views into a matrix).
        const: the numeric value of a literal.
    """

    text: str
    shape: Shape
    storage: str
    varying: bool
    row_stride: int = 0
    col_stride: int = 0
    example_stride: int = 0
    offset: int = 0
    const: Optional[float] = None

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def cols(self) -> int:
        return self.shape[1] if self.shape else 1

    @property
    def size(self) -> int:
        return size_of(self.shape)

    def element(self, e=None, i=None, j=None) -> str:
        """The C expression for element (i, j) of example e (loop variables or ints)."""
        if self.storage != "buffer":
            return self.text
        terms = []
        if self.varying and e is not None:
            terms.append((e, self.example_stride))
        if self.rows > 1 and i is not None:
            terms.append((i, self.row_stride))
        if self.cols > 1 and j is not None:
            terms.append((j, self.col_stride))
        if self.offset:
            terms.append((self.offset, 1))
        return f"{self.text}[{index_expr(terms)}]"

    def is_dense(self) -> bool:
        """Row-major and contiguous, examples back to back."""
        if self.storage != "buffer" or self.offset:
            return False
        row_ok = self.rows == 1 or self.row_stride == self.cols
        col_ok = self.cols == 1 or self.col_stride == 1
        example_ok = not self.varying or self.example_stride == self.size
        return row_ok and col_ok and example_ok

    def pointer(self) -> str:
        """A C pointer to element (0, 0) of example 0."""
        if self.storage != "buffer":
            return f"&{self.text}"
        return f"{self.text} + {self.offset}" if self.offset else self.text

    def strides_text(self) -> str:
        """``ptr, example_stride, row_stride, col_stride`` for a runtime call."""
        es = self.example_stride if self.varying else 0
        rs = self.row_stride if self.rows > 1 else 0
        cs = self.col_stride if self.cols > 1 else 0
        return f"{self.pointer()}, {es}, {rs}, {cs}"


@dataclass(frozen=True)
class CArg:
    """An operand as it appears inside one element-wise C expression."""

    text: str
    const: Optional[float] = None

    def __str__(self) -> str:
        return self.text


def index_expr(terms) -> str:
    """``e * 12 + i * 3 + j`` from ``[(var, stride), ...]``; integer vars fold into the offset."""
    offset = 0
    parts = []
    for var, stride in terms:
        if stride == 0:
            continue
        if isinstance(var, int):
            offset += var * stride
        elif stride == 1:
            parts.append(var)
        else:
            parts.append(f"{var} * {stride}")
    if offset or not parts:
        parts.append(str(offset))
    return " + ".join(parts)


_COMMENT_UNSAFE = re.compile(r"[^\x20-\x7e]")


def comment_text(text: str) -> str:
    """``text`` made safe inside a C block comment: one line, ASCII, no ``*/``."""
    text = text.replace("\\", "\\\\")
    text = _COMMENT_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text.replace("*/", "*\\/").replace("/*", "/\\*").replace("??", "?\\?")


class CPrinter:
    """Spells scalar C for one precision (``float64`` or ``float32``)."""

    def __init__(self, dtype: str = "float64"):
        if dtype not in REAL_TYPES:
            raise ValueError(f"dtype must be one of {sorted(REAL_TYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.real = REAL_TYPES[dtype]
        self._suffix = "f" if dtype == "float32" else ""

    # --- scalars -------------------------------------------------------------------

    def literal(self, value) -> str:
        value = float(value)
        if math.isnan(value):
            return "NAN"
        if math.isinf(value):
            return "INFINITY" if value > 0 else "(-INFINITY)"
        text = repr(value)
        if self.dtype == "float32" and float(f"{value:.9g}") != value:
            text = f"{value:.9g}"
            if not any(c in text for c in ".en"):
                text += ".0"
        text += self._suffix
        return f"({text})" if value < 0 else text

    def call(self, name: str, *args) -> str:
        """A C math library call, spelled for the kernel's precision (``tanh`` / ``tanhf``)."""
        return f"{name}{self._suffix}({', '.join(str(a) for a in args)})"

    def runtime(self, name: str, *args) -> str:
        """A call of a helper from the generated runtime header (``sg_sigmoid``)."""
        return f"sg_{name}({', '.join(str(a) for a in args)})"

    def carg(self, operand: Operand, e=None, i=None, j=None) -> CArg:
        return CArg(operand.element(e, i, j), operand.const)

    # --- statements ------------------------------------------------------------------

    def local(self, name: str, expr: str) -> str:
        """A constant local variable of the kernel's precision."""
        return f"const {self.real} {name} = {expr};"

    def store(self, target: str, expr: str) -> str:
        return f"{target} = {expr};"

    def add_to(self, target: str, expr: str) -> str:
        return f"{target} += {expr};"

    def accumulator(self, name: str) -> str:
        """A batch-sum accumulator, in double precision whatever the kernel's (``sg_acc``)."""
        return f"sg_acc {name} = 0;"

    @staticmethod
    def commented(line: str, comment: str) -> str:
        """``line  /* comment */``; ``comment`` must already be safe (:func:`comment_text`)."""
        return f"{line}  /* {comment} */"

    @staticmethod
    def flat_element(operand: Operand, index: str) -> str:
        """Element ``index`` of a dense operand read with one flat index (a scalar is itself)."""
        return f"{operand.text}[{index}]" if operand.storage == "buffer" else operand.text

    def tile_pointer(self, name: str, base: str, example_size: int, *, const: bool) -> str:
        """A pointer to the current tile's first example (``t0``) of an argument array."""
        qualifier = "const " if const else ""
        return f"{qualifier}{self.real} *restrict {name} = {base} + t0 * {example_size};"

    def helper_call(self, name: str, *args) -> str:
        """A statement calling a runtime helper: ``sg_name(args);``."""
        return f"{self.runtime(name, *args)};"

    def checked_helper_call(self, name: str, error: str, *args) -> str:
        """A runtime helper call whose non-zero result makes the kernel return ``error``."""
        return f"if ({self.runtime(name, *args)}) return {error};"

    @staticmethod
    def examples(out: Operand) -> str:
        """How many examples a runtime call on ``out`` covers: the tile, or 1 for a shared value."""
        return "nt" if out.varying else "1"

    @staticmethod
    def target(out: Operand) -> str:
        """``ptr, example_stride`` of a dense result of a runtime call."""
        return f"{out.text}, {out.example_stride if out.varying else 0}"

    def indicator(self, condition: str) -> str:
        """1 where ``condition`` holds, else 0, in the kernel's precision."""
        return f"({self.real}) ({condition})"

    @staticmethod
    def equal(a, b) -> str:
        return f"{a} == {b}"

    @staticmethod
    def flat_index(i, j, cols: int) -> str:
        """The row-major position of element (i, j) in a matrix of ``cols`` columns."""
        return f"{i} * {cols} + {j}"

    @staticmethod
    def as_index(value: str) -> str:
        return f"(int64_t) {value}"

    def over_examples(self, out: Operand, body) -> list:
        """``body(e)`` for every example of the tile when ``out`` is per example, else once."""
        if out.varying:
            return [f"for (int64_t e = 0; e < nt; ++e) {body('e')}"]
        return [body(None)]

    def copy_table(self, out: Operand, values) -> list:
        """Lines filling the dense ``out`` with numbers, from a static table."""
        literals = ", ".join(self.literal(v) for v in values)
        table = f"{out.text}_values"
        return [f"static const {self.real} {table}[{len(values)}] = {{{literals}}};",
                f"for (int64_t k = 0; k < {len(values)}; ++k) {out.text}[k] = {table}[k];"]

    def fill(self, out: Operand, value) -> list:
        """Lines setting every element of ``out`` to ``value``."""
        return self.loop_nest(out, lambda e, i, j: self.assign(out, self.literal(value), e, i, j))

    def assign(self, out: Operand, expr: str, e=None, i=None, j=None) -> str:
        if out.storage == "scalar":
            return f"const {self.real} {out.text} = {expr};"
        return f"{out.element(e, i, j)} = {expr};"

    def loop_nest(self, out: Operand, body) -> list:
        """Loops over the elements of ``out``; ``body(e, i, j)`` gives the innermost line."""
        dims = []
        if out.varying:
            dims.append(("e", "nt"))
        if out.rows > 1:
            dims.append(("i", str(out.rows)))
        if out.cols > 1:
            dims.append(("j", str(out.cols)))
        e = "e" if out.varying else None
        i = "i" if out.rows > 1 else 0
        j = "j" if out.cols > 1 else 0
        lines = [f"{'    ' * d}for (int64_t {v} = 0; {v} < {n}; ++{v})" for d, (v, n) in enumerate(dims)]
        lines.append("    " * len(dims) + body(e, i, j))
        return lines

    def elementwise(self, c_expr, attrs, out: Operand, args: list) -> list:
        """Lines computing ``out = f(args)`` element by element, with broadcasting."""
        flat = out.storage == "buffer" and out.is_dense() and all(
            a.storage != "buffer" or (a.is_dense() and a.shape == out.shape and a.varying == out.varying)
            for a in args
        )
        if flat and out.size > 1 or flat and out.varying:
            count = f"nt * {out.size}" if out.varying and out.size > 1 else ("nt" if out.varying else str(out.size))
            terms = [CArg(f"{a.text}[k]") if a.storage == "buffer" else CArg(a.text, a.const) for a in args]
            return [f"for (int64_t k = 0; k < {count}; ++k)",
                    f"    {out.text}[k] = {c_expr(self, terms, attrs)};"]
        return self.loop_nest(
            out,
            lambda e, i, j: self.assign(out, c_expr(self, [self.carg(a, e, i, j) for a in args], attrs), e, i, j),
        )
