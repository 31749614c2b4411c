"""The peer processes of benchmarks/collectives.py, one per rank: pccl_arrays or torch.distributed (gloo). Each is
``python _collectives_workers.py KIND ...`` and hands in one result (_procs.py).

How this works. Every peer runs the same sequence: per size S (bytes of the full array, see collectives.py) and
per collective (in the order the parent gives, which rotates from round to round), it builds its input from
small integers, runs two untimed calls and checks the first result, then times `repeats` calls, each after a
4-byte all-reduce that lines the peers up, and checks the last result too. The output is reset (outside the
timing) before every call, so a check can only pass if that call wrote the whole result. Shapes, for a group of
N peers and n = S // (4 N) float32 elements per chunk (S rounded down to a multiple of 4 N bytes):

* broadcast: every peer passes an array of N n elements; the root's holds ``pattern(N n, root)``, the others'
  hold -1 (pccl_arrays does not read them; gloo overwrites them in place);
* all_gather: every peer passes ``pattern(n, rank)``; the result, shape (N, n), holds row r = rank r's input;
* reduce_scatter: every peer passes ``pattern(N n, rank)``; rank r gets the r-th n elements of the sum.

The ranks of pccl_arrays are positions in the ring order (``comm.rank``), not the --rank the parent gave (that
only tells the peers apart); gloo's are its own. Every row reports each timed call's seconds and whether both
checks passed; pccl_arrays rows also report the bytes the core sent and received (``last_info``).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs  # noqa: E402
from _common import expected_sum, join_worker, pattern, timed_calls  # noqa: E402

ROOT = 0  # broadcast's root rank
COLLECTIVES = ("broadcast", "all_gather", "reduce_scatter")


def layout(size: int, world: int) -> tuple[int, int]:
    """(n, elements): float32 elements per chunk, and of the full array (S rounded down to 4 N bytes)."""
    n = size // (4 * world)
    return n, n * world


def inputs_and_expected(coll: str, size: int, world: int, rank: int):
    """(this rank's input, the exact result it must get, the result's shape) for one collective."""
    import numpy as np
    n, total = layout(size, world)
    if coll == "broadcast":
        x = pattern(total, ROOT) if rank == ROOT else np.full(total, -1, np.float32)
        return x, pattern(total, ROOT), (total,)
    if coll == "all_gather":
        return pattern(n, rank), np.stack([pattern(n, r) for r in range(world)]), (world, n)
    if coll == "reduce_scatter":
        return pattern(total, rank), expected_sum(total, world)[rank * n:(rank + 1) * n], (n,)
    raise ValueError(coll)


def measure(a, rank: int, world: int, barrier, prepare) -> list[dict]:
    """The timing loop both systems share. prepare(coll, x, shape) -> (reset, run, result, info):
    reset() (outside the timing) clears the output, run() is one call, result() the output as a NumPy array."""
    import numpy as np
    rows = []
    for size, reps in zip(a.sizes, a.repeats):
        for coll in a.collectives:
            x, expected, shape = inputs_and_expected(coll, size, world, rank)
            reset, run, result, info = prepare(coll, x, shape)
            oks = []
            for i in range(2):  # untimed warm-up: connections, scratch and pages; the first result is checked
                reset()
                barrier()
                run()
                if i == 0:
                    oks.append(bool(np.array_equal(result(), expected)))
            times = timed_calls(reps, reset, barrier, run)
            oks.append(bool(np.array_equal(result(), expected)))
            rows.append({"collective": coll, "bytes": size, "elements": layout(size, world)[1],
                         "seconds": times, "correct": all(oks), "info": info()})
            del x, expected, reset, run, result
    return rows


def worker_pccl(a) -> dict:
    import numpy as np

    c, _ = join_worker(a.master, a.world, connections=a.connections)
    tiny, tiny_out = np.zeros(1, np.float32), np.zeros(1, np.float32)

    def barrier():
        c.all_reduce(tiny, out=tiny_out)

    barrier()  # every peer has seen the group: ring() and rank are final
    rank, world = c.rank, c.world_size  # the group's peers
    if world != a.world:
        raise RuntimeError(f"the group has {world} peers, not {a.world}")

    def info():
        i = c.last_info
        return {"bytes_sent": i.bytes_sent, "bytes_received": i.bytes_received, "stripes": i.stripes,
                "rank": i.rank, "core_seconds": i.seconds}

    def prepare(coll, x, shape):
        y = np.empty(shape, np.float32)
        y.fill(-1)  # touch the pages outside the timing
        run = {"broadcast": lambda: c.broadcast(x, root=ROOT, out=y),
               "all_gather": lambda: c.all_gather(x, out=y),
               "reduce_scatter": lambda: c.reduce_scatter(x, out=y)}[coll]
        return (lambda: y.fill(-1)), run, (lambda: y), info

    rows = measure(a, rank, world, barrier, prepare)
    ring = c.ring()
    c.close()
    return {"rows": rows, "rank": rank, "ring": ring}


def gloo_functions():
    """(all-gather, reduce-scatter) of torch.distributed for one output tensor: all_gather_single and
    reduce_scatter_single where this torch has them (2.13; all_gather_into_tensor and reduce_scatter_tensor are
    their deprecated aliases there), else the older names."""
    import torch.distributed as dist
    ag = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    rs = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return ag, rs


def worker_gloo(a) -> dict:
    import datetime

    import numpy as np
    import torch
    import torch.distributed as dist

    warnings.filterwarnings("ignore", category=FutureWarning, module="torch")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank, world_size=a.world,
                            timeout=datetime.timedelta(seconds=300))
    all_gather, reduce_scatter = gloo_functions()
    tiny = torch.zeros(1, dtype=torch.float32)

    def barrier():
        dist.all_reduce(tiny)

    def prepare(coll, x, shape):
        src = torch.from_numpy(x)
        if coll == "broadcast":  # in place, the only form gloo has: reset() puts this rank's input back
            t = src.clone()
            return (lambda: t.copy_(src)), (lambda: dist.broadcast(t, src=ROOT)), (lambda: t.numpy()), dict
        # gloo takes all-gather's output in the concatenated form only (a 1-D (N n) tensor, not (N, n))
        y = torch.empty(int(np.prod(shape)), dtype=torch.float32)
        y.fill_(-1)
        run = {"all_gather": lambda: all_gather(y, src), "reduce_scatter": lambda: reduce_scatter(y, src)}[coll]
        return (lambda: y.fill_(-1)), run, (lambda: y.numpy().reshape(shape)), dict

    rows = measure(a, a.rank, a.world, barrier, prepare)
    dist.destroy_process_group()
    ag, rs = gloo_functions()
    return {"rows": rows, "rank": a.rank, "torch": torch.__version__,
            "functions": ["broadcast", ag.__name__, rs.__name__]}


def worker_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="_collectives_workers.py")
    ap.add_argument("kind", choices=["pccl", "gloo"])
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--master", default="")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--sizes", required=True)
    ap.add_argument("--repeats", required=True)
    ap.add_argument("--collectives", default=",".join(COLLECTIVES))
    ap.add_argument("--connections", type=int, default=4)
    a = ap.parse_args(argv)
    a.sizes = [int(s) for s in a.sizes.split(",")]
    a.repeats = [int(s) for s in a.repeats.split(",")]
    a.collectives = a.collectives.split(",")
    _procs.report({"pccl": worker_pccl, "gloo": worker_gloo}[a.kind](a))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
