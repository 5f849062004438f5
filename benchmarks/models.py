"""The workloads' formulas, written once and evaluated with each library's functions.

``ops`` is a namespace with the elementary functions of a library (sympy,
casadi, numpy, jax.numpy, torch); the same Python code then builds a SymPy
expression, a CasADi SX graph or a traced JAX function, so every contender
computes the same mathematics. The symgrad models and the SymPy per-example
problems (for ``lambdify`` and for code generation) are defined here too.
"""

from __future__ import annotations

from types import SimpleNamespace

# --- formulas -----------------------------------------------------------------------------------


def m1_loss(x1, x2, ops):
    """M1: f(x1, x2) = ln x1 + x1*x2 - sin x2."""
    return ops.log(x1) + x1 * x2 - ops.sin(x2)


def rosenbrock(xs):
    """M2: sum over i < n-1 of 100*(x_{i+1} - x_i^2)^2 + (1 - x_i)^2, for a list of scalars."""
    total = 0
    for i in range(len(xs) - 1):
        total = total + 100 * (xs[i + 1] - xs[i] ** 2) ** 2 + (1 - xs[i]) ** 2
    return total


def chain(x, a, b, ops):
    """M3: y0 = x; y_{k+1} = tanh(a_k*y_k + b_k)*y_k + sin(y_k); returns y_depth."""
    y = x
    for k in range(len(a)):
        y = ops.tanh(a[k] * y + b[k]) * y + ops.sin(y)
    return y


def ops_of(module_name: str):
    """The elementary functions of a library, by name."""
    if module_name == "sympy":
        import sympy as sp

        return SimpleNamespace(log=sp.log, sin=sp.sin, tanh=sp.tanh, exp=sp.exp)
    if module_name == "casadi":
        import casadi as ca

        return SimpleNamespace(log=ca.log, sin=ca.sin, tanh=ca.tanh, exp=ca.exp)
    if module_name == "numpy":
        import numpy as np

        return SimpleNamespace(log=np.log, sin=np.sin, tanh=np.tanh, exp=np.exp)
    if module_name == "jax":
        import jax.numpy as jnp

        return SimpleNamespace(log=jnp.log, sin=jnp.sin, tanh=jnp.tanh, exp=jnp.exp)
    if module_name == "torch":
        import torch

        return SimpleNamespace(log=torch.log, sin=torch.sin, tanh=torch.tanh, exp=torch.exp)
    raise ValueError(module_name)


# --- symgrad models -----------------------------------------------------------------------------


def symgrad_model(family: str, size: int | None = None, name: str | None = None):
    """The symgrad Model of a workload (``size``: n for m2, depth for m3, hidden width for m6)."""
    import sympy as sp

    import symgrad as sg

    if family == "m1":
        x1, x2 = sp.symbols("x1 x2")
        return sg.Model(name or "bench_m1", loss=m1_loss(x1, x2, ops_of("sympy")), inputs=[x1, x2],
                        reduce=None, wrt=[x1, x2])
    if family == "m2":
        xs = sp.symbols(f"x0:{size}")
        return sg.Model(name or f"bench_m2_n{size}", loss=rosenbrock(xs), inputs=list(xs), reduce=None,
                        wrt=list(xs))
    if family == "m3":
        a, b = sp.symbols(f"a0:{size}"), sp.symbols(f"b0:{size}")
        x = sp.Symbol("x")
        return sg.Model(name or f"bench_m3_d{size}", loss=chain(x, a, b, ops_of("sympy")),
                        params=[*a, *b], inputs=[x], reduce="mean", wrt=[*a, *b, x])
    if family == "m4":  # examples/xor.py
        x = sp.MatrixSymbol("x", 1, 2)
        t = sp.Symbol("t")
        W1, b1 = sp.MatrixSymbol("W1", 2, 2), sp.MatrixSymbol("b1", 1, 2)
        W2, b2 = sp.MatrixSymbol("W2", 2, 1), sp.Symbol("b2")
        h = sg.sigmoid(x * W1 + b1)
        y = sg.sigmoid(sg.scalar(h * W2) + b2)
        return sg.Model(name or "bench_m4_xor", loss=(t - y) ** 2, params=[W1, b1, W2, b2], inputs=[x, t])
    if family == "m5":  # examples/digits_softmax.py
        x, c = sp.MatrixSymbol("x", 64, 1), sp.Symbol("c")
        W, b = sp.MatrixSymbol("W", 10, 64), sp.MatrixSymbol("b", 10, 1)
        return sg.Model(name or "bench_m5_softmax", loss=sg.cross_entropy(W * x + b, c), params=[W, b],
                        inputs=[x, c])
    if family == "m6":  # examples/digits_mlp.py
        x, target = sp.MatrixSymbol("x", 64, 1), sp.MatrixSymbol("target", 10, 1)
        W1, b1 = sp.MatrixSymbol("W1", size, 64), sp.MatrixSymbol("b1", size, 1)
        W2, b2 = sp.MatrixSymbol("W2", 10, size), sp.MatrixSymbol("b2", 10, 1)
        h = (W1 * x + b1).applyfunc(sp.tanh)
        return sg.Model(name or f"bench_m6_mlp_h{size}", loss=sg.cross_entropy(W2 * h + b2, target),
                        params=[W1, b1, W2, b2], inputs=[x, target])
    raise ValueError(family)


# --- SymPy per-example problems -----------------------------------------------------------------


def sympy_problem(family: str, size: int | None = None):
    """(arguments in call order, per-example loss, symbols to differentiate by) for SymPy peers.

    Matrices are written out as scalar symbols (row-major); the class of M5
    and the target of M6 are one-hot vectors ``t_k``. Softmax cross-entropy
    is ``log(sum_k exp(z_k)) - sum_k t_k z_k`` (no max shift: the inputs are
    small enough that it cannot overflow).
    """
    import sympy as sp

    if family == "m1":
        x1, x2 = sp.symbols("x1 x2")
        return [x1, x2], m1_loss(x1, x2, ops_of("sympy")), [x1, x2]
    if family == "m2":
        xs = list(sp.symbols(f"x0:{size}"))
        return xs, rosenbrock(xs), xs
    if family == "m3":
        a, b = list(sp.symbols(f"a0:{size}")), list(sp.symbols(f"b0:{size}"))
        x = sp.Symbol("x")
        return [*a, *b, x], chain(x, a, b, ops_of("sympy")), [*a, *b, x]
    if family == "m4":
        W1 = sp.Matrix(2, 2, sp.symbols("W1_0:2_0:2"))
        b1 = sp.Matrix(1, 2, sp.symbols("b1_0:2"))
        W2 = sp.Matrix(2, 1, sp.symbols("W2_0:2"))
        b2 = sp.Symbol("b2")
        x = sp.Matrix(1, 2, sp.symbols("x0:2"))
        t = sp.Symbol("t")

        def sigmoid(z):
            return 1 / (1 + sp.exp(-z))

        h = (x * W1 + b1).applyfunc(sigmoid)
        y = sigmoid((h * W2)[0, 0] + b2)
        params = [*W1, *b1, *W2, b2]
        return [*params, *x, t], (t - y) ** 2, params
    if family in ("m5", "m6"):
        x = list(sp.symbols("x0:64"))
        t = list(sp.symbols("t0:10"))
        if family == "m5":
            W = [[sp.Symbol(f"W_{k}_{j}") for j in range(64)] for k in range(10)]
            b = [sp.Symbol(f"b_{k}") for k in range(10)]
            z = [sum(W[k][j] * x[j] for j in range(64)) + b[k] for k in range(10)]
            params = [w for row in W for w in row] + b
        else:
            W1 = [[sp.Symbol(f"W1_{i}_{j}") for j in range(64)] for i in range(size)]
            b1 = [sp.Symbol(f"b1_{i}") for i in range(size)]
            W2 = [[sp.Symbol(f"W2_{k}_{i}") for i in range(size)] for k in range(10)]
            b2 = [sp.Symbol(f"b2_{k}") for k in range(10)]
            h = [sp.tanh(sum(W1[i][j] * x[j] for j in range(64)) + b1[i]) for i in range(size)]
            z = [sum(W2[k][i] * h[i] for i in range(size)) + b2[k] for k in range(10)]
            params = [w for row in W1 for w in row] + b1 + [w for row in W2 for w in row] + b2
        loss = sp.log(sum(sp.exp(zk) for zk in z)) - sum(tk * zk for tk, zk in zip(t, z))
        return [*params, *x, *t], loss, params
    raise ValueError(family)
