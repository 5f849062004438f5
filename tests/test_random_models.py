"""Randomized verification: random models, three gradients that must agree.

A generator builds random expression DAGs from symgrad's op registry
(``symgrad.ops.REGISTRY``): up to 8 levels deep, over scalar and small matrix
params and inputs (shapes such as 2x3, 3x1, 1x1), with sub-expressions shared
by several later nodes so that gradients add along several paths. Every
function is applied where its derivative is valid: the generator tracks an
interval that bounds each sub-expression and, when an argument could leave
the op's registry domain, maps it in (an affine map, a sigmoid, tanh or
rational squash, or a shift). For each model the test compares

1. the symbolic gradients ``model.gradients()``, evaluated numerically by an
   independent NumPy evaluator of SymPy expressions (below),
2. the compiled gradients of ``sg.compile(model).value_and_grad(...)``,
3. central finite differences (Richardson extrapolated) of the compiled loss,

and also the compiled loss and outputs with the evaluated SymPy expressions.
Points where finite differences are unreliable (near a kink of Abs, Max,
relu, Piecewise...: the estimates at two step sizes disagree) are skipped
element by element; points with non-finite values are discarded.

Running more examples
---------------------
CI runs 30 examples, derandomized (the same ones on every run), in 10 to
30 seconds. The environment variable ``SYMGRAD_RANDOM_EXAMPLES`` sets the
number of examples and makes them random, different on every run::

    SYMGRAD_RANDOM_EXAMPLES=300 .venv/bin/python -m pytest tests/test_random_models.py -q -k agree

Each example compiles one model (about 0.5 s); keep a run to a few hundred
examples (Hypothesis keeps about 1 MB per example). A failure is reported
as found, with the model written out (a ``Draw ... (seed)`` line means the
model came from ``RandomChooser(seed)``); ``SYMGRAD_RANDOM_SHRINK=1`` also
shrinks it, which recompiles a model per step and can take many minutes.
``--hypothesis-seed=N`` repeats an exploration, and ``SYMGRAD_RANDOM_VERBOSE=1``
(with ``-s``) prints each model's size and timings.

Every failure found this way is kept at the end of this file as an explicit
regression test: the model written out by hand, with the values a hand
derivation (or NumPy) gives. A bug that cannot be fixed at once gets a strict
xfail there, so that its fix turns the test red until the marker goes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import operator
import os
import random
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace

import mpmath
import numpy as np
import pytest
import sympy as sp
from sympy.codegen import cfunctions as cf
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import strategies as st
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.hadamard import HadamardPower, HadamardProduct
from sympy.matrices.expressions.matexpr import MatrixElement

import symgrad as sg
from symgrad import functions as sgf
from symgrad import ops
from symgrad import runtime
from symgrad.pipeline import derived

ON_DEMAND = "SYMGRAD_RANDOM_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("SYMGRAD_RANDOM_EXAMPLES", "30"))
SHRINK = os.environ.get("SYMGRAD_RANDOM_SHRINK", "") not in ("", "0")
VERBOSE = os.environ.get("SYMGRAD_RANDOM_VERBOSE", "") not in ("", "0")

# ======================================================================================
# Intervals: (low, high) bounds that hold for every element of a sub-expression
# ======================================================================================


def iv_add(*ivs):
    return (math.fsum(i[0] for i in ivs), math.fsum(i[1] for i in ivs))


def iv_mul(x, y):
    products = [x[0] * y[0], x[0] * y[1], x[1] * y[0], x[1] * y[1]]
    return (min(products), max(products))


def iv_scale(c, iv):
    return iv_mul((c, c), iv)


def iv_union(*ivs):
    return (min(i[0] for i in ivs), max(i[1] for i in ivs))


def iv_pow_int(iv, n):
    lo, hi = iv
    if n < 0:
        assert lo > 0 or hi < 0, "negative power of an interval holding 0"
        plo, phi = iv_pow_int(iv, -n)
        return (1 / phi, 1 / plo)
    if n % 2 == 1:
        return (lo**n, hi**n)
    if lo >= 0:
        return (lo**n, hi**n)
    if hi <= 0:
        return (hi**n, lo**n)
    return (0.0, max(-lo, hi) ** n)


def iv_function(f, iv, points=1025):
    """Bounds of a continuous scalar function on an interval, from a fine grid, padded."""
    lo, hi = iv
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    with np.errstate(all="ignore"):
        values = np.asarray(f(grid), dtype=float)
    assert np.all(np.isfinite(values)), (f, iv)
    vlo, vhi = float(values.min()), float(values.max())
    pad = 1e-3 * (vhi - vlo) + 1e-6 * (1 + abs(vlo) + abs(vhi))
    return (vlo - pad, vhi + pad)


def iv_max_abs(iv):
    return max(abs(iv[0]), abs(iv[1]))


# ======================================================================================
# Choices: from Hypothesis (shrinkable) or from a seeded random.Random
# ======================================================================================


class RandomChooser:
    def __init__(self, seed):
        self.r = random.Random(seed)

    def integer(self, lo, hi):
        return self.r.randint(lo, hi)

    def choice(self, seq):
        return seq[self.r.randrange(len(seq))]

    def chance(self, p):
        return self.r.random() < p


class HypothesisChooser:
    """Draws through Hypothesis; shrinking goes towards the first option, small numbers, False."""

    def __init__(self, data):
        self.data = data

    def integer(self, lo, hi):
        # Hypothesis favours small numbers and bounds, which here would mean small models over and
        # over: a wide draw reduced modulo the range is close to uniform and still shrinks to lo.
        return lo + self.data.draw(st.integers(0, 2**16 - 1)) % (hi - lo + 1)

    def choice(self, seq):
        return seq[self.integer(0, len(seq) - 1)]

    def chance(self, p):
        return self.integer(0, 999) >= round(1000 * (1 - p))


# ======================================================================================
# The generator
# ======================================================================================

SHAPES = ((2, 3), (3, 1), (2, 2), (1, 3), (3, 3), (2, 1), (1, 2), (1, 1))
RANGES = ((-1.0, 1.0), (0.2, 1.5), (-1.5, -0.2), (-2.0, 2.0))
#: Arguments of arithmetic and matrix ops are kept within this magnitude.
GENERIC = (-6.0, 6.0)
MAX_DEPTH = 8

#: Op name -> the SymPy function it reads, for the element-wise ops read one-to-one from a head.
HEADS = {name: op.sympy_heads[0] for name, op in ops.REGISTRY.items()
         if op.kind == "elementwise" and len(op.sympy_heads) == 1 and op.from_sympy is None and name != "select"}
#: Element-wise functions of one argument, read from a SymPy head.
UNARY = sorted(name for name, op in ops.REGISTRY.items()
               if op.kind == "elementwise" and op.arity == 1 and name in HEADS
               and not issubclass(HEADS[name], sp.logic.boolalg.Boolean))
#: Ops with a kink or a jump: also applied across it (finite differences skip the kink itself).
KINKED = {"abs": (-2.0, 2.0), "relu": (-2.0, 2.0), "sign": (-2.0, 2.0)}
#: Ops that only appear as parts of what the generator writes, or that the pipeline adds.
DERIVED = {"symbol", "const", "batch_size", "call_size", "reduce_batch", "sum_to", "one_hot",
           "dsinc", "polygamma",  # the derivatives of sinc and digamma
           "lu", "embed", "kron_contract",  # a factor the solves read; adjoints of slices and Kronecker products
           # the adjoints of convolution and pooling, and what loops are made of (symgrad/loops.py)
           "conv2d_input_grad", "conv2d_weight_grad", "channel_sum", "max_pool2d_grad", "avg_pool2d_grad",
           "loop_vjp", "loop_part", "loop_embed", "loop_index", "loop_capture", "loop_element", "loop_seed"}
#: Ops that only derivatives of second order make (the adjoint of a loop_part).
SECOND_ORDER_ONLY = {"loop_embed"}
#: Ops the generator does not make: a scan's symbolic gradient is not written out in SymPy, so the
#: evaluator of ``model.gradients()`` cannot check it; tests/test_scan.py checks scans against
#: PyTorch and central differences.
NOT_GENERATED = {"scan", "scan_part", "scan_carry", "scan_elem"}
_RELATIONS = (sp.StrictLessThan, sp.LessThan, sp.StrictGreaterThan, sp.GreaterThan, sp.Ne, sp.Eq)


#: Heads that ``M.applyfunc(head)`` applies to the element of a 1x1 matrix M (SymPy applies the
#: others to M itself: Abs(M) becomes sqrt(M*M^H)).
SAFE_ON_1X1 = {head for name, head in HEADS.items() if name != "abs" and name in UNARY}


def domain(name, k=0):
    return tuple(float(v) for v in ops.get(name).domain[k])


#: Generator rules and their weights.
RULES = {
    "unary": 8, "add": 4, "mul": 4, "divide": 2, "pow": 3, "minmax": 2, "piecewise": 3,
    "heaviside": 1, "atan2": 1, "matmul": 4, "matpow": 1, "transpose": 1, "index": 3,
    "inner_product": 1, "assemble": 1, "const_matrix": 1, "identity": 1, "sum": 2, "trace": 1,
    "broadcast": 1, "softmax": 2, "stable_log": 1, "cross_entropy": 1, "mse": 1, "lambda": 3,
    "two_arg_form": 1, "norm": 1, "linalg": 5, "blocks": 4,
}
#: The rules that make a scalar from scalars (used inside element-wise lambdas).
SCALAR_RULES = ("unary", "add", "mul", "divide", "pow", "minmax", "piecewise", "heaviside", "atan2",
                "stable_log", "two_arg_form")
WEIGHTED_RULES = tuple(name for name, w in RULES.items() for _ in range(w))
WEIGHTED_SCALAR_RULES = tuple(name for name in WEIGHTED_RULES if name in SCALAR_RULES)


@dataclass(frozen=True)
class Node:
    expr: object
    shape: tuple  # () or (rows, cols)
    iv: tuple  # bounds on every element
    depth: int

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "iv", (float(self.iv[0]), float(self.iv[1])))


@dataclass
class Leaf:
    symbol: object
    role: str  # "param" or "input"
    shape: tuple
    range: tuple
    classes: int | None = None  # a class-index input (cross_entropy target): number of classes


@dataclass
class Spec:
    """A random model and the point at which to check it."""

    leaves: list
    loss: object
    outputs: dict
    reduce: object
    wrt: object  # list of names, or None for the default (all params)
    batch: int
    batched: bool
    flat_vectors: tuple  # names of vector symbols passed 1-D (params) or as (N, k) (inputs)
    seed: int
    model: object = None
    symbolic: bool = True  # compare with model.gradients()
    listed: tuple = ()  # names of inputs passed as nested lists
    ops_used: set = field(default_factory=set)

    @property
    def wrt_names(self):
        if self.wrt is not None:
            return list(self.wrt)
        return [str(l.symbol.name) for l in self.leaves if l.role == "param"]


def _num(x, digits=3):
    """A short SymPy number near x."""
    return sp.Float(round(float(x), digits), 15)


class Generator:
    def __init__(self, ch, max_depth=MAX_DEPTH, max_steps=14):
        self.ch = ch
        self.max_depth = max_depth
        self.max_steps = max_steps
        self.leaves: list = []
        self.pool: list = []
        self.used: set = set()  # generator rules applied (registry op names and constructs)
        self.sympy_failures = 0
        self.in_lambda = False  # building the body of an element-wise function
        self.linalg = False  # a rule_linalg construct is in the model (no symbolic gradients to compare)


    # --- leaves ------------------------------------------------------------------------

    def input_symbols(self) -> list:
        return [l.symbol for l in self.leaves if l.role == "input"]

    def make_leaves(self):
        ch = self.ch
        counts = {"p": ch.integer(0, 3), "x": ch.integer(0, 2), "W": ch.integer(0, 2), "X": ch.integer(0, 2)}
        if sum(counts.values()) == 0:
            counts["p"] = 1
        for prefix, n in counts.items():
            for k in range(n):
                rng = ch.choice(RANGES)
                name = f"{prefix}{k}"
                if prefix in "px":
                    assumptions = ch.choice(({"real": True}, {}, {"positive": True} if rng[0] > 0 else {"real": True}))
                    symbol, shape = sp.Symbol(name, **assumptions), ()
                else:
                    shape = ch.choice(SHAPES)
                    symbol = sp.MatrixSymbol(name, *shape)
                role = "param" if prefix in "pW" else "input"
                self.leaves.append(Leaf(symbol, role, shape, rng))
                self.pool.append(Node(symbol, shape, rng, 0))

    def class_input(self, classes):
        for leaf in self.leaves:
            if leaf.classes == classes:
                return leaf.symbol
        if any(leaf.classes is not None for leaf in self.leaves):
            return None
        symbol = sp.Symbol("k0", real=True)
        self.leaves.append(Leaf(symbol, "input", (), (0.0, classes - 1.0), classes))
        return symbol

    # --- picking from the pool ------------------------------------------------------------

    def pick(self, pred=lambda n: True, *, pool=None):
        pool = self.pool if pool is None else pool
        candidates = [n for n in pool if n.depth < self.max_depth and pred(n)]
        if not candidates:
            return None
        if self.ch.chance(0.45):
            return candidates[-1]  # the newest: builds depth
        return self.ch.choice(candidates)

    def scalar(self, **kw):
        return self.pick(lambda n: n.shape == (), **kw)

    def matrix(self, pred=lambda n: True, **kw):
        return self.pick(lambda n: n.shape != () and pred(n), **kw)

    # --- fitting an argument into a domain ------------------------------------------------

    def fit(self, node, lo, hi):
        """``node``, or a function of it, whose values lie within [lo, hi] (with a margin)."""
        margin = 0.02 * (hi - lo)
        tlo, thi = lo + margin, hi - margin
        a, b = node.iv
        if tlo <= a and b <= thi and not self.ch.chance(0.1):
            return node
        ch = self.ch
        kinds = ["affine", "sigmoid", "tanh", "rational"]
        if b - a <= 0.9 * (thi - tlo):
            kinds.insert(0, "shift")
        for _ in range(4):
            kind = ch.choice(kinds)
            made = getattr(self, f"_fit_{kind}")(node, tlo, thi)
            if made is not None and lo <= made.iv[0] and made.iv[1] <= hi:
                return made
        made = self._fit_sigmoid(node, tlo, thi, k=1)
        assert lo <= made.iv[0] and made.iv[1] <= hi, (made.iv, lo, hi)
        return made

    def _affine(self, node, scale, offset):
        """scale * node + offset, element by element."""
        scale, offset = _num(scale, 4), _num(offset, 4)
        if node.shape == ():
            expr = scale * node.expr + offset
        else:
            expr = sp.MatAdd(sp.MatMul(scale, node.expr), sp.MatMul(offset, sp.OneMatrix(*node.shape)))
        iv = iv_add(iv_scale(float(scale), node.iv), (float(offset), float(offset)))
        return Node(expr, node.shape, iv, node.depth + 1)

    def _fit_shift(self, node, tlo, thi):
        a, b = node.iv
        c = tlo - a + 0.5 * ((thi - tlo) - (b - a))
        return self._affine(node, 1, c)

    def _fit_affine(self, node, tlo, thi):
        a, b = node.iv
        if b - a < 1e-9:
            return self._affine(node, 1, (tlo + thi) / 2 - a)
        scale = float(f"{(thi - tlo) / (b - a) * 0.999:.3g}")
        offset = tlo - scale * a + 0.0005 * (thi - tlo)
        if self.ch.chance(0.3):  # a decreasing map
            scale, offset = -scale, thi + scale * a - 0.0005 * (thi - tlo)
        return self._affine(node, scale, offset)

    def _squash(self, node, tlo, thi, name, k):
        """tlo + (thi - tlo) * (f(k * node) - flo) / (fhi - flo) for a bounded increasing f."""
        f = HEADS[name]
        inner = self._affine(node, k, 0) if k != 1 else node
        fiv = iv_function(lambda v: ops.get(name).numpy([v], ()), inner.iv)
        # Known bounds of the squashing function's range.
        full = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}[name]
        flo, fhi = max(full[0], fiv[0]), min(full[1], fiv[1])
        if fhi - flo < 1e-6:
            flo, fhi = full
        applied = self.apply_unary(f, inner)
        node_f = Node(applied, node.shape, (flo, fhi), node.depth + 1)
        scale = (thi - tlo) / (fhi - flo) * 0.999
        return self._affine(node_f, scale, tlo - scale * flo + 0.0005 * (thi - tlo))

    def _fit_sigmoid(self, node, tlo, thi, k=None):
        k = k if k is not None else self.ch.choice((1, 0.5, 2))
        return self._squash(node, tlo, thi, "sigmoid", k)

    def _fit_tanh(self, node, tlo, thi):
        return self._squash(node, tlo, thi, "tanh", self.ch.choice((1, 0.5)))

    def _fit_rational(self, node, tlo, thi):
        # tlo + (thi - tlo) / (1 + u**2): values in (tlo, thi]
        u = node if iv_max_abs(node.iv) <= 30 else self._affine(node, 30 / iv_max_abs(node.iv), 0)
        def body(t):
            return _num(tlo, 4) + _num(thi - tlo, 4) / (1 + t**2)

        expr = body(u.expr) if u.shape == () else self.map_elements(u, body)
        return Node(expr, node.shape, (float(_num(tlo, 4)), float(_num(tlo, 4)) + float(_num(thi - tlo, 4))),
                    node.depth + 1)

    # --- applying functions ---------------------------------------------------------------

    def apply_unary(self, head, node):
        """head applied to a scalar, or to every element of a matrix in one of the spellings."""
        if node.shape == ():
            return head(node.expr)
        if node.shape == (1, 1) and head not in SAFE_ON_1X1:
            return self.map_elements(node, head)
        forms = ["applyfunc", "elementwise", "lambda"]
        if head in (sgf.sigmoid, sgf.relu, sgf.softplus):
            forms.append("call")
        form = self.ch.choice(forms)
        if form == "applyfunc":
            return node.expr.applyfunc(head)
        if form == "elementwise":
            return sg.elementwise(head, node.expr)
        if form == "lambda":
            return node.expr.applyfunc(lambda t: head(t))
        return head(node.expr)

    def map_elements(self, node, f):
        """f (a function of one scalar expression) applied to every element of a matrix node.

        SymPy applies a function to a 1x1 matrix itself instead of to its element (Abs(M)
        becomes sqrt(M*M^H), Heaviside(M) fails), so a 1x1 matrix is rebuilt from its element.
        """
        if node.shape == (1, 1):
            return sp.ImmutableMatrix([[f(sg.scalar(node.expr))]])
        t = sp.Dummy("t", real=True)
        lam = sp.Lambda(t, f(t))
        return node.expr.applyfunc(lam) if self.ch.chance(0.5) else sg.elementwise(lam, node.expr)

    # --- the rules: each makes one new node from nodes of the pool, or returns None ----------

    def rule_unary(self):
        name = self.ch.choice(UNARY)
        arg = self.pick()
        if arg is None:
            return None
        lo, hi = KINKED[name] if name in KINKED and self.ch.chance(0.6) else domain(name)
        arg = self.fit(arg, lo, hi)
        iv = iv_function(lambda v: ops.get(name).numpy([v], ()), arg.iv)
        self.used.add(name)
        return Node(self.apply_unary(HEADS[name], arg), arg.shape, iv, arg.depth + 1)

    def rule_heaviside(self):
        arg = self.pick()
        if arg is None:
            return None
        arg = self.fit(arg, -2.0, 2.0)
        h0 = self.ch.choice((None, sp.Rational(1, 2), 0, 1))
        head = (lambda t: sp.Heaviside(t)) if h0 is None else (lambda t: sp.Heaviside(t, h0))
        self.used.add("heaviside")
        if arg.shape == ():
            return Node(head(arg.expr), (), (0.0, 1.0), arg.depth + 1)
        return Node(self.map_elements(arg, head), arg.shape, (0.0, 1.0), arg.depth + 1)

    def rule_atan2(self):
        y, x = self.scalar(), self.scalar()
        if y is None:
            return None
        y, x = self.fit(y, *domain("atan2", 0)), self.fit(x, *domain("atan2", 1))
        self.used.add("atan2")
        return Node(sp.atan2(y.expr, x.expr), (), (-math.pi / 2, math.pi / 2), max(x.depth, y.depth) + 1)

    def rule_two_arg_form(self):
        """Formulas of two scalars that read as stable forms or two-argument functions:
        log(exp(a) + exp(b)) (logaddexp), sqrt(a**2 + b**2) (hypot), Mod(a, b)."""
        a, b = self.scalar(), self.scalar()
        if a is None:
            return None
        kind = self.ch.choice(("logaddexp", "hypot", "mod"))
        depth = max(a.depth, b.depth) + 1
        if kind == "logaddexp":
            a, b = self.fit(a, -20.0, 20.0), self.fit(b, -20.0, 20.0)
            self.used.update(("exp", "log", "add", "logaddexp"))
            iv = (max(a.iv[0], b.iv[0]), float(np.logaddexp(a.iv[1], b.iv[1])) + 1e-6)
            return Node(sp.log(sp.exp(a.expr) + sp.exp(b.expr)), (), iv, depth)
        if kind == "hypot":
            a, b = self.fit(a, -3.0, 3.0), self.fit(b, 0.5, 3.0)
            self.used.update(("pow", "add", "hypot"))
            iv = (0.5 - 1e-6, float(np.hypot(iv_max_abs(a.iv), iv_max_abs(b.iv))) + 1e-6)
            return Node(sp.sqrt(a.expr**2 + b.expr**2), (), iv, depth)
        a, b = self.fit(a, *domain("mod", 0)), self.fit(b, *domain("mod", 1))  # away from the jumps
        self.used.add("mod")
        return Node(sp.Mod(a.expr, b.expr), (), (a.iv[0] - b.iv[1], a.iv[1] - b.iv[0]), depth)

    def rule_minmax(self):
        args = [self.scalar() for _ in range(self.ch.choice((2, 2, 3)))]
        if args[0] is None:
            return None
        args = [self.fit(a, *GENERIC) for a in args]
        # SymPy's simplification of Max and Min asks questions about the arguments that can take
        # minutes on large ones: those are built unevaluated.
        evaluate = all(a.depth <= 2 for a in args) and not self.ch.chance(0.2)
        if self.ch.chance(0.5):
            self.used.add("max")
            expr = sp.Max(*[a.expr for a in args], evaluate=evaluate)
            iv = (max(a.iv[0] for a in args), max(a.iv[1] for a in args))
        else:
            self.used.add("min")
            expr = sp.Min(*[a.expr for a in args], evaluate=evaluate)
            iv = (min(a.iv[0] for a in args), min(a.iv[1] for a in args))
        return Node(expr, (), iv, max(a.depth for a in args) + 1)

    def condition(self):
        """A truth value made of comparisons of pool scalars, and, or, not."""
        a, b = self.scalar(), self.scalar()
        rel = self.ch.choice(_RELATIONS)
        self.used.add({sp.StrictLessThan: "lt", sp.LessThan: "le", sp.StrictGreaterThan: "gt",
                       sp.GreaterThan: "ge", sp.Ne: "ne", sp.Eq: "eq"}[rel])
        other = b.expr if self.ch.chance(0.7) else _num(self.ch.choice((0, 0.5, -0.3)))
        cond = rel(a.expr, other)
        depth = max(a.depth, b.depth)
        combine = self.ch.choice((None, None, "and", "or", "not", "not_and", "not_or"))
        if combine == "not":  # (SymPy would rewrite not(x > y) as x <= y)
            cond = sp.Not(cond, evaluate=False)
        elif combine is not None:
            c = self.scalar()
            second = sp.StrictGreaterThan(c.expr, _num(self.ch.choice((0, 0.2, -0.5))))
            cond = (sp.And if combine.endswith("and") else sp.Or)(cond, second)
            depth = max(depth, c.depth)
            if combine.startswith("not_"):
                cond = sp.Not(cond)
        for word in ("and", "or", "not"):
            if combine is not None and word in combine.split("_"):
                self.used.add(word)
        if not _plain_condition(cond):
            # SymPy turns a comparison of a Piecewise into ITE(...), which symgrad does not
            # read (test_piecewise_compared_in_a_condition): compare a leaf instead.
            leaf = self.ch.choice([n for n in self.pool if n.depth == 0 and n.shape == ()] or [a])
            cond = sp.StrictGreaterThan(leaf.expr, _num(0.1))
            if not _plain_condition(cond):
                cond = sp.true
        return cond, depth

    def rule_piecewise(self):
        if self.scalar() is None:
            return None
        pieces, depth = [], 0
        for _ in range(self.ch.choice((1, 1, 2))):
            cond, d = self.condition()
            value = self.fit(self.pick(), *GENERIC) if self.ch.chance(0.8) else None
            if value is None or value.shape != ():
                value = self.fit(self.scalar(), *GENERIC)
            pieces.append((value, cond))
            depth = max(depth, d, value.depth)
        default = self.fit(self.scalar(), *GENERIC)
        depth = max(depth, default.depth)
        self.used.add("select")
        expr = sp.Piecewise(*[(v.expr, c) for v, c in pieces], (default.expr, True))
        if isinstance(expr, sp.Piecewise) and not all(_plain_condition(c) for _, c in expr.args):
            return None  # SymPy merged a nested Piecewise into ITE conditions (see test_nested_piecewise)
        return Node(expr, (), iv_union(default.iv, *[v.iv for v, _ in pieces]), depth + 1)

    def partner(self, node):
        """A node to combine with ``node`` element by element, and how to spell the pair."""
        ch = self.ch
        if node.shape == ():
            other = self.scalar() if ch.chance(0.7) else None
            if other is None:
                other = self.pick()
            return other
        same = self.matrix(lambda n: n.shape == node.shape)
        if same is not None and ch.chance(0.6):
            return same
        return self.pick(lambda n: n.shape == () or (n.shape != node.shape and _broadcastable(n.shape, node.shape)))

    def rule_add(self):
        first = self.pick()
        if first is None:
            return None
        terms = [first]
        for _ in range(self.ch.choice((1, 1, 2))):
            other = self.partner(first)
            if other is not None:
                terms.append(other)
        terms = [self.fit(t, *GENERIC) for t in terms]
        shape = _full_shape(terms)
        coefficients = [self.ch.choice((1, 1, -1, 2, sp.Rational(1, 2), -3)) for _ in terms]
        parts = [c * t.expr if shape == () else sp.MatMul(c, self.widen(t, shape)) if c != 1 else self.widen(t, shape)
                 for c, t in zip(coefficients, terms)]
        iv = iv_add(*[iv_scale(float(c), t.iv) for c, t in zip(coefficients, terms)])
        self.used.add("add")
        return Node(sp.Add(*parts) if shape == () else sp.MatAdd(*parts), shape, iv,
                    max(t.depth for t in terms) + 1)

    def widen(self, node, shape):
        """node's expression repeated to ``shape`` (a scalar or a row or column vector)."""
        if node.shape == shape:
            return node.expr
        self.used.add("broadcast")
        rows, cols = shape
        if node.shape == ():
            return sp.MatMul(node.expr, sp.OneMatrix(rows, cols))
        form = self.ch.choice(("broadcast_to", "ones"))
        if form == "broadcast_to":
            return sg.broadcast_to(node.expr, shape)
        expr = node.expr
        if node.shape[0] == 1 and rows != 1:
            expr = sp.MatMul(sp.OneMatrix(rows, 1), expr)
        if node.shape[1] == 1 and cols != 1:
            expr = sp.MatMul(expr, sp.OneMatrix(1, cols))
        return expr

    def rule_mul(self):
        first = self.pick()
        if first is None:
            return None
        other = self.partner(first)
        if other is None:
            return None
        a, b = self.fit(first, *GENERIC), self.fit(other, *GENERIC)
        shape = _full_shape([a, b])
        self.used.add("mul")
        if a.shape == () and b.shape == ():
            expr = a.expr * b.expr
        elif a.shape == () or b.shape == ():
            expr = sp.MatMul(a.expr, b.expr)
        else:
            expr = HadamardProduct(self.widen(a, shape), self.widen(b, shape))
        return Node(expr, shape, iv_mul(a.iv, b.iv), max(a.depth, b.depth) + 1)

    def rule_divide(self):
        num = self.pick()
        den = self.scalar() if self.ch.chance(0.6) or num is None or num.shape == () else \
            self.matrix(lambda n: n.shape == num.shape)
        if num is None or den is None:
            return None
        positive = self.ch.chance(0.7)
        den = self.fit(den, 0.3, 3.0) if positive else self.fit(den, -3.0, -0.3)
        num = self.fit(num, *GENERIC)
        self.used.update(("pow", "mul"))
        recip = iv_pow_int(den.iv, -1)
        if den.shape == ():
            expr = num.expr / den.expr
        else:
            expr = HadamardProduct(num.expr, HadamardPower(den.expr, -1))
        return Node(expr, num.shape, iv_mul(num.iv, recip), max(num.depth, den.depth) + 1)

    def rule_pow(self):
        base = self.pick()
        if base is None:
            return None
        kinds = ("2", "3", "-1", "-2", "1/2", "-1/2", "3/2", "float", "symbolic", "base")
        kind = self.ch.choice(kinds)
        self.used.add("pow")
        if kind in ("2", "3"):
            n = int(kind)
            base = self.fit(base, -4.0, 4.0) if n == 2 else self.fit(base, -2.5, 2.5)
            iv, exponent = iv_pow_int(base.iv, n), sp.Integer(n)
        elif kind in ("-1", "-2"):
            n = int(kind)
            base = self.fit(base, 0.3, 3.0) if self.ch.chance(0.6) else self.fit(base, -3.0, -0.3)
            iv, exponent = iv_pow_int(base.iv, n), sp.Integer(n)
        elif kind in ("1/2", "-1/2", "3/2", "float"):
            exponent = sp.Float(0.7) if kind == "float" else sp.Rational(kind)
            base = self.fit(base, *domain("pow", 0))
            iv = iv_function(lambda v: v ** float(exponent), base.iv)
        else:
            if base.shape != ():
                base = self.scalar()
                if base is None:
                    return None
            if kind == "symbolic":  # base ** exponent, both varying
                y = self.scalar()
                base = self.fit(base, *domain("pow", 0))
                y = self.fit(y, *domain("pow", 1))
                corners = [base.iv[i] ** y.iv[j] for i in (0, 1) for j in (0, 1)]
                iv = (min(corners) * 0.999, max(corners) * 1.001)
                return Node(base.expr ** y.expr, (), iv, max(base.depth, y.depth) + 1)
            # a constant base: 2 ** u
            y = self.fit(base, *domain("pow", 1))
            return Node(sp.Integer(2) ** y.expr, (), iv_function(lambda v: 2.0**v, y.iv), y.depth + 1)
        if base.shape == ():
            expr = base.expr ** exponent
            if kind == "1/2" and self.ch.chance(0.5):
                expr = sp.sqrt(base.expr)
        else:
            expr = HadamardPower(base.expr, exponent)
        return Node(expr, base.shape, iv, base.depth + 1)

    def rule_matmul(self):
        a = self.matrix()
        if a is None:
            return None
        a = self.fit(a, -2.5, 2.5)
        rows, inner = a.shape
        b = self.matrix(lambda n: n.shape[0] == inner or n.shape[1] == inner)
        self.used.add("matmul")
        if b is None or self.ch.chance(0.15):
            # a Gram matrix: the same matrix on both sides
            if self.ch.chance(0.5):
                expr, k = sp.MatMul(a.expr.T, a.expr), rows
                shape = (inner, inner)
            else:
                expr, k = sp.MatMul(a.expr, a.expr.T), inner
                shape = (rows, rows)
            self.used.add("transpose")
            return Node(expr, shape, iv_scale(k, iv_mul(a.iv, a.iv)), a.depth + 1)
        b = self.fit(b, -2.5, 2.5)
        bexpr = b.expr if b.shape[0] == inner else b.expr.T
        if b.shape[0] != inner:
            self.used.add("transpose")
        cols = bexpr.shape[1]
        expr = sp.MatMul(a.expr, bexpr)
        if self.ch.chance(0.2):  # a scalar factor inside the product
            s = self.scalar()
            if s is not None:
                s = self.fit(s, -2.0, 2.0)
                return Node(sp.MatMul(a.expr, s.expr, bexpr), (rows, cols),
                            iv_scale(inner, iv_mul(iv_mul(a.iv, s.iv), b.iv)), max(a.depth, b.depth, s.depth) + 1)
        return Node(expr, (rows, cols), iv_scale(inner, iv_mul(a.iv, b.iv)), max(a.depth, b.depth) + 1)

    def rule_matpow(self):
        a = self.matrix(lambda n: n.shape[0] == n.shape[1])
        if a is None:
            return None
        n = self.ch.choice((2, 3))
        a = self.fit(a, -1.5, 1.5)
        k, m = a.shape[0], iv_max_abs(a.iv)
        bound = k ** (n - 1) * m**n
        self.used.add("matmul")
        return Node(sp.MatPow(a.expr, n), a.shape, (-bound, bound), a.depth + 1)

    def rule_transpose(self):
        a = self.matrix()
        if a is None:
            return None
        self.used.add("transpose")
        return Node(a.expr.T, (a.shape[1], a.shape[0]), a.iv, a.depth + 1)

    def rule_index(self):
        a = self.matrix()
        if a is None:
            return None
        self.used.add("index")
        if a.shape == (1, 1) and self.ch.chance(0.5):
            return Node(sg.scalar(a.expr), (), a.iv, a.depth + 1)
        i, j = self.ch.integer(0, a.shape[0] - 1), self.ch.integer(0, a.shape[1] - 1)
        return Node(element(a, i, j), (), a.iv, a.depth + 1)

    def rule_inner_product(self):
        """sg.scalar(u.T * v): a 1x1 product kept at matrix level."""
        u = self.matrix(lambda n: n.shape[1] == 1)
        if u is None:
            return None
        v = self.matrix(lambda n: n.shape == u.shape) or u
        u, v = self.fit(u, *GENERIC), self.fit(v, *GENERIC)
        self.used.update(("matmul", "transpose", "index"))
        return Node(sg.scalar(sp.MatMul(u.expr.T, v.expr)), (), iv_scale(u.shape[0], iv_mul(u.iv, v.iv)),
                    max(u.depth, v.depth) + 1)

    def rule_assemble(self):
        first = self.scalar()
        if first is None:
            return None
        shape = self.ch.choice(((2, 1), (1, 2), (2, 2), (3, 1), (2, 3)))
        entries, ivs, depth = [], [], 0
        for k in range(shape[0] * shape[1]):
            kind = self.ch.choice(("node", "node", "number"))
            if kind == "node":
                n = self.fit(self.scalar(), *GENERIC)
                entries.append(n.expr)
                ivs.append(n.iv)
                depth = max(depth, n.depth)
            else:
                v = self.ch.choice((0, 1, -2, 0.5))
                entries.append(_num(v))
                ivs.append((float(v), float(v)))
        self.used.add("assemble")
        return Node(sp.ImmutableMatrix(shape[0], shape[1], entries), shape, iv_union(*ivs), depth + 1)

    def rule_const_matrix(self):
        a = self.matrix()
        if a is None:
            return None
        a = self.fit(a, *GENERIC)
        rows, cols = a.shape
        how = self.ch.choice(("left", "hadamard", "add"))
        values = [self.ch.choice((1, -1, 2, 0.5, 0, 3)) for _ in range(rows * (rows if how == "left" else cols))]
        c = sp.ImmutableMatrix(rows, rows if how == "left" else cols, [_num(v) for v in values])
        m = max(abs(v) for v in values) or 1.0
        self.used.add("matrix_const")
        if how == "left":
            self.used.add("matmul")
            return Node(sp.MatMul(c, a.expr), a.shape, iv_scale(rows, iv_mul((-m, m), a.iv)), a.depth + 1)
        if how == "hadamard":
            self.used.add("mul")
            return Node(HadamardProduct(c, a.expr), a.shape, iv_mul((-m, m), a.iv), a.depth + 1)
        self.used.add("add")
        return Node(sp.MatAdd(c, a.expr), a.shape, iv_add((-m, m), a.iv), a.depth + 1)

    def rule_identity(self):
        a = self.matrix(lambda n: n.shape[0] == n.shape[1])
        if a is None:
            return None
        a = self.fit(a, *GENERIC)
        n = a.shape[0]
        self.used.add("identity")
        if self.ch.chance(0.5):
            c = self.ch.choice((1, 2, -1))
            self.used.add("add")
            return Node(sp.MatAdd(a.expr, sp.MatMul(c, sp.Identity(n))), a.shape, iv_add(a.iv, (min(0, c), max(0, c))), a.depth + 1)
        self.used.add("mul")
        return Node(HadamardProduct(a.expr, sp.Identity(n)), a.shape, iv_union(a.iv, (0.0, 0.0)), a.depth + 1)

    def rule_sum(self):
        a = self.matrix()
        if a is None:
            return None
        a = self.fit(a, *GENERIC)
        self.used.add("sum")
        return Node(sg.sum(a.expr), (), iv_scale(a.shape[0] * a.shape[1], a.iv), a.depth + 1)

    def rule_norm(self):
        """sqrt(sum(M**2)), which reads as the scaled norm, kept away from 0."""
        a = self.matrix()
        if a is None:
            return None
        a = self.fit(a, 0.5, 3.0)
        self.used.update(("norm", "sum"))
        n = a.shape[0] * a.shape[1]
        expr = sp.sqrt(sg.sum(sp.HadamardPower(a.expr, 2)))
        return Node(expr, (), (math.sqrt(n) * a.iv[0] * 0.999, math.sqrt(n) * a.iv[1] * 1.001), a.depth + 1)

    def rule_trace(self):
        a = self.matrix(lambda n: n.shape[0] == n.shape[1])
        if a is None:
            return None
        a = self.fit(a, *GENERIC)
        self.used.add("trace")
        return Node(sp.Trace(a.expr), (), iv_scale(a.shape[0], a.iv), a.depth + 1)

    def rule_broadcast(self):
        a = self.pick(lambda n: n.shape == () or 1 in n.shape)
        if a is None:
            return None
        a = self.fit(a, *GENERIC)
        if a.shape == ():
            shape = self.ch.choice(((2, 3), (3, 1), (2, 2)))
        elif a.shape[0] == 1:
            shape = (self.ch.choice((2, 3)), a.shape[1])
        else:
            shape = (a.shape[0], self.ch.choice((2, 3)))
        return Node(self.widen(a, shape), shape, a.iv, a.depth + 1)

    def rule_softmax(self):
        a = self.matrix()
        if a is None:
            return None
        a = self.fit(a, *domain("softmax"))
        n = a.shape[0] * a.shape[1]
        kind = self.ch.choice(("softmax", "log_softmax", "logsumexp", "log_of_softmax"))
        if kind == "softmax":
            self.used.add("softmax")
            return Node(sg.softmax(a.expr), a.shape, (0.0, 1.0), a.depth + 1)
        if kind == "logsumexp":
            self.used.add("logsumexp")
            return Node(sg.logsumexp(a.expr), (), iv_add(a.iv, (math.log(n), math.log(n))), a.depth + 1)
        self.used.add("log_softmax")
        iv = (a.iv[0] - a.iv[1] - math.log(n), 0.0)
        if kind == "log_softmax":
            return Node(sg.log_softmax(a.expr), a.shape, iv, a.depth + 1)
        self.used.add("softmax")  # log(softmax(z)) is read as log_softmax(z)
        soft = Node(sg.softmax(a.expr), a.shape, (0.0, 1.0), a.depth)
        expr = soft.expr.applyfunc(sp.log) if a.shape != (1, 1) else self.map_elements(soft, sp.log)
        return Node(expr, a.shape, iv, a.depth + 1)

    def rule_stable_log(self):
        """log(sigmoid(u)), log(1 - sigmoid(u)), log(1 + exp(u)), log(exp(u)) over a wide range."""
        a = self.pick()
        if a is None:
            return None
        a = self.fit(a, -20.0, 20.0)
        kind = self.ch.choice(("log_sigmoid", "log_one_minus_sigmoid", "log_one_plus_exp", "log_exp"))
        t = sp.Dummy("t", real=True)
        body, f = {
            "log_sigmoid": (sp.log(sgf.sigmoid(t)), lambda v: -sgf._np_softplus(-v)),
            "log_one_minus_sigmoid": (sp.log(1 - sgf.sigmoid(t)), lambda v: -sgf._np_softplus(v)),
            "log_one_plus_exp": (sp.log(1 + sp.exp(t)), sgf._np_softplus),
            "log_exp": (sp.log(sp.exp(t)), lambda v: v),
        }[kind]
        self.used.update(("log", "softplus"))
        expr = body.xreplace({t: a.expr}) if a.shape == () else self.map_elements(a, lambda v: body.xreplace({t: v}))
        return Node(expr, a.shape, iv_function(f, a.iv), a.depth + 1)

    def _conditioned(self, n):
        """A random n x n matrix near 2I (entries of a node squashed into [-0.3, 0.3]): far from
        singular, with a positive determinant."""
        a = self.matrix(lambda m: m.shape == (n, n))
        if a is None:
            return None
        a = self.fit(a, -0.3, 0.3)
        self.used.update(("identity", "add"))
        return Node(sp.MatAdd(a.expr, sp.MatMul(2, sp.Identity(n))), (n, n), iv_add(a.iv, (0.0, 2.0)), a.depth + 1)

    def rule_linalg(self):
        """Factorizations, solves, determinants, slices, blocks, diagonals, Kronecker products and
        reductions along an axis (symgrad/ops/factor.py, structure.py, axis.py). The symbolic
        gradients of these are not compared (their SymPy forms have no NumPy rule here); the
        loss is, and the gradients against finite differences."""
        ch = self.ch
        kind = ch.choice(("solve", "det", "spd", "triangular", "slice", "block", "diag", "kron", "axis"))
        a = self.matrix()
        if a is None:
            return None
        a = self.fit(a, -1.5, 1.5)
        rows, cols = a.shape
        m = iv_max_abs(a.iv)
        self.linalg = True
        if kind in ("solve", "det", "triangular"):
            n = ch.choice((1, 2, 3))
            matrix = self._conditioned(n)
            if matrix is None:
                return None
            bound = 1.0 / (2.0 - 0.3 * n)  # a bound on the elements of the inverse
            if kind == "det":
                self.used.update(("det", "logdet"))
                det = sp.Determinant(matrix.expr)
                low, high = (2.0 - 0.3 * n) ** n, (2.0 + 0.3 * n) ** n
                if ch.chance(0.5):
                    return Node(det, (), (low, high), matrix.depth + 1)
                return Node(sp.log(det), (), (math.log(low), math.log(high)), matrix.depth + 1)
            if kind == "triangular":
                self.used.update(("tri_solve", "triangle"))
                rhs = a if rows == n else None
                if rhs is None or ch.chance(0.3):
                    return Node(sgf.tril(matrix.expr), (n, n), iv_union(matrix.iv, (0.0, 0.0)), matrix.depth + 1)
                lower = ch.chance(0.5)
                expr = sgf.triangular_solve(matrix.expr, rhs.expr, lower=lower, trans=ch.chance(0.5))
                k = n * m * (1.6 / (2 - 0.3 * n)) ** n
                return Node(expr, rhs.shape, (-k, k), max(matrix.depth, rhs.depth) + 1)
            self.used.add("lu_solve")
            inverse = matrix.expr.inv() if ch.chance(0.5) else matrix.expr ** -1
            k = n * bound * m
            if rows == n and ch.chance(0.7):
                return Node(sp.MatMul(inverse, a.expr), a.shape, (-k, k), max(matrix.depth, a.depth) + 1)
            if cols == n and ch.chance(0.7):
                return Node(sp.MatMul(a.expr, inverse), a.shape, (-k, k), max(matrix.depth, a.depth) + 1)
            return Node(inverse, (n, n), (-bound, bound), matrix.depth + 1)
        if kind == "spd":
            # S = a aᵀ + I: symmetric positive definite
            self.used.update(("cholesky", "cho_solve", "logdet", "matmul", "transpose", "identity", "add"))
            s = sp.MatAdd(sp.MatMul(a.expr, a.expr.T), sp.Identity(rows))
            top = cols * m * m + 1
            which = ch.choice(("logdet", "solve", "cholesky"))
            if which == "logdet":
                return Node(sgf.logdet(sgf.spd(s)), (), (0.0, rows * math.log(top) + 1e-9), a.depth + 2)
            if which == "cholesky":
                return Node(sgf.cholesky(s), (rows, rows), (-math.sqrt(top), math.sqrt(top)), a.depth + 2)
            rhs = self.matrix(lambda n: n.shape[0] == rows) or a
            rhs = self.fit(rhs, *GENERIC)
            k = rows * iv_max_abs(rhs.iv)
            return Node(sp.MatMul(sgf.spd(s).inv(), rhs.expr), rhs.shape, (-k, k), max(a.depth, rhs.depth) + 2)
        if kind == "slice":
            self.used.add("slice")
            r0 = ch.integer(0, rows - 1)
            c0 = ch.integer(0, cols - 1)
            rs, cs = ch.choice((1, 1, 2)), ch.choice((1, 2))
            rs, cs = (rs if rows - r0 >= rs else 1), (cs if cols - c0 >= cs else 1)
            # stops where the step divides the span: SymPy sizes other strided slices one short
            r1 = r0 + rs * ch.integer(1, (rows - r0) // rs)
            c1 = c0 + cs * ch.integer(1, (cols - c0) // cs)
            expr = a.expr[r0:r1:rs, c0:c1:cs]
            return Node(expr, expr.shape, a.iv, a.depth + 1)
        if kind == "block":
            self.used.add("block")
            how = ch.choice(("vstack", "hstack", "blockdiag"))
            other = self.matrix(lambda n: (n.shape[1] == cols if how == "vstack" else
                                           n.shape[0] == rows if how == "hstack" else True)) or a
            other = self.fit(other, -1.5, 1.5)
            if how == "vstack":
                expr = sgf.vstack(a.expr, other.expr)
            elif how == "hstack":
                expr = sgf.hstack(a.expr, other.expr)
            else:
                expr = sp.BlockDiagMatrix(a.expr, other.expr)
            return Node(expr, tuple(int(d) for d in expr.shape), iv_union(a.iv, other.iv, (0.0, 0.0)),
                        max(a.depth, other.depth) + 1)
        if kind == "diag":
            if 1 in a.shape:
                self.used.add("diag_embed")
                k = rows * cols
                return Node(sgf.diag(a.expr), (k, k), iv_union(a.iv, (0.0, 0.0)), a.depth + 1)
            expr = sp.DiagonalOf(a.expr)
            try:
                expr.shape
            except AttributeError:  # SymPy's DiagonalOf of a matrix whose shape holds Python ints
                return None
            self.used.add("diagonal")
            return Node(expr, (min(rows, cols), 1), a.iv, a.depth + 1)
        if kind == "kron":
            self.used.add("kron")
            other = self.matrix(lambda n: n.shape[0] * n.shape[1] <= 4) or a
            other = self.fit(other, -1.5, 1.5)
            expr = sp.KroneckerProduct(a.expr, other.expr)
            return Node(expr, tuple(int(d) for d in expr.shape), iv_mul(a.iv, other.iv), max(a.depth, other.depth) + 1)
        axis = ch.choice((0, 1))
        length = rows if axis == 0 else cols
        shape = (1, cols) if axis == 0 else (rows, 1)
        how = ch.choice(("sum", "mean", "max", "min", "softmax", "log_softmax", "logsumexp"))
        self.used.add({"sum": "sum_to", "mean": "sum_to", "max": "extreme", "min": "extreme", "softmax": "softmax_axis",
                       "log_softmax": "log_softmax_axis", "logsumexp": "logsumexp_axis"}[how])
        if how == "sum":
            return Node(sg.sum(a.expr, axis=axis), shape, iv_scale(length, a.iv), a.depth + 1)
        if how == "mean":
            return Node(sg.mean(a.expr, axis=axis), shape, a.iv, a.depth + 1)
        if how in ("max", "min"):
            return Node((sg.max if how == "max" else sg.min)(a.expr, axis=axis), shape, a.iv, a.depth + 1)
        if how == "softmax":
            return Node(sg.softmax(a.expr, axis=axis), a.shape, (0.0, 1.0), a.depth + 1)
        if how == "log_softmax":
            return Node(sg.log_softmax(a.expr, axis=axis), a.shape,
                        (a.iv[0] - a.iv[1] - math.log(length), 0.0), a.depth + 1)
        return Node(sg.logsumexp(a.expr, axis=axis), shape, iv_add(a.iv, (0.0, math.log(length))), a.depth + 1)

    def rule_blocks(self):
        """Convolution and pooling of a matrix (as a one-channel image), or a sum or product over
        its elements (nested: a pair sum). Symbolic gradients are not compared (their SymPy forms
        are layers and FunctionMatrix entries); the loss is, against PyTorch for the layers and
        SymPy's own expansion of the loops, and the gradients against finite differences."""
        ch = self.ch
        a = self.matrix()
        if a is None:
            return None
        a = self.fit(a, -1.5, 1.5)
        rows, cols = a.shape
        m = iv_max_abs(a.iv)
        self.linalg = True
        kind = ch.choice(("conv", "conv", "max_pool", "avg_pool", "sum", "pair_sum", "product"))
        if kind == "conv":
            kh, kw = ch.integer(1, rows), ch.integer(1, cols)
            pad, stride, co = ch.choice((0, 1)), ch.choice((1, 2)), ch.choice((1, 2))
            weight = sp.MatrixSymbol(f"K{len(self.leaves)}", co * kh, kw)
            self.leaves.append(Leaf(weight, "param", (co * kh, kw), (-1.0, 1.0)))
            bias = None
            if ch.chance(0.5):
                bias = sp.MatrixSymbol(f"B{len(self.leaves)}", co, 1)
                self.leaves.append(Leaf(bias, "param", (co, 1), (-1.0, 1.0)))
                self.used.add("channel_repeat")
            self.used.add("conv2d")
            out = sg.conv2d(a.expr, weight, bias, stride=stride, padding=pad, out_channels=co)
            bound = kh * kw * m + (1.0 if bias is not None else 0.0)
            return Node(out, tuple(out.shape), (-bound, bound), a.depth + 1)
        if kind in ("max_pool", "avg_pool"):
            k = (ch.integer(1, rows), ch.integer(1, cols))
            self.used.add(f"{kind}2d")
            out = (sg.max_pool2d if kind == "max_pool" else sg.avg_pool2d)(a.expr, k, stride=ch.choice((1, 2)))
            return Node(out, tuple(out.shape), a.iv, a.depth + 1)
        # loops read elements of a declared matrix (SymPy writes elements of some structured
        # matrices out with floor() of the index, which is not an affine position)
        leaf = self.matrix(lambda node: isinstance(node.expr, sp.MatrixSymbol))
        if leaf is None:
            return None
        a = self.fit(leaf, -1.5, 1.5)
        if not isinstance(a.expr, sp.MatrixSymbol):
            return None
        rows, cols = a.shape
        m = iv_max_abs(a.iv)
        i, j = sp.symbols("i j", integer=True)
        n = rows * cols
        element = lambda k: MatrixElement(a.expr, k // cols if cols > 1 else k, 0 if cols == 1 else k % cols)  # noqa: E731
        if cols != 1 and rows != 1:  # loops read a column (or row) of the matrix
            element = lambda k: MatrixElement(a.expr, k, 0)  # noqa: E731
            n = rows
        if kind == "sum":
            self.used.add("sum_loop")
            term = sp.tanh(element(i)) * (i + 1) if ch.chance(0.5) else element(i) ** 2
            total = n * (n + 1) / 2 if term.has(sp.tanh) else n * m * m
            return Node(sp.Sum(term, (i, 0, n - 1)), (), (-total, total), a.depth + 1)
        if kind == "pair_sum" and n > 1:
            self.used.add("sum_loop")
            pairs = n * (n - 1) / 2
            return Node(sp.Sum(sp.Sum(sp.tanh(element(i) - element(j)), (j, i + 1, n - 1)), (i, 0, n - 2)), (),
                        (-pairs, pairs), a.depth + 1)
        self.used.add("product_loop")
        return Node(sp.Product(sp.Rational(3, 2) + sp.tanh(element(i)) / 2, (i, 0, n - 1)), (), (1.0, 2.0 ** n),
                    a.depth + 1)

    def rule_cross_entropy(self):
        logits = self.matrix()
        if logits is None:
            return None
        logits = self.fit(logits, -4.0, 4.0)
        n = logits.shape[0] * logits.shape[1]
        log_p = (logits.iv[0] - logits.iv[1] - math.log(n), 0.0)
        kind = self.ch.choice(("softmax", "one_hot", "index", "class_input", "class_input", "node"))
        self.used.add("log_softmax")
        depth = logits.depth
        if kind == "index":
            target, tiv = self.ch.integer(0, n - 1), (1.0, 1.0)
            self.used.add("index")
        elif kind == "class_input" and (symbol := self.class_input(n)) is not None:
            target, tiv = symbol, (1.0, 1.0)
            self.used.update(("take", "one_hot"))
        elif kind == "one_hot":
            hot = self.ch.integer(0, n - 1)
            target = sp.ImmutableMatrix(*logits.shape, [1 if k == hot else 0 for k in range(n)])
            tiv = (0.0, 1.0)
            self.used.add("matrix_const")
        else:
            other = self.matrix(lambda m: m.shape == logits.shape) or logits
            if kind == "softmax":
                other = self.fit(other, *domain("softmax"))
                target, tiv = sg.softmax(other.expr), (0.0, 1.0)
                self.used.add("softmax")
            else:
                other = self.fit(other, 0.0, 1.0)
                target, tiv = other.expr, other.iv
            depth = max(depth, other.depth)
        iv = iv_scale(-1.0, iv_mul(log_p, tiv))
        if not isinstance(target, int) and getattr(target, "shape", ()) != ():
            iv = iv_scale(n, iv)
        return Node(sg.cross_entropy(logits.expr, target), (), iv, depth + 1)

    def rule_mse(self):
        p = self.pick()
        if p is None:
            return None
        t = (self.matrix(lambda n: n.shape == p.shape) if p.shape != () else self.scalar()) or p
        p, t = self.fit(p, *GENERIC), self.fit(t, *GENERIC)
        self.used.update(("add", "mul"))
        if p.shape != ():
            self.used.add("sum")
        d = iv_max_abs(iv_add(p.iv, iv_scale(-1, t.iv)))
        return Node(sg.mse(p.expr, t.expr), (), (0.0, d * d), max(p.depth, t.depth) + 1)

    def rule_lambda(self):
        """A random scalar function of one variable, applied to every element of a matrix."""
        a = self.matrix()
        if a is None:
            return None
        t = sp.Dummy("t", real=True)
        var = Node(t, (), a.iv, a.depth)
        outer = [n for n in self.pool if n.shape == () and n.depth < self.max_depth]
        sub = Generator(self.ch, self.max_depth, 0)
        sub.leaves = self.leaves
        sub.in_lambda = True
        sub.pool = ([self.ch.choice(outer)] if outer and self.ch.chance(0.4) else []) + [var]
        for _ in range(self.ch.integer(1, 3)):
            made = sub.step(scalar_only=True)
            if made is not None:
                sub.pool.append(made)
        body = sub.pool[-1]
        if not contains(body.expr, t):
            body = Node(body.expr + t, (), iv_add(body.iv, a.iv), max(body.depth, a.depth))
        self.used |= sub.used
        expr = self.map_elements(a, lambda v: body.expr.xreplace({t: v}))
        return Node(expr, a.shape, body.iv, body.depth + 1)

    def apply_rule(self, rule):
        """The node a rule makes, or None; SymPy sometimes fails to build an expression
        (e.g. Max of matrix elements, where its simplification rebuilds a MatAdd as an Add):
        such an attempt is dropped. Errors raised by symgrad's own functions are not."""
        try:
            return getattr(self, f"rule_{rule}")()
        except GenerationTimeout:
            raise
        except Exception as exc:  # noqa: BLE001 - only SymPy's own failures are dropped
            files = [f.filename.replace(os.sep, "/") for f in traceback.extract_tb(exc.__traceback__)]
            if "/sympy/" in files[-1]:
                self.sympy_failures += 1
                return None
            raise

    def step(self, scalar_only=False):
        for _ in range(5):
            rule = self.ch.choice(WEIGHTED_SCALAR_RULES if scalar_only else WEIGHTED_RULES)
            if scalar_only:
                saved = self.pool
                self.pool = [n for n in self.pool if n.shape == ()]
                try:
                    made = self.apply_rule(rule)
                finally:
                    self.pool = saved
            else:
                made = self.apply_rule(rule)
            if made is not None:
                if made.depth > self.max_depth + 4:  # fitting adds levels; keep the DAG bounded
                    continue
                return made
        return None

    # --- the loss ---------------------------------------------------------------------------

    def to_scalar(self, node):
        """A scalar made from a node (reductions of matrices), with its interval."""
        if node.shape == ():
            return node.expr, node.iv
        ch = self.ch
        n = node.shape[0] * node.shape[1]
        kinds = ["sum", "element", "logsumexp", "function_sum"]
        if node.shape[0] == node.shape[1]:
            kinds.append("trace")
        if node.shape == (1, 1):
            kinds.append("scalar")
        kind = ch.choice(kinds)
        if kind == "element":
            self.used.add("index")
            i, j = ch.integer(0, node.shape[0] - 1), ch.integer(0, node.shape[1] - 1)
            return element(node, i, j), node.iv
        if kind == "scalar":
            self.used.add("index")
            return sg.scalar(node.expr), node.iv
        if kind == "trace":
            self.used.add("trace")
            return sp.Trace(node.expr), iv_scale(node.shape[0], node.iv)
        node = self.fit(node, *GENERIC)
        if kind == "logsumexp":
            self.used.add("logsumexp")
            return sg.logsumexp(node.expr), iv_add(node.iv, (0, math.log(n)))
        if kind == "function_sum":  # sp.tanh(M) etc. read element by element
            name = ch.choice(("tanh", "sin", "atan", "erf"))
            self.used.update(("sum", name))
            try:
                total = sg.sum(HEADS[name](node.expr))
            except Exception:  # SymPy rewrote f(M) into something that is not a matrix
                total = sg.sum(self.apply_unary(HEADS[name], node))
            return total, iv_scale(n, iv_function(lambda v: ops.get(name).numpy([v], ()), node.iv))
        self.used.add("sum")
        return sg.sum(node.expr), iv_scale(n, node.iv)

    def build(self):
        ch = self.ch
        self.make_leaves()
        steps = ch.integer(1, self.max_steps)
        for _ in range(steps):
            made = self.step()
            if made is not None:
                self.pool.append(made)
        final = self.pool[-1]
        terms = [final] + [self.pick() for _ in range(ch.integer(0, 2))]
        params_only = [n for n in self.pool if n.depth > 0 and not contains_any(n.expr, self.input_symbols())]
        if params_only and ch.chance(0.5):  # a term of params only (a penalty), summed over the batch
            terms.append(ch.choice(params_only))
        if len(terms) == 1 and final.shape == (1, 1) and ch.chance(0.3):
            loss = final.expr  # a 1x1 matrix as the loss
        else:
            parts = []
            for k, t in enumerate(terms):
                expr, _ = self.to_scalar(t)
                parts.append(expr if k == 0 else ch.choice((1, -1, sp.Rational(1, 3))) * expr)
            loss = sp.Add(*parts)
        outputs = {}
        if ch.chance(0.4):
            outputs["out"] = self.pick().expr
        names_params = [str(l.symbol.name) for l in self.leaves if l.role == "param"]
        candidates = [str(l.symbol.name) for l in self.leaves if l.classes is None]
        reduce = ch.choice((None, "mean", "sum"))
        if names_params and ch.chance(0.4):
            wrt = None
        else:
            wrt = [name for name in candidates if ch.chance(0.6)] or [ch.choice(candidates)]
        has_inputs = any(l.role == "input" for l in self.leaves)
        batch = ch.integer(1, 3) if has_inputs else 1
        batched = has_inputs and (batch > 1 or ch.chance(0.7))
        # Vectors passed 1-D (params) or as (N, k) (inputs; not when that is the declared shape).
        flat = tuple(str(l.symbol.name) for l in self.leaves
                     if l.shape != () and 1 in l.shape and (l.role == "param" or batched and (
                         batch, l.shape[0] * l.shape[1]) != l.shape) and ch.chance(0.25))
        seed = ch.integer(0, 2**31 - 1)
        return Spec(self.leaves, loss, outputs, reduce, wrt, batch, batched, flat, seed, ops_used=set(self.used),
                    symbolic=not self.linalg)


def _plain_condition(cond):
    """Comparisons combined by and, or, not (no ITE and such)."""
    if isinstance(cond, (sp.core.relational.Relational, sp.logic.boolalg.BooleanAtom)):
        return True
    if isinstance(cond, (sp.And, sp.Or, sp.Not)):
        return all(_plain_condition(a) for a in cond.args)
    return False


def element(node, i, j):
    """Element (i, j) of a matrix node. ``M[i, j]`` makes SymPy write products and element-wise
    functions out element by element, which is slow on deep expressions: those get an
    unevaluated element instead."""
    if node.depth <= 2:
        return node.expr[i, j]
    return MatrixElement(node.expr, i, j)


def _broadcastable(small, full):
    return all(s in (1, f) for s, f in zip(small, full))


def _full_shape(nodes):
    shapes = [n.shape for n in nodes if n.shape != ()]
    if not shapes:
        return ()
    return (max(s[0] for s in shapes), max(s[1] for s in shapes))


def make_model(spec: Spec):
    """The symgrad Model of a spec, named after a digest of its content."""
    params = [l.symbol for l in spec.leaves if l.role == "param"]
    inputs = [l.symbol for l in spec.leaves if l.role == "input"]
    digest = hashlib.sha1()
    digest.update(repr((spec.reduce, spec.wrt, [(str(l.symbol), l.role, l.shape, type(l.symbol).__name__,
                                                 sorted(getattr(l.symbol, "assumptions0", {}).items()))
                                                for l in spec.leaves])).encode())
    for expr in [spec.loss, *spec.outputs.values()]:
        digest.update(structural_digest(expr).encode())
    name = f"rnd_{digest.hexdigest()[:16]}"
    return sg.Model(name, loss=spec.loss, params=params, inputs=inputs, outputs=spec.outputs,
                    reduce=spec.reduce, wrt=spec.wrt)


def structural_digest(expr) -> str:
    """A digest of a SymPy expression DAG, stable across processes (hash() of strings is not),
    in time linear in the DAG (printing it could take exponential time)."""
    memo: dict = {}

    def visit(e):
        if e in memo:
            return memo[e]
        if not e.args:
            text = f"{type(e).__name__}:{e.name if isinstance(e, sp.Dummy) else str(e)}"
            if isinstance(e, sp.Symbol):
                text += repr(sorted(e.assumptions0.items()))
        else:
            text = f"{type(e).__name__}(" + ",".join(visit(a) for a in e.args) + ")"
        memo[e] = hashlib.sha1(text.encode()).hexdigest()
        return memo[e]

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    return visit(sp.sympify(expr))


def contains_any(expr, atoms) -> bool:
    return any(contains(expr, a) for a in atoms)


def contains(expr, atom) -> bool:
    """Whether ``atom`` occurs in ``expr`` (linear in the DAG; SymPy's has() walks the tree)."""
    memo: dict = {}

    def visit(e):
        if e not in memo:
            memo[e] = e == atom or any(visit(a) for a in e.args)
        return memo[e]

    return visit(expr)


def tree_size(expr, cap=3000) -> int:
    """The number of nodes of ``expr`` written out as a tree, capped (linear in the DAG)."""
    memo: dict = {}

    def size(e):
        if e not in memo:
            memo[e] = min(cap + 1, 1 + sum(size(a) for a in e.args))
        return memo[e]

    return size(sp.sympify(expr))


def _small(e) -> bool:
    return tree_size(e, 400) <= 400


# ======================================================================================
# An independent NumPy evaluator of SymPy expressions (models and gradient expressions)
# ======================================================================================


class Unevaluable(Exception):
    pass


def _erf(x):
    return np.vectorize(math.erf, otypes=[float])(x)


def _erfc(x):
    return np.vectorize(math.erfc, otypes=[float])(x)


def _mp(f):
    return lambda x: np.vectorize(lambda v: float(f(v)), otypes=[float])(x)


def _np_reduce(f, args):
    out = np.asarray(args[0], float)
    for a in args[1:]:
        out = f(out, a)
    return out


def _logsumexp(z):
    z = np.asarray(z, dtype=float)
    m = np.max(z)
    return m + np.log(np.sum(np.exp(z - m)))


_NUMPY_HEADS = {
    sp.exp: np.exp, sp.log: np.log, sp.sin: np.sin, sp.cos: np.cos, sp.tan: np.tan,
    sp.sec: lambda x: 1 / np.cos(x), sp.csc: lambda x: 1 / np.sin(x), sp.cot: lambda x: 1 / np.tan(x),
    sp.sinh: np.sinh, sp.cosh: np.cosh, sp.tanh: np.tanh, sp.sech: lambda x: 1 / np.cosh(x),
    sp.csch: lambda x: 1 / np.sinh(x), sp.coth: lambda x: 1 / np.tanh(x), sp.asin: np.arcsin,
    sp.acos: np.arccos, sp.atan: np.arctan, sp.acot: lambda x: np.arctan(1 / x), sp.asinh: np.arcsinh,
    sp.acosh: np.arccosh, sp.atanh: np.arctanh, sp.erf: _erf, sp.erfc: _erfc, sp.Abs: np.abs,
    sp.sign: np.sign, sp.atan2: np.arctan2, sp.DiracDelta: lambda x, *k: np.zeros_like(np.asarray(x, float)),
    sgf.sigmoid: sgf.NUMPY_FUNCTIONS["sigmoid"], sgf.relu: sgf.NUMPY_FUNCTIONS["relu"],
    sgf.softplus: sgf.NUMPY_FUNCTIONS["softplus"],
    sgf.sum: np.sum, sgf.logsumexp: _logsumexp, sgf.scalar: lambda m: np.asarray(m).reshape(-1)[0],
    sgf.softmax: lambda z: np.exp(z - _logsumexp(z)), sgf.log_softmax: lambda z: z - _logsumexp(z),
    sp.Trace: np.trace,
    # sympy.codegen.cfunctions, special functions, and the stable forms symgrad shows
    cf.log1p: np.log1p, cf.expm1: np.expm1, cf.exp2: np.exp2, cf.log2: np.log2, cf.log10: np.log10,
    cf.Cbrt: np.cbrt, sgf.Cbrt: np.cbrt, cf.hypot: np.hypot, sgf.logaddexp: lambda *a: _np_reduce(np.logaddexp, a),
    sp.sinc: lambda x: np.sinc(np.asarray(x, float) / np.pi), sp.loggamma: _mp(math.lgamma),
    sp.polygamma: lambda n, x: np.vectorize(lambda k, v: float(mpmath.psi(int(k), v)), otypes=[float])(n, x),
    sp.acoth: lambda x: np.arctanh(1 / x), sp.asec: lambda x: np.arccos(1 / x),
    sp.acsc: lambda x: np.arcsin(1 / x), sp.asech: lambda x: np.arccosh(1 / x),
    sp.acsch: lambda x: np.arcsinh(1 / x), sp.floor: np.floor, sp.ceiling: np.ceil,
    sp.frac: lambda x: x - np.floor(x), sgf.frac: lambda x: x - np.floor(x), sp.Mod: np.mod,
    sgf.norm: lambda z: float(np.sqrt(np.sum(np.square(np.asarray(z, float))))),
}
_NUMPY_RELATIONS = {sp.StrictLessThan: np.less, sp.LessThan: np.less_equal, sp.StrictGreaterThan: np.greater,
                    sp.GreaterThan: np.greater_equal, sp.Eq: np.equal, sp.Ne: np.not_equal}


def _eval_linalg(ev, e):
    """The NumPy value of a linear-algebra or structure head (symgrad/ops/factor.py,
    structure.py, axis.py), else None."""
    from sympy.matrices.expressions.slice import MatrixSlice

    def arr(x):
        return np.asarray(ev(x), float)

    def lse(z, axis):
        mx = np.max(z, axis=axis, keepdims=True)
        return mx + np.log(np.sum(np.exp(z - mx), axis=axis, keepdims=True))

    if isinstance(e, sp.Inverse):
        return np.linalg.inv(arr(e.args[0]))
    if isinstance(e, sp.Determinant):
        return float(np.linalg.det(arr(e.args[0])))
    if isinstance(e, sgf.logdet):
        sign, value = np.linalg.slogdet(arr(e.args[0]))
        return float(value) if sign > 0 else math.nan
    if isinstance(e, sgf.spd):
        return arr(e.args[0])
    if isinstance(e, sgf.cholesky):
        return np.linalg.cholesky(arr(e.args[0]))
    if isinstance(e, sgf.tril):
        return np.tril(arr(e.args[0]))
    if isinstance(e, sgf.triangular_solve):
        t = arr(e.args[0])
        t = np.tril(t) if e.args[2] else np.triu(t)
        return np.linalg.solve(t.T if e.args[3] else t, arr(e.args[1]))
    if isinstance(e, MatrixSlice):
        (r0, r1, rs), (c0, c1, cs) = e.args[1:]
        return arr(e.parent)[int(r0):int(r1):int(rs), int(c0):int(c1):int(cs)]
    if isinstance(e, sgf.concat):
        return np.concatenate([arr(m) for m in e.matrices], axis=e.axis)
    if isinstance(e, sp.BlockMatrix):
        grid = e.blocks
        return np.block([[arr(grid[i, j]) for j in range(grid.cols)] for i in range(grid.rows)])
    if isinstance(e, sp.DiagonalOf):
        return np.diag(arr(e.args[0]))[:, None]
    if isinstance(e, sp.DiagMatrix):
        return np.diag(arr(e.args[0]).reshape(-1))
    if isinstance(e, sp.KroneckerProduct):
        out = arr(e.args[0])
        for a in e.args[1:]:
            out = np.kron(out, arr(a))
        return out
    along = {sgf.sum_along: lambda z, ax: np.sum(z, axis=ax, keepdims=True),
             sgf.max_along: lambda z, ax: np.max(z, axis=ax, keepdims=True),
             sgf.min_along: lambda z, ax: np.min(z, axis=ax, keepdims=True),
             sgf.softmax_along: lambda z, ax: np.exp(z - lse(z, ax)),
             sgf.log_softmax_along: lambda z, ax: z - lse(z, ax),
             sgf.logsumexp_along: lse}.get(type(e))
    if along is not None:
        return along(arr(e.args[0]), int(e.args[1]))
    return None


def _terms(function, limits):
    """The terms of a sum or product over ``limits`` (innermost first, as SymPy keeps them),
    the indices replaced by integers: SymPy's own ``doit`` may substitute an index past the
    end of a matrix while it looks for a closed form."""
    if not limits:
        yield function
        return
    index, low, high = limits[-1]
    for value in range(int(low), int(high) + 1):
        inner = [(i, a.xreplace({index: value}), b.xreplace({index: value})) for i, a, b in limits[:-1]]
        yield from _terms(function.xreplace({index: value}), inner)


def _eval_blocks(ev, e):
    """The value of a convolution or pooling layer (by PyTorch float64), or of a sum or product
    over an index (its terms written out one by one), else None."""
    from symgrad import layers

    if isinstance(e, (sp.Sum, sp.Product)):
        values = [ev(term) for term in _terms(e.function, e.limits)]
        start = 0.0 if isinstance(e, sp.Sum) else 1.0
        return functools.reduce(operator.add if isinstance(e, sp.Sum) else operator.mul, values, start)
    if not isinstance(e, layers.Layer):
        return None
    import torch
    import torch.nn.functional as F

    g = e.geometry
    x = torch.tensor(np.asarray(ev(e.matrices[0]), float).reshape(1, g.channels_in, g.height, g.width))
    if isinstance(e, layers.Conv2d):
        w = torch.tensor(np.asarray(ev(e.matrices[1]), float).reshape(g.channels_out, g.channels_in, g.kernel_h,
                                                                   g.kernel_w))
        b = torch.tensor(np.asarray(ev(e.matrices[2]), float).reshape(-1)) if len(e.matrices) == 3 else None
        out = F.conv2d(x, w, b, stride=(g.stride_h, g.stride_w), padding=(g.pad_h, g.pad_w))
    else:
        pool = F.max_pool2d if isinstance(e, layers.MaxPool2d) else F.avg_pool2d
        out = pool(x, (g.kernel_h, g.kernel_w), stride=(g.stride_h, g.stride_w), padding=(g.pad_h, g.pad_w))
    return out.numpy().reshape(g.output_shape)


class Evaluator:
    """Evaluates SymPy expressions (scalar and matrix) at one example, memoized over the DAG."""

    def __init__(self, env: dict, parent=None):
        self.env = env
        self.parent = parent
        self.memo: dict = {}

    def lookup(self, e):
        ev = self
        while ev is not None:
            if e in ev.memo:
                return ev.memo[e]
            ev = ev.parent
        raise KeyError

    def __call__(self, e):
        try:
            return self.lookup(e)
        except KeyError:
            pass
        with np.errstate(all="ignore"):
            value = self._eval(e)
        self.memo[e] = value
        return value

    def _eval(self, e):
        ev = self
        if e in self.env:
            return self.env[e]
        if isinstance(e, (sp.Symbol, sp.MatrixSymbol)):
            raise Unevaluable(f"unbound symbol {e}")
        if e is sp.true or e is sp.false:
            return bool(e)
        if e.is_Number or e.is_NumberSymbol:
            return float(e)
        if isinstance(e, sp.MatMul):
            values = [ev(a) for a in e.args]
            scalars = [v for v in values if np.ndim(v) == 0]
            matrices = [np.asarray(v, float) for v in values if np.ndim(v) != 0]
            out = matrices[0]
            for m in matrices[1:]:
                out = out @ m
            return float(np.prod(scalars)) * out if scalars else out
        if isinstance(e, sp.MatPow):
            return np.linalg.matrix_power(ev(e.args[0]), int(e.args[1]))
        if isinstance(e, (sp.Add, sp.MatAdd)):
            values = [ev(a) for a in e.args]
            return sum(values[1:], values[0])
        if isinstance(e, (sp.Mul, HadamardProduct)):
            out = ev(e.args[0])
            for a in e.args[1:]:
                out = out * ev(a)
            return out
        if isinstance(e, (sp.Pow, HadamardPower)):
            return np.power(np.asarray(ev(e.args[0]), float), ev(e.args[1]))
        if isinstance(e, (sp.Transpose, sp.Adjoint)):
            return np.transpose(ev(e.args[0]))
        if isinstance(e, MatrixElement):
            return np.asarray(ev(e.parent))[int(e.i), int(e.j)]
        if isinstance(e, ElementwiseApplyFunction):
            arg = np.asarray(ev(e.expr), float)
            f = e.function
            if not isinstance(f, sp.Lambda):
                d = sp.Dummy("d")
                f = sp.Lambda(d, f(d))
            (variable,) = f.variables
            inner = Evaluator({**self.env, variable: arg}, parent=self)
            return np.broadcast_to(inner(f.expr), arg.shape).copy()
        if isinstance(e, sp.Identity):
            return np.eye(int(e.rows))
        if isinstance(e, sp.ZeroMatrix):
            return np.zeros((int(e.rows), int(e.cols)))
        if isinstance(e, sp.OneMatrix):
            return np.ones((int(e.rows), int(e.cols)))
        if isinstance(e, sp.MatrixBase):
            # An entry may come out as a 1x1 matrix (SymPy writes Identity(1) as a factor of 1x1 entries).
            return np.array([[_as_scalar(ev(e[i, j])) for j in range(e.cols)] for i in range(e.rows)], dtype=float)
        if isinstance(e, sgf.broadcast_to):
            return np.broadcast_to(ev(e.args[0]), (int(e.args[1]), int(e.args[2]))).copy()
        if isinstance(e, sp.Piecewise):
            conditions, values = [], []
            for pair in e.args:
                conditions.append(np.asarray(ev(pair.cond), bool))
                values.append(np.asarray(ev(pair.expr), float))
            shape = np.broadcast_shapes(*[np.shape(v) for v in conditions + values])
            out = np.select([np.broadcast_to(c, shape) for c in conditions],
                            [np.broadcast_to(v, shape) for v in values], default=np.nan)
            return out if shape else float(out)
        if type(e) in _NUMPY_RELATIONS:
            return _NUMPY_RELATIONS[type(e)](ev(e.args[0]), ev(e.args[1]))
        if isinstance(e, sp.And):
            return np.logical_and.reduce(np.broadcast_arrays(*[np.asarray(ev(a), bool) for a in e.args]))
        if isinstance(e, sp.Or):
            return np.logical_or.reduce(np.broadcast_arrays(*[np.asarray(ev(a), bool) for a in e.args]))
        if isinstance(e, sp.Not):
            return np.logical_not(ev(e.args[0]))
        if isinstance(e, sp.ITE):
            return np.where(np.asarray(ev(e.args[0]), bool), np.asarray(ev(e.args[1]), bool),
                            np.asarray(ev(e.args[2]), bool))
        if isinstance(e, sp.KroneckerDelta):
            return np.equal(ev(e.args[0]), ev(e.args[1])).astype(float)
        if isinstance(e, sp.Heaviside):
            h0 = ev(e.args[1]) if len(e.args) > 1 else 0.5
            return np.heaviside(ev(e.args[0]), h0)
        if isinstance(e, (sp.Max, sp.Min)):
            f = np.maximum if isinstance(e, sp.Max) else np.minimum
            return f.reduce([np.asarray(ev(a), float) for a in e.args]) if all(
                np.ndim(ev(a)) == 0 for a in e.args) else _reduce_broadcast(f, [ev(a) for a in e.args])
        if isinstance(e, sgf.cross_entropy):
            logits, target = ev(e.args[0]), ev(e.args[1])
            log_p = np.asarray(logits, float) - _logsumexp(logits)
            if np.ndim(target) == 0:
                return -log_p.reshape(-1)[int(round(float(target)))]
            return -np.sum(target * log_p)
        if isinstance(e, sgf.mse):
            d = np.asarray(ev(e.args[0]), float) - np.asarray(ev(e.args[1]), float)
            return float(np.mean(d * d))
        linalg = _eval_linalg(ev, e)
        if linalg is not None:
            return linalg
        blocks = _eval_blocks(ev, e)
        if blocks is not None:
            return blocks
        head = _NUMPY_HEADS.get(e.func)
        if head is not None:
            out = head(*[ev(a) for a in e.args])
            return float(out) if np.ndim(out) == 0 else np.asarray(out, float)
        raise Unevaluable(f"no numeric rule for {type(e).__name__} ({sp.sstr(e)[:200] if _small(e) else '...'})")


def _as_scalar(v):
    v = np.asarray(v, float)
    assert v.size == 1, v.shape
    return float(v.reshape(()))


def _reduce_broadcast(f, values):
    out = values[0]
    for v in values[1:]:
        out = f(out, v)
    return out


def evaluate(expr, env):
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    return Evaluator(env)(sp.sympify(expr))


# ======================================================================================
# The point, the calls, and the three-way comparison
# ======================================================================================


def random_values(spec: Spec) -> dict:
    """Canonical values: params in their shape; inputs (N, *shape), or one example when not batched."""
    rng = np.random.default_rng(spec.seed)
    values = {}
    for leaf in spec.leaves:
        full = ((spec.batch,) if leaf.role == "input" and spec.batched else ()) + leaf.shape
        if leaf.classes is not None:
            v = rng.integers(0, leaf.classes, size=full).astype(float)
        else:
            v = rng.uniform(*leaf.range, size=full)
        values[str(leaf.symbol.name)] = float(v) if np.ndim(v) == 0 else v
    return values


def call_form(spec: Spec, values: dict) -> dict:
    """Values as passed to the kernels: vectors 1-D (params) or (N, k) (inputs) where the spec says."""
    out = {}
    for leaf in spec.leaves:
        name = str(leaf.symbol.name)
        v = values[name]
        if name in spec.flat_vectors:
            k = leaf.shape[0] * leaf.shape[1]
            v = np.reshape(v, (spec.batch, k) if leaf.role == "input" else (k,))
        if name in spec.listed:
            v = np.asarray(v).tolist()
        out[name] = v
    return out


def example_env(spec: Spec, values: dict, e: int) -> dict:
    env = {}
    for leaf in spec.leaves:
        v = values[str(leaf.symbol.name)]
        if leaf.role == "input" and spec.batched:
            v = v[e]
        env[leaf.symbol] = float(v) if leaf.shape == () else np.asarray(v, float)
    return env


def canonical_gradient(spec: Spec, name: str, grad):
    """A compiled gradient as (N, *shape) when it is per example, else (*shape)."""
    leaf = next(l for l in spec.leaves if str(l.symbol.name) == name)
    per_example = leaf.role == "input" or spec.reduce is None
    shape = ((spec.batch,) if per_example and spec.batched else ()) + leaf.shape
    grad = np.asarray(grad, float)
    assert grad.size == int(np.prod(shape)), (
        f"the gradient of {leaf.role} {name} has shape {grad.shape}; expected {shape}"
        + (" (one per example)" if per_example and spec.batched else ""))
    return grad.reshape(shape)


def expected_gradient(spec: Spec, name: str, per_example: list):
    """The reduced gradient from per-example symbolic gradients, as value_and_grad should return it."""
    leaf = next(l for l in spec.leaves if str(l.symbol.name) == name)
    g = np.array([_to_shape(v, leaf.shape) for v in per_example])  # (N, *shape)
    n = spec.batch
    if leaf.role == "input" or spec.reduce is None:
        if leaf.role == "input" and spec.reduce == "mean":
            g = g / n
        return g if spec.batched else g[0]
    return g.mean(axis=0) if spec.reduce == "mean" else g.sum(axis=0)


def _to_shape(v, shape):
    """A value evaluated from a gradient expression, in the shape of its symbol: a scalar
    is repeated (a constant gradient), a value with one element per element is reshaped."""
    v = np.asarray(v, float)
    if v.size == int(np.prod(shape)) and v.size > 1 or v.shape == shape:
        return v.reshape(shape)
    if v.size == 1:
        return np.full(shape, float(v.reshape(())))
    raise AssertionError(f"a gradient of shape {v.shape} for a symbol of shape {shape}")


def _printed(expr) -> str:
    """sstr of an expression; SymPy's printer fails on some products of explicit 1x1 matrices
    (it negates them, and MatMul.doit inverts them), where srepr still works."""
    try:
        return sp.sstr(expr)
    except (TypeError, ValueError, AttributeError, NotImplementedError):
        return sp.srepr(expr)


def describe(spec: Spec) -> str:
    leaves = ", ".join(f"{l.role} {l.symbol}{'' if l.shape == () else l.shape} in {l.range}"
                       + (f" (classes {l.classes})" if l.classes else "") for l in spec.leaves)
    loss = _printed(spec.loss) if _small(spec.loss) else f"<an expression of more than 400 nodes: {spec.loss.func}(...)>"
    return (f"leaves: {leaves}\nloss = {loss}\noutputs: {list(spec.outputs)}\nreduce={spec.reduce!r} "
            f"wrt={spec.wrt} batch={spec.batch} batched={spec.batched} flat={spec.flat_vectors} "
            f"seed={spec.seed}")


#: Tolerances. Compiled vs the evaluated SymPy expressions: the same formulas in another order.
SYMBOLIC_RTOL = 1e-9
#: model.gradients() of a random model (a few hundred nodes) must not take longer.
GRADIENTS_SECONDS = 30
#: Compiled gradients vs finite differences of the compiled loss.
FD_RTOL = 1e-5
FD_LOSS_FLOOR = 1e-8  # times (1 + |loss|)


def verify(spec: Spec, module, *, values=None):
    """Compare loss, outputs and gradients three ways; returns a small report dict.

    Uses ``assume`` to discard points with non-finite or huge values.
    """
    model = spec.model
    values = random_values(spec) if values is None else values
    args = call_form(spec, values)
    loss, grads = module.value_and_grad(**args)
    forward = module.forward(**args)
    loss_values = [np.asarray(loss, float)] + [np.asarray(g, float) for g in grads.values()]
    assume(all(np.all(np.isfinite(v)) and np.all(np.abs(v) < 1e6) for v in loss_values))
    np.testing.assert_allclose(forward["loss"], loss, rtol=1e-13, atol=1e-13, err_msg="forward vs value_and_grad loss")
    assert set(grads) == set(spec.wrt_names), (sorted(grads), spec.wrt_names)
    for name, g in module.grad(**args).items():
        np.testing.assert_array_equal(g, grads[name], err_msg=f"grad vs value_and_grad for {name}")

    n = spec.batch
    envs = [example_env(spec, values, e) for e in range(n)]

    # --- the loss and outputs against the SymPy expressions --------------------------------
    example_losses = np.array([float(np.asarray(evaluate(spec.loss, env), float).reshape(-1)[0]) for env in envs])
    assume(np.all(np.isfinite(example_losses)))
    expected_loss = {None: example_losses if spec.batched else example_losses[0],
                     "mean": example_losses.mean(), "sum": example_losses.sum()}[spec.reduce]
    loss_scale = float(np.sum(np.abs(example_losses)))
    np.testing.assert_allclose(np.asarray(loss, float), expected_loss, rtol=SYMBOLIC_RTOL,
                               atol=SYMBOLIC_RTOL * (1 + loss_scale), err_msg="loss vs the SymPy loss")
    for name, expr in spec.outputs.items():
        per = [np.asarray(evaluate(expr, env), float) for env in envs]
        got = np.asarray(forward[name], float)
        want = np.array(per) if spec.batched else per[0]
        assert got.shape == want.shape, f"output {name} has shape {got.shape}, expected {want.shape}"
        np.testing.assert_allclose(got, want, rtol=SYMBOLIC_RTOL, atol=SYMBOLIC_RTOL * (1 + np.max(np.abs(want))),
                                   err_msg=f"output {name}")

    # --- compiled gradients against model.gradients() ----------------------------------------
    for name, g in grads.items():  # the shape each symbol was passed in (with a batch axis per example)
        leaf = next(l for l in spec.leaves if str(l.symbol.name) == name)
        given = np.shape(args[name])
        if leaf.role == "param" and spec.reduce is None and spec.batched:
            given = (spec.batch,) + given
        assert np.shape(g) == given, f"the gradient of {leaf.role} {name} has shape {np.shape(g)}, expected {given}"
    compiled = {name: canonical_gradient(spec, name, g) for name, g in grads.items()}
    symbolic = {}
    if spec.symbolic:
        try:
            with time_budget(GRADIENTS_SECONDS):
                symbolic = {str(getattr(s, "name", s)): g for s, g in model.gradients().items()}
        except GenerationTimeout:
            raise AssertionError(f"model.gradients() took more than {GRADIENTS_SECONDS} s") from None
    assert set(symbolic) == (set(spec.wrt_names) if spec.symbolic else set()), (sorted(symbolic), spec.wrt_names)
    for name in symbolic:
        expected = expected_gradient(spec, name, [evaluate(symbolic[name], env) for env in envs])
        assume(np.all(np.isfinite(expected)))
        got = compiled[name]
        assert got.shape == expected.shape, (name, got.shape, expected.shape)
        scale = 1 + float(np.max(np.abs(expected), initial=0.0))
        np.testing.assert_allclose(got, expected, rtol=SYMBOLIC_RTOL, atol=SYMBOLIC_RTOL * scale,
                                   err_msg=f"compiled vs symbolic gradient of {name}")

    # --- compiled gradients against finite differences of the compiled loss --------------------
    def objective(vals):
        return float(np.sum(module.forward(**call_form(spec, vals))["loss"]))

    total = objective(values)
    floor = FD_LOSS_FLOOR * (1 + loss_scale)
    checked = skipped = 0
    for name in spec.wrt_names:
        base = np.asarray(values[name], float)
        # The gradient of the summed objective: per-example param gradients add up.
        g = compiled[name]
        leaf = next(l for l in spec.leaves if str(l.symbol.name) == name)
        if leaf.role == "param" and spec.reduce is None and spec.batched:
            g = g.sum(axis=0)
        for k in np.ndindex(base.shape):
            estimates = []
            h0 = 1e-4 * max(1.0, abs(float(base[k])))
            for h in (h0, h0 / 2):
                plus, minus = base.copy(), base.copy()
                plus[k] += h
                minus[k] -= h
                vp = {**values, name: plus if base.shape else float(plus)}
                vm = {**values, name: minus if base.shape else float(minus)}
                estimates.append((objective(vp) - objective(vm)) / (2 * h))
            d1, d2 = estimates
            fd = (4 * d2 - d1) / 3
            analytic = float(g[k])
            scale = max(abs(analytic), abs(fd))
            if not np.isfinite(fd) or abs(fd - d2) > 1e-4 * scale + floor:
                skipped += 1  # near a kink, or too curved for these steps
                continue
            checked += 1
            assert abs(analytic - fd) <= FD_RTOL * scale + floor, (
                f"compiled gradient of {name}{list(k)} = {analytic!r} but finite differences give {fd!r} "
                f"(loss {total!r})")
    verify_large_batch(spec, module, values, loss, grads)
    return {"checked": checked, "skipped": skipped}


def verify_large_batch(spec: Spec, module, values: dict, loss, grads) -> None:
    """The batch repeated past one slice (and the thread chunking) gives the same reduced results.

    A batch larger than runtime.CHUNK runs as several kernel calls whose sums are added, one after
    the other or on threads; repeating the checked batch k times leaves its mean unchanged and
    multiplies its sum by k, for parameter-only loss terms too.
    """
    if spec.reduce is None or not spec.batched or not any(l.role == "input" for l in spec.leaves):
        return
    k = -(-(runtime.CHUNK + 1) // spec.batch)
    tiled = {name: (np.concatenate([np.asarray(v)] * k) if leaf.role == "input" else v)
             for leaf in spec.leaves for name, v in [(str(leaf.symbol.name), values[str(leaf.symbol.name)])]}
    scale = 1 if spec.reduce == "mean" else k
    for threads in (1, 2):
        big_loss, big_grads = module.value_and_grad(**call_form(replace(spec, batch=spec.batch * k), tiled),
                                                    threads=threads)
        np.testing.assert_allclose(big_loss, scale * np.asarray(loss), rtol=1e-9, atol=1e-9 * (1 + abs(loss)),
                                   err_msg=f"loss of the batch repeated {k} times ({threads} threads)")
        for leaf in spec.leaves:
            name = str(leaf.symbol.name)
            if leaf.role == "param" and name in grads:
                want = scale * np.asarray(grads[name], float)
                np.testing.assert_allclose(big_grads[name], want, rtol=1e-9,
                                           atol=1e-9 * (1 + float(np.max(np.abs(want), initial=0.0))),
                                           err_msg=f"gradient of {name}, batch repeated {k} times ({threads} threads)")


# ======================================================================================
# The tests
# ======================================================================================


class GenerationTimeout(Exception):
    pass


@contextlib.contextmanager
def time_budget(seconds):
    """Raise GenerationTimeout after ``seconds``: SymPy's automatic simplification is, rarely,
    extremely slow on large expressions (assumption queries on hyperbolic functions...)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise GenerationTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def build_spec(ch, budget=5.0):
    """A random model, or None when SymPy took too long to build its expressions."""
    try:
        with time_budget(budget):
            spec = Generator(ch).build()
    except GenerationTimeout:
        return None
    spec.model = make_model(spec)
    graph = spec.model.graph
    read = graph.ancestors([graph.results["example_loss"][0].node])
    wrt = spec.wrt_names
    if not any(graph.symbols[name] in read for name in wrt):  # something to differentiate
        wrt = wrt + [str(l.symbol.name) for l in spec.leaves if l.classes is None
                     and str(l.symbol.name) not in wrt and graph.symbols[str(l.symbol.name)] in read]
    if wrt != spec.wrt_names:
        spec.wrt = wrt
        spec.model = make_model(spec)
    return spec


def _ops_within(node):
    """The op of a node, and those of the body of a loop node and of its term's reverse pass."""
    from symgrad import loops

    found = {node.op}
    if node.op in loops.LOOP_OPS or node.op == "loop_vjp":
        body = node.attrs[0]
        for inner in list(body.nodes) + list(loops.reverse_program(body).graph.nodes):
            found |= _ops_within(inner)
    return found


def test_generator_covers_the_op_registry():
    """Every registry op appears in some generated model's gradient graph; a new op must be added
    to the generator (or to DERIVED when the pipeline makes it)."""
    seen: set = set()
    rules: set = set()
    for seed in range(600):  # 87 ops: about 430 models cover them
        spec = build_spec(RandomChooser(seed))
        if spec is None:
            continue
        rules |= spec.ops_used
        seen |= {op for node in derived(spec.model, spec.model.reduce).nodes for op in _ops_within(node)}
        if seen >= set(ops.REGISTRY) - NOT_GENERATED and rules >= set(ops.REGISTRY) - DERIVED - NOT_GENERATED:
            break
    never = set(ops.REGISTRY) - seen - SECOND_ORDER_ONLY - NOT_GENERATED
    assert never == set(), f"ops never generated: {sorted(never)}"
    assert set(ops.REGISTRY) - DERIVED - NOT_GENERATED - rules == set()


def chooser(data):
    """Half the examples are built from Hypothesis's draws (they shrink well but are small), half
    from a random.Random seeded by one draw (larger, uniformly spread models; a failure keeps its
    seed: rerun it with build_spec(RandomChooser(seed)))."""
    if data.draw(st.booleans(), label="seeded"):
        return RandomChooser(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    return HypothesisChooser(data)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not ON_DEMAND,
    database=None if not ON_DEMAND else settings.default.database,
    # Shrinking recompiles a model per step, for many minutes: only on request.
    phases=[Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if SHRINK else []),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
@given(data=st.data())
def test_random_model_gradients_agree(data, compile_model):
    start = time.perf_counter()
    spec = build_spec(chooser(data))
    assume(spec is not None)
    note(describe(spec))
    built = time.perf_counter()
    module = compile_model(spec.model)
    compiled = time.perf_counter()
    report = verify(spec, module)
    if VERBOSE:
        print(f"{spec.model.name}: {len(spec.model.graph.nodes)} nodes, build {built - start:.2f} s, compile "
              f"{compiled - built:.2f} s, check {time.perf_counter() - compiled:.2f} s, {report}", file=sys.stderr)


@functools.lru_cache(maxsize=1)
def _kernel_kind_specs(count=3, most_nodes=40):
    """The first ``count`` random models (seeded, so always the same) of at most ``most_nodes``
    graph nodes, one per reduction where the seeds allow."""
    specs, reductions = [], []
    for seed in range(400):
        spec = build_spec(RandomChooser(seed))
        if spec is None or len(spec.model.graph.nodes) > most_nodes or spec.reduce in reductions[-2:]:
            continue
        specs.append(spec)
        reductions.append(spec.reduce)
        if len(specs) == count:
            break
    return specs


@pytest.mark.parametrize("index", range(3))
def test_random_models_of_every_kernel_kind_agree(index, compile_model):
    """A few random models built with every extra kernel: jvp and jacobian against central
    differences of forward, hvp and hessian against central differences of grad (as symgrad
    check does), and the primal results of jvp and hessian against forward and value_and_grad."""
    from symgrad.check import CheckReport, _check_extra_kernels

    spec = _kernel_kind_specs()[index]
    base = spec.model
    model = sg.Model(f"{base.name}_k", loss=base.loss, params=list(base.params), inputs=list(base.inputs),
                     outputs=base.outputs, reduce=base.reduce, wrt=list(base.wrt),
                     kernels=("jacobian", "jvp", "hvp", "hessian"))
    module = compile_model(model)
    values = {k: (np.asarray(v, float) if np.ndim(v) else v) for k, v in random_values(spec).items()}
    loss, grads = module.value_and_grad(**values)
    if not all(np.all(np.isfinite(np.asarray(v, float))) for v in [loss, *grads.values()]):
        pytest.skip("the random point is outside the model's domain")
    outputs, _ = module.jvp({}, **values)
    forward = module.forward(**values)
    for name in forward:
        np.testing.assert_allclose(outputs[name], forward[name], rtol=1e-13, atol=1e-13)
    hessian_loss, hessian_grads, _ = module.hessian(**values)
    np.testing.assert_allclose(hessian_loss, loss, rtol=1e-13, atol=1e-13)
    report = CheckReport(model.name)
    _check_extra_kernels(model, module, {k: (np.asarray(v, float) if np.ndim(v) else float(v))
                                         for k, v in values.items()}, np.random.default_rng(spec.seed), report)
    for kind, error in report.extra_errors.items():
        assert error <= 1e-5, f"{kind}: relative error {error:.2e} against central differences\n{describe(spec)}"


# ======================================================================================
# Regression tests: failures the random test found, as explicit models
# ======================================================================================


def _close(got, want, rtol=1e-9, atol=1e-12):
    np.testing.assert_allclose(np.asarray(got, float), np.asarray(want, float), rtol=rtol, atol=atol)


# --- Fixed bugs (in 336f34d, "Fix nine bugs found by the randomized model tests") -------------


def test_sigmoid_of_a_1x1_matrix(compile_model):
    """sg.sigmoid/relu/softplus of a 1x1 matrix recursed forever (SymPy's ElementwiseApplyFunction
    calls f(M) for a 1x1 M, and f(M) built Elementwise(f, M) again)."""
    m = sp.MatrixSymbol("m", 1, 1)
    loss = sg.sum(sg.sigmoid(m)) + sg.sum(sg.relu(m)) + sg.sum(sg.softplus(m)) + sg.sum(m.applyfunc(sgf.sigmoid))
    model = sg.Model("bug_sigmoid_of_1x1", loss=loss, params=[m])
    module = compile_model(model)
    v = 0.3
    s = 1 / (1 + math.exp(-v))
    loss, grads = module.value_and_grad(m=np.array([[v]]))
    _close(loss, 2 * s + v + math.log1p(math.exp(v)))
    _close(grads["m"], [[2 * s * (1 - s) + 1 + s]])
    _close(evaluate(model.gradients()[m], {m: np.array([[v]])}), [[2 * s * (1 - s) + 1 + s]])


def test_exp_of_a_1x1_explicit_matrix():
    """model.gradients() took ~15 s for logsumexp of a 1x1 explicit matrix: the backward pass's
    element-wise exp became a matrix exponential (Jordan form) through SymPy's 1x1 shortcut."""
    a, b = sp.symbols("a b")
    entry = 1 / (1 + (sp.tanh(a) / (1 + b**2) - 3 * a * b + sp.sin(a * b)) ** 2)
    model = sg.Model("bug_exp_of_1x1", loss=sg.logsumexp(sp.Matrix([[entry]])) + a, params=[a, b])
    with time_budget(5.0):
        gradients = model.gradients()
    env = {a: 0.3, b: -0.7}
    _close(evaluate(gradients[a], env), float(sp.diff(entry + a, a).subs(env)))


def test_gradient_of_an_unused_param_for_one_example(compile_model):
    """value_and_grad of one example raised KeyError for a param in wrt that the loss does not read."""
    a, b, x = sp.symbols("a b x")
    model = sg.Model("bug_unused_wrt_param", loss=a**2 * x, params=[a, b], inputs=[x])
    module = compile_model(model)
    for call in (dict(a=1.5, b=2.0, x=np.array([1.0, 3.0])), dict(a=1.5, b=2.0, x=2.0)):
        loss, grads = module.value_and_grad(**call)
        _close(loss, 2.25 * 2.0)
        _close(grads["a"], 3.0 * 2.0)
        _close(grads["b"], 0.0)


def test_loss_that_does_not_read_the_inputs(compile_model):
    """When no kernel read an input, the batch was forgotten: a loss that does not depend on the
    inputs was summed over 1 example instead of N (reduce='sum': loss and gradient N times too
    small), reduce=None returned one loss instead of N, and an output one value instead of N."""
    a, x = sp.symbols("a x")
    batch = np.array([1.0, 2.0, 3.0])
    for reduce, want_loss, want_grad in (("sum", 6.75, 9.0), (None, [2.25] * 3, [3.0] * 3)):
        model = sg.Model(f"bug_input_free_loss_{reduce}", loss=a**2, params=[a], inputs=[x], reduce=reduce,
                         outputs={"o": a + 1})
        module = compile_model(model)
        loss, grads = module.value_and_grad(a=1.5, x=batch)
        _close(loss, want_loss)
        _close(grads["a"], want_grad)
        _close(module.forward(a=1.5, x=batch)["o"], [2.5] * 3)


def test_symbolic_gradients_of_a_class_index_cross_entropy(compile_model):
    """model.gradients() wrote take/one_hot as shapeless undefined functions: the formula for
    cross_entropy(W*z, k) read -one_hot(k) + one_hot(k)*softmax(W*z) (wrong), and for its square
    gradients() raised NotImplementedError."""
    z, W = sp.MatrixSymbol("z", 3, 1), sp.MatrixSymbol("W", 3, 3)
    k = sp.Symbol("k")
    for power in (1, 2):
        model = sg.Model(f"bug_class_index_gradients_{power}", loss=sg.cross_entropy(W * z, k) ** power,
                         params=[W], inputs=[z, k], wrt=[W, z], reduce=None)
        module = compile_model(model)
        rng = np.random.default_rng(0)
        env = {W: rng.uniform(-1, 1, (3, 3)), z: rng.uniform(-1, 1, (3, 1)), k: 2.0}
        _, grads = module.value_and_grad(W=env[W], z=env[z], k=2.0)
        for symbol, expr in model.gradients().items():
            _close(evaluate(expr, env), grads[str(symbol.name)])


def test_abs_of_a_reduction_of_a_negated_sum(compile_model):
    """sp.Abs(sg.sum(-A + B)) raised TypeError: Abs's sign simplification rewrites the argument
    as the scalar-typed Mul -(A - B), which sg.sum (and scalar, logsumexp...) refused."""
    A, B = sp.MatrixSymbol("A", 2, 1), sp.MatrixSymbol("B", 2, 1)
    model = sg.Model("bug_abs_of_sum", loss=sp.Abs(sg.sum(-A + B)), params=[A, B])
    module = compile_model(model)
    loss, grads = module.value_and_grad(A=np.array([[1.0], [2.0]]), B=np.array([[0.5], [0.0]]))
    _close(loss, 2.5)
    _close(grads["A"], [[1.0], [1.0]])
    _close(grads["B"], [[-1.0], [-1.0]])


def test_piecewise_compared_in_a_condition(compile_model):
    """A comparison of a Piecewise inside a Piecewise condition becomes ITE(...), which symgrad
    did not read."""
    x, y, z = sp.symbols("x y z", real=True)
    loss = sp.Piecewise((x**2, sp.Piecewise((x, y > 0), (y, True)) > 0), (z, True))
    model = sg.Model("bug_piecewise_ite", loss=loss, params=[x, y, z])
    module = compile_model(model)
    for point, want in (((0.5, 1.0, 2.0), [1.0, 0.0, 0.0]), ((-0.5, 1.0, 2.0), [0.0, 0.0, 1.0]),
                        ((-0.5, -1.0, 2.0), [0.0, 0.0, 1.0])):
        _, grads = module.value_and_grad(**dict(zip("xyz", point)))
        _close([grads["x"], grads["y"], grads["z"]], want)


def test_one_by_one_matrix_used_by_element_and_as_a_matrix(compile_model):
    """inspect.simplify_for_display replaced every 1x1 Matrix([[...]]) by its element, also where
    a matrix is required: sg.compile and model.gradients() raised TypeError for a 1x1 matrix used
    by element and as a matrix, and for sg.logsumexp(sp.Matrix([[a]]))."""
    W = sp.MatrixSymbol("W", 1, 1)
    model = sg.Model("bug_display_1x1_matadd", loss=W[0, 0] ** 2 + sg.sum(HadamardProduct(W, W)), params=[W])
    module = compile_model(model)
    _, grads = module.value_and_grad(W=np.array([[0.5]]))
    _close(grads["W"], [[2.0]])
    _close(evaluate(model.gradients()[W], {W: np.array([[0.5]])}), [[2.0]])
    a = sp.Symbol("a")
    model = sg.Model("bug_display_1x1_logsumexp", loss=sg.logsumexp(sp.Matrix([[a]])), params=[a])
    compile_model(model)
    _close(evaluate(model.gradients()[a], {a: 0.5}), 1.0)


def test_two_constant_matrices(compile_model):
    """Two different matrices of numbers in one model: the generated C declared
    'static const double values[...]' twice in one scope."""
    A = sp.MatrixSymbol("A", 2, 2)
    c1 = np.array([[1.0, 2.0], [3.0, 4.0]])
    c2 = np.array([[0.0, 1.0], [1.0, 0.0]])
    loss = sg.sum(HadamardProduct(sp.ImmutableMatrix(c1), A)) + sg.sum(HadamardProduct(sp.ImmutableMatrix(c2), A * A))
    module = compile_model(sg.Model("bug_two_const_matrices", loss=loss, params=[A]))
    a = np.array([[0.5, -1.0], [2.0, 0.25]])
    _, grads = module.value_and_grad(A=a)
    _close(grads["A"], c1 + c2 @ a.T + a.T @ c2)


def test_elementwise_ops_of_several_matrices(compile_model):
    """sg.compile and model.gradients() raised NotImplementedError ('noncommutative scalars in
    MatMul') for Piecewise, Max(a, b, c) or Max(a, b)**2 applied to every element of a matrix: an
    element-wise op of several matrices was written as an undefined function elementwise(A, B)."""
    A = sp.MatrixSymbol("A", 2, 1)
    t = sp.Dummy("t", real=True)
    a = np.array([[0.5], [-2.0]])
    for name, body, want_loss, want_grad in (
        ("piecewise", sp.Piecewise((t, t > 0), (t**2, True)), 4.5, [[1.0], [-4.0]]),
        ("min3", sp.Min(t, t**2, 1 - t), 0.25 - 2.0, [[1.0], [1.0]]),
        ("max_squared", sp.Max(t, t**2) ** 2, 0.25 + 16.0, [[1.0], [-32.0]]),
    ):
        model = sg.Model(f"bug_multi_matrix_elementwise_{name}", loss=sg.sum(A.applyfunc(sp.Lambda(t, body))),
                         params=[A])
        module = compile_model(model)
        loss, grads = module.value_and_grad(A=a)
        _close(loss, want_loss)
        _close(grads["A"], want_grad)
        _close(evaluate(model.gradients()[A], {A: a}), want_grad)


# --- Fixed bugs (in 71a3726, "Fix five more bugs found by the randomized model tests", and after)


def test_one_example_of_a_row_vector_input(compile_model):
    """One example of a 1xk input given as a float64 array of its declared shape (1, k) was read
    by the runtime's fast path as a batch of one flattened example (loss (1,), dW (1, 3, 1)); the
    same example as a list gave loss () and dW (3, 1)."""
    X, W = sp.MatrixSymbol("X", 1, 3), sp.MatrixSymbol("W", 3, 1)
    model = sg.Model("bug_row_vector_example", loss=sg.scalar(X * W), params=[W], inputs=[X], wrt=[W, X],
                     reduce=None)
    module = compile_model(model)
    w = np.array([[1.0], [2.0], [3.0]])
    for x in ([[1.0, 1.0, 1.0]], np.ones((1, 3))):  # one example, as a list and as an array
        loss, grads = module.value_and_grad(W=w, X=x)
        assert np.ndim(loss) == 0 and np.shape(grads["W"]) == (3, 1) and np.shape(grads["X"]) == (1, 3), (
            np.shape(loss), np.shape(grads["W"]), np.shape(grads["X"]))
        _close(loss, 6.0)


def test_gradient_of_an_unread_symbol(compile_model):
    """The gradient of a symbol the loss does not read had its declared shape, not the shape it was
    passed in: a batch (3, 2, 2) of input X got one (2, 2) gradient, a 1x3 param given 1-D a (1, 3)
    gradient."""
    a, x = sp.symbols("a x")
    X, v = sp.MatrixSymbol("X", 2, 2), sp.MatrixSymbol("v", 1, 3)
    for reduce in ("sum", "mean", None):
        model = sg.Model(f"bug_unread_symbol_gradient_{reduce}", loss=a * x, params=[a, v], inputs=[x, X],
                         wrt=[a, v, X], reduce=reduce)
        module = compile_model(model)
        for xs in (np.array([1.0, 2.0, 3.0]), [1.0, 2.0, 3.0]):
            _, grads = module.value_and_grad(a=2.0, v=np.ones(3), x=xs, X=np.ones((3, 2, 2)))
            assert np.shape(grads["X"]) == (3, 2, 2), ("X", np.shape(grads["X"]))
            assert np.shape(grads["v"]) == ((3, 3) if reduce is None else (3,)), ("v", np.shape(grads["v"]))
            _close(grads["X"], 0.0)
            _close(grads["v"], 0.0)


def test_element_of_an_elementwise_matrix(compile_model):
    """Element (0, 1) of an element-wise matrix that varies per example, MatrixElement(sigmoid(A), 0, 1),
    times a matrix B read sigmoid(A) element by element: sum(sigmoid(A)[0, 1] * B) gave
    sigmoid(1)*1 + sigmoid(2)*10 instead of sigmoid(2)*11."""
    A, B = sp.MatrixSymbol("A", 1, 2), sp.MatrixSymbol("B", 1, 2)
    model = sg.Model("bug_element_of_elementwise", loss=sg.sum(sp.MatMul(MatrixElement(sg.sigmoid(A), 0, 1), B)),
                     inputs=[A, B], wrt=[A, B], reduce=None)
    module = compile_model(model)
    a, b = np.array([[1.0, 2.0]]), np.array([[1.0, 10.0]])
    s = 1 / (1 + math.exp(-2.0))
    loss, grads = module.value_and_grad(A=a, B=b)
    _close(loss, s * 11.0)
    _close(grads["A"], [[0.0, s * (1 - s) * 11.0]])
    _close(grads["B"], [[s, s]])


def test_gradients_of_a_small_model_in_seconds(compile_model):
    """model.gradients() took minutes on this 20-node model: index's to_sympy wrote M[i, j], so SymPy
    expanded the matrix product element by element and asked assumption questions
    (tanh(...).is_real -> Mod -> polynomial gcd) about the expanded entries."""
    p = sp.Symbol("p")
    X, W = sp.MatrixSymbol("X", 2, 1), sp.MatrixSymbol("W", 1, 3)
    t = sp.Dummy("t", real=True)
    E = sp.ImmutableMatrix([[-5.76 + 11.52 / (p**2 * sg.scalar(X.T * X) ** 2 + 1)], [p]])
    M = sp.MatMul(E.applyfunc(sp.Lambda(t, -2.4 + 4.8 / (t**2 + 1))), W)
    model = sg.Model("bug_slow_gradients", loss=sg.sum(M.applyfunc(sp.tanh)), params=[p, W], inputs=[X],
                     wrt=[p, X])
    with time_budget(3.0):
        symbolic = model.gradients()
    module = compile_model(model)
    values = {p: 0.7, W: np.array([[0.5, -1.0, 2.0]]), X: np.array([[0.3], [-0.8]])}
    _, grads = module.value_and_grad(p=values[p], W=values[W], X=values[X])
    _close(evaluate(symbolic[p], values), grads["p"], rtol=1e-7)
    _close(evaluate(symbolic[X], values), grads["X"], rtol=1e-7)


def test_nested_elementwise_functions_of_a_1x1_matrix(compile_model):
    """sum(tanh(acosh(W))) with W 1x1 raised TypeError ('Mix of Matrix and Scalar symbols'):
    Elementwise.doit() rebuilt a SymPy ElementwiseApplyFunction, which for a 1x1 matrix applies the
    function to the matrix itself."""
    W = sp.MatrixSymbol("W", 1, 1)
    model = sg.Model("bug_elementwise_1x1_doit", loss=sg.sum(W.applyfunc(sp.acosh).applyfunc(sp.tanh)), params=[W])
    module = compile_model(model)
    w = 1.5
    want = (1 - math.tanh(math.acosh(w)) ** 2) / math.sqrt(w * w - 1)
    _close(module.grad(W=np.array([[w]]))["W"], [[want]])
    _close(evaluate(model.gradients()[W], {W: np.array([[w]])}), [[want]])


def test_power_with_a_matrix_exponent(compile_model):
    """2**t applied to every element of a matrix W failed (TypeError 'Mix of Matrix and Scalar
    symbols', or NotImplementedError 'noncommutative scalars'): pow's to_sympy wrote a scalar base
    with a matrix exponent as Pow(2, W), which SymPy takes for a scalar."""
    W = sp.MatrixSymbol("W", 2, 2)
    t = sp.Dummy("t", real=True)
    w = np.array([[0.5, -1.0], [0.25, 2.0]])
    for name, body, want in (("sin", sp.sin(2**t), np.cos(2**w) * 2**w * math.log(2)),
                             ("times", t * 2**t, 2**w + w * 2**w * math.log(2))):
        model = sg.Model(f"bug_scalar_base_matrix_exponent_{name}", loss=sg.sum(W.applyfunc(sp.Lambda(t, body))),
                         params=[W])
        module = compile_model(model)
        _close(module.grad(W=w)["W"], want)
        _close(evaluate(model.gradients()[W], {W: w}), want)


def test_scalar_times_a_product_of_1x1_matrix_powers(compile_model):
    """model.gradients() raised TypeError ('MatPow base should be a matrix') for this model: the
    display form of a scalar times a matrix was built with ``*``, which runs MatMul.doit, and
    SymPy's rewriting of powers of 1x1 matrices there fails. Printing the gradient fails inside
    SymPy the same way; the formulas in generated code and ``symgrad show`` fall back to a note."""
    W = sp.MatrixSymbol("W", 1, 1)
    cube = (1.0 * W - 0.85 * sp.Identity(1)) ** 3
    p = sp.ImmutableMatrix([[-3.84 + 7.68 / (sg.scalar(cube**3) ** 2 + 1)]])
    y = 3.5723 * sg.sigmoid(2.0 * cube) - 1.2862 * sp.Identity(1)
    loss = sg.cross_entropy(p, y) + sg.scalar(y)  # (the cross-entropy of one class is 0)
    model = sg.Model("bug_scalar_times_1x1_powers", loss=loss, params=[W])
    module = compile_model(model)
    w, h = 1.1, 1e-6
    grad = module.grad(W=np.array([[w]]))["W"]
    assert abs(grad[0, 0]) > 0.1
    f = lambda v: float(module.forward(W=np.array([[v]]))["loss"])  # noqa: E731
    _close(grad, [[(f(w + h) - f(w - h)) / (2 * h)]], rtol=1e-6, atol=1e-9)
    _close(evaluate(model.gradients()[W], {W: np.array([[w]])}), grad)
    assert "W" in sg.symbolic.latex_gradient_formulas(derived(model, None))  # (SymPy cannot print some of these)


def test_piecewise_whose_condition_sympy_cannot_canonicalize(compile_model):
    """sg.compile and model.gradients() raised TypeError ('Invalid comparison of non-real zoo'):
    building the display form of the select, SymPy's Piecewise canonicalized the condition
    atan(0.639*p2*mse(x1, x1) + 1.9159) > 0 by dividing by a coefficient that is 0."""
    p2, x0, x1 = sp.symbols("p2 x0 x1")
    bound = sp.atan(0.639 * p2 * sg.mse(x1, x1) + 1.9159)
    loss = x1 / 3 + sp.Piecewise((p2**2, sp.Eq(x0, bound) | (bound > 0)), (sg.mse(x1, x1), True))
    model = sg.Model("bug_piecewise_condition_zoo", loss=loss, params=[p2], inputs=[x0, x1], reduce=None)
    module = compile_model(model)
    x0s, x1s = np.array([0.1, 0.2]), np.array([0.3, -0.4])
    loss, grads = module.value_and_grad(p2=-0.7, x0=x0s, x1=x1s)
    _close(loss, x1s / 3 + 0.49)
    _close(grads["p2"], [-1.4, -1.4])
    _close(evaluate(model.gradients()[p2], {p2: -0.7, x0: 0.1, x1: 0.3}), -1.4)


def test_zeroed_product_in_avx512_code(compile_model):
    """Wrong gradients on CPUs with AVX-512 (the version of the kernel they run): GCC 12 turned
    the loop that zeroes a small matrix product's result into a memset, then dead-store
    elimination dropped part of it, so row 1 of v7_bar*W1.T started from stale values. Builds
    now keep such loops as loops (-fno-tree-loop-distribute-patterns)."""
    W1 = sp.MatrixSymbol("W1", 2, 3)
    scale = sg.sum(sp.HadamardProduct(W1.T, W1.T)) + 1
    model = sg.Model("bug_zeroed_product_avx512", loss=sg.sum(sp.tanh(W1.T * scale * W1)), params=[W1])
    module = compile_model(model)
    w = np.array([[0.2222, 0.5069, -0.8881], [-0.3467, 0.557, 0.2828]])
    v6 = 1 + np.sum(w**2)
    v7 = w.T @ w
    v8_bar = 1 - np.tanh(v6 * v7) ** 2
    v7_bar = v6 * v8_bar
    v6_bar = np.sum(v7 * v8_bar)
    want = w @ v7_bar + (v6_bar * 2 * w.T + v7_bar @ w.T).T  # by hand, node by node
    _close(module.grad(W1=w)["W1"], want)


def test_min_of_scalars_made_from_matrices(compile_model):
    """model.gradients() raised AttributeError ('Mul' object has no attribute 'shape'): building
    the display form of min(a, b), SymPy's Min factors a - b, which breaks on scalars made from
    matrices (mse of a 3x1 input). Such a Min is now shown unevaluated."""
    X = sp.MatrixSymbol("X", 3, 1)
    q = sg.mse(X, 11.5085 * sg.sigmoid(4 * X) - 5.7542 * sp.OneMatrix(3, 1))
    low = sp.Min(0.191 * q - 5.7542, 22.9939 * sg.sigmoid(q) - 17.2396, evaluate=False)
    model = sg.Model("bug_min_of_matrix_scalars", loss=-sp.tan(1.152 - 2.304 / (low**2 + 1)) + low, inputs=[X],
                     wrt=[X], reduce="sum")
    module = compile_model(model)
    x = np.array([[0.3], [-0.5], [0.8]])
    grad = module.grad(X=x[None])["X"][0]
    h = 1e-6
    f = lambda v: float(module.forward(X=v[None])["loss"])  # noqa: E731
    fd = np.array([[(f(x + h * e) - f(x - h * e)) / (2 * h)] for e in np.eye(3)[:, :, None]]).reshape(3, 1)
    _close(grad, fd, rtol=1e-6, atol=1e-8)
    assert np.max(np.abs(grad)) > 1e-3
    _close(evaluate(model.gradients()[X], {X: x}), grad)


def test_sympy_derivatives_of_symgrad_functions(compile_model):
    """Printing a loss raised TypeError ('scalar() takes a matrix expression, got the scalar
    _xi_1'): SymPy's printer asked could_extract_minus_sign, which differentiates, and
    Function.fdiff rebuilds sg.scalar(...) (likewise sum, logsumexp, cross_entropy, mse) with a
    scalar stand-in for its matrix argument. symgrad's functions now keep such calls as they are,
    and sg.scalar of a number is the number."""
    A, B, W = sp.MatrixSymbol("A", 1, 3), sp.MatrixSymbol("B", 3, 1), sp.MatrixSymbol("W", 3, 1)
    for call in (sg.scalar(A * B), sg.sum(W), sg.logsumexp(W), sg.cross_entropy(W, W), sg.mse(W, B)):
        derivative = call.fdiff(1)
        assert derivative.has(sp.Derivative) or derivative.is_number, derivative
    x = sp.Symbol("x")
    model = sg.Model("scalar_of_a_number", loss=sg.scalar(x) ** 2 + sg.sum(x), inputs=[x], wrt=[x], reduce=None)
    loss, grads = compile_model(model).value_and_grad(x=np.array([1.5, -2.0]))
    _close(loss, [3.75, 2.0])
    _close(grads["x"], [4.0, -3.0])


def test_gradients_of_a_scalar_model_in_seconds(compile_model):
    """model.gradients() took minutes on this one-parameter model: building sin and tanh of
    large arguments, SymPy asked assumption questions about them (tanh(...).is_real -> Mod ->
    polynomial gcd). Functions of large arguments are now built unevaluated."""
    p0 = sp.Symbol("p0")
    m = sg.mse(21.4488 * sp.tanh(0.5 * p0) - 7.8805, p0)
    inner = p0 * (-5.76 + 11.52 / (0.32501401 * m**2 + 1)) * (5.7542 - 0.219 * m)
    model = sg.Model("bug_slow_scalar_gradients", loss=0.222 * inner + sp.cos(2.8771 * sp.tanh(0.333 * inner)),
                     params=[p0], reduce="sum")
    with time_budget(5.0):
        symbolic = model.gradients()[p0]
    module = compile_model(model)
    v, h = 0.7, 1e-6
    grad = module.grad(p0=v)["p0"]
    f = lambda u: float(module.forward(p0=u)["loss"])  # noqa: E731
    _close(grad, (f(v + h) - f(v - h)) / (2 * h), rtol=1e-6, atol=1e-8)
    _close(evaluate(symbolic, {p0: v}), grad)
