"""The run outlives its master (issue 25): peers running the README's loop verbatim (or the loop of
docs/shared_state.md) ride out a master that is SIGKILLed and restarted on the same address, a standby that takes
over from a primary that never returns, peers that join or die while the master is down, a master that stays
away longer than ``master_grace``, and a partition between two masters (the split-brain fence).

What every run must show (``_check_steps``): every peer that was not killed finishes with no exception reaching
its code; every revision has one state hash and one all-reduce result on every peer; every revision from 0 to the
last was committed exactly once (no revision lost, none repeated: each peer's syncs never go back, its all-reduces
never repeat a revision); and the state of every revision is exactly what the committed all-reduces before it
give, recomputed here bit for bit. The peers' logs are in tests/helpers/restart_scenarios.py.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import time

import numpy as np
import pytest

import pccl_arrays as pa
from procs import spawn, start_master_process, wait_all
from restart_scenarios import _state_hash
from tcp_proxy import Proxy

PEER_TIMEOUT = 3.0  # the masters' peer_timeout
COMPUTE_S = 0.02
N = 1000  # the loops' state: 1000 float32


# -- processes ----------------------------------------------------------------------------------------------------
class Run:
    """The masters and peers of one test; every one of them is killed when the test ends."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.peers: dict[int, object] = {}
        self.masters: list = []
        self.closers: list = []

    def master(self, listen: str = "127.0.0.1:0", log: str = "master.log", peer_timeout: float = PEER_TIMEOUT):
        """Starts a `pccl-arrays master` subprocess; returns (proc, address, the time it said "listening on")."""
        proc, address = start_master_process(self.tmp, peer_timeout, listen=listen, log=log, bind_retry_s=10.0)
        self.masters.append(proc)
        return proc, address, time.time()

    def restart(self, address: str, log: str):
        proc, again, t_up = self.master(listen=address, log=log)
        assert again == address, (again, address)
        return proc, t_up

    def spawn(self, master: str, rank: int, **args):
        p = spawn(master, "restart_loop", rank, 1, self.tmp, **args)
        self.peers[rank] = p
        return p

    def close(self) -> None:
        for p in self.peers.values():
            p.kill()
        for m in self.masters:
            if m.poll() is None:
                m.kill()
            m.wait()
        for c in self.closers:
            c()


@pytest.fixture
def run(tmp_path):
    r = Run(tmp_path)
    try:
        yield r
    finally:
        r.close()


def _kill(proc) -> float:
    t = time.time()
    proc.kill()
    proc.wait()
    return t


def _free_address() -> str:
    """An address nobody listens on (a port the OS just handed out and took back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


# -- what the peers logged ----------------------------------------------------------------------------------------
def _records(tmp_path, rank: int) -> list[dict]:
    path = tmp_path / f"rank{rank}.steps"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _steps(recs: list[dict]) -> list[dict]:
    return [r for r in recs if "sync" in r or "reduce" in r]


def _initial_state(loop: str) -> dict:
    if loop == "docs":
        return {"params": np.zeros(N, np.float32), "momentum": np.zeros(N, np.float32), "step": np.zeros(1, np.int64)}
    return {"w": np.zeros(N, np.float32)}


def _apply(state: dict, avg_value: float, loop: str) -> None:
    """One step of the loop, as the peers apply it (the same numpy operations, so the same bits)."""
    avg = np.full(N, avg_value, np.float32)
    if loop == "docs":
        state["momentum"] *= 0.5
        state["momentum"] += avg
        state["params"] -= 0.1 * state["momentum"]
        state["step"] += 1
    else:
        state["w"] -= 0.1 * avg


def _check_steps(tmp_path, ranks, steps: int, loop: str = "readme") -> dict:
    """The checks every run must pass (see the module's docstring); returns {revision: (mask, world)}."""
    reduces: dict[int, set] = {}
    hashes: dict[int, set] = {}
    for rank in ranks:
        last_sync, reduced = -1, []
        for rec in _records(tmp_path, rank):
            if "sync" in rec:
                assert rec["sync"] >= last_sync, f"peer {rank}'s state went back from revision {last_sync}: {rec}"
                last_sync = rec["sync"]
                hashes.setdefault(rec["sync"], set()).add(rec["hash"])
            elif "reduce" in rec:
                mask = round(rec["mask"])  # average * world: exact up to float32 rounding of the average
                assert abs(rec["mask"] - mask) < 1e-3 and rec["uniform"], (rank, rec)
                assert bin(mask).count("1") == rec["world"], (rank, rec)
                assert mask >> rank & 1, (rank, rec)  # this peer's own gradient is in the sum
                assert rec["reduce"] == last_sync, (rank, rec, last_sync)
                reduced.append(rec["reduce"])
                reduces.setdefault(rec["reduce"], set()).add((mask, rec["world"], rec["avg"]))
        assert reduced == sorted(set(reduced)), f"peer {rank} committed a revision's step twice: {reduced}"
    assert all(len(h) == 1 for h in hashes.values()), {r: h for r, h in hashes.items() if len(h) > 1}
    assert all(len(m) == 1 for m in reduces.values()), {r: m for r, m in reduces.items() if len(m) > 1}
    missing = sorted(set(range(steps)) - set(reduces))
    assert not missing, f"revisions never committed: {missing}"
    assert set(reduces) <= set(range(steps)), sorted(reduces)
    assert set(hashes) <= set(range(steps + 1)), sorted(hashes)
    # The state of every revision is exactly the committed steps before it, applied in order.
    state = _initial_state(loop)
    for r in range(steps + 1):
        if r in hashes:
            assert next(iter(hashes[r])) == _state_hash(state), f"revision {r}'s state is not what the steps give"
        if r < steps:
            _apply(state, next(iter(reduces[r]))[2], loop)
    return {r: next(iter(m))[:2] for r, m in reduces.items()}


def _finished(run: Run, ranks) -> None:
    for rank in ranks:
        p = run.peers[rank]
        res = p.result()
        assert p.proc.returncode == 0 and res.get("done"), (rank, res, p.stderr()[-3000:])


def _first_step_after(tmp_path, ranks, t0: float):
    """How soon steps went on after t0: (seconds to the first sync or all-reduce any peer committed after t0,
    seconds to the first all-reduce of a revision no peer had committed by t0, {rank: seconds to that peer's
    first such all-reduce})."""
    recs = {rank: _steps(_records(tmp_path, rank)) for rank in ranks}
    done_before = max((r["reduce"] for rs in recs.values() for r in rs if "reduce" in r and r["t"] <= t0), default=-1)
    after = [[r for r in rs if r["t"] > t0] for rs in recs.values()]
    firsts = [rs[0]["t"] - t0 for rs in after if rs]
    per_peer = {}
    for rank, rs in recs.items():
        new = [r["t"] - t0 for r in rs if "reduce" in r and r["t"] > t0 and r["reduce"] > done_before]
        if new:
            per_peer[rank] = new[0]
    assert firsts and per_peer, "no step after t0"
    return min(firsts), min(per_peer.values()), per_peer


def _errors(tmp_path, ranks) -> dict:
    """What the loop's calls raised (and the loop caught), per peer: {rank: {"ErrorName in call": count}}."""
    out = {}
    for rank in ranks:
        counts: dict[str, int] = {}
        for rec in _records(tmp_path, rank):
            if "error" in rec:
                key = f"{rec['error']} in {rec['in']}"
                counts[key] = counts.get(key, 0) + 1
        out[rank] = counts
    return out


def _wait_reached(run: Run, ranks, timeout: float = 60) -> None:
    for rank in ranks:
        run.peers[rank].wait_event("reached", timeout)


def _stepping(tmp_path, ranks, before: float) -> bool:
    """Whether any of the peers committed a step in the half second before `before` (the run was moving)."""
    return any(before - 0.5 < r["t"] <= before for rank in ranks for r in _steps(_records(tmp_path, rank)))


# -- 1, 2: the master killed and restarted on the same address ----------------------------------------------------
STEPS = 150
RESUME_BOUND_S = 2.0


def _restart_run(run: Run, tmp_path, seed: int, loop: str, hold: dict | None, down=(0.5, 3.0)):
    """3 peers; the master SIGKILLed (at a random moment while they step, or while `hold` has two peers inside a
    collective the third has not called yet) and restarted on its address `down` (0.5-3 s) later."""
    rng = random.Random(seed)
    proc, address, _ = run.master()
    world = 3
    args = dict(loop=loop, steps=STEPS, compute_s=COMPUTE_S, reach={"revision": 20, "world": world})
    if loop == "docs":
        args["comm_kw"] = {}
    if hold:
        args["hold"] = hold
    for r in range(world):
        run.spawn(address, r, **args)
    if hold:
        for r in range(world):
            run.peers[r].wait_event("holding" if r == hold["rank"] else "entering", 60)
        time.sleep(0.2)  # the two peers' requests reach the master (they print their event just before sending)
    else:
        _wait_reached(run, range(world))
        time.sleep(rng.uniform(0.0, 0.8))  # a random moment of the loop: mid-compute, mid-all-reduce or mid-sync
    t_kill = _kill(proc)
    downtime = rng.uniform(*down)
    if hold:
        time.sleep(rng.uniform(0.1, downtime - 0.1))
        (tmp_path / "release").write_text("go")  # the held peer calls the collective while the master is away
    time.sleep(max(0.0, t_kill + downtime - time.time()))
    _, t_up = run.restart(address, "master2.log")
    wait_all(list(run.peers.values()), 90)
    return t_kill, t_up, downtime


def _report_restart(tmp_path, name, t_kill, t_up, downtime, ranks=range(3)):
    first, first_reduce, per_peer = _first_step_after(tmp_path, ranks, t_up)
    print(f"\n[{name}] master down {t_up - t_kill:.2f} s (planned {downtime:.2f} s); first step {first:.3f} s after "
          f"the new master was up (first all-reduce {first_reduce:.3f} s; per peer "
          f"{ {r: round(s, 3) for r, s in per_peer.items()} }); errors the loop caught: {_errors(tmp_path, ranks)}")
    return first, first_reduce


@pytest.mark.timeout(150)
@pytest.mark.parametrize("seed, down", [(1, (0.5, 3.0)), (2, (0.5, 3.0)), (9, (10.0, 20.0))])
def test_readme_loop_rides_out_a_master_restart(run, tmp_path, seed, down):
    """README's loop verbatim; the master SIGKILLed at a random moment while the peers step, and restarted 0.5-3 s
    later (and once 10-20 s later: within the README loop's default master_grace)."""
    t_kill, t_up, downtime = _restart_run(run, tmp_path, seed, "readme", None, down)
    _finished(run, range(3))
    assert _stepping(tmp_path, range(3), t_kill), "the master was not killed while the peers stepped"
    masks = _check_steps(tmp_path, range(3), STEPS)
    _, resumed = _report_restart(tmp_path, f"restart seed={seed}", t_kill, t_up, downtime)
    assert resumed < RESUME_BOUND_S, f"steps resumed {resumed:.2f} s after the master came back"
    assert masks[STEPS - 1] == (0b111, 3), "the 3 peers end together"


@pytest.mark.timeout(150)
def test_readme_loop_rides_out_a_master_killed_mid_sync(run, tmp_path):
    """README's loop verbatim; two peers are inside sync_shared_state (the third holds back) when the master dies."""
    hold = {"kind": "sync", "revision": 30, "rank": 0}
    t_kill, t_up, downtime = _restart_run(run, tmp_path, 3, "readme", hold)
    _finished(run, range(3))
    masks = _check_steps(tmp_path, range(3), STEPS)
    _, resumed = _report_restart(tmp_path, "mid-sync", t_kill, t_up, downtime)
    _check_held(tmp_path, hold, t_kill, t_up)
    assert resumed < RESUME_BOUND_S, f"steps resumed {resumed:.2f} s after the master came back"
    assert masks[STEPS - 1] == (0b111, 3)


@pytest.mark.timeout(150)
def test_docs_loop_rides_out_a_master_killed_mid_all_reduce(run, tmp_path):
    """docs/shared_state.md's loop; two peers are inside all_reduce (the third holds back) when the master dies."""
    hold = {"kind": "all_reduce", "revision": 30, "rank": 2}
    t_kill, t_up, downtime = _restart_run(run, tmp_path, 4, "docs", hold)
    _finished(run, range(3))
    masks = _check_steps(tmp_path, range(3), STEPS, loop="docs")
    _, resumed = _report_restart(tmp_path, "mid-all-reduce (docs loop)", t_kill, t_up, downtime)
    _check_held(tmp_path, hold, t_kill, t_up)
    assert resumed < RESUME_BOUND_S, f"steps resumed {resumed:.2f} s after the master came back"
    assert masks[STEPS - 1] == (0b111, 3)


def _check_held(tmp_path, hold, t_kill, t_up) -> None:
    """The collective the two peers were inside when the master died either failed with PeerLostError (the loop
    redid the step) or committed after the new master came up; it never committed while no master was up. The
    held peer's call (made while the master was away) likewise."""
    kind = hold["kind"]
    for rank in range(3):
        recs = _records(tmp_path, rank)
        mark = "released" if rank == hold["rank"] else "entering"
        i = next(i for i, r in enumerate(recs) if r.get(mark) == kind)
        after = recs[i + 1]
        print(f"[held {kind}] peer {rank} ({mark}): the call's outcome {after}")
        if "error" in after:
            assert after["error"] == "PeerLostError" and after["in"] == kind, (rank, after)
        else:
            assert ("sync" if kind == "sync" else "reduce") in after, (rank, after)
            assert after["t"] > t_up, f"peer {rank}'s {kind} committed while no master was up: {after} {t_kill} {t_up}"


# -- 3: a standby takes over ---------------------------------------------------------------------------------------
MASTER_TIMEOUT = 2.0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["kill", "stop"])
def test_standby_takes_over_from_a_primary_that_never_returns(run, tmp_path, how):
    """Peers list PRIMARY,STANDBY; the primary is SIGKILLed (its connections break at once) or SIGSTOPped (it goes
    silent: the peers notice after master_timeout, and connecting to it hangs rather than fails). The standby takes
    the run over within master_timeout + 2 s. A stopped primary is resumed after the take-over: the peers stay on
    the standby, and the old primary commits nothing more for them."""
    rng = random.Random(5)
    primary, p_addr, _ = run.master(log="primary.log")
    _standby, s_addr, _ = run.master(log="standby.log")  # started after the primary: a newer epoch
    world = 3
    for r in range(world):
        run.spawn(f"{p_addr},{s_addr}", r, loop="readme_kw", steps=STEPS, compute_s=COMPUTE_S,
                  comm_kw={"master_timeout": MASTER_TIMEOUT, "master_grace": 20.0},
                  reach={"revision": 20, "world": world})
    _wait_reached(run, range(world))
    time.sleep(rng.uniform(0.0, 0.8))
    if how == "kill":
        t_fail = _kill(primary)
    else:
        t_fail = time.time()
        os.kill(primary.pid, signal.SIGSTOP)
        time.sleep(max(0.0, t_fail + MASTER_TIMEOUT + 2.0 + rng.uniform(0.5, 1.5) - time.time()))
        os.kill(primary.pid, signal.SIGCONT)  # the old primary wakes up while the peers step on the standby
    wait_all(list(run.peers.values()), 90)
    _finished(run, range(world))
    assert _stepping(tmp_path, range(world), t_fail)
    masks = _check_steps(tmp_path, range(world), STEPS)
    first, first_reduce, per_peer = _first_step_after(tmp_path, range(world), t_fail)
    print(f"\n[standby, primary {how}] take-over: first step {first:.3f} s after the primary failed (first "
          f"all-reduce {first_reduce:.3f} s; per peer { {r: round(s, 3) for r, s in per_peer.items()} }); errors "
          f"the loop caught: {_errors(tmp_path, range(world))}")
    assert first_reduce < MASTER_TIMEOUT + 2.0, f"the standby took over {first_reduce:.2f} s after the primary failed"
    assert masks[STEPS - 1] == (0b111, 3)


# -- 4: a newcomer and a death while the master is down ------------------------------------------------------------
@pytest.mark.timeout(150)
def test_peers_join_and_die_while_the_master_is_down(run, tmp_path):
    rng = random.Random(6)
    proc, address, _ = run.master()
    for r in range(4):
        run.spawn(address, r, loop="readme", steps=STEPS, compute_s=COMPUTE_S, reach={"revision": 20, "world": 4})
    _wait_reached(run, range(4))
    time.sleep(rng.uniform(0.0, 0.5))
    t_kill = _kill(proc)
    time.sleep(rng.uniform(0.1, 0.5))
    t_victim = time.time()
    run.peers[3].kill()  # dies while the master is away: only its neighbours' data connections notice
    newcomer = run.spawn(address, 4, loop="readme_kw", steps=STEPS, compute_s=COMPUTE_S,
                         comm_kw={"connect_timeout": 30.0})
    newcomer.wait_event("started", 30)  # its connect() is retrying against the dead address now
    time.sleep(max(rng.uniform(0.3, 1.0), t_kill + 1.5 - time.time()))
    _, t_up = run.restart(address, "master2.log")
    survivors = [0, 1, 2, 4]
    wait_all([run.peers[r] for r in survivors], 90)
    assert run.peers[3].proc.returncode == -signal.SIGKILL
    _finished(run, survivors)
    masks = _check_steps(tmp_path, [0, 1, 2, 3, 4], STEPS)
    first, resumed, _ = _first_step_after(tmp_path, survivors, t_up)
    joined = sorted(r for r, (mask, _w) in masks.items() if mask >> 4 & 1)
    late3 = [r for r in _steps(_records(tmp_path, 3)) if r["t"] > t_victim]
    print(f"\n[join+death while down] master down {t_up - t_kill:.2f} s; first step {first:.3f} s after it came "
          f"back, first all-reduce {resumed:.3f} s; the newcomer took part from revision {joined[:1]}; "
          f"the last step's (mask, world) {masks[STEPS - 1]}; errors the loop caught: {_errors(tmp_path, survivors)}")
    # The restarted master re-formed the group from a majority of its last ring (3 of 0-3: peer 3 is dead), not
    # from fewer returning peers counted together with the newcomer.
    small = [(rank, rec) for rank in survivors for rec in _steps(_records(tmp_path, rank))
             if rec["t"] > t_up and rec["world"] < 3]
    assert not small, f"a group of fewer than 3 committed after the restart: {small[:4]}"
    assert joined, "the newcomer never took part in an all-reduce"
    assert not late3, late3
    assert all(not (mask >> 3 & 1) for r, (mask, _w) in masks.items() if r >= joined[0]), "the dead peer in a ring"
    assert masks[STEPS - 1] == (0b10111, 4), "the 3 survivors and the newcomer end together"
    # A ring member never comes back here, so the master waits its 1 s for stragglers (kStragglerWait) first.
    assert resumed < RESUME_BOUND_S + 1.0, f"steps resumed {resumed:.2f} s after the master came back"


# -- 5: the master stays away longer than master_grace -------------------------------------------------------------
GRACE = 4.0


@pytest.mark.timeout(90)
def test_master_gone_longer_than_grace_names_the_addresses(run, tmp_path):
    rng = random.Random(7)
    proc, address, _ = run.master()
    never = _free_address()  # a standby that was never started
    world = 3
    for r in range(world):
        run.spawn(f"{address},{never}", r, loop="readme_kw", steps=100000, compute_s=COMPUTE_S,
                  comm_kw={"master_timeout": MASTER_TIMEOUT, "master_grace": GRACE}, catch_unreachable=True,
                  reach={"revision": 10, "world": world})
    _wait_reached(run, range(world))
    time.sleep(rng.uniform(0.0, 0.5))
    t_kill = _kill(proc)
    wait_all(list(run.peers.values()), GRACE + MASTER_TIMEOUT + 30)
    for r in range(world):
        p = run.peers[r]
        res = p.result()
        assert p.proc.returncode == 0 and "unreachable" in res, (r, res, p.stderr()[-3000:])
        msg, waited = res["unreachable"], res["t_error"] - t_kill
        print(f"\n[grace] peer {r}: MasterUnreachableError after {waited:.2f} s: {msg}")
        assert address in msg and never in msg, f"the message does not name every address tried: {msg}"
        assert "master_grace" in msg and re.search(r"(?<![\d.])4(\.0+)?(?![\d.])", msg), msg
        assert GRACE - 0.3 <= waited <= GRACE + MASTER_TIMEOUT + 3.0, waited
    _check_steps(tmp_path, range(world), max(r for r, _ in _reduced(tmp_path, range(world))) + 1)


def _reduced(tmp_path, ranks):
    return [(rec["reduce"], rank) for rank in ranks for rec in _records(tmp_path, rank) if "reduce" in rec]


# -- 6: a partition between two masters (the fence) ---------------------------------------------------------------
def _partitioned(run: Run, proxied: tuple):
    """A primary P (a subprocess), a standby S (in this process, for its stats) and 4 peers, 0 and 1 started first
    (the smallest peer ids). The `proxied` pair reaches P through a proxy that the test cuts, with S listed
    after it; the other pair knows only P. Returns (S, the proxy) once all 4 step together."""
    _primary, p_addr, _ = run.master(log="primary.log")
    standby = pa.Master("127.0.0.1:0", peer_timeout=PEER_TIMEOUT, handshake_timeout=2.0).start()  # a newer epoch
    run.closers.append(standby.stop)
    proxy = Proxy(p_addr)
    run.closers.append(proxy.cut)
    kw = dict(loop="readme_kw", steps=STEPS, compute_s=COMPUTE_S, catch_unreachable=True,
              comm_kw={"master_timeout": MASTER_TIMEOUT, "master_grace": 6.0})
    for first, pair in ((True, (0, 1)), (False, (2, 3))):
        for r in pair:
            master = f"{proxy.address},{standby.address}" if pair == proxied else p_addr
            run.spawn(master, r, reach={"revision": 5, "world": 2} if first else {"revision": 0, "world": 4}, **kw)
        _wait_reached(run, pair)
    return standby, proxy


def _cut(run: Run, proxy, standby, seed: int):
    """Cuts the proxy at a seeded moment and waits for every peer; returns (when, S's stats, each peer's result)."""
    time.sleep(random.Random(seed).uniform(0.2, 0.8))
    t_cut = time.time()
    proxy.cut()
    wait_all(list(run.peers.values()), 90)
    return t_cut, standby.stats(), {r: run.peers[r].result() for r in range(4)}


@pytest.mark.timeout(150)
def test_partition_half_the_group_on_a_standby_never_commits(run, tmp_path):
    """Peers 0, 1 reach only the primary P; peers 2, 3 reach P through a proxy, and the standby S. The proxy is
    cut: 2 and 3 go to S, which holds half of the group's last ring without its smallest peer id, so S must
    form no group and commit nothing; P evicts 2 and 3 and peers 0, 1 go on to the end."""
    standby, proxy = _partitioned(run, proxied=(2, 3))
    before = standby.stats()
    assert before.get("peers_accepted", 0) == 0 and before.get("takeovers", 0) == 0, \
        f"peers went to the standby while the primary was up: {before}"
    t_cut, after, results = _cut(run, proxy, standby, seed=8)
    print(f"\n[partition] standby stats after the cut: {after}; proxy carried {proxy.connections} connections; "
          f"peer ids { {r: res.get('peer_id') for r, res in results.items()} }; errors the loop caught: "
          f"{_errors(tmp_path, range(4))}")
    for r in (2, 3):
        print(f"[partition] peer {r}: {results[r].get('unreachable') or results[r]}")
    ids = {r: res.get("peer_id") for r, res in results.items()}
    assert None not in ids.values() and max(ids[0], ids[1]) < min(ids[2], ids[3]), f"set-up: peer ids {ids}"
    # S never committed anything: not an operation, not a sync.
    assert after.get("ops_committed", 0) == 0 and after.get("syncs_committed", 0) == 0, after
    assert after.get("takeovers", 0) == 0, after  # it never formed the group
    # 0 and 1 went on without 2 and 3, to the end.
    _finished(run, (0, 1))
    masks = _check_steps(tmp_path, range(4), STEPS)
    assert masks[STEPS - 1] == (0b11, 2), masks[STEPS - 1]
    # 2 and 3 committed nothing after the cut and ended with MasterUnreachableError naming both masters.
    for r in (2, 3):
        p, res = run.peers[r], results[r]
        assert p.proc.returncode == 0 and "unreachable" in res, (r, res, p.stderr()[-3000:])
        assert proxy.address in res["unreachable"] and standby.address in res["unreachable"], res["unreachable"]
        assert "master_grace" in res["unreachable"], res["unreachable"]
        late = [rec for rec in _steps(_records(tmp_path, r)) if rec["t"] > t_cut + 0.5]
        assert not late, (r, late)


@pytest.mark.timeout(150)
def test_partition_the_half_with_the_smallest_ids_goes_on_with_the_standby_and_the_primary_lets_go(run, tmp_path):
    """The mirror image: the peers behind the proxy (0, 1) hold the smallest ids. When the proxy is cut, S takes
    the group over from them (half of its last ring, with its smallest id) and they go on to the end; P, left
    with 2 and 3 (no majority of the group's last commit, and its peers know a standby), starts nothing more and
    lets them go: they have no other master, so they end with MasterUnreachableError. One state per revision."""
    standby, proxy = _partitioned(run, proxied=(0, 1))
    t_cut, after, results = _cut(run, proxy, standby, seed=9)
    print(f"\n[mirrored partition] standby stats: {after}; errors the loop caught: {_errors(tmp_path, range(4))}")
    ids = {r: res.get("peer_id") for r, res in results.items()}
    assert None not in ids.values() and max(ids[0], ids[1]) < min(ids[2], ids[3]), f"set-up: peer ids {ids}"
    assert after["takeovers"] == 1 and after["syncs_committed"] > 0, after
    _finished(run, (0, 1))
    masks = _check_steps(tmp_path, range(4), STEPS)  # one state and one result per revision, across both masters
    assert masks[STEPS - 1] == (0b11, 2), masks[STEPS - 1]
    assert "given up" in (tmp_path / "primary.log").read_text()
    for r in (2, 3):
        p, res = run.peers[r], results[r]
        assert p.proc.returncode == 0 and "unreachable" in res, (r, res, p.stderr()[-3000:])
        assert "let this peer go" in res["unreachable"] and "split-brain fence" in res["unreachable"], res
        late = [rec for rec in _steps(_records(tmp_path, r)) if rec["t"] > t_cut + MASTER_TIMEOUT + 1.0]
        assert not late, (r, late)
