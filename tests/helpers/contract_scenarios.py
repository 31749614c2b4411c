"""Peer processes for the user-contract tests (tests/test_contract_*.py): the README's loop run verbatim under churn,
trees across peers with and without JAX imported, waits that time out, Ctrl-C, a minimum world, lost state and
an unreachable newcomer. See procs.py for how they are started and how results come back."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np

import pccl_arrays as pa
from pccl_arrays import errors
from scenarios import Context

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_loop_code() -> str:
    """The training loop of README.md, as users copy it: the first python block after the loop marker."""
    text = README.read_text()
    after = text.split("<!-- the loop: tests/test_contract_loop.py runs this block verbatim -->", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def readme_loop(ctx: Context) -> dict:
    """Runs the README loop as written (only the master address substituted). Its calls are observed, not
    changed: every sync's (revision, state hash) and every all-reduce's (mask, world) go to a JSON-lines file as
    they happen, so a killed peer leaves what it saw. Each peer's gradient is 2**rank, so an average times the
    world size names exactly the peers that took part."""
    log = open(ctx.out / f"rank{ctx.rank}.steps", "a", buffering=1)
    seen = {"revision": None}
    sync, reduce = pa.Communicator.sync_shared_state, pa.Communicator.all_reduce

    def observed_sync(self, state, *a, **kw):
        info = sync(self, state, *a, **kw)
        seen["revision"] = state.revision
        digest = hashlib.sha256(np.ascontiguousarray(state["w"]).tobytes()).hexdigest()[:16]
        log.write(json.dumps({"sync": state.revision, "hash": digest, "world": self.world_size}) + "\n")
        return info

    def observed_reduce(self, x, *a, **kw):
        r = reduce(self, x, *a, **kw)
        world = self.last_info.world_size
        log.write(json.dumps({"reduce": seen["revision"], "mask": float(r[0]) * world, "world": world,
                              "uniform": bool(np.all(r == r[0]))}) + "\n")
        return r

    pa.Communicator.sync_shared_state, pa.Communicator.all_reduce = observed_sync, observed_reduce
    if ctx.args.get("leave_after"):
        steps_here = ctx.args["leave_after"]
    else:
        steps_here = ctx.args["steps"]

    def compute(w):
        time.sleep(ctx.args.get("compute_s", 0.01))
        return np.full_like(w, float(1 << ctx.rank))

    code = readme_loop_code().replace('"master-host:48148"', repr(ctx.master))
    ctx.event("started")
    exec(compile(code, "README.md", "exec"), {"steps": steps_here, "compute": compute, "__name__": "readme"})
    return {"done": True}


def trees(ctx: Context) -> dict:
    """An OrderedDict (keys not in sorted order) reduced between a peer that imported JAX first and one that
    did not; then trees that differ between the peers, each of which must be refused on every peer."""
    if ctx.args.get("jax") and ctx.rank == 0:
        import jax  # noqa: F401  (its presence once changed the flattening order)
    comm = ctx.join(ctx.comm())
    r = ctx.rank + 1
    tree = collections.OrderedDict(b=np.full(3, r, np.float32), a=np.arange(4, dtype=np.float64) * r,
                                   c={"z": np.full(2, 10 * r, np.int64), "y": [np.ones(1, np.float32) * r]})
    out = comm.all_reduce_tree(tree, "sum")
    res = {"keys": list(out), "b": out["b"].tolist(), "a": out["a"].tolist(), "z": out["c"]["z"].tolist(),
           "y": out["c"]["y"][0].tolist()}
    cases = {
        "shape": np.zeros((2, 4) if ctx.rank == 0 else (4, 2), np.float32),
        "renamed": {"w": np.ones(3, np.float32), ("b" if ctx.rank == 0 else "bias"): np.ones(3, np.float32)},
        "order": collections.OrderedDict([("a", np.ones(2)), ("b", np.ones(2))][::1 if ctx.rank == 0 else -1]),
        "leaf_shape": {"w": np.ones(6 if ctx.rank == 0 else 3, np.float32), "v": np.ones(3 if ctx.rank == 0 else 6, np.float32)},
    }
    for name, x in cases.items():
        try:
            comm.all_reduce(x) if name == "shape" else comm.all_reduce_tree(x)
            res[name] = "no error"
        except errors.PCCLError as e:
            res[name] = f"{type(e).__name__}: {e}"
    res["after"] = float(comm.all_reduce(np.ones(1, np.float32))[0])  # still usable
    comm.close()
    return res


def _wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)


def never_calls(ctx: Context) -> dict:
    """Rank 1 never calls the collectives; rank 0's all_reduce and sync_shared_state time out naming it."""
    comm = ctx.join(ctx.comm(op_timeout=60.0))
    if ctx.rank == 1:
        ctx.event(f"idle {comm.peer_id}")
        _wait_for_file(ctx.out / "release", 60)
        comm.close()
        return {}
    res = {}
    for what, call in (("all_reduce", lambda t: comm.all_reduce(np.ones(4), timeout=t)),
                       ("sync", lambda t: comm.sync_shared_state(pa.SharedState({"w": np.ones(3)}), timeout=t))):
        t0 = time.monotonic()
        try:
            call(ctx.args["timeout"])
            res[what] = {"error": None}
        except errors.PCCLError as e:
            res[what] = {"error": type(e).__name__, "message": str(e), "seconds": time.monotonic() - t0,
                         "is_timeout_error": isinstance(e, TimeoutError)}
    comm.close()
    return res


def interrupted(ctx: Context) -> dict:
    """Ctrl-C in a blocking call. `where`: "start" (rank 0 waits in all_reduce for rank 1, who never calls),
    "data" (rank 0 interrupts itself while a large all-reduce moves), "wait" (rank 0 waits in handle.wait())."""
    where = ctx.args["where"]
    comm = ctx.join(ctx.comm(data_timeout=30.0))
    res = {}
    if ctx.rank == 1 and where != "data":
        ctx.event("idle")
        _wait_for_file(ctx.out / "release", 60)
        comm.close()
        return res
    x = np.ones(ctx.args.get("n", 1 << 22), np.float32) * (ctx.rank + 1)
    if where == "data" and ctx.rank == 0:
        stats = lambda: sum(s["bytes"] for s in comm.connection_stats())  # noqa: E731
        comm.all_reduce(np.ones(8, np.float32))  # connections open
        base = stats()

        def interrupt_when_busy():
            while stats() - base < x.nbytes // 4:
                time.sleep(0.0005)
            res["t_signal"] = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt_when_busy, daemon=True).start()
    elif where == "data":
        comm.all_reduce(np.ones(8, np.float32))
    t0 = time.monotonic()
    try:
        if where == "wait":
            handle = comm.all_reduce_async(x)
            ctx.event("waiting")
            handle.wait()
        else:
            ctx.event("waiting")
            comm.all_reduce(x)
        res["error"] = None
    except KeyboardInterrupt:
        res.update(error="KeyboardInterrupt", t_interrupt=time.monotonic(), t_call=t0)
    except errors.PCCLError as e:
        res.update(error=type(e).__name__, retryable=e.retryable, message=str(e))
    try:  # usable again after an interrupted data phase; after the others, it says it left
        r = comm.all_reduce(np.full(4, ctx.rank + 1.0, np.float32))
        res["after"] = {"result": float(r[0]), "world": comm.last_info.world_size}
    except errors.PCCLError as e:
        res["after"] = {"error": type(e).__name__, "message": str(e)}
    comm.close()
    return res


def min_world(ctx: Context) -> dict:
    """Two peers with min_world_size=2 reduce until rank 1 is killed; rank 0 must then get TooFewPeersError,
    never a result computed alone."""
    comm = ctx.join(ctx.comm(min_world_size=2))
    worlds, n = set(), 0
    while True:
        try:
            comm.all_reduce(np.ones(1000, np.float32))
            worlds.add(comm.last_info.world_size)
            n += 1
            if n == 20:
                ctx.event("running")
        except errors.PeerLostError:
            continue
        except errors.TooFewPeersError as e:
            res = {"error": "TooFewPeersError", "message": str(e), "worlds": sorted(worlds)}
            break
    t0 = time.monotonic()
    try:  # update_topology() waits for a newcomer; none comes, so its timeout ends the wait
        comm.update_topology(timeout=1.0)
        res["topology"] = "returned"
    except errors.PCCLError as e:
        res["topology"] = f"{type(e).__name__}: {e}"
        res["topology_seconds"] = time.monotonic() - t0
    comm.close()
    return res


def state_holder(ctx: Context) -> dict:
    """Holds the group's state at revision 5, then idles until the test kills it."""
    comm = ctx.join(ctx.comm())
    state = pa.SharedState({"w": np.full(16, 5.0, np.float32)}, revision=5)
    comm.sync_shared_state(state)
    ctx.event("synced")
    _wait_for_file(ctx.out / "never", 120)
    return {}


def state_newcomer(ctx: Context) -> dict:
    """A blank newcomer admitted after every holder died: its sync must fail loudly; then the `resume` peer
    offers a checkpoint with send_only and both end with it."""
    comm = ctx.comm()
    comm.connect(timeout=60)
    while comm.total_world_size < 2:
        if comm.are_peers_pending():
            comm.update_topology()
        else:
            time.sleep(0.005)
    state = pa.SharedState({"w": np.zeros(16, np.float32)}, revision=0)
    res = {}
    try:
        comm.sync_shared_state(state)
        res["first"] = "no error"
    except errors.PCCLError as e:
        res["first"] = f"{type(e).__name__}: {e}"
    if ctx.args.get("resume") == ctx.rank:
        state = pa.SharedState({"w": np.full(16, 7.0, np.float32)}, revision=5)  # loaded from a checkpoint
        comm.sync_shared_state(state, strategy="send_only")
    else:
        comm.sync_shared_state(state)
    res.update(w=state["w"].tolist(), revision=state.revision)
    comm.close()
    return res


def reachability(ctx: Context) -> dict:
    """Ranks 0 and 1 all-reduce until released; rank 2 advertises an address nobody can reach."""
    if ctx.rank == 2:
        comm = ctx.comm(advertise="127.0.0.1:1", connect_timeout=5.0)
        t0 = time.monotonic()
        try:
            comm.connect(timeout=30)
            return {"error": None}
        except errors.PCCLError as e:
            return {"error": type(e).__name__, "message": str(e), "seconds": time.monotonic() - t0}
    comm = ctx.join(ctx.comm(), world=2)
    n, failures = 0, []
    while True:  # both stop after the same all-reduce: the one whose sum carries the release flag
        try:
            comm.update_topology()
            flag = float((ctx.out / "release").exists())
            r = comm.all_reduce(np.array([1.0, flag], np.float32))
            info = comm.last_info
            if r[0] != 2.0 or info.world_size != 2:
                failures.append(f"result {r[0]} from a world of {info.world_size} (group {comm.world_size})")
            n += 1
            if n == 10:
                ctx.event("running")
            if r[1] > 0:
                break
        except errors.PCCLError as e:
            failures.append(f"{type(e).__name__}: {e}")
            break
    comm.close()
    return {"ops": n, "failures": failures}


def interrupted_membership(ctx: Context) -> dict:
    """Ctrl-C while blocked on membership. `where`: "topology" (alone with min_world_size=2, update_topology()
    waits for a newcomer that never comes), "connect" (rank 1 waits to be admitted by rank 0, which never
    votes)."""
    where = ctx.args["where"]
    if where == "connect" and ctx.rank == 0:
        comm = ctx.join(ctx.comm(), world=1)
        ctx.event("idle")
        _wait_for_file(ctx.out / "release", 60)
        comm.close()
        return {}
    comm = ctx.comm(min_world_size=2)
    res = {}
    try:
        if where == "topology":
            comm.connect(timeout=30)
            ctx.event("waiting")
            comm.update_topology()
        else:
            ctx.event("waiting")
            comm.connect()
        res["error"] = None
    except KeyboardInterrupt:
        res.update(error="KeyboardInterrupt", t_interrupt=time.monotonic())
    try:
        comm.all_reduce(np.ones(2))
    except errors.PCCLError as e:
        res["after"] = {"error": type(e).__name__, "message": str(e)}
    comm.close()
    return res
