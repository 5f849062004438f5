"""A smoke run of the benchmark suite, for CI: ``python -m benchmarks.smoke`` (exit 0 when it works).

It runs ``python -m benchmarks.run --quick`` in a subprocess (tiny sizes, a
few repeats; well under a minute with every peer installed) writing into a
temporary folder, then checks what came out:

* the run exited 0 and every workload M1..M7 is in the results, none failed;
* symgrad passed the correctness check on every metric and has a timing;
* every peer that is installed was checked (a peer that is not installed is
  fine: it is reported as skipped);
* RESULTS.md has the summary, the machine line and a Notes section per workload.

From a test::

    from benchmarks.smoke import smoke
    assert smoke() == []          # a list of problems, empty when all is well

Peers are optional here: with none installed it checks symgrad against the
NumPy reference and SymPy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("M1", "M2", "M3", "M4", "M5", "M6", "M7")


def problems_in(results: dict, markdown: str) -> list:
    problems = []
    seen = {w["id"]: w for w in results.get("workloads", [])}
    for wid in WORKLOADS:
        w = seen.get(wid)
        if w is None:
            problems.append(f"{wid}: missing from the results")
            continue
        if w.get("skipped"):  # a workload whose data or tools are missing here (scikit-learn, say)
            continue
        if w.get("error"):
            problems.append(f"{wid}: failed: {w['error']}")
            continue
        if not w["metrics"]:
            problems.append(f"{wid}: no metrics")
        for m in w["metrics"]:
            ours = m["entries"].get("symgrad")
            if ours is None or ours["status"] != "ok" or not ours.get("vg"):
                problems.append(f"{wid} {m['label']}: symgrad {ours and ours['status']}: {ours and ours.get('note')}")
            for name, entry in m["entries"].items():
                if entry["status"] in ("error", "mismatch") and wid != "M7":
                    problems.append(f"{wid} {m['label']}: {name} {entry['status']}: {entry.get('note')}")
        if f"<!-- notes:{wid} -->" not in markdown:
            problems.append(f"{wid}: no Notes section in RESULTS.md")
    for needed in ("## Summary", "Load average", "Versions:", "Threads:"):
        if needed not in markdown:
            problems.append(f"RESULTS.md lacks {needed!r}")
    return problems


def smoke(timeout: float = 600.0, extra_args=()) -> list:
    """Run the quick suite; returns a list of problems (empty when everything worked)."""
    with tempfile.TemporaryDirectory(prefix="symgrad-bench-smoke-") as tmp:
        md, js = Path(tmp, "RESULTS.md"), Path(tmp, "results.json")
        command = [sys.executable, "-m", "benchmarks.run", "--quick", "--quiet", "--output", str(md),
                   "--json", str(js), *extra_args]
        proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            return [f"{' '.join(command[1:])} exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"]
        if not md.exists() or not js.exists():
            return ["the run wrote no RESULTS.md or results.json"]
        return problems_in(json.loads(js.read_text()), md.read_text())


def main() -> int:
    problems = smoke(extra_args=sys.argv[1:])
    if problems:
        print("benchmark smoke run: FAILED")
        for p in problems:
            print(f"  - {p}")
        return 1
    print("benchmark smoke run: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
