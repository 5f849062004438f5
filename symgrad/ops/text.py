"""The display dialect: how an op reads as one short line of text.

One notation serves the comments of the generated C, ``symgrad show`` and the
docstrings of a generated package. An op's ``text`` hook turns the texts of
its args into its own text (``h_bar.*v37``, ``x.T*v7_bar``, ``z[c]``); an op
without one reads as a call of its name (``tanh(v7)``). The hooks parenthesize
an arg only where it binds more loosely than the op that uses it, which this
module tells from the arg's text.
"""

from __future__ import annotations

#: How tightly a text binds, loosest first: a comparison (or its ``&``, ``|``), a sum, a negation, a
#: product (or quotient), a power, and an atom (a name, a number, a call, ``M.T``, ``M[0, 1]``).
COMPARISON, SUM, NEGATION, PRODUCT, POWER, ATOM = range(6)

_COMPARISONS = (" < ", " <= ", " > ", " >= ", " == ", " != ", " & ", " | ")


class Text(str):
    """The text of an op's arg, with what a ``text`` hook may need to know of the arg:
    its shape (``()`` for a scalar) and, for a numeric constant, its value."""

    shape: tuple
    number: object

    def __new__(cls, text: str, shape: tuple = (), number=None):
        self = super().__new__(cls, text)
        self.shape = shape
        self.number = number
        return self


def binding(text: str) -> int:
    """How tightly ``text`` binds: the loosest operator outside parentheses and brackets."""
    depth, loosest, k = 0, ATOM, 0
    while k < len(text):
        ch = text[k]
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif depth == 0:
            if ch == " " and any(text.startswith(c, k) for c in _COMPARISONS):
                return COMPARISON
            if ch == " " and text[k + 1:k + 3] in ("+ ", "- "):
                loosest = SUM
            elif ch in "*/":
                if text.startswith("**", k):
                    loosest = min(loosest, POWER)
                    k += 1
                else:
                    loosest = min(loosest, PRODUCT)
        k += 1
    if text.startswith("-") and loosest > NEGATION:
        return NEGATION
    return loosest


def wrap(text: str, tighter_than: int) -> str:
    """``text`` in parentheses unless it binds tighter than ``tighter_than``."""
    return text if binding(text) > tighter_than else f"({text})"


def call(name: str, args) -> str:
    """The text of ``name`` applied to ``args``: ``softmax(z)``, ``max(a, b)``."""
    return f"{name}({', '.join(args)})"


def number(value) -> str:
    """A SymPy number as text: ``3``, ``1/2``, ``0.25``, ``pi``."""
    if getattr(value, "is_Rational", False) and not value.is_Integer:
        return f"{value.p}/{value.q}"
    if getattr(value, "is_Float", False):
        return repr(float(value))
    return str(value)


def shape(dims: tuple) -> str:
    """A shape as text: ``2x3``, or ``scalar`` for ``()``."""
    return "x".join(str(d) for d in dims) if dims else "scalar"


def render(op, args: list, attrs: tuple) -> str:
    """``op``'s text of ``args`` (a list of :class:`Text`)."""
    if op.text is not None:
        return op.text(args, attrs)
    return call(op.name, args)
