"""What peer processes do in the tests of collectives inside jax.jit (tests/test_jax_jit.py, pccl_arrays/jax.py).

Every collective goes through a Recorder, a stand-in for the communicator that logs each call the callbacks
make (kind, shape, the master's op id and ring size, or the error), so a test can compare the sequences of all
peers: equal op ids in the same order mean every peer ran the same collectives in the same order. Inputs are
made from the peer's ring rank (comm.rank), which the test also knows."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np

from pccl_arrays import errors
from scenarios import Context, _die_when_busy


class Recorder:
    """Delegates to a communicator and logs [attempt, kind, shape, op id, ring size, thread] per collective (or
    [attempt, kind, shape, "error", error type]); ``attempt`` is set by the scenario before each jitted call."""

    def __init__(self, comm, exit_at: tuple = ()):
        self.comm, self.log, self.attempt, self.exit_at = comm, [], 0, exit_at

    def __getattr__(self, name):
        return getattr(self.comm, name)

    def _call(self, kind: str, fn, x, *args, **kw):
        if self.exit_at[:2] == (self.attempt, sum(e[0] == self.attempt for e in self.log)):  # (attempt, index)
            self.exit_at[2].write_text(repr(time.time()))
            os._exit(3)  # between two collectives of a jitted call: the others wait in the next one
        try:
            result = fn(x, *args, **kw)
        except errors.PCCLError as e:
            self.log.append([self.attempt, kind, list(x.shape), "error", type(e).__name__])
            raise
        info = self.comm.last_info  # this thread's: the callback's
        self.log.append([self.attempt, kind, list(x.shape), info.op_id, info.world_size,
                         threading.current_thread() is threading.main_thread()])
        return result

    def all_reduce(self, x, *args, **kw):
        return self._call("all_reduce", self.comm.all_reduce, x, *args, **kw)

    def broadcast(self, x, *args, **kw):
        return self._call("broadcast", self.comm.broadcast, x, *args, **kw)

    def all_gather(self, x, *args, **kw):
        return self._call("all_gather", self.comm.all_gather, x, *args, **kw)


def _step_input(step: int, rank: int) -> np.ndarray:
    return (np.arange(4, dtype=np.float32) + 10 * step + rank).astype(np.float32)


def jax_jit_step(ctx: Context) -> dict:
    """A jitted step with two all-reduces (the second on the first's result) and a broadcast, three times, an
    eager all-reduce between steps; a jitted function whose two identical all-reduces' results are unused; a
    jitted all_gather. Records every result and the recorder's log."""
    import jax.numpy as jnp

    import pccl_arrays.jax as pjax

    comm = ctx.join(ctx.comm())
    rec = Recorder(comm)
    rank = comm.rank
    traces = {"step": 0, "unused": 0, "gather": 0}

    @pjax.jit
    def step(x, y):
        traces["step"] += 1
        a = pjax.all_reduce(x, "sum", comm=rec)  # (4,)
        b = pjax.all_reduce(a[:3] * (y + 1), "max", comm=rec)  # (3,): needs a, so it must come second
        c = pjax.broadcast(x.reshape(2, 2) * 10, root=1, comm=rec)  # (2, 2), rank 1's
        return a, b, c

    for s in range(3):
        rec.attempt = s
        a, b, c = step(jnp.asarray(_step_input(s, rank)), jnp.float32(rank))
        ctx.arrays[f"a{s}"], ctx.arrays[f"b{s}"], ctx.arrays[f"c{s}"] = np.asarray(a), np.asarray(b), np.asarray(c)
        e = rec.all_reduce(np.array([s + rank], dtype=np.int32), "sum")  # eager, between jitted calls
        ctx.arrays[f"eager{s}"] = np.asarray(e)

    @pjax.jit
    def unused(x):
        traces["unused"] += 1
        pjax.all_reduce(x, comm=rec)  # results never used, the two calls identical
        pjax.all_reduce(x, comm=rec)
        return x + 1

    rec.attempt = 10
    ctx.arrays["unused"] = np.asarray(unused(jnp.ones(5, jnp.float32)))

    @pjax.jit
    def gather(x):
        traces["gather"] += 1
        return pjax.all_gather(x * 2, comm=rec)

    rec.attempt = 20
    for _ in range(2):
        ctx.arrays["gather"] = np.asarray(gather(jnp.full((2, 3), rank, jnp.int32)))
    info = pjax.last_info(rec)
    comm.close()
    return {"rank": rank, "world": ctx.world, "log": rec.log, "traces": traces, "last_world": info.world_size,
            "last_op": info.op_id}


def jax_jit_lost(ctx: Context) -> dict:
    """A jitted step (all-reduce, all-reduce of its result, broadcast) on the default communicator
    (set_communicator), after a warm-up call; then the victim (a ring rank) is lost in the second call:
    ``how="kill"``, SIGKILLed while the step's data moves; ``how="exit_inside"``, its process exits between
    the step's first and second collective (the others' second one then runs without it); ``how="exit_before"``,
    it exits just before its own call, while the others already wait inside theirs. Survivors report the
    error the jitted call raised (if any) and run the step again, then a jitted all_gather that was traced for
    three peers before the loss."""
    import jax
    import jax.numpy as jnp

    import pccl_arrays as pa
    import pccl_arrays.jax as pjax

    a = ctx.args
    n, victim, how = a["n"], a["victim"], a["how"]
    comm = ctx.join(ctx.comm(connections=2))
    rank = comm.rank
    rec = Recorder(comm, (1, 1, ctx.out / "stamp") if how == "exit_inside" and rank == victim else ())
    pjax.set_communicator(rec)

    @pjax.jit
    def step(x):
        s = pjax.all_reduce(x, "sum")
        t = pjax.all_reduce(s * 0.5, "sum")
        b = pjax.broadcast(t[:8], root=0)
        return s[:8], b

    gather_traces = []

    @pjax.jit
    def gather(v):
        gather_traces.append(1)
        return pjax.all_gather(v)

    x = jnp.full((n,), rank + 1, jnp.float32)
    jax.block_until_ready(step(x))  # compiled, connections open
    ctx.arrays["gather_before"] = np.asarray(gather(jnp.full((3,), rank + 1, jnp.int32)))  # traced for 3 peers
    rec.attempt = 1
    if rank == victim:
        if how == "kill":
            _die_when_busy(comm, n // 2, signal.SIGKILL, ctx.out / "stamp")
        elif how == "exit_before":
            time.sleep(a.get("exit_after", 1.0))  # the others are inside their jitted call by now
            (ctx.out / "stamp").write_text(repr(time.time()))
            os._exit(3)
    res: dict = {"rank": rank}
    try:
        step(x)
        res["error"] = None
    except pa.PCCLError as e:
        res.update(error=type(e).__name__, retryable=e.retryable, message=str(e), t_error=time.time())
    except Exception as e:  # noqa: BLE001 - the test shows what came instead of our typed error
        res.update(error=type(e).__name__, message=str(e)[-2000:], t_error=time.time())
    rec.attempt = 2
    s, b = step(x)  # again (a retry after an error), on the smaller ring
    res.update(retry_sum=np.asarray(s).tolist(), retry_bcast=np.asarray(b).tolist(),
               retry_world=pjax.last_info().world_size, retry_rank=comm.rank, old_rank=rank)
    rec.attempt = 3
    ctx.arrays["gather"] = np.asarray(gather(jnp.full((3,), rank + 1, jnp.int32)))  # traced again, for 2
    res.update(log=rec.log, gather_traces=len(gather_traces))
    comm.close()
    return res
