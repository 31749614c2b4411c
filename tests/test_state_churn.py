"""Churn with shared state (issue acceptance): 4-6 peers run the DiLoCo-style loop of
pccl_arrays.testing.state_loop (update_topology, sync_shared_state, async all-reduce of a pseudo-gradient overlapping
the next step's work, deterministic update, revision += 1) for over a minute while a seeded schedule kills,
stalls and spawns peers."""

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
