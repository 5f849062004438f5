"""Compiling a rendered package with cffi, caching it, and installing it safely.

The cache key hashes the C sources, the cffi declarations, the compiler
flags, the compiler's version, the Python ABI and the symgrad version, so
any change to one of them rebuilds. A build happens in a temporary folder
under a per-model lock and is moved into place file by file, the package's
``__init__.py`` and its manifest last: a reader sees the old package or the
new one, never a mix that loads; a build killed half-way leaves only a
temporary folder, removed by the next build. Concurrent builds of the same
model wait for each other, and all but the first find the cache warm.

The manifest (``.symgrad-build.json``) records the key and a hash of the
compiled extension, so a truncated or corrupted extension is rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import BuildError, CompileError, CompilerNotFoundError, OutputDirectoryError
from .render import RenderedPackage, finish

DEFAULT_FLAGS = ("-O3", "-fopenmp-simd")
MANIFEST = ".symgrad-build.json"


@dataclass
class BuildResult:
    """Where a package was installed, under which key, and whether the cache served it."""

    path: Path
    key: str
    cached: bool
    extension: str
    files: list = field(default_factory=list)
    seconds: float = 0.0


def compiler_command() -> str:
    """The C compiler cffi will use: ``$CC``, else the one Python was built with."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return cc.split()[0]


@functools.lru_cache(maxsize=None)
def compiler_version(cc: str) -> str:
    path = shutil.which(cc)
    if path is None:
        raise CompilerNotFoundError(
            f"no C compiler found: {cc!r} is not on PATH. Install one (Debian/Ubuntu: "
            f"'apt-get install gcc'; Fedora: 'dnf install gcc'; macOS: 'xcode-select --install') "
            f"or point $CC at it"
        )
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise CompilerNotFoundError(f"the C compiler {path} does not run: {exc}") from None
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else path


def cache_key(rendered: RenderedPackage, flags) -> str:
    cc = compiler_command()
    h = hashlib.sha256()
    for part in (
        rendered.source_digest(),
        " ".join(flags),
        cc,
        compiler_version(cc),
        sysconfig.get_config_var("CFLAGS") or "",
        sysconfig.get_config_var("EXT_SUFFIX") or "",
        sys.version,
        __version__,
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def extension_name(key: str) -> str:
    return f"_kernels_{key[:16]}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _output_error(path: Path, exc: OSError) -> OutputDirectoryError:
    if exc.errno == errno.ENOSPC:
        why = "the disk is full"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = "it is not writable"
    elif exc.errno == errno.ENOTDIR:
        why = "a file stands where a folder should be"
    else:
        why = exc.strerror or str(exc)
    return OutputDirectoryError(f"cannot write the generated package to {path}: {why}. "
                                f"Choose another output folder (symgrad build -o DIR).")


@contextlib.contextmanager
def _locked(lock_path: Path):
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_current(path: Path, rendered: RenderedPackage, key: str) -> bool:
    """Whether ``path`` holds exactly this package, compiled and intact."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("key") != key:
            return False
        extension = path / manifest["extension_file"]
        if _sha256(extension) != manifest["extension_sha256"]:
            return False
        for name, text in rendered.files.items():
            if (path / name).read_text() != text:
                return False
        init = finish(rendered, key=key, extension=manifest["extension"])
        return (path / "__init__.py").read_text() == init
    except (OSError, ValueError, KeyError):
        return False


def build(rendered: RenderedPackage, out_dir, *, flags=DEFAULT_FLAGS, force: bool = False) -> BuildResult:
    """Compile ``rendered`` into ``out_dir/<name>`` unless an identical build is there already."""
    start = time.perf_counter()
    out_dir = Path(out_dir).absolute()
    key = cache_key(rendered, flags)
    path = out_dir / rendered.name
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = out_dir / f".{rendered.name}.lock"
        with _locked(lock):
            if not force and is_current(path, rendered, key):
                return BuildResult(path, key, True, extension_name(key), seconds=time.perf_counter() - start)
            for stale in out_dir.glob(f".{rendered.name}.build-*"):
                shutil.rmtree(stale, ignore_errors=True)
            staging = out_dir / f".{rendered.name}.build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            staging.mkdir()
            try:
                files = _stage(rendered, staging, key, flags)
                _install(staging, path, files)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise _output_error(out_dir, exc) from None
    return BuildResult(path, key, False, extension_name(key), [path / f for f in files],
                       time.perf_counter() - start)


def _stage(rendered: RenderedPackage, staging: Path, key: str, flags) -> list:
    """Write and compile the package in ``staging``; returns its file names, install order."""
    for name, text in rendered.files.items():
        (staging / name).write_text(text)
    extension = extension_name(key)
    built = _compile(rendered, staging, extension, flags)
    extension_file = built.name
    shutil.move(str(built), staging / extension_file)
    (staging / "__init__.py").write_text(finish(rendered, key=key, extension=extension))
    manifest = {
        "key": key,
        "symgrad": __version__,
        "extension": extension,
        "extension_file": extension_file,
        "extension_sha256": _sha256(staging / extension_file),
        "flags": list(flags),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return sorted(rendered.files) + [extension_file, "__init__.py", MANIFEST]


def _install(staging: Path, path: Path, files: list) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name in files:
        os.replace(staging / name, path / name)
    keep = {f for f in files}
    for old in path.glob("_kernels_*"):
        if old.name not in keep:
            with contextlib.suppress(OSError):
                old.unlink()


def _compile(rendered: RenderedPackage, staging: Path, extension: str, flags) -> Path:
    import cffi

    compiler_version(compiler_command())  # a missing compiler gets its own message
    ffi = cffi.FFI()
    ffi.cdef(rendered.cdef)
    ffi.set_source(
        extension,
        f'#include "{rendered.name}.h"\n',
        sources=[str(staging / s) for s in rendered.c_sources],
        include_dirs=[str(staging)],
        extra_compile_args=list(flags),
        libraries=["m"],
    )
    work = staging / "cffi"
    work.mkdir()
    with tempfile.TemporaryFile(mode="w+b") as log:
        try:
            with _redirected_output(log):
                built = ffi.compile(tmpdir=str(work), verbose=True)
        except Exception as exc:  # cffi wraps compiler failures in several exception types
            log.seek(0)
            output = log.read().decode(errors="replace")
            kept = _keep_failed_sources(rendered, staging)
            raise CompileError(
                f"the C compiler failed on the generated code for {rendered.name!r} ({exc}).\n"
                f"C source: {kept}\n--- compiler output ---\n{_compiler_lines(output)}"
            ) from None
    return Path(built)


def _compiler_lines(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    interesting = [ln for ln in lines if "error" in ln.lower() or "warning" in ln.lower()] or lines
    return "\n".join(interesting[-40:])


def _keep_failed_sources(rendered: RenderedPackage, staging: Path) -> Path:
    """Copy the C files of a failed build somewhere they survive the clean-up."""
    keep = Path(tempfile.mkdtemp(prefix=f"symgrad-failed-{rendered.name}-"))
    for name in rendered.files:
        shutil.copy(staging / name, keep / name)
    return keep / rendered.c_sources[0]


@contextlib.contextmanager
def _redirected_output(log):
    """Send this process's stdout and stderr, Python's and the compiler's, into ``log``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    text = io.TextIOWrapper(os.fdopen(os.dup(log.fileno()), "wb"), write_through=True)
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            yield
    finally:
        text.close()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def load(path) -> object:
    """Import the generated package at ``path`` (under a name unique to its build)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path} is not a built symgrad package ({exc}); run symgrad build") from None
    module_name = f"_symgrad_models.{path.name}_{manifest['key'][:16]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    if "_symgrad_models" not in sys.modules:
        namespace = importlib.util.module_from_spec(importlib.util.spec_from_loader("_symgrad_models", loader=None))
        namespace.__path__ = []
        sys.modules["_symgrad_models"] = namespace
    spec = importlib.util.spec_from_file_location(
        module_name, path / "__init__.py", submodule_search_locations=[str(path)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise BuildError(f"the generated package at {path} does not load: {exc}") from exc
    return module
