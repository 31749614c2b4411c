"""What peer processes do in the tests of the torch.distributed backend (tests/test_torch_backend.py).

Each scenario runs the same code over ``backend="pccl_arrays"`` (our master, the pccl:// init method) or
``backend="gloo"`` (a file:// rendezvous), so the test can compare the two. ``ctx.rank`` is the torch rank given to
init_process_group; inputs are made from it (the functions below), so the test can also compute exact results.
torch is imported inside the scenarios: peer_main.py imports this module for every test.
"""

from __future__ import annotations

import signal
import time
import warnings
from datetime import timedelta

import numpy as np

from pccl_arrays import errors
from scenarios import Context, _die_when_busy

OPS = ["SUM", "AVG", "PRODUCT", "MIN", "MAX"]
RS_ROWS = 3  # rows of each reduce_scatter_tensor chunk (of 2 columns)


def ar_input(rank: int, dtype: str) -> np.ndarray:
    """all_reduce's input: small values, so products of a few ranks stay exact."""
    return ((np.arange(7) % 3) + 1 + rank).astype(dtype)


def rs_input(rank: int, world: int) -> np.ndarray:
    """reduce_scatter_tensor's input: world chunks of RS_ROWS x 2, distinct per chunk and per rank."""
    return ((np.arange(world * RS_ROWS * 2) % 5) + 1 + 2 * rank).astype(np.float32).reshape(world * RS_ROWS, 2)


def ag_input(rank: int) -> np.ndarray:
    return np.arange(4, dtype=np.float64) + 100 * rank


def _init(ctx: Context) -> None:
    """init_process_group for this run's backend; for pccl_arrays, optionally held until the test writes
    ``go{rank}`` (so that the test fixes the admission order: ring order then differs from torch order)."""
    import torch.distributed as dist

    import pccl_arrays.torch  # noqa: F401  (registers the backend)

    warnings.simplefilter("ignore", FutureWarning)  # torch 2.13 renamed all_gather_into_tensor & co.
    a = ctx.args
    if a["backend"] == "gloo":
        init = f"file://{ctx.out}/gloo_rendezvous"
    else:
        init = f"pccl://{ctx.master}?connections=2&heartbeat_interval=0.2&data_timeout=10"
        while a.get("gate") and not (ctx.out / f"go{ctx.rank}").exists():
            time.sleep(0.01)
    dist.init_process_group(a["backend"], init_method=init, rank=ctx.rank, world_size=ctx.world,
                            timeout=timedelta(seconds=60))


def _ring_order(dist) -> list:
    """The torch rank of each position of our ring (pccl_arrays only)."""
    pg = dist.group.WORLD
    return [pg._by_peer[p] for p in pg.comm.ring()] if hasattr(pg, "comm") else []


def _collectives(ctx: Context) -> None:
    """Every collective the backend serves, blocking and async; results into ctx.arrays."""
    import torch
    import torch.distributed as dist

    rank, world, gloo = ctx.rank, ctx.world, ctx.args["backend"] == "gloo"
    for dtype in ("float32", "int64"):
        for op in OPS:
            if op == "AVG" and (dtype == "int64" or gloo):  # gloo has no AVG; integers have no average
                continue
            t = torch.from_numpy(ar_input(rank, dtype))
            dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
            ctx.arrays[f"ar_{dtype}_{op}"] = t.numpy()
    for src in range(world):
        t = torch.full((5,), float(10 * rank + src))
        dist.broadcast(t, src=src)
        ctx.arrays[f"bc_{src}"] = t.numpy()
    rows = [torch.zeros(2, 3, dtype=torch.int32) for _ in range(world)]
    dist.all_gather(rows, torch.arange(6, dtype=torch.int32).reshape(2, 3) + 10 * rank)
    ctx.arrays["ag_list"] = torch.stack(rows).numpy()
    out = torch.zeros(world * 4, dtype=torch.float64)
    dist.all_gather_into_tensor(out, torch.from_numpy(ag_input(rank)))
    ctx.arrays["ag_tensor"] = out.numpy()
    out2 = torch.zeros(world * 2, 2, dtype=torch.float64)  # a 2-d input: outputs concatenated along dim 0
    dist.all_gather_into_tensor(out2, torch.from_numpy(ag_input(rank)).reshape(2, 2))
    ctx.arrays["ag_tensor_2d"] = out2.numpy()
    for op in OPS:
        if op == "AVG" and gloo:
            continue
        o = torch.zeros(RS_ROWS, 2)
        dist.reduce_scatter_tensor(o, torch.from_numpy(rs_input(rank, world)), op=getattr(dist.ReduceOp, op))
        ctx.arrays[f"rs_{op}"] = o.numpy()
    # async forms, all in flight at once
    a = torch.from_numpy(ar_input(rank, "float32"))
    g = torch.zeros(world * 4, dtype=torch.float64)
    r = torch.zeros(RS_ROWS, 2)
    b = torch.full((3,), float(rank))
    works = [dist.all_reduce(a, async_op=True),
             dist.all_gather_into_tensor(g, torch.from_numpy(ag_input(rank)), async_op=True),
             dist.reduce_scatter_tensor(r, torch.from_numpy(rs_input(rank, world)), async_op=True),
             dist.broadcast(b, src=world - 1, async_op=True),
             dist.barrier(async_op=True)]
    for w in works:
        w.wait()
    ctx.arrays["async_completed"] = np.array([w.is_completed() for w in works])  # gloo's barrier says False
    ctx.arrays.update(async_ar=a.numpy(), async_ag=g.numpy(), async_rs=r.numpy(), async_bc=b.numpy())
    dist.barrier()


def torch_ddp(ctx: Context) -> dict:
    """The collectives, then torch's own DistributedDataParallel trains a small MLP for ``steps`` steps. Every
    rank initialises its model from its own seed (DDP must broadcast torch rank 0's); each rank draws its own
    batches. Reports the losses per step; the final parameters go into ctx.arrays."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    _init(ctx)
    res = {"rank": dist.get_rank(), "world": dist.get_world_size(), "backend": dist.get_backend(),
           "ring_order": _ring_order(dist)}
    _collectives(ctx)
    torch.manual_seed(100 + ctx.rank)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    ddp = DistributedDataParallel(model, bucket_cap_mb=0.002)  # a few buckets: all-reduces in flight at once
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(ctx.args["steps"]):
        gen = torch.Generator().manual_seed(1000 * ctx.rank + step)
        x = torch.randn(16, 8, generator=gen)
        loss = F.mse_loss(ddp(x), torch.sin(x.sum(dim=1, keepdim=True)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for i, p in enumerate(model.parameters()):
        ctx.arrays[f"param{i}"] = p.detach().numpy().copy()
    res["losses"] = losses
    dist.destroy_process_group()
    return res


def torch_lost_peer(ctx: Context) -> dict:
    """torch rank ``victim`` SIGKILLs itself while a large async all_reduce is in flight; survivors report
    what work.wait() raised and when, then recover the group (ranks renumbered densely) and run collectives
    on it."""
    import torch
    import torch.distributed as dist

    _init(ctx)
    pg = dist.group.WORLD
    n, rank = ctx.args["n"], ctx.rank
    x = torch.full((n,), float(rank + 1))
    dist.all_reduce(x.clone())  # warm-up: connections open
    if rank == ctx.args["victim"]:
        _die_when_busy(pg.comm, n // 2, signal.SIGKILL, ctx.out / "stamp")
    work = dist.all_reduce(x, async_op=True)
    try:
        work.wait()
        return {"error": None}
    except errors.PCCLError as e:
        res = {"error": type(e).__name__, "retryable": e.retryable, "message": str(e), "t_error": time.time(),
               "input_intact": bool(torch.all(x == rank + 1)), "completed": work.is_completed(),
               "success": work.is_success()}
    res["recovered"] = list(pg.recover())
    res.update(get_rank=dist.get_rank(), get_world_size=dist.get_world_size())
    y = torch.full((4,), float(rank + 1))
    dist.all_reduce(y)
    rows = [torch.zeros(1) for _ in range(dist.get_world_size())]
    dist.all_gather(rows, torch.tensor([float(rank)]))
    b = torch.tensor([float(rank)])
    dist.broadcast(b, src=1)
    res.update(after_sum=float(y[0]), gathered=[float(r[0]) for r in rows], broadcast=float(b[0]))
    dist.destroy_process_group()
    return res


def torch_ft_loop(ctx: Context) -> dict:
    """The fault-tolerant DDP loop of the docs: torch rank ``victim`` SIGKILLs itself at step ``kill_at``; the
    survivors catch the error, recover the group (waiting for a replacement: the test then starts a
    ``newcomer`` asking for the victim's rank) and wrap the model in a new DDP, which hands rank 0's parameters
    to the newcomer. Records (step, rank, world) per finished step; the final parameters go into ctx.arrays."""
    import os

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    import pccl_arrays.torch as pt

    a = ctx.args
    newcomer = a.get("newcomer", False)
    _init(ctx)
    torch.manual_seed(100 + ctx.rank + 10 * newcomer)  # a newcomer's own init: DDP must replace it
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    step, records, failures = 0, [], []
    while step < a["steps"]:
        try:
            s = torch.tensor([step])
            dist.all_reduce(s, op=dist.ReduceOp.MAX)  # a newcomer takes up the group's step
            step = int(s)
            if ctx.rank == a["victim"] and step == a["kill_at"] and not newcomer:
                os.kill(os.getpid(), signal.SIGKILL)
            x = torch.randn(16, 8, generator=torch.Generator().manual_seed(1000 * dist.get_rank() + step))
            loss = F.mse_loss(ddp(x), torch.sin(x.sum(dim=1, keepdim=True)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            records.append([step, dist.get_rank(), dist.get_world_size()])
            step += 1
        except Exception as e:  # noqa: BLE001  the loop under test: only the retryable ones are caught
            if not pt.retryable(e):
                raise
            failures.append([step, type(e).__name__, str(e)[:300]])
            del ddp
            dist.group.WORLD.recover(world_size=ctx.world)
            ddp = DistributedDataParallel(model)
    for i, p in enumerate(model.parameters()):
        ctx.arrays[f"param{i}"] = p.detach().numpy().copy()
    dist.destroy_process_group()
    return {"records": records, "failures": failures}
