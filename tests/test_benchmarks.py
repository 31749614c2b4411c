"""The benchmarks' quick modes run as smoke tests: they must finish and write valid JSON (no speed assertion)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
def test_allreduce_benchmark_quick_mode_writes_valid_json(tmp_path):
    out = tmp_path / "allreduce.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "allreduce.py"), "--quick", "--peers", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    systems = {row["system"] for row in result["rows"]}
    assert "pccl_arrays" in systems
    for row in result["rows"]:
        assert row["peers"] == 2 and row["latency_ms"]["median"] > 0
    assert "ring bound" in proc.stdout.lower() or "bound" in proc.stdout


@pytest.mark.timeout(120)
def test_shared_state_soak_runs_its_checks_and_writes_valid_json(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak_state.py"), "--minutes", "0.25",
                           "--n", "65536", "--out", str(out)], capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["errors"] == [] and doc["checks"]["revisions"] >= 20 and doc["hash_GBps"] > 0
    assert "moved 0 bytes" in proc.stdout
