"""Shared state when peers die: a holder killed (SIGKILL) or stalled (SIGSTOP) in the middle of sending state to a
newcomer."""

from __future__ import annotations

import os
import signal

import pytest

from procs import spawn, wait_all


@pytest.mark.timeout(90)
def test_holder_killed_mid_transfer_fails_the_sync_everywhere_and_the_retry_is_exact(master, tmp_path):
    world, victim, n = 4, 1, 16 << 20  # 64 MiB of float32
    peers = [spawn(master.address, "holder_dies_mid_sync", r, world, tmp_path, victim=victim, n=n)
             for r in range(world)]
    wait_all(peers, 75)
    assert peers[victim].proc.returncode == -signal.SIGKILL
    t_kill = float((tmp_path / "stamp").read_text())
    results = [p.result() for p in peers if p.rank != victim]
    for res in results:
        assert res["error"] == "PeerLostError", res
        assert res["t_error"] - t_kill < 2.0, res
        assert res["unchanged"], "a failed sync must not change any state"
        assert res["revision"] == 3
    newcomer = results[-1]
    assert newcomer["retry_fetched"] == ["step", "w"] and newcomer["exact"]
    assert newcomer["retry_sources"] == 2, "the retry stripes over both surviving holders"
    assert len({str(r["hashes"]) for r in results}) == 1
    assert master.stats()["syncs_aborted"] >= 1 and master.stats()["syncs_committed"] >= 1


@pytest.mark.timeout(90)
def test_holder_stalled_mid_transfer_costs_one_deadline_and_is_evicted(master, tmp_path):
    # The master fixture evicts after 2 s of silence; data_timeout (10 s) is longer, so the eviction fires first.
    world, victim, n = 4, 0, 16 << 20
    peers = [spawn(master.address, "holder_dies_mid_sync", r, world, tmp_path, victim=victim, n=n, how="stop")
             for r in range(world)]
    for p in peers:
        if p.rank != victim:
            p.wait_event("survived", 60)
    t_stop = float((tmp_path / "stamp").read_text())
    os.kill(peers[victim].proc.pid, signal.SIGCONT)
    wait_all(peers, 30)
    results = [p.result() for p in peers if p.rank != victim]
    for res in results:
        assert res["error"] == "PeerLostError", res
        assert res["t_error"] - t_stop < 2.0 + 1.5, res  # peer_timeout plus scheduling slack
        assert res["unchanged"] and res["revision"] == 3, res
    assert results[-1]["exact"] and results[-1]["retry_sources"] == 2
    v = peers[victim].result()
    assert v["victim_error"] == "PeerEvictedError" and v["unchanged"], v
    assert master.stats()["evictions"] == 1

