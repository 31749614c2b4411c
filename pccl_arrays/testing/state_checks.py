"""The checks of a finished shared-state churn run (tests/test_state_churn.py, benchmarks/soak_state.py).

How this works. Peers of :func:`~pccl_arrays.testing.state_loop` leave progress lines (they survive a SIGKILL):
``sync`` and ``step`` lines carry the state's (lineage, revision) and hash, ``restart`` lines say a peer
restarted the lost state from a checkpoint. :func:`check_state_run` reads them all and asserts: one state hash
per (lineage, revision) over every peer and every line, every applied result exact, one quantized result per
(lineage, revision), final states among the recorded ones, no state received by peers that stayed, state
received by every newcomer that did not restart the group, and no hang (harness.check_no_hang).
"""

from __future__ import annotations

import collections

from .harness import check_no_hang


def check_state_run(h, schedule=None, catch_up_s: float = 8.0) -> dict:
    """Asserts the rules above over a finished Harness run of state_loop; returns figures. What was done is
    read from the harness's event log (a wipe's kills are decided when it runs); ``schedule`` is not needed."""
    results = h.results()
    done = [(a, t) for _, a, t in h.events]
    killed = {t for a, t in done if a == "kill"}
    stalled = {t for a, t in done if a == "stall"}
    asked_to_leave = {t for a, t in done if a == "leave"}
    assert set(results) == set(h.procs) - killed, (sorted(results), sorted(h.procs), killed)
    for i, res in results.items():
        assert "error" not in res, (i, res.get("traceback"))
        assert h.procs[i].returncode == 0, (i, h.log(i)[-2000:])
    left = {i for i, res in results.items() if res.get("left")}
    assert left <= asked_to_leave, (left, asked_to_leave)
    progress = {i: h.progress(i) for i in h.procs}
    # At every (lineage, revision), every peer that reached it holds the same state, whether it got there by a
    # step or a sync (progress files include killed peers), and every applied result was exact: world x the
    # step's gradient, never a partial sum. The quantized result of a step is the same bytes on every peer.
    by_revision, q_by_revision = collections.defaultdict(set), collections.defaultdict(set)
    steps = 0
    for i, lines in progress.items():
        for p in lines:
            if p["kind"] in ("step", "sync"):
                by_revision[(p["lineage"], p["revision"])].add(p["hash"])
            if p["kind"] == "step":
                assert p["exact"], (i, p)
                steps += 1
                if "qhash" in p:
                    q_by_revision[(p["lineage"], p["revision"])].add(p["qhash"])
    assert len(by_revision) >= 20, f"too few revisions to mean anything: {len(by_revision)}"
    diverged = {r: v for r, v in by_revision.items() if len(v) > 1}
    assert not diverged, diverged
    q_diverged = {r: v for r, v in q_by_revision.items() if len(v) > 1}
    assert not q_diverged, q_diverged
    # Final states (of peers that synced at least once) are recorded ones.
    for i, res in results.items():
        if res.get("syncs"):
            assert res["hash"] in by_revision[(res["lineage"], res["revision"])], (i, res)
    # A restart is loud: recorded, and said on the peer's stderr.
    restarts = {i: [p for p in lines if p["kind"] == "restart"] for i, lines in progress.items()}
    restarted = {i for i, r in restarts.items() if r}
    wipes = sum(a == "wipe" for _, a, _ in h.events)
    for i in restarted:
        assert "restarting the group's state" in h.log(i), i
    lineages = {p["lineage"] for r in restarts.values() for p in r}
    # Peers that stayed (never killed, stalled or rejoined) receive 0 bytes of state after their first sync;
    # peers spawned during the run received the state in their first sync, unless they restarted it.
    stayed = [i for i in results if i not in stalled and results[i]["rejoins"] == 0]
    spawned_late = {i for i in h.procs if h.spawned_at(i) >= h.run_started}
    received_first, stable_syncs = [], 0
    for i, lines in progress.items():
        syncs = [p for p in lines if p["kind"] == "sync"]
        if i in stayed:
            assert all(s["received"] == 0 for s in syncs[1:]), (i, [s["received"] for s in syncs])
            stable_syncs += len(syncs) - 1
        if i in spawned_late and syncs and i not in restarted:
            assert syncs[0]["received"] > 0 and syncs[0]["fetched"], (i, syncs[0])
            received_first.append(syncs[0])
    assert received_first, "no newcomer synced: the schedule did not exercise state transfer"
    check_no_hang(h, catch_up_s)
    return {"steps": steps, "revisions": len(by_revision), "stayed": len(stayed), "stable_syncs": stable_syncs,
            "newcomer_syncs": len(received_first),
            "newcomer_bytes": sum(s["received"] for s in received_first),
            "newcomer_sources": [s["sources"] for s in received_first],
            "quantized_revisions": len(q_by_revision), "left": len(left), "wipes": wipes,
            "restarts": len(lineages), "peers_restarting": len(restarted),
            "rejoins": sum(r["rejoins"] for r in results.values()),
            "peer_lost": sum(r["peer_lost"] for r in results.values())}
