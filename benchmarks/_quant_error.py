"""Section 3 of benchmarks/quant.py: the error of our format (real all-reduces, checked bit for bit against a
simulation with the core's kernels) against a PCCL-style per-chunk baseline, and the block it recommends."""

from __future__ import annotations

import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from _quant_sim import error_stats, find_ring_order, simulate_baseline, simulate_ours
from _quant_workers import DATASETS, HEADER, KINDS, make_data, run_peers

MAX_OVERHEAD = 0.01  # the goal: metadata <= 1% of the codes
SPEED_TOLERANCE = 0.9  # a block within 90% of the fastest eligible block counts as "as fast"


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
