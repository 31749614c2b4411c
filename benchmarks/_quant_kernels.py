"""Sections 1 and 4 of benchmarks/quant.py: the kernels' throughput, C++ on one thread here, and Triton on a
CUDA device (or the command to run there)."""

from __future__ import annotations

import time

import _common
from _quant_workers import ALL_KINDS, F32, KINDS

GPU_COMMAND = "python benchmarks/quant.py --sections triton --out benchmarks/results/quant_cuda.json"


def bench_kernels(n: int, repeats: int, blocks: list[int], kinds: list[str], log) -> dict:
    """Single-thread C++ kernels on n float32 elements; median [min-max] over repeats, configs round robin."""
    import numpy as np
    from pccl_arrays import _core
    from pccl_arrays import _core_testing
    x = np.random.default_rng(1).standard_normal(n, dtype=np.float32)
    xr = np.ascontiguousarray(x[::-1])
    y = np.zeros(n, np.float32)
    dst = np.zeros(n, np.float32)
    bufs = {}  # (kind, block) -> q = Q(x) (quantize rewrites the same bytes), start = Q(x reversed), acc
    for kind in kinds:
        for b in blocks:
            qb = _core_testing.quantized_bytes(n, b)
            q, start, acc = np.zeros(qb, np.uint8), np.zeros(qb, np.uint8), np.zeros(qb, np.uint8)
            _core_testing.quantize(x.ctypes.data, F32, n, KINDS[kind], b, q.ctypes.data)
            _core_testing.quantize(xr.ctypes.data, F32, n, KINDS[kind], b, start.ctypes.data)
            bufs[(kind, b)] = (q, start, acc)
    del xr
    fbytes = n * 4

    def time_it(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    samples: dict[str, list[float]] = {}
    configs = [("memcpy", None, None)] + [(op, k, b) for k in kinds for b in blocks
                                          for op in ("quantize", "dequantize", "reduce_hop")]
    for rep in range(repeats + 1):  # the first pass warms up (page faults, caches) and is not counted
        for op, kind, b in configs:
            if op == "memcpy":
                key = op
                t = time_it(lambda: _core.memcpy(dst.ctypes.data, x.ctypes.data, fbytes))
            else:
                key = f"{op}|{kind}|{b}"
                q, start, acc = bufs[(kind, b)]
                kc = KINDS[kind]
                if op == "quantize":
                    t = time_it(lambda: _core_testing.quantize(x.ctypes.data, F32, n, kc, b, q.ctypes.data))
                elif op == "dequantize":
                    t = time_it(lambda: _core_testing.dequantize(q.ctypes.data, n, kc, b, F32, y.ctypes.data, 1))
                else:  # acc = Q(D(Q(x reversed)) + D(Q(x))), acc reset outside the timing
                    _core.memcpy(acc.ctypes.data, start.ctypes.data, acc.nbytes)
                    nblocks = -(-n // b)
                    t = time_it(lambda: _core_testing.reduce_hop(acc.ctypes.data, q.ctypes.data, 0, nblocks, n, kc, b))
            if rep > 0:
                samples.setdefault(key, []).append(t)
        log(f"  kernels: {'warm-up' if rep == 0 else f'repeat {rep}/{repeats}'} done")
    rows = []
    for key, ts in samples.items():
        parts = key.split("|")
        op = parts[0]
        row = {"op": op, "kind": parts[1] if len(parts) > 1 else None,
               "block": int(parts[2]) if len(parts) > 2 else None, "elements": n, "float32_bytes": fbytes,
               "seconds": ts, "GBps": _common.spread([fbytes / t / 1e9 for t in ts])}
        if op == "reduce_hop":
            qb = _core_testing.quantized_bytes(n, row["block"])
            row["wire_GBps"] = _common.spread([qb / t / 1e9 for t in ts])  # quantized bytes received per second
        rows.append(row)
    return {"elements": n, "float32_bytes": fbytes, "repeats": repeats, "threads": 1, "rows": rows,
            "definition": "GB/s = float32 bytes of the array / time (1e9 B/s), median [min-max] of the repeats; "
                          "quantize reads n float32, dequantize writes n float32, reduce_hop stands for n float32 "
                          "(it reads two quantized arrays and writes one; wire_GBps = quantized bytes / time); "
                          "memcpy copies the n float32. One thread, round robin over the configurations."}


# the formats of the 4-bit and rotation work, at their default blocks; the first is the 8-bit reference
FORMAT_KERNELS = [("minmax", 1024, False), ("minmax", 1024, True), ("minmax4", 512, False), ("minmax4", 512, True)]
OWNER_PEERS = 4  # reduce_owner sums its own exact input and 3 received contributions


def bench_format_kernels(n: int, repeats: int, log) -> dict:
    """Single-thread C++ kernels of every format in FORMAT_KERNELS: quantize, dequantize (each with its rotation),
    reduce_hop_exact (the host path's ring hop: acc = Q(D(acc) + R(x))) and reduce_owner (the direct
    all-reduce's owner sum of OWNER_PEERS contributions); median [min-max] over repeats, round robin."""
    import numpy as np
    from pccl_arrays import _core
    from pccl_arrays import _core_testing
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(n, dtype=np.float32) for _ in range(OWNER_PEERS)]
    x, y = xs[0], np.zeros(n, np.float32)
    seed = 7
    bufs = {}
    for kind, b, rot in FORMAT_KERNELS:
        k = ALL_KINDS[kind]
        qs = []
        for xi in xs:
            q = np.empty(_core_testing.quantized_bytes(n, b, k), np.uint8)
            _core_testing.quantize(xi.ctypes.data, F32, n, k, b, q.ctypes.data, rot, seed)
            qs.append(q)
        bufs[(kind, b, rot)] = (qs, np.empty_like(qs[0]), np.empty_like(qs[0]))  # contributions, acc, out

    def time_it(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    samples: dict[tuple, list[float]] = {}
    configs = [(op, f) for f in FORMAT_KERNELS for op in ("quantize", "dequantize", "reduce_hop_exact", "reduce_owner")]
    for rep in range(repeats + 1):  # the first pass warms up and is not counted
        for op, (kind, b, rot) in configs:
            k, (qs, acc, out) = ALL_KINDS[kind], bufs[(kind, b, rot)]
            nblocks = -(-n // b)
            if op == "quantize":
                t = time_it(lambda: _core_testing.quantize(x.ctypes.data, F32, n, k, b, out.ctypes.data, rot, seed))
            elif op == "dequantize":
                t = time_it(lambda: _core_testing.dequantize(qs[0].ctypes.data, n, k, b, F32, y.ctypes.data, 1, rot,
                                                             seed))
            elif op == "reduce_hop_exact":  # acc = Q(D(Q(R(x1))) + R(x0)), acc reset outside the timing
                _core.memcpy(acc.ctypes.data, qs[1].ctypes.data, acc.nbytes)
                t = time_it(lambda: _core_testing.reduce_hop_exact(acc.ctypes.data, x.ctypes.data, F32, 0, nblocks, n,
                                                                   k, b, 0, seed, 0, 0, rot))
            else:  # out = Q(R(x0) + D(q1) + D(q2) + D(q3))
                ptrs = [q.ctypes.data for q in qs[1:]]
                t = time_it(lambda: _core_testing.reduce_owner(out.ctypes.data, ptrs, 0, x.ctypes.data, F32, 0,
                                                               nblocks, n, k, b, 0, seed, 0, rot))
            if rep > 0:
                samples.setdefault((op, kind, b, rot), []).append(t)
        log(f"  format kernels: {'warm-up' if rep == 0 else f'repeat {rep}/{repeats}'} done")
    fbytes = n * 4
    rows = []
    for (op, kind, b, rot), ts in samples.items():
        row = {"op": op, "kind": kind, "block": b, "rotate": rot, "elements": n, "seconds": ts,
               "GBps": _common.spread([fbytes / t / 1e9 for t in ts])}
        if op == "reduce_owner":
            row["peers"] = OWNER_PEERS
            row["inputs_GBps"] = _common.spread([OWNER_PEERS * fbytes / t / 1e9 for t in ts])
        rows.append(row)
    return {"elements": n, "float32_bytes": fbytes, "repeats": repeats, "threads": 1, "rotation_seed": seed,
            "owner_peers": OWNER_PEERS, "rows": rows,
            "definition": "GB/s = float32 bytes of the array (n elements) / time, median [min-max] of the repeats, "
                          "one thread, round robin: quantize reads n float32 (rotating each block first when "
                          "rotate), dequantize writes n float32 (rotating back), reduce_hop_exact = Q(D(acc) + "
                          "R(x)) over n elements, reduce_owner = Q(R(x) + D(q1) + D(q2) + D(q3)) over n elements "
                          f"({OWNER_PEERS} contributions: inputs_GBps counts all {OWNER_PEERS} arrays' float32 bytes)"}


def bench_triton(n: int, repeats: int, blocks: list[int], kinds: list[str], log) -> dict:
    try:
        import torch
    except Exception as e:
        return {"measured": False, "why": f"torch cannot be imported ({type(e).__name__}: {e})",
                "command": GPU_COMMAND}
    if not torch.cuda.is_available():
        return {"measured": False, "why": "no CUDA device on this machine (torch.cuda.is_available() is False): "
                                          "the Triton kernels' GB/s were NOT measured", "command": GPU_COMMAND}

    def cuda_time(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    out = triton_rows(n, repeats, blocks, kinds, log, "cuda", cuda_time)
    return {"measured": True, "device": torch.cuda.get_device_name(), **out}


def triton_rows(n: int, repeats: int, blocks: list[int], kinds: list[str], log, device: str, timer) -> dict:
    """The Triton kernels' rows: every 8-bit kind at every block, then the formats of FORMAT_KERNELS that rotate or
    use 4 bits (rotation seed 7); each checked against the C++ kernel's bytes. `timer(fn)` times one call (CUDA
    events on a GPU; on the CPU, under TRITON_INTERPRET=1, only to test this code)."""
    import numpy as np
    import torch
    from pccl_arrays import _core_testing
    from pccl_arrays.quantization import kernels
    k = kernels()
    x = torch.randn(n, device=device, dtype=torch.float32)
    xh = x.cpu().numpy()
    seed = 7
    ts = [timer(lambda: x.clone()) for _ in range(repeats + 1)][1:]
    rows = [{"op": "clone", "kind": None, "block": None, "rotate": False,
             "GBps": _common.spread([n * 4 / t / 1e9 for t in ts])}]
    configs = [(kind, b, False) for kind in kinds for b in blocks]
    configs += [f for f in FORMAT_KERNELS if f not in configs]
    for kind, b, rot in configs:
        code, rseed = ALL_KINDS[kind], (seed if rot else None)
        q = k.quantize(x, code, b, rotate_seed=rseed)
        tq, td = [], []
        for rep in range(repeats + 1):
            a = timer(lambda: k.quantize(x, code, b, rotate_seed=rseed))
            d = timer(lambda: k.dequantize(q, n, code, b, torch.float32, rotate_seed=rseed))
            if rep:
                tq.append(a)
                td.append(d)
        # the same bytes as the C++ host kernels (docs/quantization.md: all implementations agree bit for bit)
        qh = np.empty(_core_testing.quantized_bytes(n, b, code), np.uint8)
        _core_testing.quantize(xh.ctypes.data, F32, n, code, b, qh.ctypes.data, rot, seed)
        same = bool(np.array_equal(q.cpu().numpy(), qh))
        rows.append({"op": "quantize", "kind": kind, "block": b, "rotate": rot, "same_bytes_as_host": same,
                     "GBps": _common.spread([n * 4 / t / 1e9 for t in tq])})
        rows.append({"op": "dequantize", "kind": kind, "block": b, "rotate": rot,
                     "GBps": _common.spread([n * 4 / t / 1e9 for t in td])})
        log(f"  triton {kind} B={b}{' rotated' if rot else ''}: quantize {rows[-2]['GBps']['median']:.1f}, "
            f"dequantize {rows[-1]['GBps']['median']:.1f} GB/s{'' if same else ' (DIFFERENT bytes from C++)'}")
    return {"elements": n, "repeats": repeats, "rotation_seed": seed, "rows": rows,
            "definition": "float32 bytes / time between CUDA events around one call (allocation of the output "
                          "included); clone = device copy of the same bytes; rotate: with the rotation (seed 7)"}
