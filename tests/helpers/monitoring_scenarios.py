"""Peer processes of tests/test_monitoring.py: a run whose every event the master's metrics must count."""

from __future__ import annotations

import signal
import time

import numpy as np

import pccl_arrays as pa
from pccl_arrays import errors
from scenarios import Context, _die_when_busy

SMALL = 4096  # float32 elements of the warm-up all-reduces


def monitored(ctx: Context) -> dict:
    """Ranks 0-2 join and run ``ops`` all-reduces of SMALL float32; rank 3 then joins (admitted at their
    update_topology()), and the four sync a shared state the newcomer receives (``state_n`` float32, revision 1).
    Then an all-reduce of ``big`` float32 during which rank 3 SIGKILLs itself; the survivors get PeerLostError
    and retry it on the ring of three, say ``done`` and stay connected until the test creates OUT/release.
    Rank 0 serves its own metrics (``metrics=``) and says where."""
    a = ctx.args
    ops, big, state_n = a["ops"], a["big"], a["state_n"]
    kw = {"metrics": "127.0.0.1:0"} if ctx.rank == 0 else {}
    comm = ctx.comm(**kw)
    if ctx.rank == 0:
        ctx.event(f"metrics {comm.metrics_address}")
    if ctx.rank < 3:
        ctx.join(comm, world=3)
        for _ in range(ops):
            comm.all_reduce(np.ones(SMALL, dtype=np.float32), "sum")
        ctx.event("ops_done")
        while not comm.are_peers_pending():  # the newcomer, started by the test now
            time.sleep(0.005)
        comm.update_topology()
        state = pa.SharedState({"w": np.full(state_n, 2.0, dtype=np.float32)}, revision=1)
    else:
        comm.connect(timeout=60)
        state = pa.SharedState({"w": np.zeros(state_n, dtype=np.float32)}, revision=0)
    sync = comm.sync_shared_state(state)
    x = np.ones(big, dtype=np.float32)
    comm.all_reduce(np.ones(8, dtype=np.float32), "sum")  # every connection of the ring of four is open
    if ctx.rank == 3:
        _die_when_busy(comm, big // 2, signal.SIGKILL, ctx.out / "stamp")
        comm.all_reduce(x, "sum")
        return {"error": "the victim survived"}
    try:
        comm.all_reduce(x, "sum")
        lost = None
    except errors.PeerLostError as e:
        lost = str(e)
    r = comm.all_reduce(x, "sum")
    ctx.event("done")
    release = ctx.out / "release"
    while not release.exists():
        time.sleep(0.01)
    comm.close()
    return {"lost": lost, "retry_world": comm.last_info.world_size, "retry_exact": bool(np.all(r == 3.0)),
            "sync_received": sync.bytes_received, "revision": state.revision}
