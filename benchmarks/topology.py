"""What optimize_topology() buys on an emulated multi-region internet (docs/topology.md): all-reduce bandwidth with
an admission order that crosses regions at every hop, the same group after optimize_topology(), and a group
admitted in the best ring order found by brute force; plus the time the probes took.

Usage (from the repository root, in the environment scripts/setup.sh makes)::

    .venv/bin/python benchmarks/topology.py                 # 6 peers in 3 regions (layouts/three_regions.json)
    .venv/bin/python benchmarks/topology.py --links my.json # another layout (pccl_arrays.wan_regions format)
    .venv/bin/python benchmarks/topology.py --quick         # CI smoke test: small arrays, one repeat

How it measures. Peers join one by one (each waits its turn), so the admission order, which is the ring order
until someone optimizes, is the one chosen: round-robin over the regions, so that every hop of the ring crosses
regions. Every peer listens on its own loopback address behind its relay (pccl_arrays.wan_regions), so every
data byte crosses the emulated path of its pair of peers. Per repeat a 4-byte all-reduce lines the peers up,
then one all-reduce of ``--size`` bytes (float32) is timed; the slowest peer's time counts; algbw = bytes / time.
The same group then calls optimize_topology() (its time on the slowest peer is the probe time) and measures
again. A second group is admitted in the best order by brute force over every ring of the layout's nominal
link matrix, and measures the same way. All peers and relays share this machine's cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
from _common import (Run, benchmark_parser, cpu_model, fmt_size, import_pccl_arrays, join_group,  # noqa: E402
                     parse_size, print_footer, script_main)

MiB = 1 << 20
GOAL_VS_BEST, GOAL_VS_CROSSING, GOAL_PROBE_S = 0.90, 2.0, 5.0
STAGGER_S = 0.25  # between joins, so that the admission order is the planned one


# -- worker side ---------------------------------------------------------------------------------------------------
def measure(c, size: int, repeats: int) -> list[float]:
    import numpy as np

    n = size // 4
    x = np.ones(n, np.float32)
    out = np.empty_like(x)
    c.all_reduce(x[:1024], out=out[:1024])  # opens the connections
    times = []
    for _ in range(repeats):
        c.all_reduce(np.zeros(1, np.float32))
        t0 = time.perf_counter()
        c.all_reduce(x, out=out)
        times.append(time.perf_counter() - t0)
    assert np.all(out == c.last_info.world_size), "wrong sum"
    return times


def worker(a) -> dict:
    import pccl_arrays as pa
    from pccl_arrays.wan_regions import Regions

    net = Regions(a.links)
    relay = net.relay(a.slot).start()
    time.sleep(a.turn * STAGGER_S)  # join in the planned order
    c = pa.Communicator(a.master, connections=4, listen=f"{net.host(a.slot)}:0", advertise=relay.address,
                        data_timeout=120.0)
    relay.follow(c, net.host(a.slot))
    join_group(c, a.world)
    out = {"slot": a.slot, "peer_id": c.peer_id, "ring_before": c.ring(), "before": measure(c, a.size, a.repeats)}
    if a.optimize:
        t0 = time.perf_counter()
        out["measured"] = c.optimize_topology(timeout=300)
        out["probe_s"] = time.perf_counter() - t0
        out["ring_after"] = c.ring()
        out["after"] = measure(c, a.size, a.repeats)
    c.close()
    relay.stop()
    return out


def worker_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="topology.py _worker")
    for name in ("master", "links"):
        ap.add_argument("--" + name, required=True)
    for name in ("slot", "turn", "world", "size", "repeats"):
        ap.add_argument("--" + name, type=int, required=True)
    ap.add_argument("--optimize", action="store_true")
    _procs.report(worker(ap.parse_args(argv)))
    return 0


# -- parent side ---------------------------------------------------------------------------------------------------
def crossing_order(net) -> list[int]:
    """Round-robin over the regions, so that every hop of the ring crosses regions (when no region holds most
    peers), with the regions in the order whose crossings are the slowest: the unlucky admission order."""
    by_region: dict[str, list[int]] = {}
    for p, r in enumerate(net.region_of):
        by_region.setdefault(r, []).append(p)
    bw, lat = net.matrix()
    worst = None
    for regions in itertools.permutations(by_region):
        queues = [list(by_region[r]) for r in regions]
        order = []
        while any(queues):
            for q in queues:
                if q:
                    order.append(q.pop(0))
        key = ring_score(bw, lat, order)[0]
        if worst is None or key < worst[0]:
            worst = (key, order)
    return worst[1]


def ring_score(bw, lat, order):
    edges = [(order[k], order[(k + 1) % len(order)]) for k in range(len(order))]
    low = min(bw[i][j] for i, j in edges)
    return low, sum(bw[i][j] == low for i, j in edges), sum(lat[i][j] for i, j in edges)


def brute_force(net) -> list[int]:
    bw, lat = net.matrix()
    best = None
    for perm in itertools.permutations(range(1, net.peers)):
        order = [0, *perm]
        s = ring_score(bw, lat, order)
        key = (-s[0], s[1], s[2])
        if best is None or key < best[0]:
            best = (key, order)
    return best[1]


def run_group(pa, links: str, order: list[int], size: int, repeats: int, optimize: bool, timeout: float) -> list[dict]:
    master = pa.Master("127.0.0.1:0", peer_timeout=30.0).start()
    try:
        argvs = [[__file__, "_worker", "--master", master.address, "--links", links, "--slot", str(slot),
                  "--turn", str(turn), "--world", str(len(order)), "--size", str(size), "--repeats", str(repeats)]
                 + (["--optimize"] if optimize else []) for turn, slot in enumerate(order)]
        results = _procs.run_group(argvs, timeout)
        stats = master.stats()
    finally:
        master.stop()
    for r in results:
        r["master_links_probed"] = stats["links_probed"]
    return results


def slots_of(results: list[dict], ring: list[int]) -> list[int]:
    by_id = {r["peer_id"]: r["slot"] for r in results}
    return [by_id[i] for i in ring]


def summarize(doc: dict, size: int) -> None:
    def algbw(results, key):
        slowest = [max(r[key][k] for r in results) for k in range(len(results[0][key]))]
        return size / min(slowest) / 1e6, size / (sum(slowest) / len(slowest)) / 1e6

    a, b = doc["groups"]["crossing"], doc["groups"]["best"]
    rows = {"admission order (crosses at every hop)": (a, "before", "ring_before"),
            "after optimize_topology()": (a, "after", "ring_after"),
            "best ring (brute force, admitted in that order)": (b, "before", "ring_before")}
    doc["rows"] = []
    for label, (res, key, ring_key) in rows.items():
        best_MBps, mean_MBps = algbw(res, key)
        doc["rows"].append({"ring": label, "order": slots_of(res, res[0][ring_key]), "algbw_MBps": best_MBps,
                            "algbw_mean_MBps": mean_MBps, "seconds": [max(r[key][k] for r in res)
                                                                     for k in range(len(res[0][key]))]})
    crossing, optimized, best = (r["algbw_MBps"] for r in doc["rows"])
    doc["probe_s"] = max(r["probe_s"] for r in a)
    doc["links_probed"] = a[0]["master_links_probed"]
    doc["goals"] += [
        {"met": optimized >= GOAL_VS_BEST * best,
         "text": f"optimized ring {optimized:.2f} MB/s = {optimized / best:.2f} of the best ring's {best:.2f} (goal >= 0.90)"},
        {"met": optimized >= GOAL_VS_CROSSING * crossing,
         "text": f"optimized ring {optimized / crossing:.2f}x the crossing order's {crossing:.2f} MB/s (goal >= 2x)"},
        {"met": doc["probe_s"] <= GOAL_PROBE_S,
         "text": f"probing the full mesh of {len(a)} peers ({doc['links_probed']} links): {doc['probe_s']:.2f} s "
                 f"(goal <= 5 s; PCCL's method: 10 s x {doc['links_probed']} links)"}]


def report(doc: dict) -> None:
    print(f"\nRing order on an emulated multi-region network ({doc['config']['links']}), {doc['config']['peers']} "
          f"peers, {fmt_size(doc['config']['size'])} float32 all-reduce, {doc['machine']['cores']} cores shared")
    print(f"{'ring':<48} {'order (layout slots)':<22} {'algbw MB/s':>11}")
    for r in doc["rows"]:
        print(f"{r['ring']:<48} {str(r['order']):<22} {r['algbw_MBps']:>11.2f}")
    print(f"probe time {doc['probe_s']:.2f} s for {doc['links_probed']} links")
    print_footer(doc)


def plot(doc: dict, net, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    import math

    bw, _ = net.matrix()
    n = net.peers
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    mat = [[bw[i][j] * 8 / 1e6 if i != j else float("nan") for j in range(n)] for i in range(n)]
    im = left.imshow(mat, cmap="viridis")
    labels = [f"{p} {net.region_of[p]}" for p in range(n)]
    left.set_xticks(range(n), labels, rotation=45)
    left.set_yticks(range(n), labels)
    left.set_xlabel("to")
    left.set_ylabel("from")
    left.set_title("emulated link bandwidth (Mbit/s)")
    fig.colorbar(im, ax=left)
    pos = {p: (math.cos(2 * math.pi * p / n), math.sin(2 * math.pi * p / n)) for p in range(n)}
    colors = {"admission order (crosses at every hop)": "tab:red", "after optimize_topology()": "tab:green"}
    for row in doc["rows"]:
        if row["ring"] not in colors:
            continue
        order = row["order"]
        for k in range(n):
            (x0, y0), (x1, y1) = pos[order[k]], pos[order[(k + 1) % n]]
            right.annotate("", (x1, y1), (x0, y0), arrowprops={"arrowstyle": "->", "color": colors[row["ring"]],
                                                                "alpha": 0.7, "lw": 2})
        right.plot([], [], color=colors[row["ring"]], label=f"{row['ring']}: {row['algbw_MBps']:.1f} MB/s")
    for p, (x, y) in pos.items():
        right.text(x, y, labels[p], ha="center", va="center", bbox={"boxstyle": "round", "fc": "white"})
    right.set_xlim(-1.4, 1.4)
    right.set_ylim(-1.4, 1.4)
    right.axis("off")
    right.legend(loc="lower center", fontsize=8, bbox_to_anchor=(0.5, -0.15))
    right.set_title("ring order")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"plot: {path}"


def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "topology", quick="small arrays, one repeat (CI smoke test)")
    ap.add_argument("--links", default=str(HERE / "layouts" / "three_regions.json"), help="a wan_regions layout")
    ap.add_argument("--size", type=parse_size, help="all-reduce bytes (default 8 MiB; 1 MiB quick)")
    ap.add_argument("--repeats", type=int, help="timed all-reduces per ring (default 2; 1 quick)")
    ap.add_argument("--plot", default=None, help="PNG path (default: next to --out)")
    bench = Run.start(ap, argv)
    a = bench.args
    pa = import_pccl_arrays()
    from pccl_arrays.wan_regions import Regions

    try:
        net = Regions(a.links)
    except (OSError, ValueError) as e:  # a missing file, bad JSON, a bad layout: one line
        ap.error(f"--links {a.links}: {e}")
    size, repeats = a.size or (1 * MiB if a.quick else 8 * MiB), a.repeats or (1 if a.quick else 2)
    crossing, best = crossing_order(net), brute_force(net)
    doc = {"benchmark": "topology", "command": ["python", os.path.relpath(__file__), *bench.argv],
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count()},
           "config": {"links": os.path.relpath(a.links), "layout": json.loads(Path(a.links).read_text()),
                      "peers": net.peers, "size": size, "repeats": repeats, "crossing_order": crossing,
                      "best_order": best},
           "groups": {}, "goals": [], "errors": [], "notes": [
               "every peer, relay and the master share this machine's cores; speeds are the layout's emulated ones"]}
    timeout = 120 + 40 * repeats * size / MiB
    for i, (name, order, optimize) in enumerate((("crossing", crossing, True), ("best", best, False))):
        sys.stderr.write(f"\r[{i + 1}/2] group admitted in the {name} order ({order})...")
        sys.stderr.flush()
        doc["groups"][name] = run_group(pa, a.links, order, size, repeats, optimize, timeout)
    sys.stderr.write("\r" + " " * 80 + "\r")
    summarize(doc, size)
    out = Path(a.out)
    doc["notes"].append(plot(doc, net, Path(a.plot) if a.plot else out.with_suffix(".png")))
    return bench.finish(doc, report)


if __name__ == "__main__":
    sys.exit(script_main(main, worker_main))
