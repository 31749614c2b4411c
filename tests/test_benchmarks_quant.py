"""benchmarks/quant.py --quick runs as a smoke test: it must finish and write valid JSON with every section.

No speed assertion: the figures depend on the machine. The script runs from a neutral working directory and
imports pccl_arrays as the test suite does (installed, or whatever the environment provides).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "quant.py"


@pytest.mark.timeout(180)
def test_quant_benchmark_quick_mode_writes_valid_json(tmp_path):
    out = tmp_path / "quant.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=str(Path(__file__).parent),
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "quant" and doc["config"]["quick"] is True
    assert doc["errors"] == []

    # 1. kernels: memcpy and the three kernels for both kinds and every block
    ops = {(r["op"], r["kind"], r["block"]) for r in doc["kernels"]["rows"]}
    assert ("memcpy", None, None) in ops
    for kind in ("minmax", "zeropoint"):
        for block in (256, 512, 1024, 2048, 4096):
            for op in ("quantize", "dequantize", "reduce_hop"):
                assert (op, kind, block) in ops
    assert all(r["GBps"]["median"] > 0 for r in doc["kernels"]["rows"])

    # 2. bandwidth: 2 peers, every mode timed and correct, quantized moves about a quarter of the bytes
    rows = doc["allreduce"]["rows"]
    assert rows and all(r["peers"] == 2 for r in rows)
    for r in rows:
        for mode in ("none", "quantized", "fresh"):
            assert r[mode]["correct"] and r[mode]["latency_ms"]["median"] > 0
        assert r["ratio"] > 0 and 0.2 < r["bytes_sent_ratio"] < 0.3

    # 3. error: our format (from real all-reduces, equal to the simulation) and the baseline, every block
    err = doc["error"]
    assert err["baseline"] and {r["block"] for r in err["rows"]} == {256, 512, 1024, 2048, 4096}
    for r in err["rows"]:
        assert r["source"] == "all-reduce" and r["matches_simulation"] and r["identical_on_peers"]
        assert r["rms"] > 0 and r["ratio_rms"] > 0 and r["overhead"] == 8 / r["block"]
    assert doc["block_choice"]["chosen"] in (1024, 2048, 4096)  # the only blocks with metadata <= 1%

    # 4. Triton: measured on a CUDA machine, otherwise said plainly with the command to run
    tr = doc["triton"]
    if not tr["measured"]:
        assert "NOT MEASURED" in proc.stdout and tr["command"] in proc.stdout
    assert doc["goals"] and all(isinstance(g["met"], bool) for g in doc["goals"])
