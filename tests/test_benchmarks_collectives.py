"""benchmarks/collectives.py's quick mode as a smoke test: 3 peer processes run broadcast, all_gather and
reduce_scatter at 64 KiB and 1 MiB with pccl_arrays and, where torch is installed, gloo; every result is checked
exactly by the peers (a wrong one makes the run exit 1), and the table has one row per collective and size (no
speed assertion). About 10 s on a 2-core machine."""

from __future__ import annotations

import importlib.util

import pytest

from test_benchmarks import run_quick

COLLECTIVES = ("broadcast", "all_gather", "reduce_scatter")
SIZES = (64 << 10, 1 << 20)


@pytest.mark.timeout(90)
def test_collectives_benchmark_quick_mode_checks_and_tabulates_every_collective(tmp_path):
    stdout, doc = run_quick(tmp_path, "collectives.py", "--quick", timeout=80)
    assert doc["errors"] == []  # among them: a wrong result, a failed group, a missing row
    systems = ["pccl_arrays"]
    if importlib.util.find_spec("torch") is not None:
        systems.append("gloo")
    else:
        assert any("gloo column skipped" in n for n in doc["notes"])
    assert {(r["system"], r["collective"], r["bytes"]) for r in doc["rows"]} == {
        (s, c, n) for s in systems for c in COLLECTIVES for n in SIZES}
    for r in doc["rows"]:
        assert r["peers"] == 3 and r["correct"] and r["repeats"] == 3
        assert r["algbw_GBps"]["median"] > 0 and r["busbw_GBps"]["median"] <= r["algbw_GBps"]["median"]
        assert r["exact_bytes"] % 12 == 0 and 0 <= r["bytes"] - r["exact_bytes"] < 12
        if r["system"] == "pccl_arrays":  # every peer got (N-1)/N of S at least, broadcast's non-roots all of it
            assert r["max_bytes_received_per_peer"] >= r["must_receive_bytes_per_peer"]

    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "pccl/gloo" in line and "collective" in line)
    table = lines[header + 2:header + 2 + len(COLLECTIVES) * len(SIZES)]
    assert [line.split()[1] for line in table] == [c for c in COLLECTIVES for _ in SIZES]
    assert all("WRONG" not in line for line in table)
    if "gloo" in systems:  # a ratio in every row
        assert all(float(line.split("|")[2]) > 0 for line in table)
    assert "oversubscribed" in stdout and "Machine:" in stdout
