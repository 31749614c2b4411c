"""What authenticated runs cost: plain, integrity-checked (a secret) and encrypted (a secret and encrypt=True)
all-reduce, side by side in one run, on loopback and through one emulated WAN profile (docs/security.md).

Usage (from the repository root, in the environment scripts/setup.sh makes)::

    .venv/bin/python benchmarks/security.py             # full: 4 KiB, 64 MiB, 256 MiB; 2 and 3 peers; ~3 minutes
    .venv/bin/python benchmarks/security.py --quick     # CI smoke test: 4 KiB and 1 MiB, 2 peers, ~20 s

How it measures. Every (network, peers, mode) runs as its own group: a master with that mode and peer
processes on 127.0.0.1 (all of them share this machine's cores: with 2 cores, a peer's sealing competes with
the other peer's, which is the worst case for the overhead). The modes take turns in rounds (plain, integrity,
encrypted; then the order reversed), so drift of the machine lands on all of them. Per repeat every peer runs a
4-byte all-reduce (a barrier), then times ``all_reduce(x, out=y)``; the slowest peer's time counts; algbw = array
bytes / time; the sum is checked exact. On the WAN profile each peer's data port sits behind its own relay
(pccl_arrays.wan), so every data byte crosses the emulated path; its size is chosen to last about a second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
from _common import (Run, benchmark_parser, cpu_model, expected_sum, fmt_size, import_pccl_arrays,  # noqa: E402
                     join_worker, parse_size, pattern, print_footer, script_main)

KiB, MiB = 1 << 10, 1 << 20
MODES = ("plain", "integrity", "encrypted")
SECRET = "benchmark secret: 5b1f0c7e9a2d4e6f8a0b1c2d3e4f5a6b"
WAN_PROFILE = "continent"
GOALS = {"loopback": {"integrity": 0.85, "encrypted": 0.60}, WAN_PROFILE: {"integrity": 0.97, "encrypted": 0.97}}
GOAL_LATENCY_S = 1e-4  # 4 KiB: at most this much slower than plain


# -- worker side ---------------------------------------------------------------------------------------------------
def worker(a) -> dict:
    import numpy as np

    # The secret comes from PCCL_ARRAYS_SECRET, set by the parent for the authenticated modes.
    kw = {"piece_bytes": a.piece_bytes} if a.piece_bytes else {}
    c, relay = join_worker(a.master, a.world, a.wan or None, connections=a.connections, **kw)
    tiny = np.zeros(1, np.float32)
    rows = []
    for size in a.sizes:
        n = size // 4
        x, out, expected = pattern(n, a.rank), np.zeros(n, np.float32), expected_sum(n, a.world)
        c.all_reduce(x, out=out)  # warm-up: opens the connections, faults the pages in
        correct = bool(np.array_equal(out, expected))
        times = []
        for _ in range(a.repeats):
            c.all_reduce(tiny)
            t0 = time.perf_counter()
            c.all_reduce(x, out=out)
            times.append(time.perf_counter() - t0)
        rows.append({"bytes": size, "seconds": times, "correct": correct and bool(np.array_equal(out, expected))})
    c.close()
    if relay:
        relay.stop()
    return {"rows": rows}


def worker_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="security.py _worker")
    ap.add_argument("--master", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], required=True)
    ap.add_argument("--repeats", type=int, required=True)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--wan", default="")
    ap.add_argument("--piece-bytes", type=int, default=0)
    _procs.report(worker(ap.parse_args(argv)))
    return 0


# -- parent side ---------------------------------------------------------------------------------------------------
def run_group(pa, mode: str, world: int, sizes: list[int], repeats: int, wan: str, timeout: float,
              piece_bytes: int = 0) -> list[dict]:
    """One group in one mode; per size, the slowest peer's time of each repeat."""
    secret = None if mode == "plain" else SECRET
    master = pa.Master("127.0.0.1:0", secret=secret, encrypt=(mode == "encrypted")).start()
    try:
        argvs = [[__file__, "_worker", "--master", master.address, "--rank", str(r), "--world", str(world),
                  "--sizes", ",".join(map(str, sizes)), "--repeats", str(repeats), "--wan", wan,
                  "--piece-bytes", str(piece_bytes)]
                 for r in range(world)]
        env = {"PCCL_ARRAYS_SECRET": secret} if secret else {"PCCL_ARRAYS_SECRET": ""}
        results = _procs.run_group(argvs, timeout, env=env)
    finally:
        master.stop()
    rows = []
    for i, size in enumerate(sizes):
        per_peer = [res["rows"][i] for res in results]
        slowest = [max(p["seconds"][k] for p in per_peer) for k in range(repeats)]
        rows.append({"bytes": size, "seconds": slowest, "correct": all(p["correct"] for p in per_peer)})
    return rows


def summarize(doc: dict) -> None:
    """Medians per (network, peers, size, mode), ratios to plain, and the goals."""
    table = {}
    for r in doc["runs"]:
        for row in r["rows"]:
            key = (r["network"], r["peers"], row["bytes"], r["mode"])
            table.setdefault(key, []).extend(row["seconds"])
    doc["table"] = []
    for (net, peers, size, mode), secs in sorted(table.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2],
                                                                                 MODES.index(kv[0][3]))):
        med = statistics.median(secs)
        plain_secs = table.get((net, peers, size, "plain"))
        plain = statistics.median(plain_secs) if plain_secs else float("nan")
        doc["table"].append({"network": net, "peers": peers, "bytes": size, "mode": mode, "samples": len(secs),
                             "median_s": med, "algbw_GBps": size / med / 1e9, "ratio_to_plain": plain / med,
                             "extra_latency_s": med - plain})
    for row in doc["table"]:
        if row["mode"] == "plain":
            continue
        if row["bytes"] <= 4 * KiB:
            doc["goals"].append({"met": row["extra_latency_s"] <= GOAL_LATENCY_S,
                                 "text": f"{row['network']} N={row['peers']} 4 KiB {row['mode']}: latency "
                                         f"+{row['extra_latency_s'] * 1e3:.3f} ms (goal <= +0.1 ms)"})
        elif row["bytes"] >= 64 * MiB or row["network"] != "loopback":
            goal = GOALS["loopback" if row["network"] == "loopback" else WAN_PROFILE][row["mode"]]
            doc["goals"].append({"met": row["ratio_to_plain"] >= goal,
                                 "text": f"{row['network']} N={row['peers']} {fmt_size(row['bytes'])} {row['mode']}: "
                                         f"{row['ratio_to_plain']:.2f} of plain algbw (goal >= {goal:.2f})"})
    for r in doc["runs"]:
        for row in r["rows"]:
            if not row["correct"]:
                doc["errors"].append(f"{r['network']} N={r['peers']} {r['mode']} {row['bytes']} B: wrong sum")


def report(doc: dict) -> None:
    print(f"\nAuthenticated all-reduce, {doc['machine']['cpu']} ({doc['machine']['cores']} cores, shared by every "
          f"peer); median of {doc['config']['rounds']} rounds x {doc['config']['repeats']} repeats")
    print(f"{'network':>10} {'N':>2} {'size':>9} {'mode':>10} {'median ms':>10} {'algbw GB/s':>11} {'vs plain':>9}")
    for r in doc["table"]:
        print(f"{r['network']:>10} {r['peers']:>2} {fmt_size(r['bytes']):>9} {r['mode']:>10} "
              f"{r['median_s'] * 1e3:>10.3f} {r['algbw_GBps']:>11.3f} {r['ratio_to_plain']:>9.2f}")
    print_footer(doc)


def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "security", quick="small sizes, 2 peers, no WAN (CI smoke test)")
    ap.add_argument("--sizes", type=parse_size, nargs="+", help="loopback sizes (default 4KiB 64MiB 256MiB)")
    ap.add_argument("--peers", type=int, nargs="+", help="peer counts (default 2 3)")
    ap.add_argument("--rounds", type=int, help="rounds of the three modes (default 2; 1 quick)")
    ap.add_argument("--repeats", type=int, help="timed repeats per group and size (default 5; 3 quick)")
    ap.add_argument("--piece-bytes", type=parse_size, default=0, help="the peers' piece_bytes (default: theirs)")
    ap.add_argument("--no-wan", action="store_true", help="loopback only")
    ap.add_argument("--wan-size", type=parse_size, default=24 * MiB, help="all-reduce size through the WAN relays")
    bench = Run.start(ap, argv)
    a = bench.args
    pa = import_pccl_arrays()
    sizes = a.sizes or ([4 * KiB, 1 * MiB] if a.quick else [4 * KiB, 64 * MiB, 256 * MiB])
    peers = a.peers or ([2] if a.quick else [2, 3])
    rounds, repeats = a.rounds or (1 if a.quick else 2), a.repeats or (3 if a.quick else 5)
    networks = [("loopback", "", sizes)] + ([] if a.quick or a.no_wan else [(WAN_PROFILE, WAN_PROFILE, [a.wan_size])])
    doc = {"benchmark": "security", "command": ["python", os.path.relpath(__file__), *bench.argv],
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
           "config": {"sizes": sizes, "peers": peers, "rounds": rounds, "repeats": repeats, "wan_profile": WAN_PROFILE,
                      "wan_size": a.wan_size, "piece_bytes": a.piece_bytes or "default"},
           "runs": [], "goals": [], "errors": [], "notes": [
               "all peers share this machine's cores; loopback figures are for an oversubscribed host, not a network"]}
    jobs = [(net, wan, szs, n, rnd) for rnd in range(rounds) for net, wan, szs in networks for n in peers]
    for i, (net, wan, szs, n, rnd) in enumerate(jobs):
        order = MODES if (rnd + n) % 2 == 0 else MODES[::-1]
        for mode in order:
            sys.stderr.write(f"\r[{i + 1}/{len(jobs)}] {net} N={n} round {rnd + 1}: {mode:<10}")
            sys.stderr.flush()
            try:
                rows = run_group(pa, mode, n, szs, repeats, wan, timeout=300, piece_bytes=a.piece_bytes)
            except Exception as e:  # reported, and the other groups go on
                doc["errors"].append(f"{net} N={n} {mode}: {str(e)[:1500]}")
                continue
            doc["runs"].append({"network": net, "peers": n, "mode": mode, "round": rnd, "rows": rows})
    sys.stderr.write("\r" + " " * 60 + "\r")
    summarize(doc)
    return bench.finish(doc, report)


if __name__ == "__main__":
    sys.exit(script_main(main, worker_main))
