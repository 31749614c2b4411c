"""benchmarks/reduce_scatter.py's quick mode as a smoke test: the ring and the direct reduce-scatter both run at
N = 2 and 3, send the same bytes, and the JSON is valid (no speed assertion)."""

from __future__ import annotations

import pytest

from test_benchmarks import run_quick


@pytest.mark.timeout(180)
def test_reduce_scatter_benchmark_quick_mode_compares_both_algorithms(tmp_path):
    stdout, doc = run_quick(tmp_path, "reduce_scatter.py", "--quick", timeout=170)
    assert doc["errors"] == []  # among them: the two algorithms sent different byte counts
    assert {(r["world"], r["format"]) for r in doc["rows"]} == {(n, f) for n in (2, 3)
                                                                 for f in ("minmax", "minmax4 rotated")}
    for r in doc["rows"]:
        assert r["ring_ms"] > 0 and r["direct_ms"] > 0 and r["bytes_sent"] > 0
    assert "direct/ring" in stdout
