"""The ``symgrad`` command: build, show and check models from model files."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from . import __version__
from .errors import SymgradError


def _models(path: str, only: str | None):
    from .model import load_model

    models = load_model(path)
    if only is not None:
        models = [m for m in models if m.name == only]
        if not models:
            raise SymgradError(f"{path} has no model named {only!r}")
    return models


def cmd_build(args) -> int:
    from .pipeline import build_model

    flags = tuple(args.flags.split()) if args.flags else None
    for model in _models(args.model_file, args.model):
        generated, result = build_model(model, args.output, dtype=args.dtype, native=args.native,
                                        fast_math=args.fast_math, flags=flags, force=args.force)
        state = "up to date (cache hit)" if result.cached else "built"
        print(f"{model.name}: {state} in {result.path}")
        if not result.cached:
            for f in result.files:
                print(f"  wrote {f}")
        timings = ", ".join(f"{stage} {seconds:.3f} s" for stage, seconds in generated.timings.items())
        print(f"  stages: {timings}")
        if args.wheel:
            from .wheel import write_wheel

            print(f"  wrote wheel {write_wheel(result.path)}")
    return 0


def cmd_show(args) -> int:
    from .inspect import format_dot, format_latex, format_stats, format_text

    formatter = {"text": format_text, "latex": format_latex, "dot": format_dot}[args.format]
    chunks = []
    for model in _models(args.model_file, args.model):
        chunks.append(formatter(model))
        if args.stats:
            chunks.append(format_stats(model))
    text = "\n".join(chunks)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    out = Path(args.output)
    suffix = out.suffix.lower().lstrip(".")
    if args.format == "dot" and suffix in ("svg", "png", "pdf"):
        dot = shutil.which("dot")
        if dot is None:
            raise SymgradError(f"rendering {out} needs Graphviz's 'dot' (apt-get install graphviz); "
                               f"or write the graph as text: -o {out.with_suffix('.dot')}")
        done = subprocess.run([dot, f"-T{suffix}", "-o", str(out)], input=text, text=True,
                              capture_output=True)
        if done.returncode != 0:
            raise SymgradError(f"dot failed: {done.stderr.strip()}")
    else:
        out.write_text(text)
    print(f"wrote {out}")
    return 0


def cmd_check(args) -> int:
    from .build import load
    from .check import check_model
    from .pipeline import build_model

    failed = 0
    for model in _models(args.model_file, args.model):
        _, result = build_model(model, args.output)
        report = check_model(model, load(result.path), points=args.points, seed=args.seed,
                             tolerance=args.tolerance)
        print(report.line())
        for note in report.notes:
            print(f"  note: {note}")
        failed += not report.ok
    return 1 if failed else 0


def cmd_bench(args) -> int:
    from .bench import bench_model, machine_line
    from .build import load
    from .pipeline import build_model

    print(f"machine: {machine_line()}")
    for model in _models(args.model_file, args.model):
        _, result = build_model(model, args.output, native=args.native)
        report = bench_model(model, load(result.path), batch=args.batch)
        print("\n".join(report.lines()))
    return 0

def cmd_export(args) -> int:
    from .export import export_c

    for model in _models(args.model_file, args.model):
        result = export_c(model, args.c_dir, dtype=args.dtype)
        print(f"{model.name}: C library in {result.path} (build it with make, or cmake)")
        for f in result.files:
            print(f"  wrote {f}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="symgrad",
        description="Compile models written as SymPy expressions into C gradient kernels.",
    )
    p.add_argument("--version", action="version", version=f"symgrad {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("build", help="generate and compile a package per model in MODEL_FILE")
    b.add_argument("model_file", metavar="MODEL_FILE")
    b.add_argument("-o", "--output", default="generated", metavar="DIR",
                   help="folder for the generated packages (default: generated)")
    b.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the kernels (default: float64)")
    b.add_argument("--model", metavar="NAME", help="only the model with this name")
    b.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    b.add_argument("--native", action="store_true",
                   help="compile for this machine's CPU (-march=native): faster, not portable")
    b.add_argument("--fast-math", action="store_true",
                   help="add -ffast-math: faster, but relaxes IEEE semantics (NaN, infinity, summation order)")
    b.add_argument("--flags", metavar="FLAGS",
                   help="replace the C compiler flags altogether; they enter the cache key")
    b.add_argument("--wheel", action="store_true",
                   help="also write an installable wheel of each package into DIR (needs only NumPy and cffi)")
    b.set_defaults(run=cmd_build)

    s = sub.add_parser("show", help="print the forward pass, backward pass and gradient formulas")
    s.add_argument("model_file", metavar="MODEL_FILE")
    s.add_argument("--format", choices=("text", "latex", "dot"), default="text")
    s.add_argument("--stats", action="store_true", help="also print op counts and the gradient cost ratio")
    s.add_argument("--model", metavar="NAME", help="only the model with this name")
    s.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE; with --format dot, a .svg/.png/.pdf FILE is drawn by Graphviz")
    s.set_defaults(run=cmd_show)

    c = sub.add_parser("check", help="compare compiled gradients with finite differences and sympy.diff")
    c.add_argument("model_file", metavar="MODEL_FILE")
    c.add_argument("-o", "--output", default="generated", metavar="DIR")
    c.add_argument("--model", metavar="NAME", help="only the model with this name")
    c.add_argument("--points", type=int, default=3, help="random points per model (default: 3)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--tolerance", type=float, default=1e-6, help="largest relative error accepted")
    c.set_defaults(run=cmd_check)

    n = sub.add_parser("bench", help="time forward and value_and_grad of each model on a random batch")
    n.add_argument("model_file", metavar="MODEL_FILE")
    n.add_argument("-o", "--output", default="generated", metavar="DIR")
    n.add_argument("--model", metavar="NAME", help="only the model with this name")
    n.add_argument("--batch", type=int, default=10_000, help="examples per call (default: 10000)")
    n.add_argument("--native", action="store_true", help="time a build for this machine's CPU")
    n.set_defaults(run=cmd_bench)

    e = sub.add_parser("export",
                       help="write each model in MODEL_FILE as a self-contained C99 library")
    e.add_argument("model_file", metavar="MODEL_FILE")
    e.add_argument("--c", required=True, metavar="DIR", dest="c_dir",
                   help="folder for the C libraries, one DIR/<model name> per model: kernel sources, "
                        "header, Makefile, CMakeLists.txt, example_main.c")
    e.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the kernels (default: float64)")
    e.add_argument("--model", metavar="NAME", help="only the model with this name")
    e.set_defaults(run=cmd_export)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except SymgradError as exc:
        if args.debug:
            raise
        print(f"symgrad: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("symgrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
