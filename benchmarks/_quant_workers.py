"""The peer processes of benchmarks/quant.py: the bandwidth worker (unquantized, quantized and the fresh-result
diagnostic, rotating), the error worker, the scaling section's check worker (ring and direct, one 4-bit rotated
format), the data they reduce, and how the parent starts a group of them.
Each worker is `python _quant_workers.py _worker JOB ...` and reports one JSON result (_procs.py)."""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import _common
import _procs

_core = _common.import_pccl_arrays()._core
from pccl_arrays import _core_testing  # noqa: E402
F32 = _core.CODES["dtype"]["float32"]
ALL_KINDS = {name: code for name, code in _core.CODES["quant_kind"].items() if name != "none"}  # minmax4 too
KINDS = {name: code for name, code in ALL_KINDS.items() if name != "minmax4"}  # 8-bit: the sections of issue 15
HEADER = _core_testing.quantized_bytes(1, 64) - 1  # bytes of (p0, p1) per block

DATASETS = {
    "gauss+outliers": "N(0, 1) float32, plus 16 outliers per peer at random positions, +-U(20, 50)",
    "gauss": "N(0, 1) float32",
}


def sha(a) -> str:
    return hashlib.sha256(memoryview(a).cast("B")).hexdigest()[:16]


def make_data(dataset: str, n: int, rank: int, seed: int):
    """The float32 contribution of one peer, the same in every process for the same (dataset, n, rank, seed)."""
    import numpy as np
    rng = np.random.default_rng([seed, rank, list(DATASETS).index(dataset)])
    x = rng.standard_normal(n, dtype=np.float32)
    if dataset == "gauss+outliers":
        k = 16
        pos = rng.choice(n, size=k, replace=False)
        x[pos] = (rng.uniform(20, 50, size=k) * rng.choice([-1.0, 1.0], size=k)).astype(np.float32)
    return x


# ---------------------------------------------------------------------------------------------------------------
# workers (each in its own process: `python quant.py _worker KIND ...`)
def _connect(a):
    import pccl_arrays as pa
    c = pa.Communicator(a.master, connections=a.connections, listen="127.0.0.1:0")
    _common.join_group(c, a.world)
    return pa, c


MODES = ("none", "quantized", "fresh")  # "fresh": see worker_bw


def worker_bw(a) -> dict:
    """All-reduces of each size in three modes, rotating repeat by repeat (ABC, CBA, ...):

    - none: ``all_reduce(x, out=y)``;
    - quantized: ``all_reduce(x, out=y, quantization=Quantization(kind, block, reduce=...))``, the public API;
    - fresh: ``y = all_reduce(x, quantization=...)``, a new result array per call (from the communicator's
      buffer pool); it must give the same bytes as ``quantized``.
    """
    import numpy as np
    pa, c = _connect(a)
    q = pa.Quantization(kind=a.kind, block=a.block, reduce=a.reduce)
    tiny, tiny_out = np.zeros(1, np.float32), np.zeros(1, np.float32)

    def barrier():
        c.all_reduce(tiny, out=tiny_out)

    rows = []
    for size, reps in zip(a.sizes, a.repeats):
        n = size // 4
        x = _common.pattern(n, a.rank)  # i % 7 + rank: per block, every peer's range is 6 (blocks of >= 7 elements)
        expected = _common.expected_sum(n, a.world)
        out = np.zeros_like(x)
        held = [out]  # fresh mode: the last result stays alive during the next call, as in a user's loop

        def run(mode):
            if mode == "none":
                c.all_reduce(x, out=out)
                return c.last_info
            if mode == "quantized":
                c.all_reduce(x, out=out, quantization=q)
                return c.last_info
            held[0] = c.all_reduce(x, quantization=q)
            info = c.last_info
            return info

        def result(mode):
            return held[0] if mode == "fresh" else out

        res = {m: {"seconds": [], "core_seconds": [], "checks": []} for m in MODES}
        order = list(MODES) if a.first == "none" else list(MODES)[::-1]
        for m in order:  # untimed warm-up, checked; twice, so the pool of fresh results holds two
            for _ in range(2):
                barrier()
                run(m)
            res[m]["checks"].append(_check(m, result(m), expected, a.world))
        for rep in range(reps):
            for m in (order if rep % 2 == 0 else order[::-1]):
                if rep == reps - 1:
                    out.fill(0)  # a stale result must not pass the check (outside the timing)
                barrier()
                t0 = time.perf_counter()
                info = run(m)
                res[m]["seconds"].append(time.perf_counter() - t0)
                res[m]["core_seconds"].append(info.seconds)
                res[m]["bytes_sent"] = info.bytes_sent
                if rep == reps - 1:
                    res[m]["checks"].append(_check(m, result(m), expected, a.world))
        rows.append({"bytes": size, **res})
        x = expected = out = held = None  # freed before the next size allocates
    c.close()
    return {"rows": rows}


def _check(mode: str, out, expected, world: int) -> dict:
    """Unquantized: exact. Quantized: within the spec's bound; the sha lets the parent compare the peers."""
    import numpy as np
    if mode == "none":
        return {"ok": bool(np.array_equal(out, expected)), "sha": sha(out)}
    err = float(np.max(np.abs(out.astype(np.float64) - expected.astype(np.float64))))
    s = world * 6.0 / 255.0  # sum of the peers' scales in every block (each peer's block spans 6)
    m = sum(6.0 + r for r in range(world))  # sum of max |x_i|
    bound = (world - 0.5) * s + 4 * world * 2.0 ** -24 * m
    return {"ok": bool(err <= bound), "max_error": err, "bound": bound, "sha": sha(out)}


def worker_err(a) -> dict:
    """Quantized all-reduces of the error data over the ring (the PCCL-style baseline is a ring too); rank 0
    writes each result to a file for the parent."""
    import numpy as np
    pa, c = _connect(a)
    shas, files = {}, {}
    for ds in a.datasets:
        x = make_data(ds, a.n, a.rank, a.seed)
        out = np.empty_like(x)
        for kind in a.kinds:
            for block in a.blocks:
                c.all_reduce(x, out=out, quantization=pa.Quantization(kind=kind, block=block, reduce="ring"))
                key = f"{ds}|{kind}|{block}"
                shas[key] = sha(out)
                if a.rank == 0:
                    files[key] = f"{len(files)}.npy"
                    np.save(Path(a.outdir) / files[key], out)
    pid = c.peer_id
    c.close()
    return {"shas": shas, "files": files, "peer_id": pid}


def worker_chk(a) -> dict:
    """The scaling section's real check: quantized all-reduces of Student-t data with every reduce-scatter in
    a.reduces, one format (kind, block, rotation with seed a.seed); rank 0 writes each result to a file."""
    import numpy as np
    from _quant_data import synthetic
    pa, c = _connect(a)
    x = synthetic("student-t", a.n, a.rank, a.seed)
    out = np.empty_like(x)
    shas, files = {}, {}
    for reduce in a.reduces:
        q = pa.Quantization(kind=a.kind, block=a.block, rotate=a.rotate, seed=a.seed, reduce=reduce)
        c.all_reduce(x, out=out, quantization=q)
        shas[reduce] = sha(out)
        if a.rank == 0:
            files[reduce] = f"chk_{reduce}.npy"
            np.save(Path(a.outdir) / files[reduce], out)
    res = {"shas": shas, "files": files, "peer_id": c.peer_id, "ring": list(c.ring())}
    c.close()
    return res


def worker_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="_quant_workers.py _worker")
    ap.add_argument("job", choices=["bw", "err", "chk"])
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--master", default="")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--sizes", default="")
    ap.add_argument("--repeats", default="")
    ap.add_argument("--kind", default="minmax")
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--first", default="none")
    ap.add_argument("--n", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--datasets", default="")
    ap.add_argument("--kinds", default="")
    ap.add_argument("--blocks", default="")
    ap.add_argument("--outdir", default="")
    ap.add_argument("--rotate", action="store_true")
    ap.add_argument("--reduces", default="")
    ap.add_argument("--reduce", default="direct")
    a = ap.parse_args(argv)
    a.sizes = [int(s) for s in a.sizes.split(",") if s]
    a.repeats = [int(s) for s in a.repeats.split(",") if s]
    a.datasets = [s for s in a.datasets.split(",") if s]
    a.kinds = [s for s in a.kinds.split(",") if s]
    a.blocks = [int(s) for s in a.blocks.split(",") if s]
    a.reduces = [s for s in a.reduces.split(",") if s]
    _procs.report({"bw": worker_bw, "err": worker_err, "chk": worker_chk}[a.job](a))
    return 0


def run_peers(world: int, args: list[str], timeout: float) -> list[dict]:
    import pccl_arrays as pa
    m = pa.Master("127.0.0.1:0").start()
    try:
        argvs = [[__file__, "_worker", *args, "--master", m.address, "--rank", str(r), "--world", str(world)]
                 for r in range(world)]
        return _procs.run_group(argvs, timeout)
    finally:
        m.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        sys.exit(worker_main(sys.argv[2:]))
