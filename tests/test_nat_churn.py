"""Peers behind NAT under churn (docs/nat.md): the shared-state loop of pccl_arrays.testing.state_loop (update_topology,
sync_shared_state, optimize_topology, async all-reduce, exact results, bit-identical state) with
three reachable peers and three behind NAT, while a schedule kills a peer behind NAT, brings a newcomer behind NAT
(it receives the state), kills reachable peers until more than half are behind NAT (their ring edges go through
the one reachable peer left), kills that relaying peer (the master's relay takes over) and brings a
reachable newcomer. Here "behind NAT" is ``listen=None`` on loopback; tests/test_nat_netns.py runs the same
schedule with real address translation."""

from __future__ import annotations

import pytest

from pccl_arrays.testing import Harness, Schedule, check_state_run

PEER_TIMEOUT = 2.0
# Peers 0-2 and 7 reachable; 3, 4 and 6 behind one NAT, 5 behind another.
BEHIND_NAT = {3: "h1", 4: "h1", 5: "h2", 6: "h1"}
PUBLIC = {0: "p1", 1: "p2", 2: "p3", 7: "p1"}
EVENTS = [(3.0, "kill", 3), (6.0, "spawn", 6), (9.0, "kill", 0), (12.0, "kill", 1), (16.0, "kill", 2),
          (20.0, "spawn", 7)]
DURATION = 25.0
# Almost no work between collectives (busy_ms), so that most kills land inside one (the survivors then retry the
# step after a PeerLostError; test_nat.py's kill tests make sure of it, killing while bytes move).
# optimize_topology() once, with the first six (its probes take seconds: a step would pause across the events).
# A newcomer behind NAT waits for the master's probe of its address to time out (handshake_timeout) before
# it is admitted: its admission timeout allows for it.
PEER_ARGS = {"n": 1 << 17, "busy_ms": 1.0, "optimize_at": [0], "connections": 2, "admission_timeout": 10.0}


def run_nat_churn(tmp_path, *, placement, after_start=lambda: None, **harness_kw) -> tuple[Harness, dict]:
    """Runs the schedule (``after_start()`` once the first six are in); returns the harness (closed) and
    check_state_run's figures, after checking what the peers saw of reachability and relays."""
    h = Harness({"peer_timeout": PEER_TIMEOUT, "handshake_timeout": 2.0}, "pccl_arrays.testing:state_loop",
                PEER_ARGS, tmp_path, placement=placement, **harness_kw)
    try:
        h.start(6)
        joined = {i: next(p for p in h.progress(i) if p["kind"] == "joined") for i in range(6)}
        assert {i for i, p in joined.items() if not p["inbound"]} == {3, 4, 5}, joined
        for i in range(6):  # the group's optimize_topology() is done before the schedule starts
            while not any(p["kind"] == "optimize" for p in h.progress(i)):
                h.wait_progress(i, len(h.progress(i)) + 1, 30.0, what="optimize_topology()")
        after_start()
        h.run(Schedule(EVENTS, duration=DURATION))
        h.wait_all(30.0)
        figures = check_state_run(h, None, 8.0)
    finally:
        h.close()
    progress = {i: h.progress(i) for i in h.procs}
    syncs = {i: [p for p in lines if p["kind"] == "sync"] for i, lines in progress.items()}
    # The newcomer behind NAT (6) and the reachable one (7) received the state; someone optimized the ring.
    assert any(p["received"] > 0 for p in syncs[6]) and any(p["received"] > 0 for p in syncs[7])
    assert any(p["kind"] == "optimize" for lines in progress.values() for p in lines)
    # Before peer 2 was killed it was the only reachable peer among four: it relayed between the others.
    assert syncs[2][-1]["relay_pipes"] > 0, syncs[2][-1]
    # Every ring kept the peers behind NAT apart whenever at most half of them were.
    peer_of = {i: next(p["peer"] for p in lines if p["kind"] == "joined") for i, lines in progress.items() if lines}
    nat_ids = {peer_of[i] for i in BEHIND_NAT if i in peer_of}
    for lines in syncs.values():
        for p in lines:
            ring = p["ring"]
            behind = sum(1 for x in ring if x in nat_ids)
            pairs = {tuple(sorted((ring[k], ring[(k + 1) % len(ring)]))) for k in range(len(ring))} if len(ring) > 1 else set()
            adjacent = sum(1 for a, b in pairs if a in nat_ids and b in nat_ids)
            fewest = 0 if len(ring) < 2 else (1 if len(ring) == 2 and behind == 2 else max(0, 2 * behind - len(ring)))
            assert adjacent == fewest, (ring, nat_ids)
    return h, figures


@pytest.mark.timeout(150)
def test_churn_with_peers_behind_nat_on_loopback(tmp_path):
    def placement(i: int) -> dict:
        if i in BEHIND_NAT:
            return {"args": {"comm": {"listen": None}}}
        return {}

    h, figures = run_nat_churn(tmp_path, placement=placement)
    print(figures)
