"""Quantized all-reduce: kernel throughput, bandwidth against the unquantized all-reduce, error against a
per-chunk truncating min-max baseline, and error against the number of peers for 8 and 4 bits, with and without
rotation, ring and direct (docs/quantization.md is the format; docs/benchmarks.md the results).

Usage (from the repository root, in an environment with numpy; torch only for the CUDA section)::

    PYTHONPATH=. python benchmarks/quant.py --quiet-wait 240   # full: ~4 minutes here
    PYTHONPATH=. python benchmarks/quant.py --quick            # CI smoke test: ~15 s, 2 peers, few repeats

What it measures, in one run (``--sections`` picks a subset):

* ``kernels``: the C++ host kernels on one thread, in this process: ``quantize`` and ``dequantize`` of a float32
  array (64 MiB; 4 MiB with --quick), both kinds, blocks of 256 .. 4096 elements, and ``reduce_hop`` (one ring
  hop over the whole array: decode two quantized arrays, add, re-quantize), beside ``memcpy`` of the same bytes.
  Throughput = float32 bytes of the array / time (for dequantize, the float32 bytes written; for reduce_hop,
  the float32 bytes the hop stands for; its rate in quantized bytes consumed from the wire is given too).
  Every configuration runs once per repeat, round robin, so a slow spell of the machine spreads over all.
  Then the kernels of the 4-bit and rotated formats at their default blocks (minmax B=1024 as the reference,
  minmax rotated, minmax4 B=512 with and without rotation): quantize, dequantize, ``reduce_hop_exact`` (the host
  path's ring hop, acc = Q(D(acc) + R(x))) and ``reduce_owner`` (the direct all-reduce's owner sum of 4
  contributions, Q(R(x) + D(q1) + D(q2) + D(q3))), in GB/s of the array's float32 bytes.
* ``allreduce``: N peer processes (2 and 3) on 127.0.0.1 all-reduce float32 arrays of 1, 16, 64 and 256 MiB:
  unquantized (``all_reduce(x, out=y)``), quantized (``all_reduce(x, out=y, quantization=...)``, minmax, block
  1024, the direct reduce-scatter by default: --kind, --block, --reduce) and fresh
  (``y = all_reduce(x, quantization=...)``, a new result per call, which must give the same bytes). The modes
  rotate repeat by repeat (ABC, CBA) inside one group of peers, and the full run repeats every group in 3 rounds,
  so the machine's drift lands on all. Per repeat every peer runs a 4-byte all-reduce
  (a barrier), then times one all-reduce; the slowest peer's time counts; algbw = float32 array bytes / time
  (for every mode: the quantized ones move about 1/4 of those bytes). The quantized time is the whole call, in
  which the core quantizes, reduces and decodes piece by piece on the stripes' threads. Results are checked: unquantized exact, quantized within the
  spec's error bound and bitwise the same on every peer.
* ``error``: the max, 99th-percentile, RMS and mean error against the exact sum (float64 sum of the float32
  inputs) of our format and of a PCCL-style per-chunk baseline, for N = 2, 3, 4 peers, float32 Gaussian data
  with and without a few outliers. Our format's results come from real ring all-reduces (``reduce="ring"``, as
  the baseline's) of N peer processes (rank 0 writes its result to a temporary file). Beside them runs an exact
  simulation with the core's kernels (``_core_testing.quantize``, ``_core_testing.reduce_hop_exact``,
  ``_core_testing.dequantize``) in ring order, which must give the same bits; the master orders the ring by
  admission, which the benchmark does not control, so the order is identified first (the one of the N! orders
  that reproduces the first blocks of every chunk). The baseline is NumPy: one (min, max) pair per ring chunk of
  count/N elements, codes = floor((x - min) / (max - min) * 255) (truncation, as PCCL's ``static_cast<uint8_t>``),
  decode = min + code * (max - min) / 255; along the ring (same order) each hop decodes what it received, adds
  its own unquantized contribution and re-quantizes the same way; the chunk's owner quantizes the final sum; the
  all-gather moves those bytes verbatim.
  With the metadata overhead (8 bytes per block: 8/B of the codes) and the kernel speed per block size, this
  chooses (or confirms) the default block.
* ``scaling``: the error against the number of peers N = 2..8, for the ring and the direct reduce-scatter, 8 bits
  (minmax, B=1024) and 4 bits (minmax4, B=512), each with and without rotation (seed = --seed), on three data
  sets: N(0, 1), Student-t with 3 degrees of freedom, and real pseudo-gradients of the DiLoCo example
  (``--real PATH``, default benchmarks/data/diloco_deltas.npz, one float32 array per round: peer i contributes
  round i; when the file is missing the report says that the real data set is skipped, and why). Every peer's
  input differs (its own seed, or its own round). Max, rms (relative to the exact sum's rms) and the bias (mean
  error with its standard error over 1024-element groups) come from an exact simulation with the core's kernels
  (``quantize``, ``reduce_hop_exact`` or ``reduce_owner``, ``dequantize``), which the tests hold to the real
  all-reduce; here too, 3 peer processes all-reduce Student-t data with 4-bit rotated blocks, ring and direct, and
  the simulation in the master's ring order (``Communicator.ring()``) must give the same bits.
* ``triton``: on a CUDA device, the Triton kernels' GB/s (and whether their bytes equal the C++ kernel's);
  without one it says so plainly and prints the command to run on a GPU machine.

All peers and the master share this machine's cores: with more threads than cores the all-reduce numbers are
for an oversubscribed loopback host, not a network. The CPU time other processes used during each section is
recorded (approximately, from /proc/stat); ``--quiet-wait S`` waits up to S seconds before each section and
group of peers until other processes are idle.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402
from _common import CpuMeter, QUIET_WAIT, wait_for_quiet  # noqa: E402
from _quant_workers import HEADER, KINDS  # noqa: E402
from _quant_kernels import bench_format_kernels, bench_kernels, bench_triton  # noqa: E402
from _quant_data import DEFAULT_REAL  # noqa: E402
from _quant_scaling import bench_check, bench_scaling, scaling_goals  # noqa: E402
from _quant_speed import bench_allreduce  # noqa: E402
from _quant_error import MAX_OVERHEAD, bench_error, choose_block  # noqa: E402
from _quant_report import print_report  # noqa: E402  (helpers: sizes, spread, machine, pattern data, pccl_arrays import)

KiB, MiB = 1 << 10, 1 << 20
BLOCKS = [256, 512, 1024, 2048, 4096]
GOAL_ERROR_RATIO = 0.25  # the goal: error <= 1/4 of the per-chunk baseline's
GOAL_TIME_RATIO = 1.25  # the goal: a quantized all-reduce takes <= 1.25x the unquantized one at >= 16 MiB
GOAL_QUANTIZE_GBPS = 5.0  # the goal: quantize on one core at >= 5 GB/s of float32 (default block, both kinds)
GOAL_MIN_BYTES = 16 * MiB
GOAL_ROTATE_GBPS = 3.0  # the goal: quantize with rotation on one core at >= 3 GB/s of float32

FULL = {"kernel_elems": 16 * MiB, "kernel_repeats": 7, "sizes": [1 * MiB, 16 * MiB, 64 * MiB, 256 * MiB],
        "peers": [2, 3], "rounds": 3, "error_elems": 4 * MiB, "error_peers": [2, 3, 4],
        "scaling_elems": 4 * MiB, "check_elems": 1 * MiB + 123}
QUICK = {"kernel_elems": 1 * MiB, "kernel_repeats": 3, "sizes": [1 * MiB, 16 * MiB],
         "peers": [2], "rounds": 1, "error_elems": 1 * MiB, "error_peers": [2],
         "scaling_elems": 256 * KiB, "check_elems": 256 * KiB + 123}
SCALING_PEERS = list(range(2, 9))
SECTIONS = ["kernels", "allreduce", "error", "scaling", "triton"]


def default_repeats(n: int, quick: bool) -> int:
    if quick:
        return 3
    if n <= 1 * MiB:
        return 21
    if n <= 16 * MiB:
        return 12
    return 6


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
            t = 1 / r["ratio"]
            goals.append({"goal": "speed", "peers": r["peers"], "bytes": r["bytes"], "value": t,
                          "met": t <= GOAL_TIME_RATIO,
                          "text": f"N={r['peers']} {r['size']}: quantized/unquantized time = {t:.2f} "
                                  f"(goal <= {GOAL_TIME_RATIO})"})
    default = doc.get("block_choice", {}).get("library_default") or 1024
    for r in doc.get("kernels", {}).get("rows", []):
        if r["op"] == "quantize" and r["block"] == default:
            v = r["GBps"]["median"]
            goals.append({"goal": "quantize_speed", "kind": r["kind"], "block": r["block"], "value": v,
                          "met": v >= GOAL_QUANTIZE_GBPS,
                          "text": f"quantize {r['kind']} B={r['block']} on one core: {v:.2f} GB/s "
                                  f"(goal >= {GOAL_QUANTIZE_GBPS})"})
    for r in doc.get("format_kernels", {}).get("rows", []):
        if r["op"] == "quantize" and r["rotate"]:
            v = r["GBps"]["median"]
            goals.append({"goal": "quantize_rotate_speed", "kind": r["kind"], "block": r["block"], "value": v,
                          "met": v >= GOAL_ROTATE_GBPS,
                          "text": f"quantize + rotate {r['kind']} B={r['block']} on one core: {v:.2f} GB/s "
                                  f"(goal >= {GOAL_ROTATE_GBPS})"})
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
    return goals + scaling_goals(doc)


def main(argv=None) -> int:
    ap = _common.benchmark_parser(__doc__, "quant", quick="small sizes, 2 peers, few repeats (CI smoke test)")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=SECTIONS, help="what to run (default: all)")
    ap.add_argument("--peers", type=int, nargs="+", help="peer counts of the bandwidth test (default 2 3; 2 quick)")
    ap.add_argument("--sizes", type=_common.parse_size, nargs="+", help="all-reduce sizes (default 1 16 64 256 MiB)")
    ap.add_argument("--repeats", type=int, help="timed repeats per size and mode (default: 21 up to 1 MiB, 12 up to "
                                                "16 MiB, 6 above; 3 with --quick)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds of the bandwidth test (default 3, 1 quick)")
    ap.add_argument("--kind", choices=list(KINDS), default="minmax", help="quantization of the bandwidth test")
    ap.add_argument("--block", type=int, default=1024, help="block of the bandwidth test (default 1024)")
    ap.add_argument("--reduce", choices=["direct", "ring"], default="direct",
                    help="reduce-scatter of the bandwidth test (default direct, the library's default)")
    ap.add_argument("--connections", type=int, default=4, help="pccl_arrays connections per peer (default 4)")
    ap.add_argument("--error-peers", type=int, nargs="+", help="peer counts of the error test (default 2 3 4; 2)")
    ap.add_argument("--error-elements", type=int, help="elements per peer in the error test (default 4Mi; 1Mi)")
    ap.add_argument("--kernel-elements", type=int, help="elements of the kernel test (default 16Mi; 1Mi)")
    ap.add_argument("--scaling-peers", type=int, nargs="+", help="peer counts of the scaling study (default 2..8)")
    ap.add_argument("--scaling-elements", type=int, help="elements per peer in the scaling study (default 4Mi; "
                                                         "256Ki); the real data set: at most this many")
    ap.add_argument("--real", default=str(DEFAULT_REAL), help="the real data set of the scaling study: an .npz of "
                    "float32 arrays, one per DiLoCo round (default benchmarks/data/diloco_deltas.npz)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, help="seconds before a group of peers counts as hung (600; 120 quick)")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each section and group of peers, wait up to this many seconds until other "
                         "processes use < 0.15 cores (default 0: no wait); for shared machines")
    bench = _common.Run.start(ap, argv)
    a = bench.args
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
    scaling_peers = sorted(set(a.scaling_peers or SCALING_PEERS))
    scaling_n = a.scaling_elements or cfg["scaling_elems"]
    timeout = a.timeout or (120.0 if a.quick else 600.0)
    if any(n < 2 for n in peers + error_peers + scaling_peers):
        ap.error("peer counts must be >= 2")

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
        "command": ["python", os.path.relpath(__file__), *bench.argv],
        "machine": {"nproc": os.cpu_count(), "cpu": _common.cpu_model(), "platform": platform.platform(),
                    "python": platform.python_version(), "numpy": np.__version__, "pccl_arrays": pv,
                    "pccl_arrays_path": str(Path(pccl_arrays.__file__).resolve().parent)},
        "config": {"quick": a.quick, "sections": a.sections, "kinds": list(KINDS), "blocks": BLOCKS,
                   "kernel_elements": kernel_n, "peers": peers, "sizes": sizes, "repeats": repeats,
                   "rounds": rounds, "repeats_per_round": reps_per_round, "kind": a.kind, "block": a.block,
                   "reduce": a.reduce,
                   "connections": a.connections, "error_peers": error_peers, "error_elements": error_n,
                   "scaling_peers": scaling_peers, "scaling_elements": scaling_n, "check_elements": cfg["check_elems"],
                   "real": a.real, "seed": a.seed, "dtype": "float32", "op": "sum", "quiet_wait_s": a.quiet_wait,
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
        doc["format_kernels"] = bench_format_kernels(kernel_n, cfg["kernel_repeats"], log)
        doc["kernels"]["runtime_s"] = time.monotonic() - t
        doc["kernels"]["other_processes"] = doc["kernels"].get("other_processes", []) + [{"section": meter.stop()}]
        doc["load_average"].append(("after kernels", os.getloadavg()))
    if "allreduce" in a.sections:
        t, meter = time.monotonic(), CpuMeter()
        log(f"-- all-reduce: peers {peers}, sizes {[_common.fmt_size(s) for s in sizes]}, repeats {repeats} per mode")
        doc["allreduce"] = bench_allreduce(peers, sizes, reps_per_round, rounds, a.kind, a.block, a.connections,
                                           timeout, log, errors, a.reduce)
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
    if "scaling" in a.sections:
        wait_for_quiet("scaling", log)
        t, meter = time.monotonic(), CpuMeter()
        log(f"-- scaling: peers {scaling_peers}, {scaling_n} elements per peer, ring and direct, 8 and 4 bits, "
            "with and without rotation")
        doc["scaling"] = bench_scaling(scaling_peers, scaling_n, a.real, a.seed, log)
        if "skipped" in doc["scaling"]["datasets"]["real"]:
            notes.append(f"the real data set was skipped: {doc['scaling']['datasets']['real']['skipped']}")
        doc["scaling_check"] = bench_check(cfg["check_elems"], a.seed, a.connections, timeout, log, errors)
        doc["scaling"]["runtime_s"] = time.monotonic() - t
        doc["scaling"]["other_processes"] = [{"section": meter.stop()}]
        doc["load_average"].append(("after scaling", os.getloadavg()))
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
    return bench.finish(doc, print_report)


if __name__ == "__main__":
    sys.exit(main())
