"""The benchmarks' quick modes run as smoke tests: they must finish and write valid JSON (no speed assertion)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_quick(tmp_path: Path, script: str, *args: str, timeout: float) -> tuple[str, dict]:
    """Runs benchmarks/SCRIPT with ARGS in tmp_path, its JSON written there; returns (its stdout, the JSON)."""
    out = tmp_path / (Path(script).stem + ".json")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--out", str(out)],
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.timeout(180)
def test_allreduce_benchmark_quick_mode_writes_valid_json(tmp_path):
    stdout, doc = run_quick(tmp_path, "allreduce.py", "--quick", "--peers", "2", timeout=170)
    systems = {row["system"] for row in doc["rows"]}
    assert "pccl_arrays" in systems
    for row in doc["rows"]:
        assert row["peers"] == 2 and row["latency_ms"]["median"] > 0
    assert "ring bound" in stdout.lower() or "bound" in stdout


@pytest.mark.timeout(120)
def test_shared_state_soak_runs_its_checks_and_writes_valid_json(tmp_path):
    stdout, doc = run_quick(tmp_path, "soak_state.py", "--minutes", "0.25", "--n", "65536", timeout=110)
    assert doc["errors"] == [] and doc["checks"]["revisions"] >= 20 and doc["hash_GBps"] > 0
    assert "moved 0 bytes" in stdout
    # the quantized all-reduce of every step agreed on every peer; the gap and leftover figures are there
    assert doc["checks"]["quantized_revisions"] >= 20
    assert doc["gap"]["seconds"] > 0 and doc["leftovers"] == []


@pytest.mark.timeout(120)
def test_master_soak_kills_the_master_and_runs_every_check(tmp_path):
    """The shared-state soak with the master SIGKILLed and restarted on its address twice (seed 11's schedule),
    a peer asked to leave while it is down: every check of the soak holds and each restart is taken over."""
    stdout, doc = run_quick(tmp_path, "soak_master.py", "--minutes", "0.5", "--seed", "11", "--n", "65536",
                            timeout=110)
    assert doc["errors"] == [] and doc["checks"]["revisions"] >= 20 and doc["leftovers"] == []
    m = doc["master"]
    assert doc["events"]["master_kill"] == m["kills"] >= 2 and len(doc["master"]["outages"]) == m["kills"]
    assert any(o["while_down"] for o in m["outages"])  # the peer churn goes on while the master is down
    for o in m["outages"]:
        assert 0.5 <= o["down_s"] and o["resume_s"] is not None and o["resume_s"] < 15
    assert m["log"]["restarts_taken_over"] == m["kills"] and m["log"]["takeovers"] == m["kills"]
    assert doc["gaps"]["outside_outages_s"] > 0 and "master kills: 2" in stdout and "moved 0 bytes" in stdout


@pytest.mark.timeout(240)
def test_wan_benchmark_quick_mode_writes_valid_json(tmp_path):
    """Peers advertise their relay's address, so every byte between them crosses the emulated path."""
    stdout, doc = run_quick(tmp_path, "wan.py", "--quick", timeout=230)
    assert doc["errors"] == []
    kinds = {(r["profile"], r["k"], r["kind"]) for r in doc["rows"]}
    assert len(kinds) == 2 * 6 * 3  # float32, uint8 and 4-bit (minmax4, rotated)
    for r in doc["rows"]:
        assert r["seconds"] > 0 and r["wire_MBps"] > 0 and r["stripes"] >= 1
    assert {row["profile"] for row in doc["extrapolation_1B"]} == {"continent", "transatlantic"}


@pytest.mark.timeout(120)
def test_gpu_quant_wan_benchmark_runs_the_host_path_and_says_so(tmp_path):
    stdout, doc = run_quick(tmp_path, "gpu_quant_wan.py", "--quick", timeout=110)
    assert doc["errors"] == [] and doc["effective_MBps"] > 0
    assert doc["stages_s"]["wan_transfer"] > 0 and doc["stages_s"]["quantize"] > 0
    if doc["path"] == "host":
        assert "device_to_host" not in doc["stages_s"]
        assert "device stages were not measured" in stdout and "--size 256MiB" in stdout


@pytest.mark.timeout(180)
def test_security_benchmark_quick_mode_measures_every_mode(tmp_path):
    stdout, doc = run_quick(tmp_path, "security.py", "--quick", timeout=170)
    assert doc["errors"] == []
    assert {(r["mode"], r["bytes"]) for r in doc["table"]} == {(m, s) for m in ("plain", "integrity", "encrypted")
                                                              for s in (4096, 1 << 20)}
    assert all(r["algbw_GBps"] > 0 for r in doc["table"]) and "vs plain" in stdout


@pytest.mark.timeout(240)
def test_topology_benchmark_quick_mode_optimizes_the_crossing_ring(tmp_path):
    stdout, doc = run_quick(tmp_path, "topology.py", "--quick", timeout=230)
    assert doc["errors"] == [] and [r["ring"] for r in doc["rows"]][1] == "after optimize_topology()"
    assert all(r["algbw_MBps"] > 0 for r in doc["rows"]) and doc["links_probed"] == 30 and doc["probe_s"] > 0


@pytest.mark.timeout(180)
def test_scale_benchmark_quick_mode_writes_valid_json(tmp_path):
    stdout, doc = run_quick(tmp_path, "scale.py", "--quick", timeout=170)
    assert doc["errors"] == [] and [r["peers"] for r in doc["rows"]] == [2, 4]
    for r in doc["rows"]:
        assert r["latency_s"]["4096"] > 0 and r["update_topology_s"] > 0 and r["master_cpu_per_op_us"] > 0
    assert "per_hop_s" in doc["fit"] and "hops" in stdout
    assert [r["peers"] for r in doc["master_logic"]] == [2, 4, 8] and "no sockets" in stdout


@pytest.mark.timeout(120)
def test_join_benchmark_quick_mode_writes_valid_json(tmp_path):
    stdout, doc = run_quick(tmp_path, "join.py", "--quick", timeout=110)
    this = doc["builds"]["this"]
    assert this["joins"] == 2 and this["joins_correct"]  # every newcomer received the holders' state exactly
    assert all(j["bytes_received"] == 64 << 20 for j in doc["samples"]["this"]["joins"])
    assert 0 < this["admission_s"]["median"] < this["total_s"]["median"]
    for n in ("2", "3"):
        assert this["latency_s"][n]["fresh"]["median"] > 0 and this["latency_s"][n]["out"]["median"] > 0
    assert {g["goal"] for g in doc["goals"]} >= {"join"} and not doc["errors"]
    assert "4 KiB all-reduce" in stdout


@pytest.mark.timeout(120)
def test_nat_benchmark_runs_every_case_exactly_and_relays_only_when_forced(tmp_path):
    """4 peers through the emulated continent with 0, 1, 2 and 3 outbound-only peers (listen=None), tiny arrays:
    every result exact, rings keep up to half of them apart (no relayed edge), and more than half forces relayed
    edges whose bytes a reachable peer's data port carried."""
    stdout, doc = run_quick(tmp_path, "nat.py", "--quick", "--seconds", "0.2", "--repeats", "1", timeout=110)
    assert doc["errors"] == []
    cases = {c["case"]: c for c in doc["cases"]}
    assert list(cases) == ["all_reachable", "one_outbound", "half_outbound", "relay_forced"]
    assert [c["outbound_only"] for c in cases.values()] == [0, 1, 2, 3]
    for c in cases.values():
        assert c["exact"] and c["algbw_MBps"] > 0 and c["ratio"] > 0
    assert cases["half_outbound"]["relayed_edges"] == 0 and cases["one_outbound"]["relayed_edges"] == 0
    forced = cases["relay_forced"]
    assert forced["relayed_edges"] >= 1 and sum(forced["relay_bytes"].values()) > 0 and forced["via_master"] == 0
    assert cases["one_outbound"]["goal_met"] is not None and forced["goal_met"] is None
    assert "relay forced" in stdout and "relay_bytes" in stdout


@pytest.mark.timeout(120)
def test_monitoring_benchmark_quick_mode_measures_both_modes(tmp_path):
    """HTTP off, then on with a scraper: both measured in one run, the scraper scraped, the ratio printed (the
    goal itself is for the full run: a quick one is too short to hold within 5 %)."""
    stdout, doc = run_quick(tmp_path, "monitoring.py", "--quick", timeout=110)
    assert doc["errors"] == [] and [r["http"] for r in doc["rows"]] == [False, True]
    assert doc["off"]["loop_us_per_op"] > 0 and doc["on"]["loop_us_per_op"] > 0 and doc["on"]["scrapes"] >= 1
    assert doc["ratio_loop"] > 0 and "on / off: loop thread" in stdout
