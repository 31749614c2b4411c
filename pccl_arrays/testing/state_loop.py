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

Leaving and restarting. A peer the harness asks to leave closes its communicator at the top of its next step
and exits normally. One peer of the group (the first of the ring) saves a checkpoint every
``checkpoint_every`` revisions (``OUT/checkpoint.npz``, replaced atomically: a peer killed while writing leaves
the previous one). When every holder of the state is gone (a wipe) the next sync fails on every peer with
SharedStateError; each of them says so on stderr, records a ``restart``, loads the checkpoint (or the initial
state if none was saved), counts a new lineage (the ``lineage`` entry of the state: the checkpoint's + 1) and
offers it with ``strategy="send_only"``; once that sync is committed they save it, so the next restart counts
from it. Revisions repeat after a restart, so every check is per (lineage, revision).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np

from .. import errors
from ..quantization import Quantization
from ..shared_state import SharedState


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


def _initial_arrays(n: int) -> dict:
    return {"w": np.zeros(n, dtype=np.float32), "m": np.zeros(n, dtype=np.float32),
            "step": np.zeros(1, dtype=np.int64), "lineage": np.zeros(1, dtype=np.int64)}


def _save_checkpoint(ctx, state: SharedState) -> None:
    tmp = ctx.out / f"checkpoint.{os.getpid()}.npz"
    np.savez(tmp, revision=np.array([state.revision], dtype=np.int64), **{k: state[k] for k in state.keys()})
    os.replace(tmp, ctx.out / "checkpoint.npz")


def _restart(ctx, n: int, error: Exception) -> SharedState:
    """The state a peer offers after the group's state was lost: the last checkpoint, as a new lineage."""
    path = ctx.out / "checkpoint.npz"
    if path.exists():
        with np.load(path) as z:
            arrays, revision = {k: z[k].copy() for k in _initial_arrays(0)}, int(z["revision"][0])
    else:
        arrays, revision = _initial_arrays(n), 0
    arrays["lineage"][0] += 1
    lineage = int(arrays["lineage"][0])
    print(f"peer {ctx.index}: {error}; restarting the group's state from the checkpoint at revision {revision} "
          f"as lineage {lineage}", file=sys.stderr, flush=True)
    ctx.progress(kind="restart", revision=revision, lineage=lineage, error=str(error))
    return SharedState(arrays, revision=revision)


def state_loop(ctx) -> dict:
    """Args (ctx.args): ``initial``, ``n`` (elements per entry, default 1 << 18), ``busy_ms`` (default 20),
    ``connections`` (default 2), ``data_timeout`` (default 10), ``max_steps``, ``quantized`` (default off),
    ``checkpoint_every`` (revisions, default 20), ``comm`` (more Communicator arguments, PeerContext.connect;
    with ``min_world_size`` >= 2 a TooFewPeersError restarts the step as a PeerLostError does),
    ``master_restarts`` (the harness kills and restarts the master: connect() retries a lost master),
    ``optimize_at`` (revisions at which every peer calls optimize_topology() after the sync; default none)."""
    a = ctx.args
    n, busy_ms, max_steps = a.get("n", 1 << 18), a.get("busy_ms", 20.0), a.get("max_steps", 1 << 62)
    checkpoint_every = a.get("checkpoint_every", 20)
    quant = Quantization(kind="minmax") if a.get("quantized") else None
    counts = {"rejoins": 0, "peer_lost": 0, "syncs": 0, "sync_failures": 0, "spins": 0, "restarts": 0,
              "too_few": 0}
    optimize_at = set(a.get("optimize_at", ()))
    if optimize_at:
        counts["optimizations"] = 0
    state = SharedState(_initial_arrays(n), revision=0)
    if not a.get("initial"):  # a newcomer starts from garbage: the sync must replace it (and never let it win)
        state["w"][...] = np.random.default_rng(ctx.index + 1000).standard_normal(n).astype(np.float32)
    offer = False  # after a restart: offer the checkpoint (send_only) until a sync commits it

    comm = ctx.connect()
    if comm is None:
        return {**counts, "stopped_before_join": True}
    initial = a.get("initial")
    ctx.admit_initial(comm)
    vote = initial is not None
    left = False
    while True:
        if ctx.leave_requested():
            ctx.progress(kind="leave", revision=state.revision)
            left = True
            break
        try:
            if vote:
                comm.update_topology()
            vote = True
            try:
                info = comm.sync_shared_state(state, "send_only" if offer else "enforce_popular")
            except errors.PeerLostError:
                counts["sync_failures"] += 1
                raise
            except errors.SharedStateError as e:
                if "state is lost" not in str(e):
                    raise
                counts["restarts"] += 1
                state, offer = _restart(ctx, n, e), True
                continue
            if offer:
                _save_checkpoint(ctx, state)
                offer = False
            counts["syncs"] += 1
            if state.revision in optimize_at:
                measured = comm.optimize_topology()
                counts["optimizations"] += 1
                ctx.progress(kind="optimize", revision=state.revision, measured=measured, ring=comm.ring())
            ctx.progress(kind="sync", revision=state.revision, received=info.bytes_received, sent=info.bytes_sent,
                         sources=len(info.received_from), fetched=list(info.fetched), seconds=info.seconds,
                         lineage=int(state["lineage"][0]), hash=state_hash(state), peer=comm.peer_id,
                         ring=comm.ring(), relay_pipes=comm.relay_stats()["relay_pipes"])
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
                except (errors.PeerLostError, errors.TooFewPeersError) as e:
                    outcomes.append(e)
            lost = [o for o in outcomes if isinstance(o, errors.PCCLError)]
            if lost:
                raise lost[0]
            total, q_total = outcomes
            q_hash = hashlib.sha256(q_total.tobytes()).hexdigest()[:16] if q_total is not None else None
        except errors.PeerLostError as e:
            counts["peer_lost"] += 1
            ctx.progress(kind="peer_lost", revision=state.revision, error=str(e)[:300])
            continue
        except errors.TooFewPeersError:  # only with min_world_size >= 2: update_topology() waits for newcomers
            counts["too_few"] += 1
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
                     lineage=int(state["lineage"][0]), **({"qhash": q_hash} if q_hash else {}))
        if state.revision % checkpoint_every == 0 and comm.peer_id == comm.ring()[0]:
            _save_checkpoint(ctx, state)
    comm.close()
    return {**counts, "revision": state.revision, "hash": state_hash(state), "lineage": int(state["lineage"][0]),
            "left": left}
