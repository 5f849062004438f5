"""Writing RESULTS.md from the run's records.

The lead's notes live between ``<!-- notes:ID -->`` and ``<!-- /notes:ID -->``
markers, one pair per workload; writing the file again keeps whatever is
between them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .harness import SYMGRAD, TOLERANCE

NOTES_PLACEHOLDER = "_No notes yet. (Text between these markers is kept when RESULTS.md is regenerated.)_"


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 10:
        return f"{value:.2f}"
    if magnitude >= 1:
        return f"{value:.3f}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}×" if value < 100 else f"{value:.0f}×"


def _err(value) -> str:
    return "–" if value is None else f"{value:.1e}"


def best_peer(metric: dict, kind: str = "vg"):
    """(contender, median) of the fastest peer that passed the check, or (None, None)."""
    best = (None, None)
    for name, entry in metric["entries"].items():
        if name == SYMGRAD or entry["status"] != "ok" or not entry.get(kind):
            continue
        median = entry[kind]["median"]
        if best[1] is None or median < best[1]:
            best = (name, median)
    return best


def cheap_gradient(entry: dict):
    if entry["status"] != "ok" or not entry.get("vg") or not entry.get("fwd"):
        return None
    return entry["vg"]["median"] / entry["fwd"]["median"]


def best_cheap_gradient(metric: dict):
    best = (None, None)
    for name, entry in metric["entries"].items():
        ratio = cheap_gradient(entry)
        if name == SYMGRAD or ratio is None:
            continue
        if best[1] is None or ratio < best[1]:
            best = (name, ratio)
    return best


def _symgrad_cell(entry: dict | None, unit: str, kind: str = "vg") -> str:
    if entry is None:
        return "–"
    if entry["status"] == "ok" and entry.get(kind):
        return f"{_fmt(entry[kind]['median'])} {unit}"
    if entry["status"] == "mismatch":
        return f"**wrong** (error {_err(entry['error'])})"
    return f"{entry['status']}"


def summary_rows(workloads: list) -> list:
    rows = []
    for w in workloads:
        for m in w["metrics"]:
            entry = m["entries"].get(SYMGRAD)
            peer, peer_median = best_peer(m)
            ours = entry["vg"]["median"] if entry and entry["status"] == "ok" and entry.get("vg") else None
            ratio = ours / peer_median if ours is not None and peer_median else None
            rows.append((w["id"], m["label"], _symgrad_cell(entry, m["unit"]),
                         f"{peer}: {_fmt(peer_median)} {m['unit']}" if peer else "none",
                         _ratio(ratio) if ratio is not None else "–"))
            if any(cheap_gradient(e) is not None for e in m["entries"].values()):
                ours_cg = cheap_gradient(entry) if entry else None
                peer_cg, peer_cg_value = best_cheap_gradient(m)
                rows.append((w["id"], f"{m['label']}: cheap gradient (value_and_grad ÷ forward)",
                             f"{ours_cg:.2f}" if ours_cg is not None else "–",
                             f"{peer_cg}: {peer_cg_value:.2f}" if peer_cg else "none",
                             _ratio(ours_cg / peer_cg_value) if ours_cg is not None and peer_cg_value else "–"))
    return rows


def _table(header: list, rows: list) -> list:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return lines


def _metric_table(m: dict) -> list:
    unit = m["unit"]
    peer, peer_median = best_peer(m)
    has_forward = any(e.get("fwd") for e in m["entries"].values())
    header = ["contender", "check: rel. error", f"median ({unit})", "min–max"]
    if has_forward:
        header += [f"forward median ({unit})", "forward min–max", "v&g ÷ forward"]
    header += ["÷ best peer", "measurements × calls"]
    rows = []
    for name, e in m["entries"].items():
        if e["status"] == "ok" and e.get("vg"):
            vg = e["vg"]
            row = [f"**{name}**" if name == SYMGRAD else name, _err(e["error"]), _fmt(vg["median"]),
                   f"{_fmt(vg['min'])}–{_fmt(vg['max'])}"]
            if has_forward:
                fwd = e.get("fwd")
                row += [_fmt(fwd["median"]) if fwd else "–",
                        f"{_fmt(fwd['min'])}–{_fmt(fwd['max'])}" if fwd else "–",
                        f"{cheap_gradient(e):.2f}" if fwd else "–"]
            row += [_ratio(vg["median"] / peer_median) if peer_median else "–",
                    f"{vg['repeats']} × {vg['loops']:,}"]
        else:
            status = {"mismatch": "**wrong**", "error": "**error**"}.get(e["status"], e["status"])
            note = "see “Peers not run” above" if e["status"] == "unavailable" else e.get("note", "")
            row = [f"**{name}**" if name == SYMGRAD else name, _err(e.get("error")), f"{status}: {note}", ""]
            if has_forward:
                row += ["", "", ""]
            row += ["", ""]
        rows.append(row)
    return _table(header, rows)


def _codegen_table(rows: list) -> list:
    header = ["model", "size", "tool", "derive (s)", "generate (s)", "compile (s)", "total (s)", "C source",
              "lines", "status", "building the expression (s, not in total)"]
    families = {"m2": ("M2 Rosenbrock", "n", "M2"), "m3": ("M3 chain", "depth", "M3"),
                "m5": ("digits softmax example", "classes", "M5 digits")}
    out = []
    for r in rows:
        model, var, _ = families[r["family"]]
        if r["status"] == "ok":
            runtime = {"compiled": " (runtime helpers compiled in this build)"}.get(r.get("runtime"), "")
            out.append([model, f"{var} = {r['size']}", r["tool"], _fmt(r["derive"]), _fmt(r["generate"]),
                        _fmt(r["compile"]), _fmt(r["total"]), f"{r['source_bytes'] / 1e3:,.1f} kB",
                        f"{r['source_lines']:,}", "ok" + runtime, _fmt(r.get("expression"))])
        else:
            out.append([model, f"{var} = {r['size']}", r["tool"], "", "", "", "", "", "",
                        f"{r['status']}: {r.get('note', '')}", ""])
    lines = _table(header, out)
    stages = [r for r in rows if r["status"] == "ok" and r.get("stages")]
    if stages:
        lines += ["", "symgrad's own stage times (s):", ""]
        names = list(stages[0]["stages"])
        lines += _table(["model", "size", *names],
                        [[families[r["family"]][2], r["size"],
                          *(_fmt(r["stages"].get(n)) for n in names)] for r in stages])
    return lines


def existing_notes(path: Path) -> dict:
    if not path.exists():
        return {}
    text = path.read_text()
    return {m.group(1): m.group(2).strip("\n") for m in
            re.finditer(r"<!-- notes:(\w+) -->\n(.*?)<!-- /notes:\1 -->", text, flags=re.S)}


def render(run: dict, notes: dict) -> str:
    env = run["environment"]
    lines = ["# symgrad benchmark results", "",
             f"Written by `{run['command']}` ({run['mode']} mode) on {run['started']}; the run took "
             f"{run['seconds']:.0f} s. The whole suite: `python -m benchmarks.run`; benchmarks/README.md gives the method."
             + (" Merged with earlier results (each workload section says which run measured it): "
                + "; ".join(f"`{h['command']}` on {h['started']} ({h['seconds']:.0f} s; {', '.join(h['workloads'])})"
                            for h in run.get("history", [])[:-1]) + "." if len(run.get("history", [])) > 1 else ""),
             "", "## Summary", "",
             "Median of each contender; **ratio = symgrad ÷ the best peer** that passed the correctness check "
             "(below 1: symgrad is faster, or its source smaller). Cheap-gradient rows compare the ratio "
             "value_and_grad time ÷ forward time (lower is better).", ""]
    lines += _table(["workload", "metric", "symgrad", "best peer", "ratio"], summary_rows(run["workloads"]))
    lines += ["", "## Machine, versions and settings", ""]
    load0, load1 = env["load_start"], env["load_end"]
    history = run.get("history", [])
    lines += [f"- Machine: {env['cpu']}, {env['cores']} cores ({env['usable_cores']} usable), "
              f"{env['memory']}; {env['platform']}.",
              f"- Load average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in load0)} at the start, "
              f"{' '.join(f'{v:.2f}' for v in load1)} at the end"
              + (" (of the latest run; each workload section gives its own)." if len(history) > 1 else "."),
              "- Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
              "- Threads: " + ", ".join(f"{k}={v}" for k, v in env["threads"].items()) + ".",
              f"- Timing: {run['timing']}", f"- Correctness: every contender's value and gradient (and forward "
              f"value) is compared with the NumPy reference on the same inputs before it is timed; relative "
              f"error = max |got − want| ÷ max |want| per array, the worst over the value and all gradients, "
              f"must be below {TOLERANCE:.0e}. The reference itself is checked against central finite "
              f"differences first."]
    missing = run.get("unavailable", {})
    if missing:
        lines += ["", "Peers not run:", ""]
        lines += [f"- {name}: {why}" for name, why in missing.items()]
    for w in run["workloads"]:
        lines += ["", f"## {w['id']}: {w['title'] or '(not run)'}", "", w["description"], ""]
        for r in w.get("runs", []):
            if r.get("load_start") is not None:
                version = f", symgrad {r['symgrad']}" if r.get("symgrad") else ""
                lines.append(f"Measured {r['started']} (`{r.get('command')}`{version}); load average (1 min) "
                             f"{r['load_start'][0]:.2f} at its start, {r['load_end'][0]:.2f} at its end.  ")
        lines.append("")
        if w.get("error"):
            lines += [f"**The workload failed:** {w['error']}", ""]
        if w.get("skipped"):
            lines += [f"Not run: {w['skipped']}", ""]
        for m in w["metrics"]:
            if w["id"] == "M7":
                continue
            lines += [f"### {m['label']} ({m['unit']})", ""] + _metric_table(m) + [""]
        if w.get("extra", {}).get("codegen"):
            lines += _codegen_table(w["extra"]["codegen"]) + [""]
        if w.get("notes"):
            lines += ["Automatic notes:", ""] + [f"- {n}" for n in w["notes"]] + [""]
        lines += [f"### Notes ({w['id']})", "", f"<!-- notes:{w['id']} -->",
                  notes.get(w["id"], NOTES_PLACEHOLDER), f"<!-- /notes:{w['id']} -->"]
    ran = {w["id"] for w in run["workloads"]}
    orphans = {k: v for k, v in notes.items() if k not in ran and v.strip() and v.strip() != NOTES_PLACEHOLDER}
    if orphans:  # kept from an earlier RESULTS.md whose workloads this run left out (--only)
        lines += ["", "## Notes of workloads not in this run", ""]
        for wid, text in sorted(orphans.items()):
            lines += [f"### Notes ({wid})", "", f"<!-- notes:{wid} -->", text, f"<!-- /notes:{wid} -->", ""]
    return "\n".join(lines) + "\n"
