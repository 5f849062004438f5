"""The exceptions symgrad raises.

Every error a user can cause has its own class here, and its message names the
thing at fault (symbol, argument, file, line) and says what was expected. The
command line prints these messages without a traceback; anything else that
escapes is a bug in symgrad.

Generated modules raise the ``ArgumentError`` family too: their vendored runtime
imports these classes when symgrad is installed and defines look-alikes when it
is not, so ``except symgrad.errors.ArgumentError`` works on any generated module.
"""

from __future__ import annotations


class SymgradError(Exception):
    """Base class of every error symgrad raises on purpose."""


# --- model definition -------------------------------------------------------


class ModelError(SymgradError, ValueError):
    """A model declaration is inconsistent (names, shapes, roles, options)."""


class UndeclaredSymbolError(ModelError):
    """An expression uses a symbol that is neither a param nor an input."""


class UnsupportedFunctionError(ModelError):
    """An expression uses a SymPy construct symgrad has no rule for."""


class ModelShapeError(ModelError):
    """Matrix shapes in a model do not fit together."""


class OptionError(SymgradError, ValueError):
    """An option of a symgrad function or command has a value it cannot take."""


class ModelFileError(SymgradError):
    """A model file could not be read, run, or yielded no usable model."""


# --- calling a compiled module ---------------------------------------------


class ArgumentError(SymgradError, TypeError):
    """A call to a compiled kernel got a missing, unknown or malformed argument."""


class ArgumentShapeError(ArgumentError, ValueError):
    """An argument has the wrong shape, or batch sizes disagree."""


class ArgumentDtypeError(ArgumentError):
    """An argument has a dtype that cannot be converted without loss."""


class MissingKernelError(SymgradError, AttributeError):
    """The module was built without the kernel a function needs (add it to the Model's kernels=)."""


class KernelError(SymgradError, RuntimeError):
    """A kernel reported a failure while running (for example a class index out of range)."""


# --- building ---------------------------------------------------------------


class BuildError(SymgradError):
    """Generating or compiling a model's module failed."""


class CompilerNotFoundError(BuildError):
    """No working C compiler was found."""


class CompileError(BuildError):
    """The C compiler rejected the generated code; the message holds its output."""


class OutputDirectoryError(BuildError):
    """The output folder cannot be written (read-only, full, or not a folder).

    ``folder`` and ``reason`` let the command line name its own ``-o`` option
    in the advice; from Python, the advice names ``out_dir=``.
    """

    def __init__(self, message: str, *, folder=None, reason: str | None = None):
        super().__init__(message)
        self.folder = folder
        self.reason = reason

    @classmethod
    def unwritable(cls, folder, reason: str) -> "OutputDirectoryError":
        return cls(f"cannot write the generated package to {folder}: {reason}. "
                   f"Choose another output folder (out_dir=...)", folder=folder, reason=reason)

    def advice_for(self, command: str) -> str:
        """The message with the advice of the command line ``command`` (e.g. ``symgrad check``)."""
        if self.reason is None:
            return str(self)
        return (f"cannot write the generated package to {self.folder}: {self.reason}. "
                f"Choose another output folder: {command} -o DIR")
