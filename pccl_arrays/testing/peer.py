"""The peer side of the churn harness: the context a peer target gets, the built-in all-reduce loop, and the
child's entry point ``python -m pccl_arrays.testing TARGET MASTER INDEX ARGS_JSON OUT_DIR``.

How this works. The child asks to die with the harness (records.die_with_parent), imports TARGET
(``"module:function"``), calls it with a :class:`PeerContext` and writes what it returns, or the error it
raised, to ``OUT/peer{INDEX}.json``; while it runs it appends progress lines to ``OUT/peer{INDEX}.progress``.
A peer stops when ``OUT/STOP`` exists; :func:`allreduce_loop` peers agree on it inside an all-reduce, so they
all stop at the same step.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from .records import ProgressLog, die_with_parent, run_target, write_result


class PeerContext:
    """What a peer target gets: the master address, its index, the harness's args and where to write."""

    def __init__(self, master: str, index: int, args: dict, out: Path):
        self.master, self.index, self.args, self.out = master, index, args, out
        self._progress = ProgressLog(out / f"peer{index}.progress")

    def progress(self, **fields) -> None:
        """Appends one progress line (flushed at once: it must survive a SIGKILL right after)."""
        self._progress.write(**fields)

    def stop_requested(self) -> bool:
        return (self.out / "STOP").exists()

    def leave_requested(self) -> bool:
        """The harness asked this peer alone to leave gracefully (:meth:`Harness.leave`)."""
        return (self.out / f"LEAVE{self.index}").exists()

    def connect(self):
        """A connected Communicator (``args``: connections, data_timeout, admission_timeout (default 2 s), and
        ``comm``: more Communicator arguments, e.g. connect_timeout, master_grace, min_world_size), retrying in
        short waits so that a STOP is
        noticed; None when asked to stop first. With ``args["master_restarts"]`` a master lost or unreachable
        during connect() is retried too (recorded as a ``connect_retry`` progress line): the harness restarts it."""
        from .. import errors
        from ..communicator import Communicator

        retry = (errors.PCCLTimeoutError, errors.MasterUnreachableError) if self.args.get("master_restarts") \
            else errors.PCCLTimeoutError
        kw = {"connect_timeout": 5.0, "heartbeat_interval": 0.2, "master_timeout": 5.0,
              "data_timeout": self.args.get("data_timeout", 10.0), **self.args.get("comm", {})}
        while not self.stop_requested():
            comm = Communicator(self.master, connections=self.args.get("connections", 2), **kw)
            try:
                return comm.connect(timeout=self.args.get("admission_timeout", 2.0))
            except retry as e:
                comm.close()
                if isinstance(e, errors.MasterUnreachableError):
                    self.progress(kind="connect_retry", error=str(e)[:300])
                    time.sleep(0.1)
        return None

    def rejoin(self, comm, error: BaseException):
        """After an eviction (a stall past the master's deadline) the communicator is unusable: records the
        event, closes it and joins again as a new peer (None when asked to stop)."""
        from .. import errors

        self.progress(kind="rejoin", error=type(error).__name__)
        try:
            comm.close()
        except errors.PCCLError:
            pass
        return self.connect()

    def admit_initial(self, comm) -> None:
        """The peers started together (``args["initial"]``) vote each other in; then records "joined"."""
        initial = self.args.get("initial")
        while initial and comm.total_world_size < initial:
            if comm.are_peers_pending():
                comm.update_topology()
            else:
                time.sleep(0.005)
        self.progress(kind="joined", world=comm.total_world_size, inbound=comm.inbound, peer=comm.peer_id)


def allreduce_loop(ctx: PeerContext) -> dict:
    """The user pattern of the README under churn. Each step: ``update_topology()``; all-reduce (op max) of
    ``[step, stop]`` so that a newcomer catches up and every peer stops at the same step; all-reduce of this
    peer's contribution, 1.0 per element, so the result equals the world size. A PeerLostError restarts the step
    (every member of the ring gets it, so all restart together); a PeerEvictedError (after a stall) rejoins as a
    new Communicator. Records ``[step, world, value, uniform]`` per step.

    Args (ctx.args): ``initial`` (peers started together wait until that many joined), ``max_steps``, ``n``
    (elements per all-reduce, default 1024), ``connections`` (default 2), ``data_timeout`` (default 10).
    """
    import numpy as np

    from .. import errors

    a = ctx.args
    n, max_steps = a.get("n", 1024), a.get("max_steps", 1 << 62)
    counts = {"rejoins": 0, "peer_lost": 0, "too_few": 0}
    records: list = []

    comm = ctx.connect()
    if comm is None:
        return {"records": records, **counts, "stopped_before_join": True}
    initial = a.get("initial")
    ctx.admit_initial(comm)
    vote = initial is not None  # a newcomer was admitted inside the others' vote of this step: no vote
    step = 0
    while True:
        try:
            if vote:
                comm.update_topology()
            vote = True
            stop = 1 if (ctx.stop_requested() or step >= max_steps) else 0
            agreed = comm.all_reduce(np.array([step, stop], dtype=np.int64), "max")
            step, stop = int(agreed[0]), int(agreed[1])
            if stop:
                break
            r = comm.all_reduce(np.ones(n, dtype=np.float64), "sum")
        except errors.PeerLostError:
            counts["peer_lost"] += 1
            continue
        except errors.TooFewPeersError:
            counts["too_few"] += 1
            time.sleep(0.05)
            continue
        except (errors.PeerEvictedError, errors.MasterUnreachableError) as e:
            counts["rejoins"] += 1
            comm = ctx.rejoin(comm, e)
            if comm is None:
                return {"records": records, **counts}
            vote = False
            continue
        rec = [step, comm.last_info.world_size, float(r[0]), bool(np.all(r == r[0]))]
        records.append(rec)
        ctx.progress(kind="step", step=step, world=rec[1], value=rec[2], uniform=rec[3])
        step += 1
    comm.close()
    return {"records": records, **counts}



def main(argv: list[str]) -> int:
    """Runs one peer: ``TARGET MASTER INDEX ARGS_JSON OUT_DIR``; the exit status says whether the target raised."""
    if not die_with_parent():
        return 1  # the harness died before we could ask to die with it
    target, master, index, args, out = argv
    ctx = PeerContext(master, int(index), json.loads(args), Path(out))
    module, _, func = target.partition(":")
    result, status = run_target(lambda: getattr(importlib.import_module(module), func)(ctx))
    write_result(ctx.out / f"peer{ctx.index}.json", dict(result, index=ctx.index, finished_at=time.monotonic()))
    return status
