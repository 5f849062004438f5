"""An installable wheel of a built package (``symgrad build MODEL.py --wheel``).

The wheel holds the package folder as :func:`symgrad.build.build` left it
(``__init__.py``, ``_runtime.py``, the compiled extension, its C sources
and manifest) under the model's name, so ``pip install`` of it gives
``import <model name>`` anywhere, without symgrad or SymPy. It is written
with the standard library, following the binary distribution format
(https://packaging.python.org/specifications/binary-distribution-format/):
``<name>-<version>.dist-info`` with METADATA, WHEEL and RECORD (a SHA-256
and size per file), entries in a fixed order with fixed timestamps, so the
same build gives the same bytes.

Tags: the extension is compiled for this interpreter's ABI and this
platform, so the wheel is tagged e.g. ``cp311-cp311-linux_x86_64``: pip
installs it on machines of the same platform and Python version (on Linux,
with a glibc at least as new as the building machine's; a ``--native``
build also needs a CPU like the building one's, which no tag can say).
The version is symgrad's plus the build key as a local label
(``0.1.0+cf04b082d5dc4251``): a changed model is a new version.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

from . import __version__
from .build import MANIFEST
from .errors import BuildError, OutputDirectoryError

#: What the generated package imports: NumPy for arrays, cffi for the extension (as in pyproject.toml).
REQUIREMENTS = ("numpy>=1.24", "cffi>=1.16")
#: A wheel entry's timestamp: the earliest a zip file can hold, for reproducible bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_DISTRIBUTION_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_]*[A-Za-z0-9])?$")
_SHADOWED = {"numpy", "cffi", "pycparser", "_cffi_backend", "symgrad", "sympy"}


def wheel_tag() -> str:
    """``python-abi-platform`` of an extension built by this interpreter."""
    version = f"{sys.version_info.major}{sys.version_info.minor}"
    if sys.implementation.name == "cpython":
        interpreter = f"cp{version}"
        abi = f"cp{version}{sys.abiflags}"
    else:  # PyPy and others: the ABI their extension suffix names, as packaging.tags spells it
        interpreter = f"{sys.implementation.name[:2]}{version}"
        abi = re.sub(r"[-.]", "_", sysconfig.get_config_var("SOABI") or "none")
    platform = re.sub(r"[-.]", "_", sysconfig.get_platform())
    return f"{interpreter}-{abi}-{platform}"


def write_wheel(package_path, out_dir=None) -> Path:
    """Write the wheel of the built package at ``package_path`` into ``out_dir``
    (default: the folder that holds the package); returns the wheel's path."""
    package_path = Path(package_path).absolute()
    name = package_path.name
    try:
        manifest = json.loads((package_path / MANIFEST).read_text())
        extension_file = manifest["extension_file"]
        key = manifest["key"]
    except (OSError, ValueError, KeyError) as exc:
        raise BuildError(f"{package_path} is not a built symgrad package ({exc}); run symgrad build first") from None
    _check_name(name)
    version = f"{__version__}+{key[:16]}"
    files = package_files(package_path, extension_file)
    dist_info = f"{name}-{version}.dist-info"
    entries = [(f"{name}/{f.name}", f.read_bytes(), _mode(f)) for f in files]
    entries += [
        (f"{dist_info}/METADATA", _metadata(name, version, package_path).encode(), 0o644),
        (f"{dist_info}/WHEEL", _wheel_file().encode(), 0o644),
    ]
    record = "".join(f"{path},sha256={_digest(data)},{len(data)}\n" for path, data, _ in entries)
    entries.append((f"{dist_info}/RECORD", (record + f"{dist_info}/RECORD,,\n").encode(), 0o644))
    out_dir = Path(out_dir).absolute() if out_dir is not None else package_path.parent
    target = out_dir / f"{name}-{version}-{wheel_tag()}.whl"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_zip(target, entries)
    except OSError as exc:
        raise OutputDirectoryError(f"cannot write the wheel of {name!r} to {out_dir}: {exc.strerror or exc}. "
                                   f"Choose another output folder (symgrad build -o DIR).") from None
    return target


def _check_name(name: str) -> None:
    if not _DISTRIBUTION_NAME.match(name):
        raise BuildError(f"the model name {name!r} cannot name a wheel: a distribution name is ASCII letters, "
                         f"digits and _, beginning and ending with a letter or digit. Rename the model to build "
                         f"a wheel of it")
    if name.lower() in _SHADOWED or name in sys.stdlib_module_names:
        raise BuildError(f"a wheel of the model {name!r} would install a package that hides the module {name!r} "
                         f"(its own requirement or Python's). Rename the model to build a wheel of it")


def package_files(path: Path, extension_file: str) -> list:
    """The files of the package: sources, wrapper and manifest, and the one current extension."""
    files = []
    for f in sorted(path.iterdir()):
        if not f.is_file() or (f.name.startswith(".") and f.name != MANIFEST):
            continue
        if f.name.startswith("_kernels_") and f.name != extension_file:
            continue
        files.append(f)
    if not any(f.name == extension_file for f in files):
        raise BuildError(f"{path} lacks its compiled extension {extension_file}; rebuild it (symgrad build --force)")
    return files


def _mode(path: Path) -> int:
    return 0o755 if path.suffix in (".so", ".pyd", ".dylib") else 0o644


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def _metadata(name: str, version: str, path: Path) -> str:
    """Core metadata (version 2.1): the package's name, version, requirements and docstring."""
    summary = f"Compiled gradient kernels of the symgrad model {name}"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", f"Summary: {summary}",
             f"Requires-Python: =={sys.version_info.major}.{sys.version_info.minor}.*"]
    lines += [f"Requires-Dist: {requirement}" for requirement in REQUIREMENTS]
    lines.append("Description-Content-Type: text/plain")
    description = _docstring(path / "__init__.py")
    return "\n".join(lines) + "\n\n" + description + ("\n" if description else "")


def _docstring(init: Path) -> str:
    import ast

    try:
        return ast.get_docstring(ast.parse(init.read_text())) or ""
    except (OSError, SyntaxError, ValueError):
        return ""


def _wheel_file() -> str:
    return (f"Wheel-Version: 1.0\nGenerator: symgrad {__version__}\nRoot-Is-Purelib: false\n"
            f"Tag: {wheel_tag()}\n")


def _write_zip(target: Path, entries: list) -> None:
    """Write the entries into ``target`` through a temporary file and a rename."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path, data, mode in entries:
                info = zipfile.ZipInfo(path, date_time=_EPOCH)
                info.external_attr = (0o100000 | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
