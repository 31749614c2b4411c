"""The shared-state training loop of the churn test and the soak benchmark (run by the churn harness).

How this works. Each peer holds a SharedState (weights, momentum, a step counter) whose revision is the step.
One step is the DiLoCo pattern with async communication:

1. ``update_topology()`` (skipped on the first step after connecting: that admission was the others' vote);
2. ``sync_shared_state()``: a newcomer receives the group's state, everyone else moves 0 bytes;
3. a control all-reduce (max) of the stop flag, so that every peer stops at the same step;
4. the pseudo-gradient of this step, the same on every peer (a function of the revision), is all-reduced
   with ``all_reduce_async`` while Python computes the next step's inner work (``busy_ms``);
5. the committed sum must equal world x gradient exactly (small integers in float32); the deterministic update
   (Nesterov-style momentum) is applied and ``revision += 1``.

A PeerLostError anywhere restarts the step on every member (all of them see it), so no peer applies a result
another peer threw away. A peer evicted after a stall joins again as a new communicator with its (stale)
state and catches up through the sync. Each step records the revision, the hash of the whole state after the
update, the world size, whether the result was exact, and the bytes the step's sync received. With
``quantized`` set, every step also all-reduces the gradient quantized (minmax), concurrently with the plain
one, and records a hash of that result: peers at one revision must agree on it bit for bit.
"""

from __future__ import annotations

import collections
import hashlib
import time

import numpy as np

from .. import errors
from ..quantization import Quantization
from ..shared_state import SharedState
from .harness import check_no_hang


def gradient(revision: int, n: int) -> np.ndarray:
    """The pseudo-gradient of a step: small integers (exact in float32 sums), different every step."""
    idx = np.arange(n, dtype=np.int64)
    return (((idx * 7 + revision * 13) % 17) - 8).astype(np.float32)


def state_hash(state: SharedState) -> str:
    return ":".join(f"{h:016x}" for h in state.hashes().values())


def _inner_work(ms: float) -> int:
    """Pure-Python work that holds the GIL (the core's threads do not need it)."""
    end, spins = time.monotonic() + ms / 1000, 0
    while time.monotonic() < end:
        spins += sum(i * i for i in range(200)) > 0
    return spins


def state_loop(ctx) -> dict:
    """Args (ctx.args): ``initial``, ``n`` (elements per entry, default 1 << 18), ``busy_ms`` (default 20),
    ``connections`` (default 2), ``data_timeout`` (default 10), ``max_steps``, ``quantized`` (default off)."""
    a = ctx.args
    n, busy_ms, max_steps = a.get("n", 1 << 18), a.get("busy_ms", 20.0), a.get("max_steps", 1 << 62)
    quant = Quantization(kind="minmax") if a.get("quantized") else None
    counts = {"rejoins": 0, "peer_lost": 0, "syncs": 0, "sync_failures": 0, "spins": 0}
    # A newcomer starts from garbage: the sync must replace it (and must never let it win).
    rng = np.random.default_rng(ctx.index + 1000)
    state = SharedState({"w": rng.standard_normal(n).astype(np.float32), "m": np.zeros(n, dtype=np.float32),
                         "step": np.zeros(1, dtype=np.int64)}, revision=0)
    if a.get("initial"):  # the initial peers start from the same state
        state["w"][...] = 0.0

    comm = ctx.connect()
    if comm is None:
        return {**counts, "stopped_before_join": True}
    initial = a.get("initial")
    ctx.admit_initial(comm)
    vote = initial is not None
    while True:
        try:
            if vote:
                comm.update_topology()
            vote = True
            try:
                info = comm.sync_shared_state(state)
            except errors.PeerLostError:
                counts["sync_failures"] += 1
                raise
            counts["syncs"] += 1
            ctx.progress(kind="sync", revision=state.revision, received=info.bytes_received, sent=info.bytes_sent,
                         sources=len(info.received_from), fetched=list(info.fetched), seconds=info.seconds)
            stop = 1 if (ctx.stop_requested() or state.revision >= max_steps) else 0
            if comm.all_reduce(np.array([stop], dtype=np.int64), "max")[0]:
                break
            g = gradient(state.revision, n)
            handle = comm.all_reduce_async(g, "sum")
            q_handle = comm.all_reduce_async(g, "sum", quantization=quant) if quant else None
            counts["spins"] += _inner_work(busy_ms)  # the next step's inner work overlaps the all-reduce
            # Both end before the step goes on (either failing restarts the step: every member sees the same
            # outcome of each operation).
            outcomes = []
            for hd in (handle, q_handle):
                try:
                    outcomes.append(hd.wait() if hd is not None else None)
                except errors.PeerLostError as e:
                    outcomes.append(e)
            lost = [o for o in outcomes if isinstance(o, errors.PeerLostError)]
            if lost:
                raise lost[0]
            total, q_total = outcomes
            q_hash = hashlib.sha256(q_total.tobytes()).hexdigest()[:16] if q_total is not None else None
        except errors.PeerLostError:
            counts["peer_lost"] += 1
            continue
        except (errors.PeerEvictedError, errors.MasterUnreachableError) as e:
            counts["rejoins"] += 1
            comm = ctx.rejoin(comm, e)
            if comm is None:
                return counts
            vote = False
            continue
        world = handle.info.world_size
        exact = bool(np.array_equal(total, g * np.float32(world)))
        m, w = state["m"], state["w"]
        avg = total / np.float32(world)
        m *= np.float32(0.9)
        m += avg
        w -= np.float32(0.01) * (avg + np.float32(0.9) * m)
        state["step"][0] += 1
        state.revision += 1
        ctx.progress(kind="step", revision=state.revision, world=world, exact=exact, hash=state_hash(state),
                     **({"qhash": q_hash} if q_hash else {}))
    comm.close()
    return {**counts, "revision": state.revision, "hash": state_hash(state)}


def check_state_run(h, schedule, catch_up_s: float = 8.0) -> dict:
    """The assertions of the shared-state churn test (tests/test_state_churn.py) and the soak benchmark
    (benchmarks/soak_state.py) over a finished Harness run of :func:`state_loop`; returns figures."""
    results = h.results()
    killed = {e.target for e in schedule.events if e.action == "kill"}
    stalled = {e.target for e in schedule.events if e.action == "stall"}
    assert set(results) == set(h.procs) - killed, (sorted(results), sorted(h.procs), killed)
    for i, res in results.items():
        assert "error" not in res, (i, res.get("traceback"))
        assert h.procs[i].returncode == 0, (i, h.log(i)[-2000:])
    # At every revision, every peer that reached it holds the same state (progress files include killed peers),
    # and every applied result was exact: world x the step's gradient, never a partial sum.
    by_revision = collections.defaultdict(set)
    steps = 0
    for i in h.procs:
        for p in h.progress(i):
            if p["kind"] == "step":
                assert p["exact"], (i, p)
                by_revision[p["revision"]].add(p["hash"])
                steps += 1
    assert len(by_revision) >= 20, f"too few steps to mean anything: {len(by_revision)}"
    diverged = {r: v for r, v in by_revision.items() if len(v) > 1}
    assert not diverged, diverged
    # The quantized all-reduce of each step (with ``quantized``): the same bytes on every peer at a revision.
    q_by_revision = collections.defaultdict(set)
    for i in h.procs:
        for p in h.progress(i):
            if p["kind"] == "step" and "qhash" in p:
                q_by_revision[p["revision"]].add(p["qhash"])
    q_diverged = {r: v for r, v in q_by_revision.items() if len(v) > 1}
    assert not q_diverged, q_diverged
    # Final states agree too.
    finals = {res["revision"]: set() for res in results.values()}
    for res in results.values():
        finals[res["revision"]].add(res["hash"])
        assert res["hash"] in by_revision[res["revision"]]
    assert all(len(v) == 1 for v in finals.values())
    # Peers that stayed (never killed, stalled or rejoined) receive 0 bytes of state after their first sync;
    # peers spawned during the run received the state in their first sync.
    stayed = [i for i in results if i not in stalled and results[i]["rejoins"] == 0]
    spawned_late = {i for i in h.procs if h.spawned_at(i) >= h.run_started}
    received_first, stable_syncs = [], 0
    for i in h.procs:
        syncs = [p for p in h.progress(i) if p["kind"] == "sync"]
        if i in stayed:
            assert all(s["received"] == 0 for s in syncs[1:]), (i, [s["received"] for s in syncs])
            stable_syncs += len(syncs) - 1
        if i in spawned_late and syncs:
            assert syncs[0]["received"] > 0 and syncs[0]["fetched"], (i, syncs[0])
            received_first.append(syncs[0])
    assert received_first, "no newcomer synced: the schedule did not exercise state transfer"
    check_no_hang(h, catch_up_s)
    return {"steps": steps, "revisions": len(by_revision), "stayed": len(stayed), "stable_syncs": stable_syncs,
            "newcomer_syncs": len(received_first),
            "newcomer_bytes": sum(s["received"] for s in received_first),
            "newcomer_sources": [s["sources"] for s in received_first],
            "quantized_revisions": len(q_by_revision),
            "rejoins": sum(r["rejoins"] for r in results.values()),
            "peer_lost": sum(r["peer_lost"] for r in results.values())}
