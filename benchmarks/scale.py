"""How the control plane and small all-reduces scale with the number of peers: 2 ... 32 peer processes on this
machine, small arrays (4 KiB, 1 MiB), against the ring's cost model of 2(N - 1) hops.

Usage (from the repository root, in the environment scripts/setup.sh makes)::

    .venv/bin/python benchmarks/scale.py                 # N = 2, 4, 8, 16, 32: a few minutes
    .venv/bin/python benchmarks/scale.py --quick         # CI smoke test: N = 2, 4

What it measures, per N (one group of N peer processes and a master in this process):
* admission: from the first peer's connect() until every peer is in the group (they join together);
* update_topology(): its latency on every peer when nobody is pending (the slowest peer per repeat);
* all-reduce latency of 4 KiB and 1 MiB float32 (a 4-byte all-reduce lines the peers up; the slowest peer);
* the master's CPU per collective: its thread's CPU time over the whole run (Master.stats()["cpu_seconds"])
  divided by the collectives it coordinated (committed operations and topology updates).
Then it fits the 4 KiB latency to a + b * 2(N - 1) (the ring's hop count) and reports each N's residual.
Apart from the processes, the master's own work per all-reduce without sockets (``_core_testing.master_cost``: a
MasterState with N admitted peers handling N OP_STARTs and N OP_DONEs per operation) for N = 2 ... 256: time
and bytes of its answers per operation, and their growth per doubling of N, which must stay near 2 (linear).
All
peers share this machine's cores: with N >> cores the figures are those of an oversubscribed host; the ratios
between N in one run are what it is for.
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
from _common import (Run, benchmark_parser, cpu_model, fmt_size, import_pccl_arrays, join_group,  # noqa: E402
                     print_footer, script_main)

KiB, MiB = 1 << 10, 1 << 20
SIZES = [4 * KiB, 1 * MiB]


# -- worker side ---------------------------------------------------------------------------------------------------
def worker(a) -> dict:
    import numpy as np
    import pccl_arrays as pa

    c = pa.Communicator(a.master, connections=1, listen="127.0.0.1:0", data_timeout=120.0)
    t0 = time.time()
    join_group(c, a.world, timeout=300)
    t_in = time.time()
    topo = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        c.update_topology()
        topo.append(time.perf_counter() - t)
    tiny = np.zeros(1, np.float32)
    lat = {}
    for size in SIZES:
        x, out = np.ones(size // 4, np.float32), np.empty(size // 4, np.float32)
        c.all_reduce(x, out=out)
        times = []
        for _ in range(a.repeats):
            c.all_reduce(tiny)
            t = time.perf_counter()
            c.all_reduce(x, out=out)
            times.append(time.perf_counter() - t)
        assert np.all(out == a.world), "wrong sum"
        lat[str(size)] = times
    c.close()
    return {"connect_at": t0, "in_at": t_in, "topology": topo, "latency": lat}


def worker_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="scale.py _worker")
    ap.add_argument("--master", required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--repeats", type=int, required=True)
    _procs.report(worker(ap.parse_args(argv)))
    return 0


# -- parent side ---------------------------------------------------------------------------------------------------
def run(pa, n: int, repeats: int) -> dict:
    master = pa.Master("127.0.0.1:0", peer_timeout=60.0).start()
    try:
        argvs = [[__file__, "_worker", "--master", master.address, "--world", str(n), "--repeats", str(repeats)]
                 for _ in range(n)]
        results = _procs.run_group(argvs, timeout=120 + 20 * n)
        stats = master.stats()
    finally:
        master.stop()
    slowest = lambda key, sub=None: [max((r[key][sub] if sub else r[key])[k] for r in results)  # noqa: E731
                                     for k in range(repeats)]
    ops = stats["ops_committed"] + stats["topology_updates"]
    return {"peers": n, "admission_s": max(r["in_at"] for r in results) - min(r["connect_at"] for r in results),
            "update_topology_s": statistics.median(slowest("topology")),
            "latency_s": {s: statistics.median(slowest("latency", str(s))) for s in SIZES},
            "master_cpu_per_op_us": stats["cpu_seconds"] / max(ops, 1) * 1e6, "collectives": ops}


def fit(rows: list[dict]) -> dict:
    """Least squares of the 4 KiB latency on the hop count 2(N - 1): a + b * hops."""
    hops = [2 * (r["peers"] - 1) for r in rows]
    lat = [r["latency_s"][4 * KiB] for r in rows]
    if len(rows) < 2:
        return {}
    mh, ml = statistics.mean(hops), statistics.mean(lat)
    b = sum((h - mh) * (y - ml) for h, y in zip(hops, lat)) / max(sum((h - mh) ** 2 for h in hops), 1e-12)
    a = ml - b * mh
    for r, h, y in zip(rows, hops, lat):
        r["model_s"] = a + b * h
        r["residual"] = y / r["model_s"] - 1 if r["model_s"] > 0 else float("nan")
    return {"a_s": a, "per_hop_s": b}


MASTER_PEERS = [2, 4, 8, 16, 32, 64, 128, 256]


def master_logic(pa, peers: list[int]) -> list[dict]:
    """The master's work per operation without sockets, per N; growth = value(N) / value(N / 2)."""
    rows = []
    for n in peers:
        best = None
        for _ in range(3):
            got = pa._core_testing.master_cost(n, max(20, 4000 // n))
            best = got if best is None or got["seconds_per_op"] < best["seconds_per_op"] else best
        rows.append({"peers": n, "us_per_op": best["seconds_per_op"] * 1e6, "bytes_per_op": best["bytes_per_op"]})
    for prev, r in zip(rows, rows[1:]):
        step = r["peers"] / prev["peers"]
        r["time_growth"] = r["us_per_op"] / prev["us_per_op"] / step * 2
        r["bytes_growth"] = r["bytes_per_op"] / prev["bytes_per_op"] / step * 2
    return rows


def report(doc: dict) -> None:
    print(f"\nScaling with peers ({doc['machine']['cpu']}, {doc['machine']['cores']} cores shared by all peers), "
          f"median of {doc['config']['repeats']} repeats, slowest peer")
    print(f"{'N':>3} {'admit s':>8} {'topo ms':>8} {'4 KiB ms':>9} {'model ms':>9} {'1 MiB ms':>9} {'master us/op':>13}")
    for r in doc["rows"]:
        print(f"{r['peers']:>3} {r['admission_s']:>8.2f} {r['update_topology_s'] * 1e3:>8.2f} "
              f"{r['latency_s'][4 * KiB] * 1e3:>9.3f} {r.get('model_s', float('nan')) * 1e3:>9.3f} "
              f"{r['latency_s'][1 * MiB] * 1e3:>9.2f} {r['master_cpu_per_op_us']:>13.1f}")
    if doc.get("master_logic"):
        print("\nThe master's own work per all-reduce, no sockets (growth = x per doubling of N; linear = 2):")
        print(f"{'N':>4} {'us/op':>9} {'us/op/peer':>11} {'growth':>7} {'bytes/op':>10} {'growth':>7}")
        for r in doc["master_logic"]:
            print(f"{r['peers']:>4} {r['us_per_op']:>9.1f} {r['us_per_op'] / r['peers']:>11.2f} "
                  f"{r.get('time_growth', float('nan')):>7.2f} {r['bytes_per_op']:>10.0f} "
                  f"{r.get('bytes_growth', float('nan')):>7.2f}")
    if doc["fit"]:
        print(f"fit: 4 KiB latency = {doc['fit']['a_s'] * 1e3:.3f} ms + {doc['fit']['per_hop_s'] * 1e6:.1f} us x "
              f"2(N - 1) hops")
    print_footer(doc)


def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "scale", quick="N = 2, 4 and 5 repeats (CI smoke test)")
    ap.add_argument("--peers", type=int, nargs="+", help="group sizes (default 2 4 8 16 32)")
    ap.add_argument("--repeats", type=int, help="repeats per measure (default 15; 5 quick)")
    bench = Run.start(ap, argv)
    a = bench.args
    pa = import_pccl_arrays()
    import pccl_arrays._core_testing  # noqa: F401 (pa._core_testing.master_cost)
    peers = a.peers or ([2, 4] if a.quick else [2, 4, 8, 16, 32])
    repeats = a.repeats or (5 if a.quick else 15)
    doc = {"benchmark": "scale", "command": ["python", os.path.relpath(__file__), *bench.argv],
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
           "config": {"peers": peers, "repeats": repeats, "sizes": [fmt_size(s) for s in SIZES]},
           "rows": [], "goals": [], "errors": [], "notes": [
               "all peers share this machine's cores: with N above the core count, latencies include waiting "
               "for a core; compare N against N in one run"]}
    for i, n in enumerate(peers):
        sys.stderr.write(f"\r[{i + 1}/{len(peers)}] {n} peers...   ")
        sys.stderr.flush()
        try:
            doc["rows"].append(run(pa, n, repeats))
        except Exception as e:  # reported; the other sizes go on
            doc["errors"].append(f"N={n}: {str(e)[:1500]}")
    sys.stderr.write("\r" + " " * 40 + "\r")
    doc["master_logic"] = master_logic(pa, MASTER_PEERS[:3] if a.quick else MASTER_PEERS)
    doc["fit"] = fit(doc["rows"])
    for r in doc["rows"]:
        r["latency_s"] = {int(k): v for k, v in r["latency_s"].items()}
    return bench.finish(doc, report)


if __name__ == "__main__":
    sys.exit(script_main(main, worker_main))
