"""The benchmark suite keeps working: its quick run, once, at tiny sizes (it times nothing that is asserted)."""

import pytest


def test_benchmark_smoke_run():
    pytest.importorskip("sklearn")
    from benchmarks.smoke import smoke

    problems = smoke()
    assert problems == [], "\n".join(problems)
