"""symgrad's benchmark suite: ``python -m benchmarks.run`` (see benchmarks/README.md)."""

from . import _threads  # noqa: F401  (sets the thread variables before NumPy loads)
