"""Run the benchmark suite and write benchmarks/RESULTS.md.

    .venv/bin/python -m benchmarks.run            # full suite -> benchmarks/RESULTS.md (~10-15 min)
    .venv/bin/python -m benchmarks.run --quick    # tiny sizes (< 60 s) -> benchmarks/.work/RESULTS-quick.md
    .venv/bin/python -m benchmarks.run --only M1,M4 --output /tmp/r.md

Run it from the repository root. See benchmarks/README.md.
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "benchmarks"

from . import _threads  # noqa: E402,F401  (before NumPy)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
WORK = HERE / ".work"
WORKLOADS = ("M1", "M2", "M3", "M4", "M5", "M6", "M7", "M8", "M9", "M10")


def workload_class(wid: str):
    from .workloads import digits, m1_scalar, m2_rosenbrock, m3_chain, m4_xor, m7_codegen, m8_optimizers, m10_blocks

    return {"M1": m1_scalar.M1, "M2": m2_rosenbrock.M2, "M3": m3_chain.M3, "M4": m4_xor.M4, "M5": digits.M5,
            "M6": digits.M6, "M7": m7_codegen.M7, "M8": m8_optimizers.M8, "M9": m8_optimizers.M9,
            "M10": m10_blocks.M10}[wid]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    memory = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    memory = f"{int(line.split()[1]) / 2**20:.0f} GiB memory"
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "memory": memory or "memory unknown",
            "platform": platform.platform()}


def thread_report(available: dict) -> dict:
    from .harness import TORCH
    from .peers import torch_module

    settings = _threads.thread_settings()
    if available.get(TORCH) is None:
        torch = torch_module()
        settings["torch.get_num_threads()"] = torch.get_num_threads()
        settings["torch.get_num_interop_threads()"] = torch.get_num_interop_threads()
    try:
        from threadpoolctl import threadpool_info

        for pool in threadpool_info():
            settings[f"{pool.get('internal_api')} ({pool.get('user_api')})"] = pool.get("num_threads")
    except Exception:
        pass
    settings["symgrad"] = "threads=1 (the default of forward/value_and_grad; no OpenMP threads)"
    return settings


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def parse_m7_sizes(text: str, parser) -> dict:
    sizes = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        family, _, values = part.partition("=")
        family = family.strip().lower()
        if family not in ("m2", "m3", "m5") or not values.strip():
            parser.error(f"--m7-sizes: expected e.g. 'm2=10,100;m3=256;m5=10', got {part!r}")
        sizes[family] = tuple(int(v) for v in values.split(","))
    return sizes


def merge_runs(previous: dict, run: dict) -> dict:
    """``run`` with the workloads and metrics of ``previous`` that it did not redo.

    A workload run again replaces the earlier metrics of the same key and keeps
    the others (M7's code-generation rows likewise, by model, size and tool).
    """
    old_history = previous.get("history") or [{
        "command": previous.get("command"), "started": previous.get("started"),
        "seconds": previous.get("seconds"), "load_start": previous["environment"].get("load_start"),
        "load_end": previous["environment"].get("load_end"),
        "workloads": [w["id"] for w in previous.get("workloads", [])]}]
    old = {w["id"]: w for w in previous.get("workloads", [])}
    for w in old.values():
        w.setdefault("runs", [{"started": previous.get("started"), "command": previous.get("command"),
                               "load_start": previous["environment"].get("load_start"),
                               "load_end": previous["environment"].get("load_end")}])
    new = {w["id"]: w for w in run["workloads"]}
    merged = []
    for wid in WORKLOADS:
        if wid in new and wid in old and not new[wid].get("error") and not new[wid].get("skipped"):
            w = new[wid]
            fresh = {m["key"] for m in w["metrics"]}
            metrics = [m for m in old[wid]["metrics"] if m["key"] not in fresh]
            if metrics:
                order = {m["key"]: i for i, m in enumerate(old[wid]["metrics"])}
                w["metrics"] = sorted(metrics + w["metrics"], key=lambda m: order.get(m["key"], len(order)))
                w["runs"] = old[wid].get("runs", []) + w["runs"]
                w["notes"] = list(dict.fromkeys(old[wid].get("notes", []) + w.get("notes", [])))
            rows = w.get("extra", {}).get("codegen")
            if rows is not None:
                redone = {(r["family"], r["size"], r["tool"]) for r in rows}
                kept = [r for r in old[wid].get("extra", {}).get("codegen", [])
                        if (r["family"], r["size"], r["tool"]) not in redone]
                w["extra"]["codegen"] = sorted(kept + rows, key=lambda r: (r["family"], r["size"]))
            merged.append(w)
        elif wid in new:
            merged.append(new[wid])
        elif wid in old:
            merged.append(old[wid])
    run["workloads"] = merged
    run["history"] = old_history + run["history"]
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run, < 60 s)")
    parser.add_argument("--only", default="", help="comma-separated workloads to run, e.g. M1,M4 (default: all)")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the Markdown (default: benchmarks/RESULTS.md, or "
                             "benchmarks/.work/RESULTS-quick.md with --quick)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the raw results as JSON "
                        "(default: benchmarks/results.json next to RESULTS.md, which --merge and --render "
                        "read; benchmarks/.work/results-quick.json with --quick)")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 if symgrad fails a correctness check or errors on any metric")
    parser.add_argument("--check-only", action="store_true",
                        help="build every contender and check it against the reference; time nothing "
                             "(M7 is skipped)")
    parser.add_argument("--merge", action="store_true",
                        help="update the existing results (the --json file) with this run's workloads and "
                             "metrics instead of replacing them; RESULTS.md then shows both, each section "
                             "saying when it ran")
    parser.add_argument("--m7-sizes", default="",
                        help="M7 sizes to run, e.g. 'm2=10,100;m3=256' (default: all of the mode's sizes)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    parser.add_argument("--render", action="store_true",
                        help="run nothing: write the Markdown again from the JSON results (--json)")
    args = parser.parse_args(argv)

    only = [w.strip().upper() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    unknown = [w for w in only if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    tag = "-quick" if args.quick else ""
    if args.check_only:
        tag += "-check"
    output = args.output or (WORK / f"RESULTS{tag}.md" if tag else HERE / "RESULTS.md")
    json_path = args.json or (WORK / f"results{tag}.json" if tag else HERE / "results.json")
    WORK.mkdir(parents=True, exist_ok=True)
    if args.render:
        from .report import existing_notes, render

        output.write_text(render(json.loads(json_path.read_text()), existing_notes(output)))
        print(f"wrote {output} from {json_path}")
        return 0

    t0 = time.perf_counter()

    def log(text: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - t0:7.1f} s] {text}", flush=True)

    load_start = os.getloadavg()
    started = _now()
    mode = ("quick" if args.quick else "full") + (", check only" if args.check_only else "")

    from .harness import Config, describe_exception, format_traceback
    from .peers import Unavailable, availability, versions

    cfg = Config.make(args.quick, WORK, log=log)
    cfg.check_only = args.check_only
    previous = None
    if args.merge and json_path.exists():
        previous = json.loads(json_path.read_text())
        if previous.get("mode") != mode:
            parser.error(f"--merge: {json_path} holds a {previous.get('mode')!r} run, this is {mode!r}")
    if args.m7_sizes:
        cfg.m7_sizes = parse_m7_sizes(args.m7_sizes, parser)
    if previous is not None:
        for w in previous.get("workloads", []):
            if w["id"] == "M7":
                cfg.previous_codegen = w.get("extra", {}).get("codegen", [])
    if args.check_only:
        only = [w for w in only if w != "M7"]
    available = availability()
    run_versions = versions()  # at the start: the symgrad being measured (the tree may change during a run)
    unavailable = {name: why for name, why in available.items() if why is not None}
    for name, why in unavailable.items():
        log(f"peer {name} skipped: {why}")

    workloads = []
    failed = []
    for wid in only:
        w_started, w_load = _now(), os.getloadavg()
        try:
            result = workload_class(wid)(cfg, available).run().to_dict()
        except Unavailable as exc:  # e.g. scikit-learn missing for the digits
            log(f"{wid} skipped: {exc}")
            result = {"id": wid, "title": "", "description": "", "metrics": [], "notes": [], "extra": {},
                      "skipped": str(exc)}
        except Exception as exc:
            log(f"{wid} FAILED:\n{format_traceback(exc)}")
            failed.append(wid)
            result = {"id": wid, "title": "", "description": "", "metrics": [], "notes": [], "extra": {},
                      "error": describe_exception(exc)}
        result["runs"] = [{"started": w_started, "load_start": w_load, "load_end": os.getloadavg(),
                           "command": None, "symgrad": run_versions.get("symgrad")}]
        workloads.append(result)

    seconds = time.perf_counter() - t0
    env = machine()
    env.update(load_start=load_start, load_end=os.getloadavg(), versions=run_versions,
               threads=thread_report(available))
    timing = (f"time.perf_counter around a loop of calls, calibrated so one measurement lasts ≥ "
              f"{cfg.target_seconds * 1e3:g} ms; {cfg.repeats} measurements per case (fewer, at least 3, when one "
              f"call is slow), interleaved across contenders; median and min–max of the per-call times; two "
              f"warm-up calls first (JIT compilation, caches); Python's garbage collector off during a "
              f"measurement (as in timeit).")
    command = "python -m benchmarks.run" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    command = command.strip()
    for w in workloads:
        w["runs"][0]["command"] = command
    this_run = {"command": command, "started": started, "seconds": seconds, "load_start": load_start,
                "symgrad": run_versions.get("symgrad"),
                "load_end": env["load_end"], "workloads": [w["id"] for w in workloads]}
    run = {"command": command, "mode": mode, "started": started,
           "seconds": seconds, "environment": env, "timing": timing, "unavailable": unavailable,
           "workloads": workloads, "history": [this_run]}
    if previous is not None:
        run = merge_runs(previous, run)

    from .report import existing_notes, render, summary_rows

    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(render(run, existing_notes(output)))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(run, indent=1, default=str))
    print(f"wrote {output} and {json_path} in {seconds:.0f} s")
    for row in summary_rows(run["workloads"]):
        print("  " + " | ".join(row))

    if failed:
        print(f"workloads that failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    if args.strict:
        bad = [f"{w['id']} {m['label']}: {m['entries'][name]['status']} {m['entries'][name].get('note', '')}"
               for w in workloads for m in w["metrics"]
               for name in ("symgrad",) if m["entries"].get("symgrad", {}).get("status") != "ok"]
        if bad:
            print("symgrad did not pass on:\n  " + "\n  ".join(bad), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
