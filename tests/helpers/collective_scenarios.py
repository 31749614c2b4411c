"""What peer processes do in the tests of broadcast, all_gather, reduce_scatter and barrier
(tests/test_collectives.py). Inputs are made from the peer's rank in the ring (comm.rank), which every peer and
the test agree on, so the test can compute every expected result."""

from __future__ import annotations

import time

import numpy as np

import data
import pccl_arrays as pa
from pccl_arrays import errors
from scenarios import Context, _die_when_busy

REDUCE_OPS = ["sum", "avg", "prod", "max", "min"]


def rs_shape(case: int) -> tuple:
    """reduce_scatter inputs: odd flat lengths, and rows of 3 that do not divide by the world."""
    n = data.length(case)
    return (n,) if case % 2 else (max(n // 3, 1), 3)


def collectives_cases(ctx: Context) -> dict:
    """Every dtype through broadcast (root = case % world, in place and not), all_gather (new array and
    out=), reduce_scatter with every op, and a barrier between dtypes."""
    comm = ctx.join(ctx.comm())
    rank, world = comm.rank, comm.world_size
    for case, name in enumerate(data.DTYPES):
        n = data.length(case)
        x = data.make(name, "sum", n, rank, case)
        root = case % world
        if case % 2:
            b = comm.broadcast(x, root=root)
        else:
            b = x.copy()
            comm.broadcast(b, root=root, out=b)
        ctx.arrays[f"bc_{name}"] = b
        if case % 2:
            g = comm.all_gather(x)
        else:
            g = np.zeros((world,) + x.shape, dtype=x.dtype)
            comm.all_gather(x, out=g)
        ctx.arrays[f"ag_{name}"] = g
        for op in REDUCE_OPS:
            if op == "avg" and name not in data.FLOATS:
                continue
            y = data.make(name, op, int(np.prod(rs_shape(case))), rank, case).reshape(rs_shape(case))
            ctx.arrays[f"rs_{name}_{op}"] = comm.reduce_scatter(y, op)
        comm.barrier()
    ctx.arrays["peers"] = np.array(comm.last_info.peers, dtype=np.uint64)
    comm.close()
    return {"rank": rank, "world": world, "peer_id": comm.peer_id}


def collectives_frameworks(ctx: Context) -> dict:
    """torch and JAX arrays through each collective: a torch tensor broadcast in place, a strided torch view
    gathered, JAX arrays gathered and reduce-scattered (new arrays), a torch reduce_scatter into out=; and the
    async forms, two at once."""
    import jax.numpy as jnp
    import torch

    comm = ctx.join(ctx.comm())
    rank, world = comm.rank, comm.world_size
    t = torch.arange(1000, dtype=torch.float32) + 1000 * rank
    comm.broadcast(t, root=world - 1, out=t)
    wide = torch.arange(2 * 501, dtype=torch.int64).reshape(501, 2) * (rank + 1)
    gathered = comm.all_gather(wide[:, 1])  # a strided view
    j = jnp.arange(12, dtype=jnp.float32).reshape(4, 3) * (rank + 1)
    jg = comm.all_gather(j)
    js = comm.reduce_scatter(j, "sum")
    first, rows = pa.collectives.chunk_rows(7, world, rank)
    out = torch.zeros((rows, 5), dtype=torch.float64)
    comm.reduce_scatter(torch.ones((7, 5), dtype=torch.float64) * (rank + 1), "max", out=out)
    h1 = comm.all_gather_async(np.array([rank], dtype=np.int32))
    h2 = comm.broadcast_async(np.array([rank, rank], dtype=np.int16), root=0)
    h3 = comm.barrier_async()
    res = {"rank": rank, "world": world, "types": [pa.arrays.framework_of(v) for v in (t, gathered, jg, js)],
           "async": [h1.wait().tolist(), h2.wait().tolist(), h3.wait()]}
    ctx.arrays.update(bc=t.numpy(), ag=gathered.numpy(), jag=np.asarray(jg), jrs=np.asarray(js), rs=out.numpy())
    comm.close()
    return res


def collective_fail_mid_op(ctx: Context) -> dict:
    """The peer at ring rank `victim` SIGKILLs itself while a large collective (`kind`; a broadcast's root is
    rank 0) is in flight; survivors report the error, when it came, whether their input (and a broadcast's
    in-place array) is intact, then retry at once, and if that fails too (a lost root), call
    update_topology() and retry again; they report the retry's result and ring."""
    n, victim, kind = ctx.args["n"], ctx.args["victim"], ctx.args["kind"]
    comm = ctx.join(ctx.comm(connections=2))
    rank = comm.rank
    x = np.full(n, rank + 1, dtype=np.float32)

    def call(arr):
        if kind == "broadcast":
            return comm.broadcast(arr, root=0, out=arr)
        if kind == "all_gather":
            return comm.all_gather(arr)
        return comm.reduce_scatter(arr, "sum")

    call(x.copy())  # warm-up: connections open
    if rank == victim:
        _die_when_busy(comm, n // 2, 9, ctx.out / "stamp")
        call(x)
        return {"victim_error": None}
    original = x.copy()
    try:
        call(x)
        return {"error": None}
    except errors.PCCLError as e:
        res = {"error": type(e).__name__, "retryable": e.retryable, "message": str(e), "t_error": time.time(),
               "input_intact": bool(np.array_equal(x, original)), "old_rank": rank}
    try:
        r = call(x)
    except errors.PeerLostError as e:
        res["retry_error"] = str(e)
        comm.update_topology()
        r = call(x)
    info = comm.last_info
    res.update(retry_world=info.world_size, retry_rank=info.rank, retry_peers=list(info.peers))
    ctx.arrays["retry"] = np.asarray(r)
    comm.close()
    return res


def collective_mismatch(ctx: Context) -> dict:
    """Peers disagree (`case`): different roots, a broadcast against an all_gather, different shapes; each
    reports the error it got, then all run one agreed all_gather (the communicator stays usable)."""
    case = ctx.args["case"]
    comm = ctx.join(ctx.comm())
    rank = comm.rank
    x = np.zeros(5, dtype=np.float32)
    try:
        if case == "roots":
            comm.broadcast(x, root=rank % 2)
        elif case == "kinds":
            comm.broadcast(x) if rank == 0 else comm.all_gather(x)
        else:
            comm.all_gather(np.zeros(5 + (rank == 1), dtype=np.float32))
        res = {"error": None}
    except errors.PCCLError as e:
        res = {"error": type(e).__name__, "message": str(e)}
    res["after"] = comm.all_gather(np.array([rank], dtype=np.int64)).ravel().tolist()
    comm.close()
    return res


def barrier_order(ctx: Context) -> dict:
    """The peer at ring rank `late` calls barrier() only after `delay` seconds; everyone reports when they
    called it and when it returned. Then the late peer never calls a second barrier, which must time out
    on the others naming it; it stays connected until the test writes the file `release`."""
    comm = ctx.join(ctx.comm())
    rank, late = comm.rank, ctx.args["late"]
    if rank == late:
        time.sleep(ctx.args["delay"])  # the point of the test: this peer is late on purpose
    called = time.time()
    comm.barrier()
    res = {"rank": rank, "called": called, "returned": time.time(), "peer_id": comm.peer_id}
    if rank != late:
        try:
            comm.barrier(tag=1, timeout=1.0)
            res["second"] = None
        except errors.PCCLError as e:
            res["second"] = type(e).__name__
            res["second_message"] = str(e)
    ctx.event("done")
    if rank == late:  # stay in the group until the test has seen the others' timeouts
        while not (ctx.out / "release").exists():
            time.sleep(0.01)
    comm.close()
    return res


def collectives_quantized(ctx: Context) -> dict:
    """Quantized all_gather and reduce_scatter (8-bit, and 4-bit rotated) of random float32 inputs seeded by
    ring rank, with the bytes each call sent; then a call whose quantization differs from the others' (the
    peer at rank 1 uses another seed), which every peer must refuse."""
    comm = ctx.join(ctx.comm())
    rank = comm.rank
    x = np.random.default_rng([rank, 1]).standard_normal(100_003).astype(np.float32)
    y = np.random.default_rng([rank, 2]).standard_normal((1001, 7)).astype(np.float32)
    q4 = pa.Quantization("minmax4", rotate=True, seed=5)
    sent = {}
    for name, q in (("8", "minmax"), ("4", q4)):
        ctx.arrays[f"ag{name}"] = comm.all_gather(x, quantization=q)
        sent[f"ag{name}"] = comm.last_info.bytes_sent
        ctx.arrays[f"rs{name}"] = comm.reduce_scatter(y, "avg", quantization=q)
        sent[f"rs{name}"] = comm.last_info.bytes_sent
    comm.all_gather(x)
    sent["plain"] = comm.last_info.bytes_sent
    try:
        comm.all_gather(x, quantization=pa.Quantization("minmax4", rotate=True, seed=5 + (rank == 1)))
        mismatch = None
    except errors.PCCLError as e:
        mismatch = f"{type(e).__name__}: {e}"
    comm.close()
    return {"rank": rank, "world": comm.world_size, "sent": sent, "mismatch": mismatch}
