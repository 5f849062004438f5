"""SymPy heads for the functions symgrad adds to a model's vocabulary.

These are ordinary SymPy objects: they print as themselves (``sigmoid(x)``,
``\\sigma\\left(x\\right)``), differentiate with ``sympy.diff`` where that makes
sense, and evaluate numerically. symgrad's graph builder reads them as graph
ops; nothing here knows about graphs or C.

Element-wise functions (``sigmoid``, ``relu``, ``softplus``) accept a scalar or
a matrix expression; on a matrix they return an :class:`Elementwise` matrix
expression, so ``W2 * sg.sigmoid(W1 * x + b1)`` is a well-formed SymPy matrix
product. Tensor functions (``softmax``, ``log_softmax``) are matrix
expressions; reductions (``logsumexp``, ``cross_entropy``, ``mse``, ``sum``)
are scalars.
"""

from __future__ import annotations

import builtins

import numpy as np
import sympy as sp
from sympy.codegen import cfunctions as _cfunctions
from sympy.core.basic import Basic
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.matexpr import MatrixElement, MatrixExpr
from sympy.matrices.matrixbase import MatrixBase

__all__ = [
    "sigmoid",
    "relu",
    "softplus",
    "softmax",
    "log_softmax",
    "logsumexp",
    "cross_entropy",
    "mse",
    "sum",
    "scalar",
    "broadcast_to",
    "elementwise",
    "Elementwise",
    "norm",
    "spd",
    "cholesky",
    "tril",
    "triangular_solve",
    "logdet",
    "hstack",
    "vstack",
    "diag",
    "max",
    "min",
    "mean",
    "NUMPY_FUNCTIONS",
]

def _latex_call(name: str, printer, arg) -> str:
    return rf"{name}\left({printer._print(arg)}\right)"


def _latex_head(func) -> str:
    """The LaTeX spelling of a scalar function head, e.g. ``\\tanh``."""
    name = getattr(func, "latex_name", None)
    if name:
        return name
    marker = sp.Symbol("SYMGRADARG")
    text = sp.latex(func(marker))
    head = text.split("{")[0] if text.startswith("\\") else None
    return head or rf"\operatorname{{{func.__name__}}}"


class Elementwise(ElementwiseApplyFunction):
    """A scalar function applied to every element of a matrix expression.

    Behaves like SymPy's ``M.applyfunc(f)`` but prints as ``f(M)``, and never
    takes SymPy's shortcut for 1x1 matrices (calling ``f(M)``, which for
    ``exp`` is a matrix exponential and for symgrad's own functions builds
    this object again).
    """

    def __new__(cls, function, expr):
        expr = sp.sympify(expr)
        if not isinstance(function, sp.Lambda):
            d = sp.Dummy("d")
            function = sp.Lambda(d, function(d))
        return MatrixExpr.__new__(cls, function, expr)

    def doit(self, **hints):
        expr = self.expr.doit(**hints) if hints.get("deep", True) else self.expr
        if isinstance(expr, MatrixBase):
            return expr.applyfunc(self.function)
        return Elementwise(self.function, expr)

    def _scalar_head(self):
        lam = self.function
        body = getattr(lam, "expr", None)
        variables = getattr(lam, "variables", ())
        if body is not None and len(variables) == 1 and body.args == variables:
            return body.func
        return None

    def _sympystr(self, printer):
        head = self._scalar_head()
        if head is None:
            return printer._print_ElementwiseApplyFunction(self)
        return f"{head.__name__}({printer._print(self.expr)})"

    def _latex(self, printer):
        head = self._scalar_head()
        if head is None:
            return printer._print_ElementwiseApplyFunction(self)
        return _latex_call(_latex_head(head), printer, self.expr)


class _ElementwiseFunction(sp.Function):
    """A real scalar function that maps over matrices element by element."""

    nargs = 1
    latex_name = ""

    def __new__(cls, arg, **options):
        arg = sp.sympify(arg)
        if isinstance(arg, MatrixExpr):
            return Elementwise(cls, arg)
        if isinstance(arg, MatrixBase):
            return arg.applyfunc(cls)
        return super().__new__(cls, arg, **options)

    def _latex(self, printer, exp=None):
        text = _latex_call(self.latex_name, printer, self.args[0])
        return f"{text}^{{{exp}}}" if exp else text

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_evalf(self, prec):
        arg = self.args[0]
        if arg.is_number:
            return self._numeric_form(arg).evalf(prec)
        return None

    @classmethod
    def _numeric_form(cls, x):
        raise NotImplementedError


class sigmoid(_ElementwiseFunction):
    """The logistic function 1 / (1 + exp(-x)), computed stably."""

    latex_name = r"\sigma"

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    @classmethod
    def _numeric_form(cls, x):
        return 1 / (1 + sp.exp(-x))

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))


class relu(_ElementwiseFunction):
    """max(x, 0); its derivative is taken as 0 at x = 0."""

    latex_name = r"\operatorname{relu}"

    def fdiff(self, argindex=1):
        return sp.Heaviside(self.args[0], 0)

    @classmethod
    def _numeric_form(cls, x):
        return sp.Max(x, 0)

    def _eval_rewrite_as_Max(self, x, **kwargs):
        return sp.Max(x, 0)


class softplus(_ElementwiseFunction):
    """log(1 + exp(x)), computed without overflow; its derivative is sigmoid."""

    latex_name = r"\operatorname{softplus}"

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    @classmethod
    def _numeric_form(cls, x):
        return sp.log(1 + sp.exp(x))

    def _eval_rewrite_as_log(self, x, **kwargs):
        return sp.log(1 + sp.exp(x))


class logaddexp(sp.Function):
    """log(exp(x1) + exp(x2) + ...) of scalars, computed shifted by the largest.

    symgrad writes a log of a sum of exponentials this way (``symgrad show``
    prints it); a model may use it too.
    """

    @classmethod
    def eval(cls, *args):
        if len(args) < 2:
            raise TypeError("logaddexp() takes at least two arguments")

    def fdiff(self, argindex=1):
        return sp.exp(self.args[argindex - 1] - self)

    def _eval_is_real(self):
        return all(a.is_real for a in self.args) or None

    def _eval_evalf(self, prec):
        if all(a.is_number for a in self.args):
            return sp.log(sp.Add(*[sp.exp(a) for a in self.args])).evalf(prec)
        return None

    def _eval_rewrite_as_log(self, *args, **kwargs):
        return sp.log(sp.Add(*[sp.exp(a) for a in args]))

    def _latex(self, printer, exp=None):
        inner = ", ".join(printer._print(a) for a in self.args)
        text = rf"\operatorname{{logaddexp}}\left({inner}\right)"
        return f"{text}^{{{exp}}}" if exp else text


class Cbrt(_cfunctions.Cbrt):
    """The real cube root (SymPy's ``Cbrt`` head), which also evaluates numerically."""

    def _eval_evalf(self, prec):
        arg = self.args[0]
        if arg.is_number and arg.is_real:
            value = arg.evalf(prec)
            return (sp.sign(value) * sp.Abs(value) ** sp.Rational(1, 3)).evalf(prec)
        return None


class frac(sp.frac):
    """SymPy's ``frac`` with its derivative between the jumps (1), which SymPy leaves unevaluated."""

    def fdiff(self, argindex=1):
        return sp.Integer(1)


def elementwise(function, matrix):
    """``function`` applied to every element of ``matrix``; prints as ``function(matrix)``.

    The same as ``matrix.applyfunc(function)``, for any SymPy function or
    lambda. (``sp.tanh(M)`` also reads as element-wise in a model, but SymPy
    refuses to use it inside matrix products.)
    """
    return Elementwise(function, _matrix_arg("elementwise", matrix))


class broadcast_to(MatrixExpr):
    """``matrix`` repeated along its axes of length 1 to ``shape``.

    SymPy refuses to add matrices of different shapes; a model that keeps
    several samples in the rows of one matrix adds a bias row to all of them
    with ``X * W + sg.broadcast_to(b, (rows, cols))``.
    """

    def __new__(cls, matrix, shape, cols=None):
        matrix = _matrix_arg("broadcast_to", matrix)
        rows, cols = (int(d) for d in shape) if cols is None else (int(shape), int(cols))
        m_rows, m_cols = matrix_shape(matrix)
        if m_rows not in (1, rows) or m_cols not in (1, cols):
            raise sp.ShapeError(f"broadcast_to: a {m_rows}x{m_cols} matrix cannot be repeated to {rows}x{cols}")
        return Basic.__new__(cls, matrix, sp.Integer(rows), sp.Integer(cols))

    @property
    def shape(self):
        return (self.args[1], self.args[2])

    def _entry(self, i, j, **kwargs):
        return MatrixElement(self, i, j)

    def _sympystr(self, printer):
        return f"broadcast_to({printer._print(self.args[0])}, ({self.args[1]}, {self.args[2]}))"

    def _latex(self, printer):
        return printer._print(self.args[0])


# --- tensor functions --------------------------------------------------------


def matrix_shape(expr):
    """The shape of a matrix expression, also of scalar operations that SymPy
    leaves holding a matrix (``sp.tanh(W*x)``, ``-(A - B)``), which symgrad
    reads element by element; None for scalars."""
    if isinstance(expr, (MatrixExpr, MatrixBase)):
        return tuple(expr.shape)
    if isinstance(expr, (sp.Function, sp.Mul, sp.Add, sp.Pow)) and not isinstance(expr, _Reduction):
        for arg in expr.args:
            shape = matrix_shape(arg)
            if shape is not None:
                return shape
    return None


def _stand_in(*args) -> bool:
    """Whether a scalar symbol stands in a matrix argument's place, as SymPy puts one there in
    its generic derivative (Function.fdiff, Derivative) and its rewriting of noncommutative
    products: such a call is kept as it is, unchecked. (In a model, a scalar symbol there is
    read as a 1x1 matrix: the sum, logsumexp or scalar of a number is the number.)"""
    return any(isinstance(a, sp.Symbol) and matrix_shape(a) is None for a in args)


def _matrix_arg(name: str, arg):
    arg = sp.sympify(arg)
    if isinstance(arg, MatrixBase):
        arg = sp.ImmutableMatrix(arg)
    if matrix_shape(arg) is None:
        raise TypeError(f"{name}() takes a matrix expression, got the scalar {arg}")
    return arg


class _VectorFunction(MatrixExpr):
    """A function from a matrix to a matrix of the same shape, over all its elements."""

    latex_name = ""

    def __new__(cls, arg):
        return Basic.__new__(cls, _matrix_arg(cls.__name__, arg))

    @property
    def shape(self):
        return matrix_shape(self.args[0])

    def _entry(self, i, j, **kwargs):
        return MatrixElement(self, i, j)

    def _sympystr(self, printer):
        return f"{type(self).__name__}({printer._print(self.args[0])})"

    def _latex(self, printer):
        return _latex_call(self.latex_name, printer, self.args[0])


class softmax(_VectorFunction):
    """exp(z) / sum(exp(z)) over all elements of z, shifted by max(z) for stability;
    ``axis=0`` or ``1``: of each column or row."""

    latex_name = r"\operatorname{softmax}"

    def __new__(cls, arg, axis=None):
        return super().__new__(cls, arg) if axis is None else softmax_along(arg, axis)

    def doit(self, **hints):
        z = self.args[0].doit(**hints) if hints.get("deep", True) else self.args[0]
        if isinstance(z, MatrixBase):  # entries known: write them out
            total = sp.Add(*[sp.exp(v) for v in z])
            return z.applyfunc(lambda v: sp.exp(v) / total)
        return type(self)(z)


class log_softmax(_VectorFunction):
    """z - logsumexp(z): the logarithm of softmax, computed stably; ``axis=0`` or ``1``: of
    each column or row."""

    latex_name = r"\operatorname{log\,softmax}"

    def __new__(cls, arg, axis=None):
        return super().__new__(cls, arg) if axis is None else log_softmax_along(arg, axis)

    def doit(self, **hints):
        z = self.args[0].doit(**hints) if hints.get("deep", True) else self.args[0]
        if isinstance(z, MatrixBase):
            lse = sp.log(sp.Add(*[sp.exp(v) for v in z]))
            return z.applyfunc(lambda v: v - lse)
        return type(self)(z)


class _Reduction(sp.Function):
    """A real scalar computed from matrices (or scalars)."""

    is_commutative = True
    latex_name = ""

    def _eval_is_real(self):
        return True

    def _latex(self, printer, exp=None):
        inner = ", ".join(printer._print(a) for a in self.args)
        text = rf"{self.latex_name}\left({inner}\right)"
        return f"{text}^{{{exp}}}" if exp else text


class logsumexp(_Reduction):
    """log(sum(exp(z))) over all elements of z, shifted by max(z) for stability; ``axis=0``
    or ``1``: of each column (a row of results) or row (a column)."""

    nargs = 1
    latex_name = r"\operatorname{logsumexp}"

    def __new__(cls, z, axis=None, **options):
        return super().__new__(cls, z, **options) if axis is None else logsumexp_along(z, axis)

    @classmethod
    def eval(cls, z):
        if not _stand_in(z):
            _matrix_arg("logsumexp", z)

    def doit(self, **hints):
        z = self.args[0].doit(**hints) if hints.get("deep", True) else self.args[0]
        if isinstance(z, MatrixBase):  # entries known: write it out (a model keeps the stable form)
            return sp.log(sp.Add(*[sp.exp(v) for v in z]))
        return type(self)(z)


class norm(_Reduction):
    """sqrt(sum(z**2)) over all elements of z (the Frobenius norm), scaled by max(abs(z)) so
    that no square over- or underflows. symgrad writes a square root of a sum of squares of
    a matrix this way (``symgrad show`` prints it)."""

    nargs = 1
    latex_name = r"\operatorname{norm}"

    @classmethod
    def eval(cls, z):
        if not _stand_in(z):
            _matrix_arg("norm", z)

    def doit(self, **hints):
        z = self.args[0].doit(**hints) if hints.get("deep", True) else self.args[0]
        if isinstance(z, MatrixBase):
            return sp.sqrt(sp.Add(*[v**2 for v in z]))
        return type(self)(z)


class sum(_Reduction):  # noqa: A001 - sg.sum mirrors numpy.sum
    """The sum of all elements of a matrix; ``axis=0`` or ``1``: the sums of its columns (a
    1 x n row) or rows (an m x 1 column)."""

    nargs = 1
    latex_name = r"\operatorname{sum}"

    def __new__(cls, z, axis=None, **options):
        return super().__new__(cls, z, **options) if axis is None else sum_along(z, axis)

    @classmethod
    def eval(cls, z):
        if not _stand_in(z) and isinstance(_matrix_arg("sum", z), MatrixBase):
            return sp.Add(*z)


class scalar(_Reduction):
    """The number in a 1x1 matrix, e.g. ``sg.scalar(h * W2) + b2``.

    Unlike ``M[0, 0]``, which makes SymPy write a matrix product out element
    by element, this keeps the product a matrix node.
    """

    nargs = 1

    @classmethod
    def eval(cls, matrix):
        if _stand_in(matrix):
            return matrix  # the number itself
        shape = matrix_shape(_matrix_arg("scalar", matrix))
        if shape != (1, 1):
            raise sp.ShapeError(f"scalar() takes a 1x1 matrix, got shape {shape}")
        if isinstance(matrix, MatrixBase):
            return matrix[0, 0]

    def _latex(self, printer, exp=None):
        text = printer._print(self.args[0])
        return f"\\left({text}\\right)^{{{exp}}}" if exp else text


class cross_entropy(_Reduction):
    """-sum(target * log_softmax(logits)).

    ``target`` is a one-hot or probability matrix of the logits' shape, or a
    scalar class index (0-based, over the elements of ``logits``). With ``axis=0``
    or ``1``, the cross-entropies of each column or row (one-hot or probability
    targets): ``-sg.sum(target .* sg.log_softmax(logits, axis), axis)``.
    """

    nargs = 2
    latex_name = r"\operatorname{CE}"

    def __new__(cls, logits, target, axis=None, **options):
        if axis is None:
            return super().__new__(cls, logits, target, **options)
        if matrix_shape(target) != matrix_shape(logits):
            raise sp.ShapeError(f"cross_entropy along an axis takes a target of the logits' shape "
                                f"{matrix_shape(logits)} (one-hot or probabilities), got {target}")
        return -sum_along(sp.HadamardProduct(target, log_softmax_along(logits, axis)), axis)

    @classmethod
    def eval(cls, logits, target):
        if _stand_in(logits, target):
            return None
        logits = _matrix_arg("cross_entropy", logits)
        target_shape = matrix_shape(target)
        if target_shape is not None and target_shape != matrix_shape(logits):
            raise sp.ShapeError(
                f"cross_entropy: target shape {target_shape} differs from logits shape {matrix_shape(logits)}"
            )


class mse(_Reduction):
    """The mean of the squared element differences of two matrices (or scalars)."""

    nargs = 2
    latex_name = r"\operatorname{MSE}"

    @classmethod
    def eval(cls, prediction, target):
        if _stand_in(prediction, target):
            return None
        p_shape = matrix_shape(prediction)
        t_shape = matrix_shape(target)
        if p_shape != t_shape:
            raise sp.ShapeError(f"mse: prediction shape {p_shape} differs from target shape {t_shape}")


def _np_sigmoid(x):
    x = np.asarray(x, dtype=float)
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def _np_softplus(x):
    x = np.asarray(x, dtype=float)
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


#: NumPy implementations, for ``sympy.lambdify(..., modules=[NUMPY_FUNCTIONS, "numpy"])``.
NUMPY_FUNCTIONS = {
    "sigmoid": _np_sigmoid,
    "relu": lambda x: np.maximum(x, 0),
    "softplus": _np_softplus,
}


# --- linear algebra and structure ----------------------------------------------------------


class _MatrixOf(MatrixExpr):
    """A matrix computed from matrix arguments; subclasses say its shape."""

    def _entry(self, i, j, **kwargs):
        return MatrixElement(self, i, j)

    def _sympystr(self, printer):
        return f"{type(self).__name__}({', '.join(printer._print(a) for a in self.args)})"

    def _latex(self, printer):
        return rf"\operatorname{{{type(self).__name__}}}\left({', '.join(printer._print(a) for a in self.args)}\right)"


class spd(_MatrixOf):
    """``matrix``, declared symmetric positive definite: its inverse, solves and determinant
    are computed from a Cholesky factorization (reading its lower triangle) instead of LU.
    A matrix that is not positive definite then gives NaN."""

    def __new__(cls, matrix):
        return Basic.__new__(cls, _square_arg("spd", matrix))

    @property
    def shape(self):
        return self.args[0].shape

    def _sympystr(self, printer):
        return printer._print(self.args[0])

    def _latex(self, printer):
        return printer._print(self.args[0])


class cholesky(_MatrixOf):
    """The lower-triangular L with L Lᵀ = matrix, for a symmetric positive definite matrix
    (its lower triangle is read). The gradient is Murray's, as in JAX and PyTorch."""

    def __new__(cls, matrix):
        return Basic.__new__(cls, _square_arg("cholesky", matrix))

    @property
    def shape(self):
        return self.args[0].shape


class tril(_MatrixOf):
    """The lower triangle of a matrix, diagonal included; zeros above it."""

    def __new__(cls, matrix):
        return Basic.__new__(cls, _matrix_arg("tril", matrix))

    @property
    def shape(self):
        return matrix_shape(self.args[0])


class triangular_solve(_MatrixOf):
    """X with T X = B, for the lower (``lower=True``) or upper triangle T of ``matrix``
    (the other triangle is not read); ``trans=True`` solves Tᵀ X = B."""

    def __new__(cls, matrix, rhs, lower=True, trans=False):
        matrix = _square_arg("triangular_solve", matrix)
        rhs = _matrix_arg("triangular_solve", rhs)
        if matrix_shape(rhs)[0] != matrix_shape(matrix)[0]:
            raise sp.ShapeError(f"triangular_solve: a {matrix_shape(matrix)} matrix and a right-hand side of "
                                f"shape {matrix_shape(rhs)}")
        return Basic.__new__(cls, matrix, rhs, sp.S.true if lower else sp.S.false, sp.S.true if trans else sp.S.false)

    @property
    def shape(self):
        return matrix_shape(self.args[1])


class logdet(_Reduction):
    """log(det(matrix)), from the LU factorization (NaN for a negative determinant), or from
    the Cholesky factor of an ``spd`` matrix. ``log(sp.Determinant(X))`` reads as this."""

    nargs = 1
    latex_name = r"\log\det"

    @classmethod
    def eval(cls, matrix):
        if not _stand_in(matrix):
            _square_arg("logdet", matrix)


def _square_arg(name: str, arg):
    arg = _matrix_arg(name, arg)
    shape = matrix_shape(arg)
    if shape[0] != shape[1]:
        raise sp.ShapeError(f"{name}() takes a square matrix, got shape {shape}")
    return arg


class concat(_MatrixOf):
    """Matrices one above the other (axis 0: ``sg.vstack``) or side by side (axis 1:
    ``sg.hstack``).

    Like a ``sp.BlockMatrix`` of one column or row of blocks, but its shape is worked out
    once, when it is made: SymPy computes a BlockMatrix's shape from its blocks' shapes
    every time it is asked, which for a state concatenated with an input at each step of
    a recurrent network (``h = tanh(W [h; x] + b)``) takes time exponential in the steps.
    """

    def __new__(cls, axis, *matrices):
        axis = int(axis)
        name = ("vstack", "hstack")[axis]
        matrices = [_matrix_arg(name, m) for m in matrices]
        shapes = [tuple(int(d) for d in matrix_shape(m)) for m in matrices]
        keep = 1 - axis
        if len({s[keep] for s in shapes}) != 1:
            raise sp.ShapeError(f"{name}: the matrices have shapes {', '.join(map(str, shapes))}; their "
                                f"{('columns', 'rows')[axis]} must agree")
        total = builtins.sum(s[axis] for s in shapes)
        obj = Basic.__new__(cls, sp.Integer(axis), *matrices)
        obj._shape = (sp.Integer(total), sp.Integer(shapes[0][1])) if axis == 0 else (
            sp.Integer(shapes[0][0]), sp.Integer(total))
        return obj

    @property
    def shape(self):
        return self._shape

    @property
    def axis(self) -> int:
        return int(self.args[0])

    @property
    def matrices(self):
        return self.args[1:]

    def _sympystr(self, printer):
        return f"{('vstack', 'hstack')[self.axis]}({', '.join(printer._print(m) for m in self.matrices)})"

    def _latex(self, printer):
        separator = r" \\ " if self.axis == 0 else " & "
        return r"\begin{bmatrix}" + separator.join(printer._print(m) for m in self.matrices) + r"\end{bmatrix}"


def hstack(*matrices):
    """The matrices side by side (the rows must agree)."""
    return concat(1, *matrices)


def vstack(*matrices):
    """The matrices one above the other (the columns must agree): the concatenation
    ``[h; x]`` of two column vectors is ``sg.vstack(h, x)``."""
    return concat(0, *matrices)


def diag(*matrices):
    """A diagonal matrix with the elements of one vector on its diagonal (``sp.DiagMatrix``),
    or the matrices along the diagonal of a block matrix (``sp.BlockDiagMatrix``).
    (``sp.diag`` takes explicit matrices only.)"""
    matrices = [_matrix_arg("diag", m) for m in matrices]
    if len(matrices) == 1 and 1 in matrix_shape(matrices[0]):
        return sp.DiagMatrix(matrices[0])
    return sp.BlockDiagMatrix(*matrices)


class _AlongAxis(MatrixExpr):
    """A function of a matrix applied along one axis: to each column (axis 0) or each row
    (axis 1). Reductions keep the reduced axis with extent 1 (a 1 x n row for axis 0, an
    m x 1 column for axis 1), so their results stay matrices that broadcast back."""

    reduces = True
    label = ""

    def __new__(cls, matrix, axis):
        matrix = _matrix_arg(cls.label, matrix)
        if axis not in (0, 1):
            raise ValueError(f"{cls.label}: axis must be 0 (along each column) or 1 (along each row), got {axis!r}")
        return Basic.__new__(cls, matrix, sp.Integer(axis))

    @property
    def axis(self) -> int:
        return int(self.args[1])

    @property
    def shape(self):
        rows, cols = matrix_shape(self.args[0])
        if not self.reduces:
            return (rows, cols)
        return (sp.Integer(1), cols) if self.axis == 0 else (rows, sp.Integer(1))

    def _entry(self, i, j, **kwargs):
        return MatrixElement(self, i, j)

    def _sympystr(self, printer):
        return f"{self.label}({printer._print(self.args[0])}, axis={self.axis})"

    def _latex(self, printer):
        return rf"\operatorname{{{self.label}}}_{{{self.axis}}}\left({printer._print(self.args[0])}\right)"


class sum_along(_AlongAxis):
    """The sums of the columns (axis 0) or rows (axis 1): ``sg.sum(M, axis=...)``."""

    label = "sum"


class max_along(_AlongAxis):
    """The largest element of each column or row: ``sg.max(M, axis=...)``."""

    label = "max"


class min_along(_AlongAxis):
    """The smallest element of each column or row: ``sg.min(M, axis=...)``."""

    label = "min"


class logsumexp_along(_AlongAxis):
    """logsumexp of each column or row: ``sg.logsumexp(M, axis=...)``."""

    label = "logsumexp"


class softmax_along(_AlongAxis):
    """softmax of each column or row: ``sg.softmax(M, axis=...)``."""

    label = "softmax"
    reduces = False


class log_softmax_along(_AlongAxis):
    """log_softmax of each column or row: ``sg.log_softmax(M, axis=...)``."""

    label = "log_softmax"
    reduces = False


class _Extreme(_Reduction):
    """The largest (smallest) element of a matrix; a gradient splits evenly over ties."""

    nargs = 1

    def _sympystr(self, printer):
        return f"{type(self).__name__[:3]}({printer._print(self.args[0])})"

    @classmethod
    def eval(cls, z):
        if not _stand_in(z):
            _matrix_arg(cls.__name__, z)


class max_of(_Extreme):
    latex_name = r"\max"


class min_of(_Extreme):
    latex_name = r"\min"


def max(matrix, axis=None):  # noqa: A001 - sg.max mirrors numpy.max
    """The largest element of a matrix (a scalar), or of each column (``axis=0``) or row
    (``axis=1``). The gradient goes to the largest element, split evenly among ties, as
    for ``Max`` (and ``torch.amax``)."""
    return max_of(matrix) if axis is None else max_along(matrix, axis)


def min(matrix, axis=None):  # noqa: A001
    """The smallest element of a matrix, or of each column or row: see :func:`max`."""
    return min_of(matrix) if axis is None else min_along(matrix, axis)


def mean(matrix, axis=None):
    """The mean of all elements (a scalar), or of each column (``axis=0``, a 1 x n row) or
    row (``axis=1``, an m x 1 column)."""
    rows, cols = matrix_shape(_matrix_arg("mean", matrix))
    if axis is None:
        return sum(matrix) / (rows * cols)
    return sp.Rational(1, rows if axis == 0 else cols) * sum_along(matrix, axis)
