"""Peer processes for the master-restart tests (tests/test_master_restart.py): the README's loop (verbatim, or
with extra Communicator arguments substituted in) and the loop of docs/shared_state.md, run while the master is
killed, restarted, replaced by a standby or partitioned away.

The loops' calls are observed, never changed (as contract_scenarios.readme_loop does): every committed sync's
(revision, state hash) and every committed all-reduce's participant mask go to ``rank{R}.steps`` as JSON lines,
each with the wall-clock time ``t`` it was written, so the test can tell how soon steps resumed after the master
came back. Every error a wrapped call raises (and the loop then catches, or not) goes there too, as
``{"error": ..., "in": ...}``. Each peer's gradient is 2**rank, so an average times the world size names exactly
the peers that took part.

Arguments (``ctx.args``):
    loop: "readme" (README.md's block verbatim, only the master address substituted), "readme_kw" (the same block
        with ``comm_kw`` added to its Communicator(...) call) or "docs" (docs/shared_state.md's block, its two
        ``...`` lines filled with the README's all-reduce and update, on a Communicator built with ``comm_kw``).
    steps, compute_s: the loop's length and the sleep of its compute().
    comm_kw: extra Communicator arguments for "readme_kw" and "docs" (master_timeout, master_grace, ...).
    reach: {"revision": R, "world": W}: print ``EVENT reached R`` at the first sync at revision >= R whose group
        has at least W peers (so the test knows the run is in full swing).
    hold: {"kind": "sync" | "all_reduce", "revision": R, "rank": H}: at the first such call at revision >= R,
        every peer prints ``EVENT entering KIND R`` just before calling it, except peer H, which prints
        ``EVENT holding KIND R`` and waits for the file ``OUT/release`` before calling it: the others are then
        inside that collective, waiting for H, when the test kills the master.
    catch_unreachable: a MasterUnreachableError that leaves the loop is caught here and reported
        (``unreachable``: its message, ``t_error``: when); without it, it fails the peer as any error does.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np

import pccl_arrays as pa
from contract_scenarios import readme_loop_code
from scenarios import Context

DOCS_STATE = Path(__file__).resolve().parents[2] / "docs" / "shared_state.md"
README_COMM_ARGS = "connections=4, min_world_size=2)"


def docs_loop_code() -> str:
    """The loop of docs/shared_state.md (its first python block), with its two ``...`` placeholders filled in:
    the compute and all-reduce of the README's loop, and the README's update (plus a momentum and a step count,
    the entries that block names)."""
    block = re.search(r"```python\n(.*?)```", DOCS_STATE.read_text(), re.S).group(1)
    lines = block.splitlines()
    filled = {"# compute, all-reduce": ['grads = compute(state["params"])', 'avg = comm.all_reduce(grads, op="avg")'],
              "# apply the update": ['state["momentum"] *= 0.5', 'state["momentum"] += avg',
                                     'state["params"] -= 0.1 * state["momentum"]', 'state["step"] += 1']}
    out, done = [], set()
    for line in lines:
        stripped = line.strip()
        key = next((k for k in filled if stripped.startswith("...") and k in stripped), None)
        if key is None:
            out.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        out += [indent + s for s in filled[key]]
        done.add(key)
    assert done == set(filled), f"docs/shared_state.md's loop changed: {sorted(set(filled) - done)} not found"
    return "\n".join(out) + "\n"


def _state_hash(state: pa.SharedState) -> str:
    h = hashlib.sha256()
    for name in sorted(state.keys()):
        h.update(name.encode())
        h.update(np.ascontiguousarray(np.asarray(state[name])).tobytes())
    return h.hexdigest()[:16]


def _wait_for_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def restart_loop(ctx: Context) -> dict:
    """Runs the chosen loop with its collectives observed (see the module's docstring)."""
    a = ctx.args
    log = open(ctx.out / f"rank{ctx.rank}.steps", "a", buffering=1)
    seen = {"revision": None, "reached": False, "held": False, "peer_id": None}
    sync, reduce, topology = (pa.Communicator.sync_shared_state, pa.Communicator.all_reduce,
                              pa.Communicator.update_topology)
    reach, hold = a.get("reach"), a.get("hold")

    def write(rec: dict) -> None:
        rec["t"] = time.time()
        log.write(json.dumps(rec) + "\n")

    def before(kind: str, revision) -> None:
        if hold and not seen["held"] and hold["kind"] == kind and revision is not None and revision >= hold["revision"]:
            seen["held"] = True
            if ctx.rank == hold["rank"]:
                ctx.event(f"holding {kind} {revision}")
                _wait_for_file(ctx.out / "release", 120)
                write({"released": kind, "revision": revision})
            else:
                ctx.event(f"entering {kind} {revision}")
                write({"entering": kind, "revision": revision})

    def failed(kind: str, e: BaseException) -> None:
        write({"error": type(e).__name__, "in": kind, "message": str(e)[:500]})

    def observed_sync(self, state, *args, **kw):
        if seen["peer_id"] is None:
            seen["peer_id"] = self.peer_id
        before("sync", state.revision)
        try:
            info = sync(self, state, *args, **kw)
        except BaseException as e:
            failed("sync", e)
            raise
        seen["revision"] = state.revision
        write({"sync": state.revision, "hash": _state_hash(state), "world": self.world_size})
        if (reach and not seen["reached"] and state.revision >= reach["revision"]
                and self.world_size >= reach.get("world", 1)):
            seen["reached"] = True
            ctx.event(f"reached {state.revision}")
        return info

    def observed_reduce(self, x, *args, **kw):
        before("all_reduce", seen["revision"])
        try:
            r = reduce(self, x, *args, **kw)
        except BaseException as e:
            failed("all_reduce", e)
            raise
        world = self.last_info.world_size
        write({"reduce": seen["revision"], "mask": float(r[0]) * world, "avg": float(r[0]), "world": world,
               "uniform": bool(np.all(r == r[0]))})
        return r

    def observed_topology(self, *args, **kw):
        try:
            return topology(self, *args, **kw)
        except BaseException as e:
            failed("update_topology", e)
            raise

    pa.Communicator.sync_shared_state, pa.Communicator.all_reduce = observed_sync, observed_reduce
    pa.Communicator.update_topology = observed_topology

    def compute(w):
        time.sleep(a.get("compute_s", 0.01))
        return np.full_like(w, float(1 << ctx.rank))

    kind, comm_kw = a.get("loop", "readme"), dict(a.get("comm_kw", {}))
    env = {"steps": a["steps"], "compute": compute, "__name__": "readme"}
    if kind in ("readme", "readme_kw"):
        code = readme_loop_code().replace('"master-host:48148"', repr(ctx.master))
        if kind == "readme_kw":
            assert code.count(README_COMM_ARGS) == 1, "README's Communicator(...) line changed"
            code = code.replace(README_COMM_ARGS, README_COMM_ARGS[:-1] + ", **comm_kw)")
            env["comm_kw"] = comm_kw
        filename = "README.md"
    elif kind == "docs":
        code = ("import numpy as np\nimport pccl_arrays as pa\n"
                "comm = pa.Communicator(master, connections=4, min_world_size=2, **comm_kw)\ncomm.connect()\n"
                "params, mom, step = np.zeros(1000, np.float32), np.zeros(1000, np.float32), np.zeros(1, np.int64)\n"
                + docs_loop_code() + "comm.close()\n")
        env.update(master=ctx.master, comm_kw=comm_kw)
        filename = "docs/shared_state.md"
    else:
        raise ValueError(f"unknown loop {kind!r}")
    ctx.event("started")
    write({"started": kind})
    try:
        exec(compile(code, filename, "exec"), env)
    except pa.MasterUnreachableError as e:
        if not a.get("catch_unreachable"):
            raise
        write({"unreachable": str(e)})
        return {"done": False, "unreachable": str(e), "t_error": time.time(), "peer_id": seen["peer_id"],
                "revision": env["state"].revision if "state" in env else None}
    write({"done": env["state"].revision})
    return {"done": True, "revision": env["state"].revision, "peer_id": seen["peer_id"]}
