"""Churn: peers running the README training loop are killed, stalled and spawned on a schedule
(pccl_arrays.testing). Whatever happens, no peer hangs, every committed result is right, nothing is left running."""

from __future__ import annotations

import collections

import pytest

from pccl_arrays import errors as pa_errors
from pccl_arrays.testing import Harness, Schedule, check_no_hang

PEER_TIMEOUT = 2.0  # the master evicts a stalled peer after this much silence
CATCH_UP_S = 8.0  # a spawned or resumed peer records a step within this long (start-up, admission, rejoin)
EXIT_BOUND_S = 15.0  # every process ends within this long after the harness asks the peers to stop


def _run(tmp_path, schedule: Schedule, initial: int) -> Harness:
    h = Harness({"peer_timeout": PEER_TIMEOUT, "handshake_timeout": 2.0}, "pccl_arrays.testing:allreduce_loop",
                {"n": 1024}, tmp_path)
    h.start(initial)
    h.run(schedule)
    h.wait_all(EXIT_BOUND_S)
    return h


def _check(h: Harness, schedule: Schedule) -> None:
    results = h.results()
    killed = {e.target for e in schedule.events if e.action == "kill"}
    # Killed peers have no result; every other peer finished cleanly.
    assert set(results) == set(h.procs) - killed, (sorted(results), sorted(h.procs), killed)
    for i, res in results.items():
        assert "error" not in res, (i, res.get("traceback"))
        assert h.procs[i].returncode == 0, (i, h.log(i)[-2000:])
    # Every committed step is uniform and equals the world size (each peer contributes 1.0), and every peer that
    # recorded a step saw the same world and value for it (all or nothing). Progress files include killed peers.
    by_step = collections.defaultdict(set)
    for i in h.procs:
        for p in h.progress(i):
            if p["kind"] == "step":
                assert p["uniform"] and p["value"] == float(p["world"]), (i, p)
                by_step[p["step"]].add((p["world"], p["value"]))
    assert by_step, "no step was committed"
    assert all(len(v) == 1 for v in by_step.values()), {s: v for s, v in by_step.items() if len(v) > 1}
    # Result files agree with the progress files.
    for i, res in results.items():
        steps = [p["step"] for p in h.progress(i) if p["kind"] == "step"]
        assert [r[0] for r in res["records"]] == steps, i
    check_no_hang(h, CATCH_UP_S)
    # A stalled peer (stalled longer than the master's peer_timeout) was evicted and joined again.
    for e in schedule.events:
        if e.action == "stall":
            assert results[e.target]["rejoins"] >= 1, results[e.target]


@pytest.mark.timeout(60)
def test_deterministic_churn_kill_spawn_stall(tmp_path):
    schedule = Schedule([(1.5, "kill", 0), (4.0, "spawn", 4), (6.5, "stall", 1), (9.5, "resume", 1)], duration=12.5)
    h = _run(tmp_path, schedule, initial=4)
    try:
        _check(h, schedule)
        assert [(a, t) for ts, a, t in h.events if ts >= h.run_started] == [
            ("kill", 0), ("spawn", 4), ("stall", 1), ("resume", 1), ("stop", None)]
    finally:
        h.close()
    assert all(p.poll() is not None for p in h.procs.values()), "a child process is still running"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_random_churn_is_reproducible_and_consistent(tmp_path):
    args = dict(seed=8, duration=20.0, initial=5, min_peers=4, max_peers=6, kill_rate=0.15, stall_rate=0.1,
                spawn_rate=0.15, min_gap=3.0, stall_s=3.0)
    schedule = Schedule.random(**args)
    assert schedule.as_list() == Schedule.random(**args).as_list(), "the same seed gives the same events"
    assert schedule.as_list() != Schedule.random(**{**args, "seed": 9}).as_list()
    # seed 8 was picked because it draws every kind of event (kill, spawn, stall + resume)
    assert {e.action for e in schedule.events} == {"kill", "spawn", "stall", "resume"}, schedule.as_list()
    h = _run(tmp_path, schedule, initial=5)
    try:
        _check(h, schedule)
    finally:
        h.close()
    assert all(p.poll() is not None for p in h.procs.values()), "a child process is still running"


def test_random_schedules_with_leaves_and_wipes_keep_their_bounds():
    """Leaves and wipes join the draw only with a rate: old seeds give the same events; with them, the live peers
    stay within bounds (a wipe leaves min_peers newcomers) and nothing else happens for stall_s after a wipe; kept
    peers are never killed, stalled or asked to leave."""
    base = dict(seed=5, duration=600.0, initial=5, min_peers=3, max_peers=7, kill_rate=0.2, stall_rate=0.08,
                spawn_rate=0.22, min_gap=2.5, stall_s=3.0)
    assert Schedule.random(**base).as_list() == Schedule.random(**base, leave_rate=0.0, wipe_rate=0.0,
                                                                keep=0).as_list()
    with pytest.raises(pa_errors.InvalidArgumentError):
        Schedule.random(**base, keep=3)  # someone must be left to kill
    s = Schedule.random(**base, leave_rate=0.06, wipe_rate=0.02, keep=2)
    assert {"leave", "wipe"} <= {e.action for e in s.events}, s.as_list()
    live, next_index, kept = set(range(5)), 5, {0, 1}
    for e, after in zip(s.events, s.events[1:] + [None]):
        if e.action in ("kill", "leave", "stall"):
            assert e.target in live and e.target not in kept, (e, kept)
        if e.action in ("kill", "leave"):
            live.discard(e.target)
        elif e.action == "spawn":
            assert e.target == next_index
            live.add(next_index)
            next_index += 1
        elif e.action == "wipe":  # the kept peers die only here; the first newcomers are kept in their place
            live, next_index = set(range(next_index, next_index + e.target)), next_index + e.target
            kept = set(sorted(live)[:2])
            assert e.target == 3 and (after is None or after.t >= e.t + 3.0), (e, after)
        assert 3 <= len(live) <= 7, (e, live)


def test_random_schedules_with_master_kills_restart_it_and_leave_a_majority():
    """Master kills join the draw only with a rate (old seeds give the same events); each is followed by its
    restart after a down time in the given range, before the end; while the master is down there is no wipe and no
    other master kill, and fewer than half of the peers live at the kill are killed or leave; the next master kill
    comes master_settle after a restart at the earliest."""
    base = dict(seed=5, duration=600.0, initial=5, min_peers=3, max_peers=7, kill_rate=0.2, stall_rate=0.08,
                spawn_rate=0.22, min_gap=2.5, stall_s=3.0, leave_rate=0.06, wipe_rate=0.02, keep=2)
    assert Schedule.random(**base).as_list() == Schedule.random(**base, master_kill_rate=0.0).as_list()
    s = Schedule.random(**base, master_kill_rate=0.3, master_down=(0.5, 5.0), master_settle=4.0)
    kills = [e for e in s.events if e.action == "master_kill"]
    assert len(kills) >= 20 and len(kills) == sum(e.action == "master_restart" for e in s.events)
    live, next_index, down_since, live_at_kill, gone, restarted = set(range(5)), 5, None, 0, 0, -1e9
    busy_while_down = 0
    for e in s.events:
        if e.action == "master_kill":
            assert down_since is None and e.t >= restarted + 4.0, e
            down_since, live_at_kill, gone = e.t, len(live), 0
        elif e.action == "master_restart":
            assert down_since is not None and 0.5 <= e.t - down_since <= 5.0 and e.t < s.duration, e
            down_since, restarted = None, e.t
        elif down_since is not None:
            busy_while_down += 1
            assert e.action != "wipe", e
            if e.action in ("kill", "leave"):
                gone += 1
                assert 2 * gone < live_at_kill, (e, live_at_kill)
        if e.action in ("kill", "leave"):
            live.discard(e.target)
        elif e.action == "spawn":
            live.add(e.target)
            next_index = e.target + 1
        elif e.action == "wipe":
            live, next_index = set(range(next_index, next_index + e.target)), next_index + e.target
    assert down_since is None and busy_while_down > 0
