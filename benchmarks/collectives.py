"""broadcast, all_gather and reduce_scatter of pccl_arrays vs torch.distributed (gloo) on this machine's loopback.

Usage (from the repository root, in an environment with numpy and, for the gloo column, torch)::

    PYTHONPATH=. python benchmarks/collectives.py              # full: 3 peers, 1, 16, 64 MiB, 3 rounds
    PYTHONPATH=. python benchmarks/collectives.py --quick      # CI smoke test: 64 KiB and 1 MiB, 3 repeats

How this works. For each system, a group of N peer processes (default 3) on 127.0.0.1
(benchmarks/_collectives_workers.py) runs each collective on float32 arrays:

* pccl_arrays: ``Communicator(master, connections=4)``; ``broadcast(x, root=0, out=y)``,
  ``all_gather(x, out=y)``, ``reduce_scatter(x, out=y)`` into preallocated arrays;
* gloo: ``dist.init_process_group("gloo", init_method="tcp://127.0.0.1:PORT")`` with ``GLOO_SOCKET_IFNAME=lo``;
  ``dist.broadcast(t, src=0)`` (in place, the only form it has), ``dist.all_gather_single(y, x)`` and
  ``dist.reduce_scatter_single(y, x)`` (gloo takes all-gather's output only in the concatenated form, a 1-D
  tensor of N inputs, so the check reshapes it to (N, n)). In torch 2.13 ``all_gather_into_tensor`` and
  ``reduce_scatter_tensor`` are deprecated aliases of these two (they call them), and gloo supports both (checked
  with 3 peers), so no list-based ``dist.reduce_scatter`` fallback is needed; an older torch gets the old names.

Sizes. S is the size of the **full** array, as nccl-tests define it: the broadcast array; all_gather's result
(each peer contributes S/N); reduce_scatter's input on every peer (each gets S/N back). S is rounded down to a
multiple of 4N bytes so that the chunks are equal (a few bytes at most; the bandwidths use the exact bytes).

Figures. The time of a repeat is the **maximum over peers** of each peer's time for one call (every call
follows a 4-byte all-reduce that lines the peers up). algbw = S / time (GB/s = 1e9 B/s), median [min-max] over
repeats; pccl/gloo is the ratio of the medians. busbw = algbw x B(N), with B the bytes each peer must at least
receive, as a fraction of S, whatever the algorithm: 1 for broadcast (every non-root needs the whole array),
(N-1)/N for all_gather and reduce_scatter (the other peers' chunks, or their contributions to its own chunk), so
busbw compares across collectives and with all-reduce's busbw (B = 2(N-1)/N). Every collective moves at least
(N-1) S bytes through the loopback in all, so on one host its algbw is bounded by about C / (N-1), with C one TCP
stream's throughput over 127.0.0.1 (allreduce.py's loopback measurement, 4 MiB writes, sampled before every
group). The table also shows the most bytes one pccl_arrays peer sent and received (``last_info``, headers
included): the broadcast's root sends 2(N-1)/N S (docs/collectives.md).

Correctness: the inputs are small integers (exact in float32); each peer compares the first untimed and the
last timed result with the exact expected array, and the output is reset before every call; a wrong result
(or a failed group) makes the run exit 1. Rounds: the full run repeats every group 3 times, the systems in
ABBA order and the collectives' order rotated, and pools the repeats, because this machine's speed drifts. All
peers and the master share this machine's cores: with 3 peers on 2 cores the figures measure an oversubscribed
host, not a network. The CPU other processes used during each group is recorded (from /proc/stat, roughly);
``--quiet-wait S`` waits up to S seconds before each group until they are idle.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKERS = str(HERE / "_collectives_workers.py")
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
from _collectives_workers import COLLECTIVES, layout  # noqa: E402
from _common import (QUIET_WAIT, CpuMeter, KiB, MiB, Run, benchmark_parser, doc_head, fmt_size,  # noqa: E402
                     parse_size, print_footer, spread, systems_to_run, wait_for_quiet)
from allreduce import measure_loopback, torch_status  # noqa: E402

FULL_SIZES = [1 * MiB, 16 * MiB, 64 * MiB]
QUICK_SIZES = [64 * KiB, 1 * MiB]
LOOPBACK_CHUNK = 4 * MiB
SYSTEMS = {"pccl": "pccl_arrays", "gloo": "gloo"}
CALLS = {"pccl_arrays": {"broadcast": "broadcast(x, root=0, out=y)", "all_gather": "all_gather(x, out=y)",
                         "reduce_scatter": "reduce_scatter(x, out=y)"},
         "gloo": {"broadcast": "dist.broadcast(t, src=0)", "all_gather": "dist.all_gather_single(y, x)",
                  "reduce_scatter": "dist.reduce_scatter_single(y, x)"}}


def bus_factor(coll: str, world: int) -> float:
    """B(N): the bytes each peer must at least receive, as a fraction of S."""
    return 1.0 if coll == "broadcast" else (world - 1) / world


def default_repeats(size: int, quick: bool) -> int:
    if quick:
        return 3
    return 20 if size <= 1 * MiB else 10 if size <= 16 * MiB else 5


# ---------------------------------------------------------------------------------------------------------------
def run_group(system: str, world: int, sizes, repeats, order, connections: int, timeout: float) -> list[dict]:
    common = ["--world", str(world), "--sizes", ",".join(map(str, sizes)), "--repeats", ",".join(map(str, repeats)),
              "--collectives", ",".join(order)]
    if system == "gloo":
        port = _procs.free_port()
        argvs = [[WORKERS, "gloo", "--port", str(port), "--rank", str(r), *common] for r in range(world)]
        # keep gloo on the loopback interface like pccl_arrays (it otherwise picks the hostname's interface)
        return _procs.run_group(argvs, timeout, env={"GLOO_SOCKET_IFNAME": "lo"})
    import pccl_arrays as pa
    m = pa.Master("127.0.0.1:0").start()
    try:
        argvs = [[WORKERS, "pccl", "--master", m.address, "--rank", str(r), "--connections", str(connections),
                  *common] for r in range(world)]
        return _procs.run_group(argvs, timeout)
    finally:
        m.stop()


def combine(name: str, world: int, rounds: list[list[dict]]) -> list[dict]:
    """One row per (collective, size) from every round's peers: per repeat, the slowest peer's time."""
    per_key: dict = {}
    for peers in rounds:
        for res in peers:
            for row in res["rows"]:
                k = (row["collective"], row["bytes"])
                e = per_key.setdefault(k, {"seconds": {}, "correct": True, "info": [], "elements": row["elements"]})
                e["seconds"].setdefault(res["rank"], []).extend(row["seconds"])
                e["correct"] = e["correct"] and row["correct"]
                e["info"].append(row.get("info") or {})
    out = []
    for (coll, size), e in sorted(per_key.items(), key=lambda kv: (COLLECTIVES.index(kv[0][0]), kv[0][1])):
        per_peer = [e["seconds"][r] for r in sorted(e["seconds"])]
        worst = [max(ts) for ts in zip(*per_peer)]
        nbytes = 4 * e["elements"]
        bw = [nbytes / t / 1e9 for t in worst]
        row = {"system": name, "collective": coll, "peers": world, "bytes": size, "size": fmt_size(size),
               "exact_bytes": nbytes, "repeats": len(worst), "algbw_GBps": spread(bw),
               "busbw_GBps": spread([b * bus_factor(coll, world) for b in bw]),
               "latency_ms": spread([t * 1e3 for t in worst]), "correct": e["correct"],
               "must_receive_bytes_per_peer": int(nbytes * bus_factor(coll, world)),
               "seconds_per_peer": per_peer}
        if any("bytes_sent" in i for i in e["info"]):
            row["max_bytes_sent_per_peer"] = max(i["bytes_sent"] for i in e["info"])
            row["max_bytes_received_per_peer"] = max(i["bytes_received"] for i in e["info"])
            row["stripes"] = max(i["stripes"] for i in e["info"])
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------------------------
def print_table(doc: dict) -> None:
    rows, lb, mach = doc["rows"], doc["loopback"], doc["machine"]
    by = {(r["system"], r["collective"], r["peers"], r["bytes"]): r for r in rows}
    print()
    print("algbw = S / time, S = the full array (broadcast: the array; all_gather: the result, N inputs; "
          "reduce_scatter: each peer's input, N chunks); time = max over peers; GB/s = 1e9 B/s; median [min-max].")
    print("busbw = algbw x B, B = bytes each peer must receive / S: broadcast 1, all_gather and reduce_scatter "
          "(N-1)/N. bound = C/(N-1): every collective moves (N-1) S through the loopback.")
    print("pccl_arrays: " + "; ".join(CALLS["pccl_arrays"].values()) + ". gloo: " + "; ".join(CALLS["gloo"].values()))
    hdr = (f"{'N':>2} {'collective':<14} {'size':>7} {'reps':>4} | {'pccl algbw GB/s':>22} {'gloo algbw GB/s':>22} | "
           f"{'pccl/gloo':>9} | {'pccl busbw':>10} {'gloo busbw':>10} | {'pccl ms':>8} {'gloo ms':>8} | "
           f"{'need/peer':>9} {'pccl tx/rx max':>15} | {'pccl/bound':>10}")
    print(hdr)
    print("-" * len(hdr))

    def cell(r, key="algbw_GBps", width=22):
        if not r:
            return f"{'-':>{width}}"
        b = r[key]
        return (f"{b['median']:.3g} [{b['min']:.3g}-{b['max']:.3g}]" + ("" if r["correct"] else " WRONG")).rjust(width)

    def num(r, key, width, fmt=".3g"):
        return f"{r[key]['median']:{width}{fmt}}" if r else f"{'-':>{width}}"

    def mib(v):
        return f"{v / MiB:.2f}" if v >= MiB else f"{v / MiB:.3f}"
    for n in doc["config"]["peers"]:
        bound = lb.get("bound_GBps", {}).get(str(n))
        for coll in COLLECTIVES:
            for s in doc["config"]["sizes"]:
                p, g = by.get(("pccl_arrays", coll, n, s)), by.get(("gloo", coll, n, s))
                if not p and not g:
                    continue
                any_r = p or g
                ratio = (f"{p['algbw_GBps']['median'] / g['algbw_GBps']['median']:9.3g}" if p and g
                         else f"{'-':>9}")
                txrx = (f"{mib(p['max_bytes_sent_per_peer'])}/{mib(p['max_bytes_received_per_peer'])} MiB"
                        if p and "max_bytes_sent_per_peer" in p else "-")
                vs_bound = f"{p['algbw_GBps']['median'] / bound:10.3g}" if p and bound else f"{'-':>10}"
                print(f"{n:>2} {coll:<14} {fmt_size(s):>7} {any_r['repeats']:>4} | {cell(p)} {cell(g)} | {ratio} | "
                      f"{num(p, 'busbw_GBps', 10)} {num(g, 'busbw_GBps', 10)} | {num(p, 'latency_ms', 8, '.2f')} "
                      f"{num(g, 'latency_ms', 8, '.2f')} | {mib(any_r['must_receive_bytes_per_peer']) + ' MiB':>9} "
                      f"{txrx:>15} | {vs_bound}")
    print()
    print(f"Machine: {mach['nproc']} cores ({mach['cpu']}), {mach['platform']}, Python {mach['python']}, "
          f"numpy {mach['numpy']}, torch {mach['torch'] or '-'}, pccl_arrays {mach['pccl_arrays'] or '-'}")
    if lb.get("C_GBps"):
        print(f"Loopback C (1 TCP stream, 127.0.0.1, {fmt_size(LOOPBACK_CHUNK)} writes, median of "
              f"{len(lb['samples_GBps'])} x {fmt_size(lb['bytes_per_sample'])}): {lb['C_GBps']:.2f} GB/s "
              f"[{lb['GBps']['min']:.2f}-{lb['GBps']['max']:.2f}]; bound C/(N-1): "
              + ", ".join(f"N={k}: {v:.2f} GB/s" for k, v in lb["bound_GBps"].items()))
    if doc.get("other_processes"):
        busy = [o["others_cores"] for o in doc["other_processes"]]
        print(f"Other processes on this machine used {min(busy):.2f}-{max(busy):.2f} cores during the groups "
              f"(median {statistics.median(busy):.2f}; /proc/stat, approximate)")
    print(f"NOTE: all {'/'.join(map(str, doc['config']['peers']))} peer processes (and the master) share this "
          f"machine's {mach['nproc']} cores: these figures measure an oversubscribed loopback host, not a network.")
    print_footer(doc)


# ---------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "collectives", quick="64 KiB and 1 MiB, 3 repeats, 1 round (CI smoke test)")
    ap.add_argument("--peers", type=int, nargs="+", default=[3], help="peer counts (default: 3)")
    ap.add_argument("--sizes", type=parse_size, nargs="+", help="full-array sizes S (default 1MiB 16MiB 64MiB)")
    ap.add_argument("--repeats", type=int, help="timed repeats per size (default: 20 up to 1 MiB, 10 up to "
                                                "16 MiB, 5 above; 3 with --quick)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds; repeats are split over them "
                                               "(default 3, 1 with --quick)")
    ap.add_argument("--collectives", nargs="+", choices=COLLECTIVES, default=list(COLLECTIVES))
    ap.add_argument("--systems", nargs="+", choices=list(SYSTEMS), default=list(SYSTEMS))
    ap.add_argument("--connections", type=int, default=4, help="pccl_arrays connections per peer (default 4)")
    ap.add_argument("--loopback-bytes", type=parse_size, default=None,
                    help="bytes per loopback sample (default 256 MiB, 32 MiB with --quick)")
    ap.add_argument("--no-bound", action="store_true", help="skip the loopback measurement (no bound column)")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each group, wait up to this many seconds until other processes use < 0.15 "
                         "cores (default 0: no wait); for shared machines")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds before a group of peers counts as hung (default 600, 120 with --quick)")
    bench = Run.start(ap, argv)
    a = bench.args
    QUIET_WAIT["limit_s"] = a.quiet_wait
    if any(n < 2 for n in a.peers):
        ap.error("--peers must be >= 2")
    sizes = a.sizes or (QUICK_SIZES if a.quick else FULL_SIZES)
    if any(s < 4 * n for s in sizes for n in a.peers):
        ap.error("every size must hold at least one float32 per peer")
    rounds = a.rounds or (1 if a.quick else 3)
    reps_per_round = [-(-(a.repeats or default_repeats(s, a.quick)) // rounds) for s in sizes]
    timeout = a.timeout or (120.0 if a.quick else 600.0)
    lb_bytes = 0 if a.no_bound else a.loopback_bytes or (32 * MiB if a.quick else 256 * MiB)

    tv, why_no_gloo = torch_status()
    notes, errors, rows = [], [], []
    systems, pv = systems_to_run(a.systems, why_no_gloo, notes, errors)

    doc = {
        **doc_head("collectives", __file__, bench.argv, tv, pv),
        "config": {"quick": a.quick, "peers": a.peers, "sizes": sizes, "collectives": a.collectives,
                   "repeats": [r * rounds for r in reps_per_round], "rounds": rounds, "dtype": "float32",
                   "op": "sum", "root": 0, "connections": a.connections, "systems": systems, "calls": CALLS,
                   "S": "the full array: broadcast's array, all_gather's result, reduce_scatter's input "
                        "(rounded down to a multiple of 4 N bytes)",
                   "timing": "per repeat: a 4-byte all-reduce as barrier, then one timed call on each peer; "
                             "time = max over peers; algbw = S / time; busbw = algbw x B(N); GB/s = 1e9 B/s",
                   "note": f"all peers share this machine's {os.cpu_count()} cores (oversubscribed loopback)"},
        "loopback": {}, "rows": rows, "goals": [], "errors": errors, "notes": notes, "other_processes": [],
    }
    print(f"all peers share this machine's {os.cpu_count()} cores; S {[fmt_size(s) for s in sizes]}, "
          f"repeats {doc['config']['repeats']} over {rounds} round(s), peers {a.peers}, systems {systems}", flush=True)

    lb_samples: list[float] = []
    runs: dict = {}
    for rnd in range(rounds):
        print(f"-- round {rnd + 1}/{rounds}", flush=True)
        turn = rnd % len(a.collectives)  # each collective goes first in some round
        order = a.collectives[turn:] + a.collectives[:turn]
        for n in a.peers:
            for system in (systems if rnd % 2 == 0 else systems[::-1]):
                name = SYSTEMS[system]
                wait_for_quiet(f"{name} N={n}", lambda m: print(m, flush=True))
                meter = CpuMeter()
                if lb_bytes:
                    try:
                        lb_samples += measure_loopback(lb_bytes, 1, 1, LOOPBACK_CHUNK, timeout)["samples_GBps"]
                    except Exception as e:
                        errors.append(f"loopback sample before {name} N={n} failed: {e}")
                t = time.monotonic()
                try:
                    res = run_group(system, n, sizes, reps_per_round, order, a.connections, timeout)
                except Exception as e:
                    errors.append(f"{name} with {n} peers failed in round {rnd + 1}: {e}")
                    print(f"ERROR: {errors[-1]}", flush=True)
                    continue
                if sorted(r["rank"] for r in res) != list(range(n)):
                    errors.append(f"{name} N={n} round {rnd + 1}: ranks {[r['rank'] for r in res]}, not 0..{n - 1}")
                    continue
                runs.setdefault((name, n), []).append(res)
                busy = meter.stop()
                doc["other_processes"].append({"round": rnd + 1, "system": name, "peers": n, **busy})
                summary = ", ".join(f"{r['collective']} {fmt_size(r['bytes'])}: "
                                    f"{statistics.median(r['seconds']) * 1e3:.2f} ms" for r in res[0]["rows"])
                print(f"{name} N={n} [{time.monotonic() - t:.1f} s, other processes used {busy['others_cores']:.2f} "
                      f"cores] peer 0 medians: {summary}", flush=True)
                if system == "gloo" and "gloo_functions" not in doc["config"]:
                    doc["config"]["gloo_functions"] = res[0].get("functions")

    if lb_samples:
        c = statistics.median(lb_samples)
        doc["loopback"] = {"C_GBps": c, "samples_GBps": lb_samples, "GBps": spread(lb_samples),
                           "bytes_per_sample": lb_bytes, "chunk": LOOPBACK_CHUNK,
                           "bound_GBps": {str(n): c / (n - 1) for n in a.peers},
                           "definition": "C = one TCP stream over 127.0.0.1 between two processes (Python sockets, "
                                         "4 MiB writes), median of samples taken before every group; bound of N "
                                         "peers = C / (N-1)"}
    for n in a.peers:
        for name in SYSTEMS.values():
            if (name, n) in runs:
                for r in combine(name, n, runs[(name, n)]):
                    rows.append(r)
                    if not r["correct"]:
                        errors.append(f"{name} N={n} {r['collective']} {r['size']}: WRONG result")
    for n in a.peers:  # a group that ran must have produced every row
        for name in SYSTEMS.values():
            got = {(r["collective"], r["bytes"]) for r in rows if r["system"] == name and r["peers"] == n}
            if (name, n) in runs and got != {(c, s) for c in a.collectives for s in sizes}:
                errors.append(f"{name} N={n}: rows missing")
    doc["quiet_waits"] = QUIET_WAIT["waits"]
    cut = [f"N={n} {fmt_size(s)}: {layout(s, n)[1] * 4} B" for n in a.peers for s in sizes
           if layout(s, n)[1] * 4 != s]
    if cut:
        notes.append("S rounded down to a multiple of 4N bytes (equal chunks; bandwidths use these bytes): "
                     + ", ".join(cut))
    return bench.finish(doc, print_table)


if __name__ == "__main__":
    sys.exit(main())
