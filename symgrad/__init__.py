"""symgrad: compile models written as SymPy expressions into fast C gradient kernels.

Write a model once, symbolically::

    import sympy as sp
    import symgrad as sg

    x, t, a, b = sp.symbols("x t a b")
    y = a * x + b
    model = sg.Model("linear_fit", loss=(y - t) ** 2, params=[a, b], inputs=[x, t], outputs={"y": y})

then ``symgrad build model.py`` (or ``sg.compile(model)``) writes and compiles
``generated/linear_fit``, whose ``value_and_grad(a=..., b=..., x=X, t=T)``
runs the whole batch in C. ``symgrad show model.py`` prints the derived
backward pass and gradient formulas.
"""

__version__ = "0.1.0"

from . import errors  # noqa: E402
from . import loops  # noqa: E402,F401  (registers the ops of sums and products over an index)
from .scan import scan  # noqa: E402  (and registers the scan ops)
from .functions import (  # noqa: E402
    broadcast_to,
    cholesky,
    cross_entropy,
    diag,
    elementwise,
    hstack,
    log_softmax,
    logdet,
    logsumexp,
    max,
    mean,
    min,
    mse,
    norm,
    relu,
    scalar,
    sigmoid,
    softmax,
    softplus,
    spd,
    sum,
    triangular_solve,
    tril,
    vstack,
)
from .layers import avg_pool2d, conv1d, conv2d, max_pool2d  # noqa: E402
from .model import Model, load_model  # noqa: E402
from .pipeline import compile, generate  # noqa: E402
from .build import load  # noqa: E402

__all__ = [
    "Model",
    "load_model",
    "compile",
    "generate",
    "load",
    "errors",
    "scan",
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
    "conv1d",
    "conv2d",
    "max_pool2d",
    "avg_pool2d",
    "__version__",
]
