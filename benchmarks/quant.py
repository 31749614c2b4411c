"""Quantized all-reduce: kernel throughput, bandwidth against the unquantized all-reduce, and error against a
per-chunk truncating min-max baseline (docs/quantization.md is the format; docs/benchmarks.md the results).

Usage (from the repository root, in an environment with numpy; torch only for the CUDA section)::

    PYTHONPATH=. python benchmarks/quant.py --quiet-wait 240   # full: ~2.5 minutes here
    PYTHONPATH=. python benchmarks/quant.py --quick            # CI smoke test: ~5 s, 2 peers, few repeats

What it measures, in one run (``--sections`` picks a subset):

* ``kernels``: the C++ host kernels on one thread, in this process: ``quantize`` and ``dequantize`` of a float32
  array (64 MiB; 4 MiB with --quick), both kinds, blocks of 256 .. 4096 elements, and ``reduce_hop`` (one ring
  hop over the whole array: decode two quantized arrays, add, re-quantize), beside ``memcpy`` of the same bytes.
  Throughput = float32 bytes of the array / time (for dequantize, the float32 bytes written; for reduce_hop,
  the float32 bytes the hop stands for; its rate in quantized bytes consumed from the wire is given too).
  Every configuration runs once per repeat, round robin, so a slow spell of the machine spreads over all.
* ``allreduce``: N peer processes (2 and 3) on 127.0.0.1 all-reduce float32 arrays of 1, 16, 64 and 256 MiB:
  unquantized (``all_reduce(x, out=y)``), quantized (``all_reduce(x, out=y, quantization=...)``, minmax, block
  1024 by default) and, as a diagnostic, the API's host path with its quantized buffers allocated once instead
  of per call. The modes rotate repeat by repeat (ABC, CBA) inside one group of peers, and the full run repeats
  every group in 3 rounds, so the machine's drift lands on all. Per repeat every peer runs a 4-byte all-reduce
  (a barrier), then times one all-reduce; the slowest peer's time counts; algbw = float32 array bytes / time
  (for every mode: the quantized ones move about 1/4 of those bytes). The quantized time is the whole call:
  quantize, ring, dequantize into the output. Results are checked: unquantized exact, quantized within the
  spec's error bound and bitwise the same on every peer.
* ``error``: the max, 99th-percentile, RMS and mean error against the exact sum (float64 sum of the float32
  inputs) of our format and of a PCCL-style per-chunk baseline, for N = 2, 3, 4 peers, float32 Gaussian data
  with and without a few outliers. Our format's results come from real all-reduces of N peer processes (rank 0
  writes its result to a temporary file). Beside them runs an exact simulation with the core's kernels
  (``_core.quantize``, ``_core.reduce_hop``, ``_core.dequantize``) in ring order, which must give the same
  bits; the master orders the ring by admission, which the benchmark does not control, so the order is
  identified first (the one of the N! orders that reproduces the first blocks of every chunk). The baseline is
  NumPy: one (min, max) pair per ring chunk of count/N elements, codes = floor((x - min) / (max - min) * 255)
  (truncation, as PCCL's ``static_cast<uint8_t>``), decode = min + code * (max - min) / 255; along the ring
  (same order) each hop decodes what it received, adds its own unquantized contribution and re-quantizes the
  same way; the chunk's owner quantizes the final sum; the all-gather moves those bytes verbatim.
  With the metadata overhead (8 bytes per block: 8/B of the codes) and the kernel speed per block size, this
  chooses (or confirms) the default block.
* ``triton``: on a CUDA device, the Triton kernels' GB/s (and whether their bytes equal the C++ kernel's);
  without one it says so plainly and prints the command to run on a GPU machine.

All peers and the master share this machine's cores: with more threads than cores the all-reduce numbers are
for an oversubscribed loopback host, not a network. The CPU time other processes used during each section is
recorded (approximately, from /proc/stat); ``--quiet-wait S`` waits up to S seconds before each section and
group of peers until other processes are idle.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _quant_sim import error_stats, find_ring_order, simulate_baseline, simulate_ours  # noqa: E402
import _common  # noqa: E402
from _common import CpuMeter, QUIET_WAIT, wait_for_quiet  # noqa: E402
from _quant_workers import DATASETS, F32, HEADER, KINDS, MODES, make_data, run_peers  # noqa: E402
from _quant_report import print_report  # noqa: E402  (helpers: sizes, spread, machine, pattern data, pccl_arrays import)

KiB, MiB = 1 << 10, 1 << 20
BLOCKS = [256, 512, 1024, 2048, 4096]
MAX_OVERHEAD = 0.01  # the goal: metadata <= 1% of the codes
GOAL_ERROR_RATIO = 0.25  # the goal: error <= 1/4 of the per-chunk baseline's
GOAL_SPEED_RATIO = 1.0  # the goal: quantized algbw >= unquantized at >= 16 MiB
GOAL_MIN_BYTES = 16 * MiB
SPEED_TOLERANCE = 0.9  # a block within 90% of the fastest eligible block counts as "as fast"

FULL = {"kernel_elems": 16 * MiB, "kernel_repeats": 7, "sizes": [1 * MiB, 16 * MiB, 64 * MiB, 256 * MiB],
        "peers": [2, 3], "rounds": 3, "error_elems": 4 * MiB, "error_peers": [2, 3, 4]}
QUICK = {"kernel_elems": 1 * MiB, "kernel_repeats": 3, "sizes": [1 * MiB, 16 * MiB],
         "peers": [2], "rounds": 1, "error_elems": 1 * MiB, "error_peers": [2]}
SECTIONS = ["kernels", "allreduce", "error", "triton"]
GPU_COMMAND = "python benchmarks/quant.py --sections triton --out benchmarks/results/quant_cuda.json"


def default_repeats(n: int, quick: bool) -> int:
    if quick:
        return 3
    if n <= 1 * MiB:
        return 21
    if n <= 16 * MiB:
        return 12
    return 6


# ---------------------------------------------------------------------------------------------------------------
# 1. kernels
def bench_kernels(n: int, repeats: int, blocks: list[int], kinds: list[str], log) -> dict:
    """Single-thread C++ kernels on n float32 elements; median [min-max] over repeats, configs round robin."""
    import numpy as np
    from pccl_arrays import _core
    x = np.random.default_rng(1).standard_normal(n, dtype=np.float32)
    xr = np.ascontiguousarray(x[::-1])
    y = np.zeros(n, np.float32)
    dst = np.zeros(n, np.float32)
    bufs = {}  # (kind, block) -> q = Q(x) (quantize rewrites the same bytes), start = Q(x reversed), acc
    for kind in kinds:
        for b in blocks:
            qb = _core.quantized_bytes(n, b)
            q, start, acc = np.zeros(qb, np.uint8), np.zeros(qb, np.uint8), np.zeros(qb, np.uint8)
            _core.quantize(x.ctypes.data, F32, n, KINDS[kind], b, q.ctypes.data)
            _core.quantize(xr.ctypes.data, F32, n, KINDS[kind], b, start.ctypes.data)
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
                    t = time_it(lambda: _core.quantize(x.ctypes.data, F32, n, kc, b, q.ctypes.data))
                elif op == "dequantize":
                    t = time_it(lambda: _core.dequantize(q.ctypes.data, n, kc, b, F32, y.ctypes.data, 1))
                else:  # acc = Q(D(Q(x reversed)) + D(Q(x))), acc reset outside the timing
                    _core.memcpy(acc.ctypes.data, start.ctypes.data, acc.nbytes)
                    nblocks = -(-n // b)
                    t = time_it(lambda: _core.reduce_hop(acc.ctypes.data, q.ctypes.data, 0, nblocks, n, kc, b))
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
            qb = _core.quantized_bytes(n, row["block"])
            row["wire_GBps"] = _common.spread([qb / t / 1e9 for t in ts])  # quantized bytes received per second
        rows.append(row)
    return {"elements": n, "float32_bytes": fbytes, "repeats": repeats, "threads": 1, "rows": rows,
            "definition": "GB/s = float32 bytes of the array / time (1e9 B/s), median [min-max] of the repeats; "
                          "quantize reads n float32, dequantize writes n float32, reduce_hop stands for n float32 "
                          "(it reads two quantized arrays and writes one; wire_GBps = quantized bytes / time); "
                          "memcpy copies the n float32. One thread, round robin over the configurations."}


# ---------------------------------------------------------------------------------------------------------------
# 2. all-reduce bandwidth
def bench_allreduce(peers, sizes, reps_per_round, rounds, kind, block, connections, timeout, log, errors) -> dict:
    runs: dict[int, list[list[dict]]] = {}
    others: list[dict] = []
    for rnd in range(rounds):
        log(f"-- all-reduce round {rnd + 1}/{rounds}")
        for n in peers:
            first = "none" if (rnd + n) % 2 == 0 else "quantized"
            wait_for_quiet(f"round {rnd + 1} N={n}", log)
            t = time.monotonic()
            meter = CpuMeter()
            try:
                res = run_peers(n, ["bw", "--sizes", ",".join(map(str, sizes)),
                                    "--repeats", ",".join(map(str, reps_per_round)), "--kind", kind,
                                    "--block", str(block), "--first", first, "--connections", str(connections)],
                                timeout)
            except Exception as e:
                errors.append(f"all-reduce with {n} peers failed in round {rnd + 1}: {e}")
                log(f"ERROR: {errors[-1]}")
                continue
            runs.setdefault(n, []).append(res)
            busy = meter.stop()
            others.append({"round": rnd + 1, "peers": n, **busy})
            summary = ", ".join(f"{_common.fmt_size(r['bytes'])}: " + " / ".join(
                f"{statistics.median(r[m]['seconds']) * 1e3:.1f}" for m in MODES) + " ms" for r in res[0]["rows"])
            log(f"  N={n} [{time.monotonic() - t:.1f} s, other processes used {busy['others_cores']:.2f} cores] "
                f"peer 0 median {' / '.join(MODES)}: {summary}")
    rows = []
    for n, rnds in runs.items():
        for i, size in enumerate(sizes):
            row = {"peers": n, "bytes": size, "size": _common.fmt_size(size)}
            for m in MODES:
                per_peer = [sum((rnd[p]["rows"][i][m]["seconds"] for rnd in rnds), []) for p in range(n)]
                core = [sum((rnd[p]["rows"][i][m]["core_seconds"] for rnd in rnds), []) for p in range(n)]
                worst = [max(ts) for ts in zip(*per_peer)]
                checks = [ch for rnd in rnds for p in range(n) for ch in rnd[p]["rows"][i][m]["checks"]]
                # the same result bytes on every peer (per check point: warm-up and last repeat, per round)
                same = all(len({rnd[p]["rows"][i][m]["checks"][j]["sha"] for p in range(n)}) == 1
                           for rnd in rnds for j in range(len(rnd[0]["rows"][i][m]["checks"])))
                row[m] = {"repeats": len(worst), "algbw_GBps": _common.spread([size / t / 1e9 for t in worst]),
                          "latency_ms": _common.spread([t * 1e3 for t in worst]),
                          "core_ms_peer0": _common.spread([t * 1e3 for t in core[0]]),
                          "bytes_sent_peer0": rnds[0][0]["rows"][i][m]["bytes_sent"],
                          "correct": all(ch["ok"] for ch in checks) and same, "identical_on_peers": same,
                          "seconds_per_peer": per_peer}
                if m != "none":
                    row[m]["max_error"] = max(ch["max_error"] for ch in checks)
                    row[m]["error_bound"] = checks[0]["bound"]
                if not row[m]["correct"]:
                    errors.append(f"N={n} {row['size']} {m}: WRONG all-reduce result "
                                  f"({'differs between peers' if not same else 'outside the bound'})")
            row["ratio"] = row["quantized"]["algbw_GBps"]["median"] / row["none"]["algbw_GBps"]["median"]
            row["ratio_reused"] = row["reused"]["algbw_GBps"]["median"] / row["none"]["algbw_GBps"]["median"]
            row["reused_same_bytes"] = all(
                rnd[p]["rows"][i]["reused"]["checks"][j]["sha"] == rnd[p]["rows"][i]["quantized"]["checks"][j]["sha"]
                for rnd in rnds for p in range(n) for j in range(len(rnd[p]["rows"][i]["reused"]["checks"])))
            if not row["reused_same_bytes"]:
                errors.append(f"N={n} {row['size']}: the reused-buffer path gave other bytes than the API")
            row["bytes_sent_ratio"] = row["quantized"]["bytes_sent_peer0"] / max(1, row["none"]["bytes_sent_peer0"])
            rows.append(row)
    rows.sort(key=lambda r: (r["peers"], r["bytes"]))
    return {"kind": kind, "block": block, "connections": connections, "rounds": rounds,
            "repeats_per_round": reps_per_round, "rows": rows, "other_processes": others,
            "timing": "per repeat: a 4-byte all-reduce as barrier, then one timed all_reduce(x, out=y[, quantization]) "
                      "on each peer; time = max over peers; algbw = float32 array bytes / time; GB/s = 1e9 B/s; the "
                      "three modes rotate repeat by repeat (ABC, CBA) in the same group of peers; "
                      "core_ms = the core's own time for the ring (info.seconds), peer 0"}


# ---------------------------------------------------------------------------------------------------------------
# 3. error
def bench_error(peers, n, blocks, kinds, seed, connections, timeout, log, errors) -> dict:
    import numpy as np
    rows, baseline, ring_orders = [], [], {}
    for world in peers:
        tmp = tempfile.mkdtemp(prefix="pccl_quant_err_")
        try:
            t = time.monotonic()
            real = None
            try:
                res = run_peers(world, ["err", "--n", str(n), "--seed", str(seed), "--datasets", ",".join(DATASETS),
                                        "--kinds", ",".join(kinds), "--blocks", ",".join(map(str, blocks)),
                                        "--outdir", tmp, "--connections", str(connections)], timeout)
                real, files = [r["shas"] for r in res], res[0]["files"]
                by_id = sorted(range(world), key=lambda r: res[r]["peer_id"])
            except Exception as e:
                errors.append(f"error all-reduces with {world} peers failed: {e}")
                log(f"ERROR: {errors[-1]}")
            t_real = time.monotonic() - t
            order, n_orders = None, 0
            for ds in DATASETS:
                xs = [make_data(ds, n, r, seed) for r in range(world)]
                exact = np.zeros(n, np.float64)
                for x in xs:
                    exact += x
                for kind in kinds:
                    for block in blocks:
                        key = f"{ds}|{kind}|{block}"
                        got = None
                        if real is not None:
                            got = np.load(Path(tmp) / files[key])
                            os.remove(Path(tmp) / files[key])
                            if order is None:
                                order, n_orders = find_ring_order(xs, got, KINDS[kind], block, by_id)
                                ring_orders[str(world)] = {"order": order, "matching_orders": n_orders,
                                                           "peer_id_order": by_id}
                                log(f"  N={world}: ring order (data rank per position) {order}, "
                                    f"{n_orders} of the {math.factorial(world)} orders match the first blocks")
                                if order is None:
                                    errors.append(f"N={world}: no ring order reproduces the all-reduce result")
                        sim = simulate_ours(xs, KINDS[kind], block, order)
                        row = {"peers": world, "dataset": ds, "kind": kind, "block": block,
                               "overhead": HEADER / block, "simulated": error_stats(sim, exact)}
                        if got is not None:
                            row["identical_on_peers"] = len({r[key] for r in real}) == 1
                            row["matches_simulation"] = bool(np.array_equal(got.view(np.uint32), sim.view(np.uint32)))
                            row.update(error_stats(got, exact))
                            row["source"] = "all-reduce"
                            if not (row["identical_on_peers"] and row["matches_simulation"]):
                                what = [w for w, ok in (("differ between peers", row["identical_on_peers"]),
                                                        ("do not match the simulation", row["matches_simulation"]))
                                        if not ok]
                                errors.append(f"error data N={world} {key}: the all-reduce results {', '.join(what)}")
                        else:
                            row.update(row["simulated"])
                            row["source"] = "simulation"
                        rows.append(row)
                base = error_stats(simulate_baseline(xs, order), exact)
                baseline.append({"peers": world, "dataset": ds, **base})
                for row in rows:
                    if row["peers"] == world and row["dataset"] == ds:
                        row["ratio_max"] = row["max_abs"] / base["max_abs"]
                        row["ratio_rms"] = row["rms"] / base["rms"]
                        row["ratio_p99"] = row["p99_abs"] / base["p99_abs"]
            log(f"  error N={world}: all-reduces {t_real:.1f} s, total {time.monotonic() - t:.1f} s")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {"elements": n, "seed": seed, "datasets": DATASETS, "rows": rows, "baseline": baseline,
            "ring_orders": ring_orders,
            "definition": "error = result - exact, exact = float64 sum of the peers' float32 inputs; max_abs, p99_abs "
                          "(99th percentile of |error|), rms, mean over all elements; rms_rel = rms / RMS of the "
                          "exact sum; ratio_* = ours / baseline. "
                          "Ours: results of real all-reduces of N peer processes (source 'all-reduce'), checked "
                          "bitwise against an exact simulation with the core's kernels in ring order; baseline: "
                          "NumPy, per ring chunk of count/N elements one (min, max), truncated codes, each hop "
                          "decode + own float32 + re-quantize, owner quantizes the final sum, all-gather verbatim."}


def choose_block(doc: dict, kind: str = "minmax") -> dict:
    """Among the blocks with metadata <= 1% of the codes, the one with the lowest error (mean over peers and
    datasets of rms / baseline rms) whose kernels are within 90% of the fastest eligible block's."""
    err = doc.get("error", {}).get("rows", [])
    kern = {(r["op"], r["kind"], r["block"]): r["GBps"]["median"] for r in doc.get("kernels", {}).get("rows", [])}
    table = []
    for b in sorted({r["block"] for r in err if r["kind"] == kind}):
        rs = [r for r in err if r["kind"] == kind and r["block"] == b]
        speed = [kern.get((op, kind, b)) for op in ("quantize", "dequantize", "reduce_hop")]
        table.append({"block": b, "overhead": HEADER / b,
                      "wire_fraction": (b + HEADER) / (4 * b),
                      "ratio_rms_mean": statistics.mean(r["ratio_rms"] for r in rs),
                      "ratio_max_mean": statistics.mean(r["ratio_max"] for r in rs),
                      "ratio_rms_worst": max(r["ratio_rms"] for r in rs),
                      "ratio_max_worst": max(r["ratio_max"] for r in rs),
                      "quantize_GBps": speed[0], "dequantize_GBps": speed[1], "reduce_hop_GBps": speed[2]})
    eligible = [t for t in table if t["overhead"] <= MAX_OVERHEAD]
    chosen, why = None, ""
    if eligible:
        def slowest(t):
            vals = [v for v in (t["quantize_GBps"], t["reduce_hop_GBps"]) if v]
            return min(vals) if vals else None
        speeds = [slowest(t) for t in eligible]
        fastest = max((s for s in speeds if s), default=None)
        ok = [t for t, s in zip(eligible, speeds) if fastest is None or s is None or s >= SPEED_TOLERANCE * fastest]
        chosen = min(ok, key=lambda t: t["ratio_rms_mean"])["block"]
        why = (f"blocks with metadata <= {MAX_OVERHEAD:.0%}: {[t['block'] for t in eligible]}; of those whose slower "
               f"of quantize / reduce_hop is >= {SPEED_TOLERANCE:.0%} of the fastest: {[t['block'] for t in ok]}; "
               "lowest mean rms error relative to the baseline")
    try:
        import pccl_arrays as pa
        default = pa.Quantization().block
    except Exception:
        default = None
    return {"kind": kind, "table": table, "chosen": chosen, "library_default": default,
            "confirmed": chosen is not None and chosen == default, "rule": why}


# ---------------------------------------------------------------------------------------------------------------
# 4. Triton (CUDA only)
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
            from pccl_arrays import _core
            xh = x.cpu().numpy()
            qh = np.empty(_core.quantized_bytes(n, b), np.uint8)
            _core.quantize(xh.ctypes.data, F32, n, KINDS[kind], b, qh.ctypes.data)
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


# ---------------------------------------------------------------------------------------------------------------
# report
def break_even_model(doc: dict) -> dict:
    """A model, not a measurement: the link bandwidth below which the quantized ring beats the unquantized one,
    from this machine's one-thread kernel figures at the bandwidth test's kind and block.

    Ideal ring of N peers, one core per peer, link L (GB/s, each direction), S float32 bytes, w = quantized /
    float32 bytes, no overlap of computation with transfer, the unquantized additions free:
        t_unq = 2(N-1)/N * S / L
        t_q   = S / K_quantize + (N-1)/N * S / K_hop + 2(N-1)/N * w * S / L + S / K_dequantize
    so t_q < t_unq exactly when L < L* = 2(N-1)/N * (1 - w) / (1/K_quantize + (N-1)/(N K_hop) + 1/K_dequantize)."""
    kern = {(r["op"], r["kind"], r["block"]): r["GBps"]["median"] for r in doc.get("kernels", {}).get("rows", [])}
    kind, block = doc["config"]["kind"], doc["config"]["block"]
    kq, kd, kh = (kern.get((op, kind, block)) for op in ("quantize", "dequantize", "reduce_hop"))
    if not (kq and kd and kh):
        return {}
    w = (block + HEADER) / (4 * block)
    out = {"kind": kind, "block": block, "K_quantize": kq, "K_dequantize": kd, "K_hop": kh, "w": w,
           "definition": break_even_model.__doc__, "break_even_GBps": {}}
    for n in sorted(set(doc["config"]["peers"]) | {2, 3, 4}):
        f = (n - 1) / n
        out["break_even_GBps"][str(n)] = 2 * f * (1 - w) / (1 / kq + f / kh + 1 / kd)
    # the link speed the unquantized ring saw here: algbw * 2(N-1)/N
    seen = {}
    for r in doc.get("allreduce", {}).get("rows", []):
        if r["bytes"] >= GOAL_MIN_BYTES:
            f = (r["peers"] - 1) / r["peers"]
            seen.setdefault(str(r["peers"]), []).append(r["none"]["algbw_GBps"]["median"] * 2 * f)
    out["loopback_link_seen_GBps"] = {k: statistics.median(v) for k, v in seen.items()}
    return out


def evaluate_goals(doc: dict) -> list[dict]:
    goals = []
    for r in doc.get("allreduce", {}).get("rows", []):
        if r["bytes"] >= GOAL_MIN_BYTES:
            goals.append({"goal": "speed", "peers": r["peers"], "bytes": r["bytes"], "value": r["ratio"],
                          "met": r["ratio"] >= GOAL_SPEED_RATIO,
                          "text": f"N={r['peers']} {r['size']}: quantized/unquantized algbw = {r['ratio']:.2f} "
                                  f"(goal >= {GOAL_SPEED_RATIO:.1f})"})
    default = doc.get("block_choice", {}).get("library_default") or 1024
    for r in doc.get("error", {}).get("rows", []):
        if r["kind"] == "minmax" and r["block"] == default:
            for metric in ("rms", "max"):
                v = r[f"ratio_{metric}"]
                goals.append({"goal": f"error_{metric}", "peers": r["peers"], "dataset": r["dataset"],
                              "block": r["block"], "value": v, "met": v <= GOAL_ERROR_RATIO and
                              r["overhead"] <= MAX_OVERHEAD,
                              "text": f"N={r['peers']} {r['dataset']}, B={r['block']} (metadata "
                                      f"{r['overhead']:.2%}): {metric} error / baseline = {v:.3f} "
                                      f"(goal <= {GOAL_ERROR_RATIO})"})
    return goals


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, 2 peers, few repeats (CI smoke test)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS, help="what to run (default: all)")
    ap.add_argument("--peers", type=int, nargs="+", help="peer counts of the bandwidth test (default 2 3; 2 quick)")
    ap.add_argument("--sizes", type=_common.parse_size, nargs="+", help="all-reduce sizes (default 1 16 64 256 MiB)")
    ap.add_argument("--repeats", type=int, help="timed repeats per size and mode (default: 21 up to 1 MiB, 12 up to "
                                                "16 MiB, 6 above; 3 with --quick)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds of the bandwidth test (default 3, 1 quick)")
    ap.add_argument("--kind", choices=list(KINDS), default="minmax", help="quantization of the bandwidth test")
    ap.add_argument("--block", type=int, default=1024, help="block of the bandwidth test (default 1024)")
    ap.add_argument("--connections", type=int, default=4, help="pccl_arrays connections per peer (default 4)")
    ap.add_argument("--error-peers", type=int, nargs="+", help="peer counts of the error test (default 2 3 4; 2)")
    ap.add_argument("--error-elements", type=int, help="elements per peer in the error test (default 4Mi; 1Mi)")
    ap.add_argument("--kernel-elements", type=int, help="elements of the kernel test (default 16Mi; 1Mi)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, help="seconds before a group of peers counts as hung (600; 120 quick)")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each section and group of peers, wait up to this many seconds until other "
                         "processes use < 0.15 cores (default 0: no wait); for shared machines")
    ap.add_argument("--out", default=str(HERE / "results" / "quant.json"), help="JSON output path")
    a = ap.parse_args(argv)
    QUIET_WAIT["limit_s"] = a.quiet_wait
    cfg = dict(QUICK if a.quick else FULL)
    peers = a.peers or cfg["peers"]
    sizes = a.sizes or cfg["sizes"]
    rounds = a.rounds or cfg["rounds"]
    repeats = [a.repeats or default_repeats(s, a.quick) for s in sizes]
    reps_per_round = [-(-r // rounds) for r in repeats]
    repeats = [r * rounds for r in reps_per_round]
    error_peers = a.error_peers or cfg["error_peers"]
    error_n = a.error_elements or cfg["error_elems"]
    kernel_n = a.kernel_elements or cfg["kernel_elems"]
    timeout = a.timeout or (120.0 if a.quick else 600.0)
    if any(n < 2 for n in peers + error_peers):
        ap.error("peer counts must be >= 2")
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(msg, flush=True)

    import numpy as np
    errors, notes = [], []
    try:
        pccl_arrays = _common.import_pccl_arrays()
        pv = pccl_arrays.__version__
    except Exception as e:
        print(f"ERROR: pccl_arrays cannot be imported ({type(e).__name__}: {e})", flush=True)
        return 1
    doc = {
        "benchmark": "quant",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": ["python", os.path.relpath(__file__), *argv],
        "machine": {"nproc": os.cpu_count(), "cpu": _common.cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__, "pccl_arrays": pv,
                    "pccl_arrays_path": str(Path(pccl_arrays.__file__).resolve().parent)},
        "config": {"quick": a.quick, "sections": a.sections, "kinds": list(KINDS), "blocks": BLOCKS,
                   "kernel_elements": kernel_n, "peers": peers, "sizes": sizes, "repeats": repeats,
                   "rounds": rounds, "repeats_per_round": reps_per_round, "kind": a.kind, "block": a.block,
                   "connections": a.connections, "error_peers": error_peers, "error_elements": error_n,
                   "seed": a.seed, "dtype": "float32", "op": "sum", "quiet_wait_s": a.quiet_wait,
                   "note": f"all peers share this machine's {os.cpu_count()} cores (oversubscribed loopback)"},
        "goals": [], "errors": errors, "notes": notes,
        "load_average": [("start", os.getloadavg())],  # 1, 5, 15 min: other processes on this machine show here
    }
    log(f"all peers share this machine's {os.cpu_count()} cores; sections {a.sections}")
    if "kernels" in a.sections:
        wait_for_quiet("kernels", log)
        t, meter = time.monotonic(), CpuMeter()
        log(f"-- kernels: {_common.fmt_size(kernel_n * 4)} float32, blocks {BLOCKS}, {cfg['kernel_repeats']} repeats")
        doc["kernels"] = bench_kernels(kernel_n, cfg["kernel_repeats"], BLOCKS, list(KINDS), log)
        doc["kernels"]["runtime_s"] = time.monotonic() - t
        doc["kernels"]["other_processes"] = doc["kernels"].get("other_processes", []) + [{"section": meter.stop()}]
        doc["load_average"].append(("after kernels", os.getloadavg()))
    if "allreduce" in a.sections:
        t, meter = time.monotonic(), CpuMeter()
        log(f"-- all-reduce: peers {peers}, sizes {[_common.fmt_size(s) for s in sizes]}, repeats {repeats} per mode")
        doc["allreduce"] = bench_allreduce(peers, sizes, reps_per_round, rounds, a.kind, a.block, a.connections,
                                           timeout, log, errors)
        doc["allreduce"]["runtime_s"] = time.monotonic() - t
        doc["allreduce"]["other_processes"] = doc["allreduce"].get("other_processes", []) + [{"section": meter.stop()}]
        doc["load_average"].append(("after allreduce", os.getloadavg()))
    if "error" in a.sections:
        wait_for_quiet("error", log)
        t, meter = time.monotonic(), CpuMeter()
        log(f"-- error: peers {error_peers}, {error_n} elements per peer, blocks {BLOCKS}")
        doc["error"] = bench_error(error_peers, error_n, BLOCKS, list(KINDS), a.seed, a.connections, timeout, log,
                                   errors)
        doc["error"]["runtime_s"] = time.monotonic() - t
        doc["error"]["other_processes"] = doc["error"].get("other_processes", []) + [{"section": meter.stop()}]
        doc["load_average"].append(("after error", os.getloadavg()))
        doc["block_choice"] = choose_block(doc)
    if "triton" in a.sections:
        doc["triton"] = bench_triton(16 * MiB if not a.quick else 1 * MiB, 10 if not a.quick else 3, [256, 1024, 4096],
                                     list(KINDS), log)
        if not doc["triton"]["measured"]:
            notes.append(f"Triton kernels not measured: {doc['triton']['why']}; on a GPU machine run: "
                         f"{doc['triton']['command']}")
    if "kernels" in doc and "allreduce" in doc:
        doc["model"] = break_even_model(doc)
    doc["load_average"].append(("end", os.getloadavg()))
    doc["quiet_waits"] = QUIET_WAIT["waits"]
    doc["goals"] = evaluate_goals(doc)
    _common.save_and_report(doc, a.out, t_start, print_report)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
