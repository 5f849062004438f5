"""Work that may take too long, run in a subprocess with a time limit.

    python -m benchmarks.worker TASK SPEC.json OUT.json

Tasks:

* ``sympy_lambdify``: differentiate a workload's per-example loss with
  ``sympy.diff`` and ``lambdify(..., cse=True)`` it (value and gradients,
  and the value alone); writes the functions' Python source.
* ``codegen``: M7, derive + generate + compile one model with one tool
  (symgrad, casadi or sympy); writes the stage times and the C source size.

The parent (``peers.run_worker``) kills the process group at the time limit.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path


def sympy_lambdify(spec: dict) -> dict:
    import sympy as sp

    from .models import sympy_problem

    args, loss, wrt = sympy_problem(spec["family"], spec.get("size"))
    start = time.perf_counter()
    grads = [sp.diff(loss, w) for w in wrt]
    derived = time.perf_counter()
    vg = sp.lambdify(args, [loss, *grads], modules="numpy", cse=True)
    fwd = sp.lambdify(args, loss, modules="numpy", cse=True)
    done = time.perf_counter()
    return {
        "sources": {"vg": inspect.getsource(vg), "fwd": inspect.getsource(fwd)},
        "seconds": {"diff": derived - start, "lambdify": done - derived},
    }


# --- M7 -----------------------------------------------------------------------------------------


def codegen(spec: dict) -> dict:
    tool, family, size = spec["tool"], spec["family"], int(spec["size"])
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"cg_{family}_{size}"
    return {"symgrad": _codegen_symgrad, "casadi": _codegen_casadi, "sympy": _codegen_sympy}[tool](
        family, size, name, out_dir / tool)


def _codegen_symgrad(family, size, name, out_dir) -> dict:
    import sympy as sp

    import symgrad as sg
    from symgrad.pipeline import build_model

    from .models import chain, ops_of, rosenbrock

    # The SymPy expression is the model definition, common to symgrad and SymPy: not timed.
    begin = time.perf_counter()
    if family == "m5":  # the digits softmax example: a small matrix model
        example = sg.load_model(Path(__file__).resolve().parent.parent / "examples" / "digits_softmax.py")[0]
        start = time.perf_counter()
        model = sg.Model(name, loss=example.loss, params=example.params, inputs=example.inputs,
                         outputs=example.outputs)
    elif family == "m2":
        xs = list(sp.symbols(f"x0:{size}"))
        loss = rosenbrock(xs)
        start = time.perf_counter()
        model = sg.Model(name, loss=loss, inputs=xs, reduce=None, wrt=xs)
    else:
        a, b, x = list(sp.symbols(f"a0:{size}")), list(sp.symbols(f"b0:{size}")), sp.Symbol("x")
        loss = chain(x, a, b, ops_of("sympy"))
        start = time.perf_counter()
        model = sg.Model(name, loss=loss, params=[*a, *b], inputs=[x], reduce="mean", wrt=[*a, *b, x])
    frontend = time.perf_counter() - start
    generated, result = build_model(model, out_dir, force=True)
    t = generated.timings
    package = generated.package
    kernels = getattr(package, "kernel_sources", package.c_sources)  # without the flat-vector wrappers
    source = "".join(package.files[f] for f in kernels)
    return {
        "derive": frontend + t.get("differentiate", 0.0),
        "generate": t.get("schedule", 0.0) + t.get("plan", 0.0) + t.get("emit", 0.0) + t.get("render", 0.0),
        "compile": t.get("compile", 0.0),
        "runtime": result.runtime,  # the runtime helpers' object: "cached", or "compiled" in this build
        "source_bytes": len(source.encode()),
        "source_lines": source.count("\n"),
        "stages": {"frontend (Model)": frontend, **t},
        "expression": start - begin,
    }


def _codegen_casadi(family, size, name, out_dir) -> dict:
    import casadi as ca

    from .models import chain, ops_of, rosenbrock

    out_dir.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    if family == "m2":
        xs = ca.SX.sym("x", size)
        inputs = [xs]
        loss = rosenbrock([xs[i] for i in range(size)])
        wrt = xs
    else:
        a, b, x = ca.SX.sym("a", size), ca.SX.sym("b", size), ca.SX.sym("x")
        inputs = [a, b, x]
        loss = chain(x, [a[k] for k in range(size)], [b[k] for k in range(size)], ops_of("casadi"))
        wrt = ca.vertcat(a, b, x)
    start = time.perf_counter()
    grad = ca.gradient(loss, wrt)
    fwd = ca.Function(f"{name}_forward", inputs, [loss])
    vg = ca.Function(f"{name}_value_and_grad", inputs, [loss, grad])
    derived = time.perf_counter()
    gen = ca.CodeGenerator(f"{name}.c", {"with_header": False})
    gen.add(fwd)
    gen.add(vg)
    gen.generate(str(out_dir) + os.sep)
    generated = time.perf_counter()
    c_file = out_dir / f"{name}.c"
    _gcc(c_file)
    compiled = time.perf_counter()
    source = c_file.read_text()
    return {"derive": derived - start, "generate": generated - derived, "compile": compiled - generated,
            "source_bytes": len(source.encode()), "source_lines": source.count("\n"), "expression": start - begin}


def _codegen_sympy(family, size, name, out_dir) -> dict:
    import sympy as sp
    from sympy.printing.c import C99CodePrinter

    from .models import sympy_problem

    out_dir.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    args, loss, wrt = sympy_problem(family, size)
    start = time.perf_counter()
    grads = [sp.diff(loss, w) for w in wrt]
    derived = time.perf_counter()
    printer = C99CodePrinter()
    parts = ["#include <math.h>\n"]
    for kind, exprs in (("forward", [loss]), ("value_and_grad", [loss, *grads])):
        temps, reduced = sp.cse(exprs, symbols=sp.numbered_symbols("t_"))
        lines = [f"void {name}_{kind}(const double *in, double *out) {{"]
        lines += [f"    const double {printer.doprint(s)} = in[{i}];" for i, s in enumerate(args)]
        lines += [f"    const double {printer.doprint(s)} = {printer.doprint(e)};" for s, e in temps]
        lines += [f"    out[{i}] = {printer.doprint(e)};" for i, e in enumerate(reduced)]
        lines.append("}\n")
        parts.append("\n".join(lines))
    source = "\n".join(parts)
    c_file = out_dir / f"{name}.c"
    c_file.write_text(source)
    generated = time.perf_counter()
    _gcc(c_file)
    compiled = time.perf_counter()
    return {"derive": derived - start, "generate": generated - derived, "compile": compiled - generated,
            "source_bytes": len(source.encode()), "source_lines": source.count("\n"), "expression": start - begin}


def _gcc(c_file: Path) -> None:
    cc = os.environ.get("BENCH_CC", "gcc")
    subprocess.run([cc, "-O3", "-shared", "-fPIC", str(c_file), "-o", str(c_file.with_suffix(".so")), "-lm"],
                   check=True, capture_output=True, text=True)


TASKS = {"sympy_lambdify": sympy_lambdify, "codegen": codegen}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    task, spec_path, out_path = argv
    with open(spec_path) as fh:
        spec = json.load(fh)
    # SymPy recurses once per level of nesting when it builds and queries an
    # expression: the depth-256 chain overflows Python's default limit of 1000
    # while its expression is being built (in SymPy, before any tool runs).
    # Run the task in a thread with a large stack and a high recursion limit.
    sys.setrecursionlimit(200_000)
    threading.stack_size(1024 * 1024 * 1024)
    outcome = {}

    def target():
        try:
            outcome["result"] = TASKS[task](spec)
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"worker-{task}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    with open(out_path, "w") as fh:
        json.dump(outcome["result"], fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
