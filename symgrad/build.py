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
import ctypes
import errno
import fcntl
import functools
import hashlib
import importlib.util
import io
import json
import os
import platform
import re
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
from .render import RUNTIME_SOURCE, RenderedPackage, finish

#: Flags of every kernel build: -fopenmp-simd honours the SIMD loops of the
#: generated code (no OpenMP runtime is involved); -fno-math-errno lets math
#: functions vectorize (errno is never read); -fno-tree-loop-distribute-patterns
#: keeps loops that zero or copy buffers as loops: GCC 12 turns them into memset
#: calls and then, in AVX-512 code, wrongly drops part of a memset that later
#: vector stores only partly overwrite (wrong gradients; see
#: test_zeroed_product_in_avx512_code). The loops are short: nothing is lost.
BASE_FLAGS = ("-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-tree-loop-distribute-patterns")
#: On x86, loops vectorize with vectors of at most 256 bits, also in the AVX-512 version of a
#: kernel (AVX-512 instructions on ymm registers; the matrix products' micro-kernels keep their
#: explicit 512-bit vectors). GCC 12 at -O3 for x86-64-v4 with 512-bit vectors forwarded a stale
#: value into a strided read of a 15-element vectorized loop's result (the hvp of a block matrix
#: squared gave 0 for U[1, 1]; see test_hvp_through_a_block_matrix_squared), valid C that the
#: AVX2 and baseline versions compute right. 256 bits is GCC's own default tuning for Intel's
#: AVX-512 server CPUs.
X86_VECTOR_FLAGS = ("-mprefer-vector-width=256",)
#: With glibc's vector math library: SIMD variants of exp, log, tanh, sin ...
#: (within 4 ulp of the scalar ones). sin and cos stay separate calls so each
#: can vectorize.
VECTOR_MATH_FLAGS = ("-DSG_VECTOR_MATH", "-fno-builtin-sin", "-fno-builtin-cos",
                     "-fno-builtin-sinf", "-fno-builtin-cosf")
#: The cffi wrapper only converts arguments, and is compiled at -O0: at -O1 it took GCC 0.95 s
#: of CPU on the 100 scalar arguments of Rosenbrock n = 100 (-O0: 0.37 s; 40 s against 4 s with
#: 1000 arguments), longer than that model's forward kernel, for about 20 ns per cffi call. The
#: CPython entry points of ``<model>_python.c`` inside it, on the path of every one-example call,
#: are optimized by a pragma there. It is compiled against CPython's full API (not the limited one
#: cffi picks by default): those entry points read float objects and build dicts directly. The
#: extension is tagged for one Python version (EXT_SUFFIX) either way.
WRAPPER_FLAGS = ("-O0", "-DNDEBUG", "-D_CFFI_NO_LIMITED_API")
MANIFEST = ".symgrad-build.json"
#: ``<model>_train.c`` and ``<model>_flat.c`` are glue around the kernels: argument and scratch
#: pointers, slices, one kernel call per slice (the loops that do work, the optimizer updates and
#: the minibatch gather, are in the runtime object). They are compiled at GLUE_OPTIMIZATION
#: instead of -O3, in one version: for the M3 chain of depth 64 (128 scalar params), GCC's CPU
#: time on the train file went from 0.78 s (-O3, the update loops in three versions inside it) to
#: 0.26 s, on the flat file from 0.24 to 0.08 s; flat calls of Rosenbrock n = 100 take the same time.
GLUE_OPTIMIZATION = "-O1"
#: The runtime object (the helpers of symgrad_runtime.c, see render.split_runtime) is
#: compiled with the kernels' flags minus these and LARGE_KERNEL_FLAGS (they change
#: nothing in it but the time GCC takes on huge kernels), so one object serves every
#: model built with the same flags, and with RUNTIME_FLAGS: each helper in its own
#: section, so the link drops the ones a model does not call.
RUNTIME_UNUSED_FLAGS = ("-DSG_DISPATCH_KERNELS",)
RUNTIME_FLAGS = ("-ffunction-sections", "-fdata-sections")
#: Added by SYMGRAD_SANITIZE=1. Such a build loads only into a Python that has the
#: sanitizer runtimes preloaded (LD_PRELOAD of libasan.so and libubsan.so).
SANITIZE_FLAGS = ("-fsanitize=address,undefined",)


@dataclass
class BuildResult:
    """Where a package was installed, under which key, and whether the cache served it."""

    path: Path
    key: str
    cached: bool
    extension: str
    files: list = field(default_factory=list)
    seconds: float = 0.0
    #: Where the runtime helpers came from: "cached" (the object under cache_dir()), "compiled"
    #: (with the kernels, then cached), or None (a cache hit of the whole package).
    runtime: str | None = None


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


@functools.lru_cache(maxsize=None)
def vector_math_available() -> bool:
    """Whether glibc's vector math library (libmvec, x86-64) can be linked."""
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        library = ctypes.CDLL("libmvec.so.1")
    except OSError:
        return False
    return hasattr(library, "_ZGVbN2v_tanh")  # the functions this header declares: glibc 2.35+


#: Kernels are compiled for several CPU levels (AVX-512, AVX2, baseline),
#: picked at load time, when their C source is at most DISPATCH_SMALL_SOURCE
#: characters, or at most DISPATCH_SOURCE_LIMIT and they call math functions
#: with SIMD variants (tanh, exp...: 4 to 8 lanes instead of 2 pay for the
#: longer build; plain arithmetic gains about 1.3x). Larger kernels are
#: compiled once, so that builds stay quick: each version takes about as long
#: to compile as the first.
DISPATCH_SMALL_SOURCE = 64_000
DISPATCH_SOURCE_LIMIT = 250_000
#: GCC's register allocation by regions, its load CSE after reload and the alias walks of
#: its value numbering grow faster than the size of one function: on the 530 kB kernel of
#: the M3 chain of depth 256 they took 6 of 9 s. Kernels above DISPATCH_SOURCE_LIMIT (one
#: version each) are compiled without them: 9.0 s -> 4.8 s there, 59 s -> 25 s on the
#: 1.4 MB kernel of Rosenbrock n = 1000, with batch times within a few percent (CPU time).
#: Smaller kernels keep GCC's defaults: their compile time is that of their versions per
#: CPU level, which the flags do not shorten.
LARGE_KERNEL_FLAGS = ("-fira-region=one", "-fno-gcse-after-reload", "--param=sccvn-max-alias-queries-per-access=100")


def compiler_flags(*, native: bool = False, fast_math: bool = False, source_size: int = 0,
                   vector_math: bool = True) -> tuple:
    """The C flags of a kernel build.

    ``native`` compiles for this machine's CPU (-march=native; the package
    then only runs on CPUs like it). ``fast_math`` adds -ffast-math, which
    relaxes IEEE semantics: NaN and infinity are assumed absent and sums may
    be reordered. Without ``native``, kernels get versions for several CPU
    levels as DISPATCH_SOURCE_LIMIT says (``source_size``: characters of C;
    ``vector_math``: whether they call math functions with SIMD variants).
    """
    flags = list(BASE_FLAGS)
    if platform.machine().lower() in ("x86_64", "amd64", "i686", "i386"):
        flags += X86_VECTOR_FLAGS
    if vector_math_available():
        flags += VECTOR_MATH_FLAGS
    if native:
        flags.append("-march=native")
    elif source_size <= DISPATCH_SMALL_SOURCE or (vector_math and source_size <= DISPATCH_SOURCE_LIMIT):
        flags.append("-DSG_DISPATCH_KERNELS")
    if source_size > DISPATCH_SOURCE_LIMIT and _is_gcc():
        flags += LARGE_KERNEL_FLAGS
    if fast_math:
        flags.append("-ffast-math")
    if os.environ.get("SYMGRAD_SANITIZE") == "1":  # for tests: AddressSanitizer and UBSan, see _compile
        flags += SANITIZE_FLAGS
    return tuple(flags)


def _is_gcc() -> bool:
    """Whether the C compiler is GCC (LARGE_KERNEL_FLAGS are GCC's)."""
    try:
        version = compiler_version(compiler_command())
    except CompilerNotFoundError:
        return False
    return "clang" not in version.lower() and ("gcc" in version.lower() or compiler_command().endswith("gcc"))


@functools.lru_cache(maxsize=None)
def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    wanted = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))


def cache_key(rendered: RenderedPackage, flags) -> str:
    cc = compiler_command()
    h = hashlib.sha256()
    for part in (
        rendered.source_digest(),
        " ".join(flags),
        " ".join(WRAPPER_FLAGS),
        GLUE_OPTIMIZATION,
        _cpu_identity() if "-march=native" in flags else "",
        cc,
        compiler_version(cc),
        sysconfig.get_config_var("LDSHARED") or "",
        sysconfig.get_config_var("EXT_SUFFIX") or "",
        sys.version,
        __version__,
    ):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def cache_dir() -> Path:
    """Where compiled runtime objects are kept: ``$SYMGRAD_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/symgrad``, else ``~/.cache/symgrad``."""
    if os.environ.get("SYMGRAD_CACHE_DIR"):
        return Path(os.environ["SYMGRAD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "symgrad"


def runtime_flags(flags) -> tuple:
    """The flags the runtime object of a kernel build with ``flags`` is compiled with."""
    return tuple(f for f in flags if f not in RUNTIME_UNUSED_FLAGS and f not in LARGE_KERNEL_FLAGS) + RUNTIME_FLAGS


def glue_flags(flags) -> tuple:
    """The flags of the glue files (see GLUE_OPTIMIZATION) of a kernel build with ``flags``."""
    return tuple(GLUE_OPTIMIZATION if f in ("-O2", "-O3", "-Ofast") else f for f in flags
                 if f not in RUNTIME_UNUSED_FLAGS and f not in LARGE_KERNEL_FLAGS)


def runtime_key(source: str, flags) -> str:
    """The cache key of a runtime object: its source, flags, compiler, machine and symgrad."""
    cc = compiler_command()
    h = hashlib.sha256()
    pic = sysconfig.get_config_var("CCSHARED") or "-fPIC"
    for part in (source, " ".join(runtime_flags(flags)), pic, _cpu_identity() if "-march=native" in flags else "",
                 cc, compiler_version(cc), platform.machine(), sys.platform, __version__):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def cached_runtime(key: str, into: Path) -> Path | None:
    """A copy in ``into`` of the cached runtime object of ``key``, if the cache has it intact (its
    SHA-256 recorded beside it), else None. The copy is what gets linked, so that a concurrent
    build replacing or evicting the cached object cannot touch this one."""
    folder = cache_dir() / "runtime"
    obj, digest = folder / f"{key[:32]}.o", folder / f"{key[:32]}.sha256"
    copy = into / f"{RUNTIME_SOURCE[:-2]}-cached.o"
    try:
        expected = digest.read_text().strip()
        shutil.copyfile(obj, copy)
        if _sha256(copy) == expected:
            return copy
    except OSError:
        pass
    return None


#: Runtime objects the cache keeps (one per runtime source, flags and compiler); the least
#: recently compiled ones beyond it are removed when a new one is added.
RUNTIME_CACHE_SIZE = 16


def publish_runtime(key: str, built: Path) -> None:
    """Put a freshly compiled runtime object into the cache: the object, then its digest, each
    written to a temporary name and renamed, under a lock; a cache that cannot be written is
    skipped (the next build compiles the object again). Keeps RUNTIME_CACHE_SIZE objects."""
    folder = cache_dir() / "runtime"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(folder / ".lock"):
            obj, digest = folder / f"{key[:32]}.o", folder / f"{key[:32]}.sha256"
            with contextlib.suppress(OSError):
                if digest.read_text().strip() == _sha256(obj):  # another build published it first
                    return
            tag = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            shutil.copyfile(built, obj.with_name(obj.name + tag))
            os.replace(obj.with_name(obj.name + tag), obj)
            digest.with_name(digest.name + tag).write_text(_sha256(obj) + "\n")
            os.replace(digest.with_name(digest.name + tag), digest)
            kept = sorted(folder.glob("*.o"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in kept[RUNTIME_CACHE_SIZE:]:  # builds link a copy (cached_runtime): safe to remove
                old.with_suffix(".sha256").unlink(missing_ok=True)
                old.unlink(missing_ok=True)
    except OSError:
        pass


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
    return OutputDirectoryError.unwritable(path, why)


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
        init = finish(rendered)
        return (path / "__init__.py").read_text() == init
    except (OSError, ValueError, KeyError):
        return False


def build(rendered: RenderedPackage, out_dir, *, flags=None, force: bool = False) -> BuildResult:
    """Compile ``rendered`` into ``out_dir/<name>`` unless an identical build is there already.

    ``flags`` default to :func:`compiler_flags` ().
    """
    start = time.perf_counter()
    if flags is None:
        flags = compiler_flags(source_size=rendered.source_size(), vector_math=rendered.calls_vector_math())
    flags = tuple(flags)
    out_dir = Path(out_dir).absolute()
    key = cache_key(rendered, flags)
    path = out_dir / rendered.name
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        lock = out_dir / f".{rendered.name}.lock"
        with _locked(lock):
            if not force and is_current(path, rendered, key):
                return BuildResult(path, key, True, extension_name(key), seconds=time.perf_counter() - start)
            if not force:
                _refuse_other_dtype(path, rendered)
            for stale in out_dir.glob(f".{rendered.name}.build-*"):
                shutil.rmtree(stale, ignore_errors=True)
            staging = out_dir / f".{rendered.name}.build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            staging.mkdir()
            try:
                files, runtime = _stage(rendered, staging, key, flags)
                _install(staging, path, files)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        raise _output_error(out_dir, exc) from None
    return BuildResult(path, key, False, extension_name(key), [path / f for f in files],
                       time.perf_counter() - start, runtime)


def _installed_dtype(path: Path) -> str | None:
    """The precision of the package installed at ``path``, or None if there is none."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if "dtype" in manifest:
        return manifest["dtype"]
    try:  # manifests written before the dtype was recorded: the package says it itself
        found = re.search(r"^DTYPE = '(\w+)'$", (path / "__init__.py").read_text(), re.MULTILINE)
    except OSError:
        return None
    return found.group(1) if found else None


def _refuse_other_dtype(path: Path, rendered: RenderedPackage) -> None:
    """A build of another precision may not silently replace the package of the same name."""
    installed, wanted = _installed_dtype(path), rendered.spec.dtype
    if installed is not None and installed != wanted:
        raise BuildError(
            f"{path} holds the {installed} build of {rendered.name!r}; the {wanted} build would replace it. "
            f"Build the {wanted} one into another folder (-o DIR; out_dir=... in Python), "
            f"or replace the {installed} one: symgrad build --force (force=True in Python)"
        )


def _stage(rendered: RenderedPackage, staging: Path, key: str, flags) -> tuple:
    """Write and compile the package in ``staging``; returns its file names, install order, and
    where the runtime helpers came from (see BuildResult.runtime)."""
    for name, text in rendered.files.items():
        (staging / name).write_text(text)
    extension = extension_name(key)
    built, runtime = _compile(rendered, staging, extension, flags)
    extension_file = built.name
    shutil.move(str(built), staging / extension_file)
    (staging / "__init__.py").write_text(finish(rendered))
    manifest = {
        "key": key,
        "symgrad": __version__,
        "extension": extension,
        "extension_file": extension_file,
        "extension_sha256": _sha256(staging / extension_file),
        "init_sha256": _sha256(staging / "__init__.py"),  # the generated __init__.py checks both
        "flags": list(flags),
        "dtype": rendered.spec.dtype,
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return sorted(rendered.files) + [extension_file, "__init__.py", MANIFEST], runtime


def _install(staging: Path, path: Path, files: list) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name in files:
        os.replace(staging / name, path / name)
    keep = {f for f in files}
    for old in path.glob("_kernels_*"):
        if old.name not in keep:
            with contextlib.suppress(OSError):
                old.unlink()


def _compile(rendered: RenderedPackage, staging: Path, extension: str, flags) -> tuple:
    """Compile the kernels and cffi's wrapper in parallel, then link the extension with the
    runtime object; returns (the extension, "cached" or "compiled": the runtime object's origin).

    cffi writes the wrapper's C (out-of-line API mode); the compiler runs
    directly, so the flags are exactly the ones in the cache key. The runtime
    object comes from the cache when an identical one was compiled before; else
    it is compiled beside the kernels and then cached. It is linked statically
    into the extension, so the package runs where symgrad is not installed.
    """
    import cffi

    cc = compiler_command()
    compiler_version(cc)  # a missing compiler gets its own message
    ffi = cffi.FFI()
    ffi.cdef(rendered.cdef)
    ffi.set_source(extension, f'#include "{rendered.name}.h"\n#include "{rendered.python_source}"\n')
    wrapper = staging / f"{extension}.c"
    with contextlib.redirect_stdout(io.StringIO()):
        ffi.emit_c_code(str(wrapper))
    include = sysconfig.get_paths()["include"]
    pic = (sysconfig.get_config_var("CCSHARED") or "-fPIC").split()
    sanitize = tuple(f for f in flags if f.startswith("-fsanitize"))  # the wrapper and the link need them too
    glue = set(rendered.c_sources) - set(rendered.kernel_sources)
    units = [(wrapper, WRAPPER_FLAGS + sanitize)] + [
        (staging / name, glue_flags(flags) if name in glue else tuple(flags)) for name in rendered.c_sources]
    objects = [source.with_suffix(".o") for source, _ in units]
    runtime = None
    if RUNTIME_SOURCE in rendered.files:  # the helpers: from the cache, else compiled with the kernels
        runtime = runtime_key(rendered.files[RUNTIME_SOURCE], flags)
        cached = cached_runtime(runtime, staging)
        if cached is None:
            units.append((staging / RUNTIME_SOURCE, runtime_flags(flags)))
            objects.append(staging / RUNTIME_SOURCE.replace(".c", ".o"))
        else:
            objects.append(cached)
    jobs = []
    for source, options in units:
        command = [cc, *pic, *options, f"-I{staging}", f"-I{include}", "-c", str(source), "-o",
                   str(source.with_suffix(".o"))]
        jobs.append((command, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                               text=True, cwd=staging)))
    outputs = [(command, process.communicate()[0], process.returncode) for command, process in jobs]
    failed = [(command, output) for command, output, code in outputs if code != 0]
    if failed:
        _compile_failure(rendered, staging, failed)
    target = staging / (extension + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
    link = (sysconfig.get_config_var("LDSHARED") or f"{cc} -shared").split()
    link[0] = cc
    libraries = ["-lm"] + (["-lmvec"] if "-DSG_VECTOR_MATH" in flags else [])
    unused = ["-Wl,--gc-sections"] if sys.platform.startswith("linux") else []  # helpers no kernel calls
    command = [*link, *sanitize, *unused, *map(str, objects), *libraries, "-o", str(target)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=staging)
    if done.returncode != 0:
        _compile_failure(rendered, staging, [(command, done.stdout + done.stderr)])
    origin = None
    if runtime is not None:
        origin = "cached" if objects[-1].name.endswith("-cached.o") else "compiled"
        if origin == "compiled":
            publish_runtime(runtime, objects[-1])
    return target, origin


def _compile_failure(rendered: RenderedPackage, staging: Path, failed) -> None:
    kept = _keep_failed_sources(rendered, staging)
    details = "\n".join(f"$ {' '.join(command)}\n{_compiler_lines(output)}" for command, output in failed)
    raise CompileError(
        f"the C compiler failed on the generated code for {rendered.name!r}.\n"
        f"C source: {kept}\n--- compiler output ---\n{details}"
    )


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


def load(path) -> object:
    """Import the generated package at ``path`` (under a name unique to its build)."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"{path} is not a built symgrad package ({exc}); run symgrad build") from None
    try:
        module_name = f"_symgrad_models.{path.name}_{manifest['key'][:16]}"
        extension, recorded = path / manifest["extension_file"], manifest["extension_sha256"]
    except (KeyError, TypeError) as exc:
        raise BuildError(f"{path / MANIFEST} is incomplete (no {exc}); rebuild the package: "
                         f"symgrad build MODEL_FILE -o {path.parent}") from None
    if module_name in sys.modules:
        return sys.modules[module_name]
    # Loading a truncated or altered extension can crash the interpreter (a bus error), not raise.
    try:
        intact = _sha256(extension) == recorded
    except OSError as exc:
        raise BuildError(f"the compiled extension of {path} cannot be read ({exc.strerror or exc}); "
                         f"rebuild the package: symgrad build MODEL_FILE -o {path.parent}") from None
    if not intact:
        raise BuildError(f"the compiled extension {extension} is not the one this package was built with "
                         f"(its SHA-256 differs from the manifest's: truncated or altered); rebuild the "
                         f"package: symgrad build MODEL_FILE -o {path.parent} (symgrad.compile rebuilds it too)")
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
