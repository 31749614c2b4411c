"""What peer processes do in multi-process tests. Each function gets a Context, runs against a real master
and returns a JSON-able dict (arrays go into ctx.arrays). See procs.py for how they are started."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

import data
import pccl_arrays as pa
from pccl_arrays import errors


class Context:
    def __init__(self, master: str, rank: int, world: int, out: Path, args: dict):
        self.master, self.rank, self.world, self.out, self.args = master, rank, world, out, args
        self.arrays: dict[str, np.ndarray] = {}

    def event(self, name: str) -> None:
        sys.stdout.write(f"EVENT {name}\n")
        sys.stdout.flush()

    def comm(self, **kw) -> pa.Communicator:
        opts = dict(connections=self.args.get("connections", 2), connect_timeout=5.0,
                    master_timeout=self.args.get("master_timeout", 5.0), data_timeout=self.args.get("data_timeout", 10.0),
                    heartbeat_interval=0.2, peer_group=self.args.get("group", 0))
        if self.rank in self.args.get("behind_nat", ()):  # no data port: it dials every connection (docs/nat.md)
            opts["listen"] = None
        opts.update(kw)
        return pa.Communicator(self.master, **opts)

    def join(self, comm: pa.Communicator, world: int | None = None) -> pa.Communicator:
        """Connects and votes until `world` peers (all groups) are accepted."""
        comm.connect(timeout=60)
        target = world or self.world
        while comm.total_world_size < target:
            if comm.are_peers_pending():  # a pending peer stays pending until a vote, so every peer sees it
                comm.update_topology()
            else:
                time.sleep(0.005)
        self.event("joined")
        return comm


def ops_dtypes(ctx: Context) -> dict:
    """Every dtype x op, odd lengths, in place and out of place."""
    comm = ctx.join(ctx.comm())
    refused = []
    case = 0
    for name in data.DTYPES:
        for op in data.OPS:
            case += 1
            x = data.make(name, op, data.length(case), ctx.rank, case)
            if op == "avg" and name not in data.FLOATS:
                try:
                    comm.all_reduce(x, op)
                except TypeError as e:
                    refused.append(f"{name}:{type(e).__name__}")
                continue
            if case % 2:
                r = comm.all_reduce(x, op)
            else:
                r = x.copy()
                comm.all_reduce(r, op, out=r)
            ctx.arrays[f"{name}_{op}"] = r.view(np.uint8) if name == "bfloat16" else r
    comm.close()
    return {"refused": refused}


def expected_big(n: int, world: int) -> np.ndarray:
    idx = np.arange(n, dtype=np.int64)
    return sum(((idx * (r + 1)) % 1021).astype(np.float32) for r in range(world))


def big(ctx: Context) -> dict:
    """One large float32 all-reduce with integer-valued data (exact sums), checked here; reports per-connection bytes."""
    n = ctx.args["n"]
    comm = ctx.join(ctx.comm(connections=ctx.args.get("connections", 4)))
    x = ((np.arange(n, dtype=np.int64) * (ctx.rank + 1)) % 1021).astype(np.float32)
    before = {(s["peer"], s["index"], s["direction"]): s["bytes"] for s in comm.connection_stats()}
    r = comm.all_reduce(x, "sum")
    info = comm.last_info
    stats = [dict(s, moved=s["bytes"] - before.get((s["peer"], s["index"], s["direction"]), 0))
             for s in comm.connection_stats()]
    exact = bool(np.array_equal(r, expected_big(n, ctx.world)))
    comm.close()
    return {"exact": exact, "sha256": hashlib.sha256(r.tobytes()).hexdigest(), "stats": stats,
            "stripes": info.stripes, "bytes_sent": info.bytes_sent, "world": info.world_size}


def fresh_loop(ctx: Context) -> dict:
    """The loop most users write, ``y = all_reduce(x)`` step after step (plain and quantized, the last result
    alive during the next call), with the communicator's buffer pool as configured; reports the pool's counters
    and whether every result was exact (plain) or the same as out='s (quantized)."""
    a = ctx.args
    n, steps = a["n"], a["steps"]
    comm = ctx.join(ctx.comm(buffer_pool_bytes=a.get("pool", 1 << 30)))
    x = ((np.arange(n, dtype=np.int64) * (ctx.rank + 1)) % 1021).astype(np.float32)
    want = expected_big(n, ctx.world)
    q = pa.Quantization(kind="minmax", block=1024)
    want_q = np.empty_like(x)
    comm.all_reduce(x, out=want_q, quantization=q)
    exact = same_q = True
    y = yq = None
    for _ in range(steps):
        y = comm.all_reduce(x)
        yq = comm.all_reduce(x, quantization=q)
        exact = exact and bool(np.array_equal(y, want))
        same_q = same_q and yq.tobytes() == want_q.tobytes()
    stats = comm._pool.stats()
    comm.close()
    after_close = comm._pool.stats()
    return {"exact": exact, "same_quantized": same_q, "stats": stats, "after_close": after_close,
            "still_readable": bool(np.array_equal(y, want))}  # a result outlives close()


def _die_when_busy(comm: pa.Communicator, threshold: int, how: int, stamp: Path) -> None:
    """From a helper thread: wait until `threshold` bytes moved on our connections (an operation is in
    flight), then stamp the time and deliver `how` (SIGKILL or SIGSTOP) to this whole process."""
    def total() -> int:
        return sum(s["bytes"] for s in comm.connection_stats())

    def run() -> None:
        start = total()
        while total() - start < threshold:
            time.sleep(0.0005)
        stamp.write_text(repr(time.time()))
        os.kill(os.getpid(), how)

    threading.Thread(target=run, daemon=True).start()


def fail_mid_op(ctx: Context) -> dict:
    """Victim dies (SIGKILL) or stalls (SIGSTOP) while an all-reduce is in flight; survivors see PeerLostError,
    keep their input, and the retry on the smaller ring is exact. With `quant` (Quantization's arguments) the
    operations are quantized, the input is random, and the retry's result is reported for the test to compare
    (its bytes' hash, and its rms error against the exact sum relative to the sum's rms)."""
    n, victim, how = ctx.args["n"], ctx.args["victim"], ctx.args["how"]
    q = pa.Quantization(**ctx.args["quant"]) if ctx.args.get("quant") else None
    comm = ctx.join(ctx.comm(connections=2))
    x = np.full(n, ctx.rank + 1, dtype=np.float32)
    if q is not None:
        x = np.random.default_rng([ctx.rank, 5]).standard_normal(n).astype(np.float32)
    comm.all_reduce(x.copy(), "sum", quantization=q)  # warm-up: connections open
    if ctx.rank == victim:
        _die_when_busy(comm, n // 2, signal.SIGKILL if how == "kill" else signal.SIGSTOP, ctx.out / "stamp")
        try:  # only a stopped victim comes back here, after SIGCONT
            comm.all_reduce(x, "sum", out=x, quantization=q)
            return {"victim_error": None}
        except errors.PCCLError as e:
            out = {"victim_error": type(e).__name__, "victim_message": str(e)}
        # A stalled peer that was evicted may join again as a new peer.
        comm.close()
        again = ctx.comm(connections=2)
        again.connect(timeout=30)
        r = again.all_reduce(np.full(8, 100.0, dtype=np.float32), "sum")
        out.update(rejoined=True, rejoin_result=float(r[0]), rejoin_world=again.last_info.world_size)
        again.close()
        return out
    original = x.copy()
    t0 = time.time()
    try:
        comm.all_reduce(x, "sum", out=x, quantization=q)
        return {"error": None}
    except errors.PCCLError as e:
        t_err = time.time()
        res = {"error": type(e).__name__, "retryable": e.retryable, "message": str(e), "t_error": t_err,
               "t_start": t0, "input_intact": bool(np.array_equal(x, original))}
    r = comm.all_reduce(x, "sum", out=x, quantization=q)
    survivors = [k for k in range(ctx.world) if k != victim]
    res.update(retry_world=comm.last_info.world_size)
    if q is None:
        res.update(retry_exact=bool(np.all(r == float(sum(k + 1 for k in survivors)))))
    else:
        exact = sum(np.random.default_rng([k, 5]).standard_normal(n).astype(np.float32).astype(np.float64)
                    for k in survivors)
        res.update(retry_digest=hashlib.sha256(r.tobytes()).hexdigest(),
                   retry_error=float(np.sqrt(np.mean((r - exact) ** 2) / np.mean(exact**2))))
    if how == "stop":
        # Admit the victim when it comes back as a new peer, and reduce once with it.
        ctx.event("survived")
        while not comm.are_peers_pending():
            time.sleep(0.01)
        comm.update_topology()
        r = comm.all_reduce(np.full(8, 100.0, dtype=np.float32), "sum")
        res.update(rejoin_result=float(r[0]), rejoin_world=comm.last_info.world_size)
    comm.close()
    return res


def master_death(ctx: Context) -> dict:
    """All-reduce in a loop until the master dies; report the error and when it came. With a master_grace, the
    retryable errors before it ends are counted (the loop retries them, as a user's loop would)."""
    comm = ctx.join(ctx.comm(master_timeout=ctx.args.get("master_timeout", 3.0),
                             master_grace=ctx.args.get("master_grace", 0.0)))
    x = np.ones(ctx.args.get("n", 1 << 16), dtype=np.float32)
    steps, retried, t_first = 0, [], None
    while True:
        try:
            comm.all_reduce(x, "sum")
            steps += 1
            if steps == 3:
                ctx.event("running")
        except errors.PeerLostError as e:
            if not ctx.args.get("master_grace"):
                raise
            t_first = t_first or time.time()
            retried.append(str(e))
        except errors.PCCLError as e:
            return {"error": type(e).__name__, "message": str(e), "t_error": time.time(), "steps": steps,
                    "retried": retried, "t_first": t_first}


def mismatch(ctx: Context) -> dict:
    """Rank 1 starts a different operation; everyone must get OperationMismatchError with buffers unchanged,
    and a matching operation afterwards must work."""
    comm = ctx.join(ctx.comm())
    kind = ctx.args["kind"]
    n = 1000
    name, op = "float32", "sum"
    if ctx.rank == 1:
        if kind == "count":
            n = 1001
        elif kind == "dtype":
            name = "float64"
        elif kind == "op":
            op = "max"
    quant = None
    if kind == "quant" and ctx.rank == 1:
        quant = "minmax"
    elif kind == "qblock":
        quant = pa.Quantization(block=1024 if ctx.rank == 0 else 2048)
    elif kind == "qrotate":
        quant = pa.Quantization("minmax4", rotate=ctx.rank == 1)
    elif kind == "qreduce":
        quant = pa.Quantization("minmax4", reduce="ring" if ctx.rank == 1 else "direct")
    x = np.arange(n).astype(name)
    original = x.copy()
    res = {}
    try:
        comm.all_reduce(x, op, out=x, quantization=quant)
        res["error"] = None
    except errors.PCCLError as e:
        res.update(error=type(e).__name__, message=str(e), unchanged=bool(np.array_equal(x, original)))
    y = comm.all_reduce(np.full(10, ctx.rank + 1.0), "sum")
    res["after"] = float(y[0])
    comm.close()
    return res


def loop_ops(ctx: Context) -> dict:
    """The training-loop pattern: per step, update_topology(), learn the step number (max of a counter, so a
    newcomer catches up), then all-reduce this peer's contribution. Records (step, world, value) per step."""
    a = ctx.args
    comm = ctx.comm(connections=a.get("connections", 2))
    joined_late = a.get("late", False)
    if joined_late:
        comm.connect(timeout=60)
    else:
        ctx.join(comm, a.get("total"))
    ctx.event(f"data_port {comm.data_address}")
    steps, n = a["steps"], a.get("n", 4096)
    records = []
    step = 0
    first = True
    while step < steps:
        if not (joined_late and first):  # a newcomer was admitted inside the others' vote of this step
            comm.update_topology()
        first = False
        step = int(comm.all_reduce(np.array([step], dtype=np.int64), "max")[0])
        x = np.full(n, ctx.rank + 1, dtype=np.float64)
        r = comm.all_reduce(x, "sum")
        records.append([step, comm.last_info.world_size, float(r[0]), bool(np.all(r == r[0]))])
        ctx.event(f"step{step}")
        step += 1
        if a.get("await_joiner_at") == step and not joined_late:
            while not comm.are_peers_pending():  # hold the job here until the newcomer knocks
                time.sleep(0.005)
        if a.get("leave_at") == step and ctx.rank == a.get("leaver"):
            comm.close()
            return {"records": records, "left": True}
    comm.close()
    return {"records": records, "dropped_data_connections": comm._core.dropped_data_connections}


def _to_framework(a: np.ndarray, fw: str):
    if fw == "torch":
        import torch

        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16)
        return torch.from_numpy(a.copy())
    if fw == "jax":
        import jax.numpy as jnp

        return jnp.asarray(a)
    return a.copy()


def _to_numpy(r, fw: str) -> np.ndarray:
    if fw == "torch":
        import torch

        if r.dtype == torch.bfloat16:
            return r.view(torch.uint16).numpy()
        return r.numpy()
    out = np.asarray(r)
    return out.view(np.uint16) if out.dtype.name == "bfloat16" else out


def mixed_frameworks(ctx: Context) -> dict:
    """Rank 0 holds torch tensors, rank 1 JAX arrays, rank 2 NumPy arrays: every op x dtype, same data."""
    fw = ["torch", "jax", "numpy"][ctx.rank % 3]
    if fw == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # int64 / uint64 / float64 stay 64-bit
    comm = ctx.join(ctx.comm())
    case = 0
    kinds = set()
    for name in data.DTYPES:
        for op in data.OPS:
            case += 1
            if op == "avg" and name not in data.FLOATS:
                continue
            x = _to_framework(data.make(name, op, data.length(case), ctx.rank, case), fw)
            r = comm.all_reduce(x, op)
            kinds.add(type(r).__module__.split(".")[0])
            ctx.arrays[f"{name}_{op}"] = _to_numpy(r, fw)
    comm.close()
    return {"framework": fw, "result_modules": sorted(kinds)}


def quant_input(rank: int, n: int, dtype: str = "float32") -> np.ndarray:
    """Gaussian data with outliers, a constant stretch and tiny values: what quantization finds hard."""
    rng = np.random.default_rng([7, rank, n])
    x = rng.standard_normal(n) * (1 + rank)
    x[rng.integers(0, n, max(1, n // 500))] *= 50  # outliers
    x[: min(n, 700)] = 0.25  # a constant run covering part of a block
    x[-min(n, 300):] *= 1e-20  # tiny magnitudes
    return x.astype(data.np_dtype(dtype))


def quantized(ctx: Context) -> dict:
    """Quantized sum and avg; the rank given by `triton_rank` quantizes with the Triton kernels (interpreter)."""
    a = ctx.args
    n, kind, block, dtype = a["n"], a.get("kind", "minmax"), a.get("block"), a.get("dtype", "float32")
    use_triton = ctx.rank == a.get("triton_rank", -1)
    if use_triton:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is first imported (no GPU here)
    comm = ctx.join(ctx.comm(**({"piece_bytes": a["piece_bytes"]} if "piece_bytes" in a else {})))
    x = quant_input(ctx.rank, n, dtype)
    q = pa.Quantization(kind=kind, block=block, path="triton" if use_triton else "host",
                        rounding=a.get("rounding", "nearest"), seed=a.get("seed", 0), rotate=a.get("rotate", False),
                        reduce=a.get("reduce", "direct"))
    if use_triton:
        import torch

        xin = torch.from_numpy(x.view(np.uint16).copy()).view(torch.bfloat16) if dtype == "bfloat16" else torch.from_numpy(x)
    else:
        xin = x
    out = {}
    for op in ("sum", "avg"):
        r = comm.all_reduce(xin, op, quantization=q)
        info = comm.last_info
        r = _to_numpy(r, "torch") if use_triton else (r.view(np.uint16) if dtype == "bfloat16" else r)
        ctx.arrays[op] = r
        out[op] = {"bytes_sent": info.bytes_sent, "world": info.world_size, "stripes": info.stripes}
    if a.get("host_forms") and not use_triton:  # the same sum into out= and in place (both host paths)
        y = np.full_like(x, np.nan)
        comm.all_reduce(x, "sum", out=y, quantization=q)
        z = x.copy()
        comm.all_reduce(z, "sum", out=z, quantization=q)
        ctx.arrays["sum_out"], ctx.arrays["sum_inplace"] = y, z
    out["ring"], out["peer_id"] = comm.ring(), comm.peer_id
    plain = comm.all_reduce(x, "sum")
    info = comm.last_info
    out["plain_bytes_sent"] = info.bytes_sent
    comm.close()
    return out


def many_with_kill(ctx: Context) -> dict:
    """all_reduce_many over arrays of known contributions while the victim SIGKILLs itself midway; each
    survivor reports, per array, the single value it holds (or that it is not uniform)."""
    a = ctx.args
    count, n, victim = a["count"], a["n"], a["victim"]
    comm = ctx.join(ctx.comm(connections=2))
    arrays = [np.full(n, float((ctx.rank + 1) * (i + 1)), dtype=np.float64) for i in range(count)]
    comm.all_reduce(np.ones(8))  # warm-up: connections open
    if ctx.rank == victim:
        _die_when_busy(comm, a["kill_after_bytes"], signal.SIGKILL, ctx.out / "stamp")
    results = comm.all_reduce_many(arrays, "sum", max_in_flight=a["max_in_flight"], retries=3)
    values = [float(r[0]) if np.all(r == r[0]) else None for r in results]
    comm.close()
    return {"values": values}
