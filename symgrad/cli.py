"""The ``symgrad`` command: build, show and check models from model files."""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from . import __version__
from .errors import OptionError, OutputDirectoryError, SymgradError


# --- flag values: each checked where it is parsed, with a message that says what is expected ---


def _whole_number(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive_int(what: str):
    """An argparse type: a whole number of at least 1."""
    checker = lambda text: _whole_number(text, 1, f"a whole number of {what}, at least 1")  # noqa: E731
    checker.__name__ = "positive_int"
    return checker


def seed_value(text: str) -> int:
    """An argparse type: a random seed (a whole number, 0 or more, as NumPy's generators take)."""
    return _whole_number(text, 0, "a whole number, 0 or more")


def tolerance_value(text: str) -> float:
    """An argparse type: a relative error, a finite number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a relative error such as 1e-6, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a relative error above 0 such as 1e-6, got {text}")
    return value


def path_value(text: str) -> str:
    """An argparse type: a file or folder name, not empty (an empty name would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file or folder name, got an empty one")
    return text


def name_value(text: str) -> str:
    """An argparse type: a model name, not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a model name, got an empty one")
    return text


def range_value(text: str) -> tuple:
    """An argparse type: ``LOW:HIGH``, an interval of finite numbers with LOW < HIGH."""
    parts = text.replace(",", ":").split(":")
    try:
        low, high = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH such as 5:10 or -2:-1, got {text!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise argparse.ArgumentTypeError(f"expected finite LOW < HIGH, got {text!r}")
    return low, high


def _flags_value(text: str) -> tuple:
    """The compiler flags of ``--flags``, split as a shell would split them."""
    try:
        flags = tuple(shlex.split(text))
    except ValueError as exc:
        raise OptionError(f"--flags {text!r} cannot be split into compiler flags: {exc}") from None
    if not flags:
        raise OptionError("--flags needs at least one compiler flag, e.g. --flags=-O2; leave it out "
                          "to use symgrad's own flags")
    return flags


#: Options whose value may itself start with "-" (compiler flags, a range of negative numbers):
#: "--flags -O0" means "--flags=-O0".
_DASHED_VALUES = ("--flags", "--range")


def _models(path: str, only: str | None):
    from .model import load_model

    models = load_model(path)
    if only is not None:
        chosen = [m for m in models if m.name == only]
        if not chosen:
            names = ", ".join(repr(m.name) for m in models)
            raise OptionError(f"--model {only}: {path} has no model named {only!r}; it defines {names}")
        models = chosen
    return models


def cmd_build(args) -> int:
    from .pipeline import build_model

    flags = None
    if args.flags is not None:
        flags = _flags_value(args.flags)
        for given, option in ((args.native, "--native"), (args.fast_math, "--fast-math")):
            if given:
                extra = "-march=native" if option == "--native" else "-ffast-math"
                raise OptionError(f"--flags replaces every compiler flag, so {option} would be ignored: "
                                  f"add {extra} to --flags instead")
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
        print(f"  build time: {sum(generated.timings.values()):.2f} s"
              + {"cached": " (runtime helpers from the cache)", "compiled": " (runtime helpers compiled and cached)",
                 None: ""}[result.runtime])
        if args.wheel:
            from .wheel import write_wheel

            print(f"  wrote wheel {write_wheel(result.path)}")
    return 0


#: What ``show -o FILE`` writes when --format is not given, by FILE's suffix.
_FORMAT_OF_SUFFIX = {"dot": "dot", "gv": "dot", "svg": "dot", "png": "dot", "pdf": "dot", "tex": "latex"}
_DRAWN = ("svg", "png", "pdf")


def cmd_show(args) -> int:
    from .pipeline import show_dot, show_hessian, show_latex, show_stats, show_text

    out = Path(args.output) if args.output is not None else None
    suffix = out.suffix.lower().lstrip(".") if out is not None else ""
    fmt = args.format or _FORMAT_OF_SUFFIX.get(suffix, "text")
    if suffix in _DRAWN and fmt != "dot":
        raise OptionError(f"-o {out} draws a graph, which needs --format dot (or leave --format out); "
                          f"for {fmt} write a text file, e.g. -o {out.with_suffix('.tex' if fmt == 'latex' else '.txt')}")
    formatter = {"text": show_text, "latex": show_latex, "dot": show_dot}[fmt]
    chunks = []
    for model in _models(args.model_file, args.model):
        chunks.append(formatter(model))
        if args.hessian:
            chunks.append(show_hessian(model))
        if args.stats:
            chunks.append(show_stats(model))
    text = "\n".join(chunks)
    if out is None:
        sys.stdout.write(text)
        return 0
    if not out.parent.is_dir():
        raise OptionError(f"-o {out}: the folder {out.parent} does not exist; create it or write elsewhere")
    if fmt == "dot" and suffix in _DRAWN:
        dot = shutil.which("dot")
        if dot is None:
            raise SymgradError(f"rendering {out} needs Graphviz's 'dot' (apt-get install graphviz); "
                               f"or write the graph as text: -o {out.with_suffix('.dot')}")
        done = subprocess.run([dot, f"-T{suffix}", "-o", str(out)], input=text, text=True,
                              capture_output=True)
        if done.returncode != 0:
            raise SymgradError(f"dot failed: {done.stderr.strip()}")
    else:
        try:
            out.write_text(text)
        except OSError as exc:
            raise OptionError(f"cannot write {out}: {exc.strerror or exc}; choose another file with -o FILE") from None
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
                             tolerance=args.tolerance, ranges=args.range)
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
        generated, result = build_model(model, args.output, native=args.native)
        report = bench_model(model, load(result.path), batch=args.batch or DEFAULT_BATCH)
        print("\n".join(report.lines()))
        print(f"  build           {sum(generated.timings.values()):10.2f} s"
              + (" (cache hit)" if result.cached else ""))
        if args.batch is not None and not model.inputs:
            print(f"  note: --batch {args.batch} ignored: {model.name} has no inputs, so a call has no "
                  f"batch axis (each call computes the whole model once)")
    return 0


def cmd_export(args) -> int:
    from .export import export_c

    for model in _models(args.model_file, args.model):
        result = export_c(model, args.c_dir, dtype=args.dtype)
        print(f"{model.name}: C library in {result.path} (build it with make, or cmake)")
        for f in result.files:
            print(f"  wrote {f}")
    return 0


#: Examples per call that ``symgrad bench`` times when --batch is not given.
DEFAULT_BATCH = 10_000


MODEL_FILE_HELP = "a Python file that creates symgrad.Model objects (it is run as Python code)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="symgrad",
        description="Compile models written as SymPy expressions into C gradient kernels.",
    )
    p.add_argument("--version", action="version", version=f"symgrad {__version__}")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # --debug is accepted after the command too; SUPPRESS keeps the subcommand from resetting it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")

    b = sub.add_parser("build", parents=[common], help="generate and compile a package per model in MODEL_FILE")
    b.add_argument("model_file", type=path_value, metavar="MODEL_FILE", help=MODEL_FILE_HELP)
    b.add_argument("-o", "--output", type=path_value, default="generated", metavar="DIR",
                   help="folder for the generated packages (default: generated)")
    b.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the kernels (default: float64)")
    b.add_argument("--model", type=name_value, metavar="NAME", help="only the model with this name")
    b.add_argument("--force", action="store_true",
                   help="rebuild even when the cache is current, and replace a package of the other --dtype")
    b.add_argument("--native", action="store_true",
                   help="compile for this machine's CPU (-march=native): faster, not portable")
    b.add_argument("--fast-math", action="store_true",
                   help="add -ffast-math: faster, but relaxes IEEE semantics (NaN, infinity, summation order)")
    b.add_argument("--flags", metavar="FLAGS",
                   help="replace the C compiler flags altogether, e.g. --flags='-O0 -g' "
                        "(they enter the cache key; not with --native or --fast-math)")
    b.add_argument("--wheel", action="store_true",
                   help="also write an installable wheel of each package into DIR (needs only NumPy and cffi)")
    b.set_defaults(run=cmd_build)

    s = sub.add_parser("show", parents=[common],
                       help="print the forward pass, backward pass and gradient formulas")
    s.add_argument("model_file", type=path_value, metavar="MODEL_FILE", help=MODEL_FILE_HELP)
    s.add_argument("--format", choices=("text", "latex", "dot"), default=None,
                   help="text: the passes and formulas (default); latex: the same as LaTeX; dot: a Graphviz "
                        "graph of both passes (the default for -o FILE.dot/.svg/.png/.pdf)")
    s.add_argument("--stats", action="store_true", help="also print op counts and the gradient cost ratio")
    s.add_argument("--hessian", action="store_true",
                   help="also print the second-order pass (the Hessian-vector product) node by node")
    s.add_argument("--model", type=name_value, metavar="NAME", help="only the model with this name")
    s.add_argument("-o", "--output", type=path_value, metavar="FILE",
                   help="write to FILE; a .svg/.png/.pdf FILE is drawn by Graphviz")
    s.set_defaults(run=cmd_show)

    c = sub.add_parser("check", parents=[common],
                       help="compare compiled gradients with finite differences and sympy.diff")
    c.add_argument("model_file", type=path_value, metavar="MODEL_FILE", help=MODEL_FILE_HELP)
    c.add_argument("-o", "--output", type=path_value, default="generated", metavar="DIR",
                   help="folder to build the packages in (default: generated)")
    c.add_argument("--model", type=name_value, metavar="NAME", help="only the model with this name")
    c.add_argument("--points", type=positive_int("points"), default=3, metavar="N",
                   help="random points per model (default: 3)")
    c.add_argument("--seed", type=seed_value, default=0, help="seed of the random points (default: 0)")
    c.add_argument("--tolerance", type=tolerance_value, default=1e-6, metavar="REL",
                   help="largest relative error accepted (default: 1e-6)")
    c.add_argument("--range", type=range_value, action="append", metavar="LOW:HIGH",
                   help="draw every random value from LOW:HIGH (repeat to try several in order; default: "
                        "0.3:0.9, then -0.9:0.9, then 1.2:2, and each op's domain for what log, acosh... read)")
    c.set_defaults(run=cmd_check)

    n = sub.add_parser("bench", parents=[common],
                       help="time forward and value_and_grad of each model on a random batch")
    n.add_argument("model_file", type=path_value, metavar="MODEL_FILE", help=MODEL_FILE_HELP)
    n.add_argument("-o", "--output", type=path_value, default="generated", metavar="DIR",
                   help="folder to build the packages in (default: generated)")
    n.add_argument("--model", type=name_value, metavar="NAME", help="only the model with this name")
    n.add_argument("--batch", type=positive_int("examples"), default=None, metavar="N",
                   help=f"examples per call (default: {DEFAULT_BATCH}; models without inputs have no batch)")
    n.add_argument("--native", action="store_true", help="time a build for this machine's CPU")
    n.set_defaults(run=cmd_bench)

    e = sub.add_parser("export", parents=[common],
                       help="write each model in MODEL_FILE as a self-contained C99 library")
    e.add_argument("model_file", type=path_value, metavar="MODEL_FILE", help=MODEL_FILE_HELP)
    e.add_argument("--c", required=True, type=path_value, metavar="DIR", dest="c_dir",
                   help="folder for the C libraries, one DIR/<model name> per model: kernel sources, "
                        "header, Makefile, CMakeLists.txt, example_main.c")
    e.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="precision of the kernels (default: float64)")
    e.add_argument("--model", type=name_value, metavar="NAME", help="only the model with this name")
    e.set_defaults(run=cmd_export)
    return p


def _join_dashed_values(argv: list) -> list:
    """``--flags -O0`` as ``--flags=-O0``: argparse takes a value that starts with "-" for an option."""
    options = {a for action in _all_actions(parser()) for a in action.option_strings}
    joined = []
    k = 0
    while k < len(argv):
        token = argv[k]
        if token in _DASHED_VALUES and k + 1 < len(argv) and argv[k + 1].startswith("-") \
                and argv[k + 1].split("=")[0] not in options:
            joined.append(f"{token}={argv[k + 1]}")
            k += 2
            continue
        joined.append(token)
        k += 1
    return joined


def _all_actions(p: argparse.ArgumentParser) -> list:
    actions = list(p._actions)
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                actions += _all_actions(child)
    return actions


def main(argv=None) -> int:
    argv = _join_dashed_values(list(sys.argv[1:] if argv is None else argv))
    command_line = parser()
    args, unknown = command_line.parse_known_args(argv)
    if unknown:
        hint = ""
        if any(t == "--flags" or t.startswith("--flags=") for t in argv) and unknown[0].startswith("-"):
            hint = "; several compiler flags go in one quoted value: --flags='-O0 -g'"
        command_line.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    try:
        return args.run(args)
    except SymgradError as exc:
        if args.debug:
            raise
        message = exc.advice_for(f"symgrad {args.command}") if isinstance(exc, OutputDirectoryError) else exc
        print(f"symgrad: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("symgrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
