"""Churn with shared state (issue acceptance): 4-6 peers run the DiLoCo-style loop of
pccl_arrays.testing.state_loop (update_topology, sync_shared_state, async all-reduce of a pseudo-gradient overlapping
the next step's work, deterministic update, revision += 1) for over a minute while a seeded schedule kills,
stalls and spawns peers; and a shorter run in which peers leave gracefully and a wipe forces a state restart."""

from __future__ import annotations

import pytest

from pccl_arrays.testing import Harness, Schedule
from pccl_arrays.testing import check_state_run
from test_faults_churn import CATCH_UP_S, EXIT_BOUND_S, PEER_TIMEOUT

SCHEDULE = dict(seed=3, duration=62.0, initial=5, min_peers=4, max_peers=6, kill_rate=0.12, stall_rate=0.05,
                spawn_rate=0.12, min_gap=4.0, stall_s=3.0, start=3.0)


@pytest.mark.timeout(150)
def test_churn_with_shared_state_keeps_every_peer_bit_identical(tmp_path):
    schedule = Schedule.random(**SCHEDULE)
    actions = {e.action for e in schedule.events}
    assert {"kill", "spawn", "stall"} <= actions, schedule.as_list()
    h = Harness({"peer_timeout": PEER_TIMEOUT, "handshake_timeout": 2.0}, "pccl_arrays.testing:state_loop",
                {"n": 1 << 18, "busy_ms": 20.0}, tmp_path)
    try:
        h.start(SCHEDULE["initial"])
        h.run(schedule)
        h.wait_all(EXIT_BOUND_S)
        figures = check_state_run(h, schedule, CATCH_UP_S)
        print(figures)
    finally:
        h.close()
    assert all(p.poll() is not None for p in h.procs.values()), "a child process is still running"


@pytest.mark.timeout(120)
def test_leaves_and_a_wipe_restart_the_state_loudly_from_the_checkpoint(tmp_path):
    """Two peers leave gracefully (they exit normally, the others go on); a wipe kills every live peer at once and
    spawns three newcomers: each finds the state lost, says so, and the group restarts from the last checkpoint
    (a multiple of checkpoint_every, past 0) as lineage 1, which later newcomers receive."""
    schedule = Schedule([(3.0, "leave", 1), (6.0, "spawn", 4), (9.0, "kill", 0), (13.0, "wipe", 3),
                         (18.0, "leave", 5), (21.0, "spawn", 8), (24.0, "stall", 6), (27.0, "resume", 6)],
                        duration=31.0)
    h = Harness({"peer_timeout": PEER_TIMEOUT, "handshake_timeout": 2.0}, "pccl_arrays.testing:state_loop",
                {"n": 1 << 16, "busy_ms": 10.0, "quantized": True, "checkpoint_every": 20}, tmp_path)
    try:
        h.start(4)
        h.run(schedule)
        h.wait_all(EXIT_BOUND_S)
        figures = check_state_run(h, schedule, CATCH_UP_S)
        results = h.results()
    finally:
        h.close()
    assert (figures["left"], figures["wipes"], figures["restarts"]) == (2, 1, 1), figures
    assert results[1]["left"] and results[5]["left"], (results[1], results[5])
    # The wipe killed 2, 3 and 4 (0 was killed before, 1 had left) and spawned 5, 6, 7.
    wipe_at = next(ts for ts, a, _ in h.events if a == "wipe")
    wiped = sorted(t for ts, a, t in h.events if a == "kill" and ts == wipe_at)
    assert wiped == [2, 3, 4] and [t for _, a, t in h.events if a == "spawn"][-4:-1] == [5, 6, 7], h.events
    restarts = [p for i in (5, 6, 7) for p in h.progress(i) if p["kind"] == "restart"]
    assert restarts, "nobody restarted the lost state"
    last_before = max(p["revision"] for i in (2, 3, 4) for p in h.progress(i) if p["kind"] == "step")
    for r in restarts:  # restarted from the last checkpoint: at most 20 revisions lost
        assert r["lineage"] == 1 and r["revision"] % 20 == 0 and 0 < r["revision"] <= last_before <= r["revision"] + 20
        assert "state is lost" in r["error"], r
    assert all(p["lineage"] == 1 for i in (5, 6, 7, 8) for p in h.progress(i) if p["kind"] == "step")
    assert max(p["revision"] for p in h.progress(8) if p["kind"] == "step") > restarts[0]["revision"]
    assert all(p.poll() is not None for p in h.procs.values()), "a child process is still running"
