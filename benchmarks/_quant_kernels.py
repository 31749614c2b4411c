"""Sections 1 and 4 of benchmarks/quant.py: the kernels' throughput, C++ on one thread here, and Triton on a
CUDA device (or the command to run there)."""

from __future__ import annotations

import time

import _common
from _quant_workers import F32, KINDS

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


def bench_triton(n: int, repeats: int, blocks: list[int], kinds: list[str], log) -> dict:
    try:
        import torch
    except Exception as e:
        return {"measured": False, "why": f"torch cannot be imported ({type(e).__name__}: {e})",
                "command": GPU_COMMAND}
    if not torch.cuda.is_available():
        return {"measured": False, "why": "no CUDA device on this machine (torch.cuda.is_available() is False): "
                                          "the Triton kernels' GB/s were NOT measured", "command": GPU_COMMAND}
    from pccl_arrays.quantization import kernels
    k = kernels()
    x = torch.randn(n, device="cuda", dtype=torch.float32)

    def cuda_time(fn) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    rows = []
    ts = []
    for rep in range(repeats + 1):
        t = cuda_time(lambda: x.clone())
        if rep:
            ts.append(t)
    rows.append({"op": "clone", "kind": None, "block": None, "GBps": _common.spread([n * 4 / t / 1e9 for t in ts])})
    for kind in kinds:
        for b in blocks:
            q = k.quantize(x, KINDS[kind], b)
            tq, td = [], []
            for rep in range(repeats + 1):
                a = cuda_time(lambda: k.quantize(x, KINDS[kind], b))
                d = cuda_time(lambda: k.dequantize(q, n, KINDS[kind], b, torch.float32))
                if rep:
                    tq.append(a)
                    td.append(d)
            # the same bytes as the C++ host kernels (docs/quantization.md: all implementations agree bit for bit)
            import numpy as np
            from pccl_arrays import _core_testing
            xh = x.cpu().numpy()
            qh = np.empty(_core_testing.quantized_bytes(n, b), np.uint8)
            _core_testing.quantize(xh.ctypes.data, F32, n, KINDS[kind], b, qh.ctypes.data)
            same = bool(np.array_equal(q.cpu().numpy(), qh))
            rows.append({"op": "quantize", "kind": kind, "block": b, "same_bytes_as_host": same,
                         "GBps": _common.spread([n * 4 / t / 1e9 for t in tq])})
            rows.append({"op": "dequantize", "kind": kind, "block": b,
                         "GBps": _common.spread([n * 4 / t / 1e9 for t in td])})
            log(f"  triton {kind} B={b}: quantize {rows[-2]['GBps']['median']:.1f}, dequantize "
                f"{rows[-1]['GBps']['median']:.1f} GB/s")
    return {"measured": True, "device": torch.cuda.get_device_name(), "elements": n, "repeats": repeats,
            "rows": rows, "definition": "float32 bytes / time between CUDA events around one call (allocation of "
                                        "the output included); clone = device copy of the same bytes"}
