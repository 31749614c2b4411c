"""What peers do in the optimize_topology() tests (tests/test_topology.py): each sits behind its relay of an
emulated multi-region layout (pccl_arrays.wan_regions), joins, optimizes the ring and all-reduces on it."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np

from pccl_arrays import errors
from pccl_arrays.wan_regions import Regions


def _behind_relay(ctx, net: Regions, p: int):
    relay = net.relay(p).start()
    comm = ctx.comm(listen=f"{net.host(p)}:0", advertise=relay.address, connect_timeout=10.0)
    relay.follow(comm, net.host(p))
    return comm, relay


def _exact_all_reduce(comm, rank: int) -> bool:
    x = np.arange(1 << 14, dtype=np.float32) % 100
    y = comm.all_reduce(x * np.float32(1))
    return bool(np.array_equal(y, x * np.float32(comm.last_info.world_size)))


def topo_optimize(ctx) -> dict:
    """Args: layout (a wan_regions dict), slot (this peer's place in it), kill_after_s (this peer SIGKILLs
    itself that long after calling optimize_topology), then_world (after optimizing, admit newcomers until the
    world has that many peers and optimize again), newcomer (join a running group and optimize with it)."""
    a = ctx.args
    net = Regions(a["layout"])
    comm, relay = _behind_relay(ctx, net, a["slot"])
    out = {"peer_id": None, "slot": a["slot"], "attempts": [], "rings": [], "measured": []}
    if a.get("newcomer"):
        comm.connect(timeout=60)
        ctx.event("joined")
    else:
        ctx.join(comm)
    out["peer_id"] = comm.peer_id

    def optimize():
        if a.get("kill_after_s") is not None:
            threading.Timer(a["kill_after_s"], lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
        for _ in range(3):
            try:
                out["measured"].append(comm.optimize_topology(timeout=60))
                out["attempts"].append("ok")
                break
            except errors.PeerLostError as e:
                out["attempts"].append(f"PeerLostError: {e}")
        out["rings"].append(comm.ring())
        out.setdefault("exact", []).append(_exact_all_reduce(comm, ctx.rank))

    optimize()
    ctx.event("optimized")
    while a.get("hold") and not (ctx.out / "STOP").exists():  # the test reads the master's links meanwhile
        time.sleep(0.01)
    if a.get("then_world"):
        while comm.total_world_size < a["then_world"]:
            if comm.are_peers_pending():
                comm.update_topology()
            else:
                time.sleep(0.005)
        optimize()
    comm.close()
    relay.stop()
    return out


def topo_loop(ctx) -> dict:
    """The loop of docs/topology.md: update_topology, sync_shared_state, optimize_topology() every `every`
    revisions (decided on the synced revision), all-reduce, until revision `steps`. Args: layout, slot, steps,
    every, compute_s (sleep per step), newcomer (join a running group: the test starts it late)."""
    import pccl_arrays as pa

    a = ctx.args
    net = Regions(a["layout"])
    comm, relay = _behind_relay(ctx, net, a["slot"])
    state = pa.SharedState({"w": np.zeros(1024, np.float32)}, revision=0)
    if a.get("newcomer"):
        comm.connect(timeout=60)
    else:
        ctx.join(comm)
    optimized, retries = [], 0
    while state.revision < a["steps"]:
        try:
            comm.update_topology()
            comm.sync_shared_state(state)
            if state.revision % a["every"] == 0:
                optimized.append({"revision": state.revision, "measured": comm.optimize_topology(timeout=60),
                                  "ring": comm.ring()})
            g = comm.all_reduce(np.ones(1024, np.float32))
        except errors.PeerLostError:
            retries += 1
            continue
        state["w"] += g
        state.revision += 1
        ctx.event(f"revision_{state.revision}")
        time.sleep(a.get("compute_s", 0.0))  # the step's compute
    comm.close()
    relay.stop()
    return {"peer_id": comm.peer_id, "slot": a["slot"], "revision": state.revision, "optimized": optimized,
            "retries": retries, "w": float(state["w"][0])}
