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

    # 1b. the 4-bit and rotated formats' kernels, reduce_owner included
    fk = {(r["op"], r["kind"], r["block"], r["rotate"]) for r in doc["format_kernels"]["rows"]}
    for fmt in (("minmax", 1024, True), ("minmax4", 512, False), ("minmax4", 512, True)):
        for op in ("quantize", "dequantize", "reduce_hop_exact", "reduce_owner"):
            assert (op, *fmt) in fk
    assert all(r["GBps"]["median"] > 0 for r in doc["format_kernels"]["rows"])

    # 5. error against peers: N = 2..8, ring and direct, 8 and 4 bits with and without rotation, every data set
    # (the real one only when its file exists, else the reason it was skipped); the real check bit for bit
    sc = doc["scaling"]
    cases = {(r["dataset"], r["format"], r["reduce"], r["peers"]) for r in sc["rows"]}
    datasets = ["normal", "student-t"] + (["real"] if "skipped" not in sc["datasets"]["real"] else [])
    for ds in datasets:
        for fmt in ("8-bit", "8-bit rot", "4-bit", "4-bit rot"):
            for reduce in ("ring", "direct"):
                assert {(ds, fmt, reduce, n) for n in range(2, 9 if ds != "real" else 3)} <= cases
    if "skipped" in sc["datasets"]["real"]:
        assert "real data set was skipped" in proc.stdout
    for r in sc["rows"]:
        assert r["rms"] > 0 and r["rms_rel"] > 0 and r["max_abs"] >= r["rms"] and r["mean_se"] > 0
    check = doc["scaling_check"]["rows"]
    assert [r["reduce"] for r in check] == ["ring", "direct"]
    assert all(r["matches_simulation"] and r["identical_on_peers"] for r in check)
    assert {"rotation_halves_error", "direct_error_growth", "unbiased", "simulation_is_exact",
            "quantize_rotate_speed"} <= {g["goal"] for g in doc["goals"]}

    # 4. Triton: measured on a CUDA machine, otherwise said plainly with the command to run
    tr = doc["triton"]
    if not tr["measured"]:
        assert "NOT MEASURED" in proc.stdout and tr["command"] in proc.stdout
    assert doc["goals"] and all(isinstance(g["met"], bool) for g in doc["goals"])
