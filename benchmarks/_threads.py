"""Pin every contender to one thread. Must run before NumPy (or JAX, torch) is imported.

``benchmarks/__init__.py`` imports this module first, so ``python -m
benchmarks.run`` (and anything else that imports the package) gets the
settings before any numerical library loads. The count is 1 unless the
environment variable ``SYMGRAD_BENCH_THREADS`` says otherwise.
"""

import os

THREADS = int(os.environ.get("SYMGRAD_BENCH_THREADS", "1") or "1")

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)

for _name in THREAD_VARIABLES:
    os.environ[_name] = str(THREADS)

if THREADS == 1:
    os.environ["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
else:
    os.environ["XLA_FLAGS"] = f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}"
# JAX on the CPU only, and no attempt to find an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def thread_settings() -> dict:
    """The settings as they are in force now (for RESULTS.md)."""
    settings = {name: os.environ.get(name, "") for name in THREAD_VARIABLES}
    settings["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    return settings
