"""M7: derive + generate + compile time, and generated C size, for M2 and M3 at several sizes.

Each (tool, model, size) runs once in its own subprocess (``benchmarks.worker
codegen``) with a time limit; a tool that runs out of time on a size is not
run on the larger sizes of that model (reported as "> limit" too). The
tools:

* symgrad: ``symgrad.Model(...)`` (the frontend) + ``build_model(..., force=True)``
  (differentiate, plan, emit, render, cffi compile with symgrad's flags);
  the size is that of the generated kernel files (forward and
  value_and_grad kernels, batch loops included). The runtime helpers are
  linked from their cached object (compiled once per machine and flag set:
  each row records whether its build found it, ``runtime``). The digits
  softmax example (``examples/digits_softmax.py``, a 10x64 softmax
  regression) is built by symgrad only.
* CasADi: ``casadi.gradient`` + two ``Function``s (forward, value and
  gradient), ``CodeGenerator`` C, ``gcc -O3 -shared -fPIC``.
* SymPy: ``sympy.diff`` for each variable, ``cse`` + ``C99CodePrinter`` for
  a forward and a value-and-gradient C function, ``gcc -O3 -shared -fPIC``.

Building the model's expression (SymPy or CasADi SX) is the model's
definition and is not timed.
"""

from __future__ import annotations

from ..harness import Entry, Metric, Stats, WorkloadResult, describe_exception
from ..peers import Unavailable, casadi_module, gcc, run_worker

TOOLS = (("symgrad", "symgrad"), ("casadi", "casadi codegen + gcc"), ("sympy", "sympy ccode + gcc"))
FAMILIES = {"m2": ("M2 Rosenbrock", "n"), "m3": ("M3 chain", "depth"),
            "m5": ("digits softmax example (M5)", "classes")}
#: Families only symgrad builds (a matrix model: the peers' code generators here take scalars).
SYMGRAD_ONLY = ("m5",)


class M7:
    id = "M7"
    title = "code generation"

    def __init__(self, cfg, available):
        self.cfg = cfg
        self.sizes = ({"m2": (10,), "m3": (3,), "m5": (10,)} if cfg.quick
                      else {"m5": (10,), "m2": (10, 100, 1000), "m3": (16, 64, 256)})
        self.default_sizes = dict(self.sizes)
        if cfg.m7_sizes:
            self.sizes = dict(cfg.m7_sizes)

    def description(self):
        sizes = "; ".join(f"{FAMILIES[f][0]} {FAMILIES[f][1]} = {', '.join(map(str, s))}"
                          for f, s in self.default_sizes.items())
        return (f"Derive + generate + compile, one run each in a subprocess stopped after "
                f"{self.cfg.codegen_seconds:.0f} s; {sizes}. The timed span starts from the model's "
                f"expression (SymPy for symgrad and SymPy, SX for CasADi), already built. Source size: the "
                f"bytes of the generated C (symgrad: the files of its forward and value_and_grad "
                f"kernels, linked with the runtime helpers' object, compiled once per machine and flag set "
                f"and cached; the digits softmax example is symgrad's only; CasADi: its CodeGenerator file with a forward and a value-and-gradient function; "
                f"SymPy: forward and value-and-gradient C functions from cse + C99CodePrinter).")

    def _available(self) -> dict:
        out = {"symgrad": None, "sympy": None}
        try:
            gcc()
            out["sympy"] = None
        except Unavailable as exc:
            out["sympy"] = str(exc)
        try:
            casadi_module()
            gcc()
            out["casadi"] = None
        except Unavailable as exc:
            out["casadi"] = str(exc)
        return out

    def run(self) -> WorkloadResult:
        import time

        start = time.perf_counter()
        cfg = self.cfg
        cfg.log(f"{self.id}: {self.title}")
        result = WorkloadResult(self.id, self.title, self.description())
        available = self._available()
        rows = []
        for family, sizes in self.sizes.items():
            label, var = FAMILIES[family]
            timed_out = {}  # tool -> the size at which it ran out of time (this run or, with --merge, before)
            for row in cfg.previous_codegen:
                if row["family"] == family and row["status"] == "timeout" and row["size"] < min(sizes):
                    tool = next((t for t, n in TOOLS if n == row["tool"]), None)
                    if tool is not None:
                        timed_out[tool] = min(row["size"], timed_out.get(tool, row["size"]))
            for size in sizes:
                time_metric = Metric(f"{family}_{size}_time", f"{label}, {var} = {size}: derive+generate+compile",
                                     "s", 1.0, has_forward=False)
                size_metric = Metric(f"{family}_{size}_size", f"{label}, {var} = {size}: C source size", "kB",
                                     1.0, has_forward=False)
                for tool, name in TOOLS:
                    row = {"family": family, "size": size, "tool": name}
                    if family in SYMGRAD_ONLY and tool != "symgrad":
                        row.update(status="unavailable", note="a matrix model: not written for this tool")
                    elif available[tool] is not None:
                        row.update(status="unavailable", note=available[tool])
                    elif tool in timed_out:
                        row.update(status="timeout", note=f"> {cfg.codegen_seconds:.0f} s (not run: {var} = "
                                                          f"{timed_out[tool]} already exceeded the limit)")
                    else:
                        spec = {"tool": tool, "family": family, "size": size,
                                "out_dir": str(cfg.work_dir / "codegen")}
                        try:
                            out = run_worker("codegen", spec, cfg.codegen_seconds, cfg.work_dir)
                        except TimeoutError:
                            timed_out[tool] = size
                            row.update(status="timeout", note=f"> {cfg.codegen_seconds:.0f} s")
                        except Exception as exc:
                            row.update(status="error", note=describe_exception(exc))
                        else:
                            row.update(status="ok", **out)
                            row["total"] = out["derive"] + out["generate"] + out["compile"]
                    cfg.log(f"  {family} {var + ' = ' + str(size):12s} {name:22s} " + (
                        f"{row['total']:8.2f} s  {row['source_bytes'] / 1e3:9.1f} kB" if row["status"] == "ok"
                        else f"{row['status']}: {row.get('note', '')}"))
                    rows.append(row)
                    for metric, value in ((time_metric, row.get("total")),
                                          (size_metric, row.get("source_bytes", 0) / 1e3)):
                        if row["status"] == "ok":
                            stats = Stats(value, value, value, 1, 1)
                            metric.entries[name] = Entry(name, "ok", vg=stats)
                        else:
                            status = "skipped" if row["status"] == "timeout" else row["status"]
                            metric.entries[name] = Entry(name, status, note=row.get("note", ""))
                result.metrics += [time_metric, size_metric]
        result.extra["codegen"] = rows
        result.seconds = time.perf_counter() - start
        return result
