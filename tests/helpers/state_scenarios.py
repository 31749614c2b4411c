"""Peer processes for shared-state tests that kill peers (see procs.py and scenarios.py)."""

from __future__ import annotations

import signal
import time

import numpy as np

import pccl_arrays as pa
from pccl_arrays import errors
from scenarios import Context, _die_when_busy


def holder_dies_mid_sync(ctx: Context) -> dict:
    """Ranks below world-1 hold 64 MiB of state, the last rank is a newcomer (receive-only). `victim` kills
    (SIGKILL) or stalls (SIGSTOP, evicted after the master's peer_timeout) itself once it has sent 8 MiB: every survivor raises PeerLostError, the newcomer's state is
    untouched, and the retry on the smaller group is bit-exact with every surviving holder sending a share."""
    victim, n, how = ctx.args["victim"], ctx.args["n"], ctx.args.get("how", "kill")
    comm = ctx.join(ctx.comm(connections=2))
    newcomer = ctx.rank == ctx.world - 1
    w = np.zeros(n, dtype=np.float32) if newcomer else np.arange(n, dtype=np.float32)
    state = pa.SharedState({"w": w, "step": np.array([0 if newcomer else 41])}, revision=0 if newcomer else 3)
    before = state.hashes()
    if ctx.rank == victim:
        _die_when_busy(comm, 8 << 20, signal.SIGKILL if how == "kill" else signal.SIGSTOP, ctx.out / "stamp")
    strategy = "receive_only" if newcomer else "enforce_popular"
    t0 = time.time()
    try:
        comm.sync_shared_state(state, strategy)
        return {"error": None}
    except errors.PCCLError as e:
        if ctx.rank == victim:  # only a stalled victim gets here, after SIGCONT: it was evicted
            return {"victim_error": type(e).__name__, "unchanged": state.hashes() == before}
        res = {"error": type(e).__name__, "message": str(e), "t_error": time.time(), "t_start": t0,
               "unchanged": state.hashes() == before and state.revision == (0 if newcomer else 3)}
    info = comm.sync_shared_state(state, strategy)
    res.update(retry_fetched=list(info.fetched), retry_from=sorted(info.received_from.values()),
               retry_sources=len(info.received_from), hashes=state.hashes(), revision=state.revision,
               exact=bool(np.array_equal(w, np.arange(n, dtype=np.float32))))
    ctx.event("survived")
    comm.close()
    return res
