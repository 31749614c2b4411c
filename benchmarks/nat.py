"""Peers behind NAT (docs/nat.md): all-reduce bandwidth through the emulated WAN (pccl_arrays.wan) of N peers
with none, one, N/2 and more than half of them outbound-only (``Communicator(listen=None)``: no data port, every
connection dialed by the peer itself), all in one run so that the ratios to the all-reachable group compare.

    PYTHONPATH=. python benchmarks/nat.py --quick       # 4 peers, ~1 s operations, 2 repeats, one round (~30 s)
    PYTHONPATH=. python benchmarks/nat.py               # 4 peers, ~2 s operations, 3 repeats, two rounds (~2 min)
    PYTHONPATH=. python benchmarks/nat.py --peers 6 --profile transatlantic --connections 8

The cases (k = the number of outbound-only peers; each case is its own group: a master, here in this process,
and N peer processes on 127.0.0.1):

    all reachable       k = 0: every peer behind its own wan.Relay, whose address it advertises
    1 outbound-only     k = 1
    N/2 outbound-only   k = N/2: the master orders the ring so that no two outbound-only peers are neighbours,
                        so no connection needs a relay
    relay forced        k = N/2 + 1: more than half, so 2k - N ring edges join two outbound-only peers and go
                        through a reachable peer's data port (the pair's relay; cpp/transport/dialing.cpp)

How the emulation composes with NAT and relays. A reachable peer sits behind its wan.Relay; an outbound-only
one has no relay of its own (it has no data port to put one in front of), yet every byte it exchanges crosses an
emulated path, since it dials the other peers' relays and a relay shapes both directions (each with its own
link bucket). A ring edge u -> v crosses: v's relay forward when v is reachable (as in the all-reachable group);
u's relay backward when only u is reachable (v called u, and u's data flows back down v's connection); and,
between two outbound-only peers, the relay peer R's relay forward (u's half of the pipe) and then backward (v's
half): a relayed edge crosses two emulated paths and the relay's link twice, where it shares R's link cap L with
R's own edges and any other pair R relays. The model column is the ring's rate from that sharing alone:
each edge gets min(k_conn c, L / edges on its busiest link direction), the ring runs at its slowest edge.

How it measures. Per case, every peer joins (the outbound-only ones with listen=None), runs one all-reduce of
the whole array (opens every connection, relayed ones too) and then --repeats timed ones, each after a 4-byte
all-reduce that lines the peers up (benchmarks/_common.timed_calls); the slowest peer's time counts; algbw =
float32 array bytes / seconds, the median over repeats (and rounds: cases take turns, the order reversed every
other round, so drift of a busy machine lands on all of them). Arrays hold small integers (i % 7 + rank), so
every result is checked exact. The array size makes one operation last about --seconds at the profile's bound
min(k_conn c, L) (k_conn: --connections, the library's default 4). Per case the JSON document records the ring
(ranks in ring order, which are outbound-only), the master's relayed_edges (polled while the group runs),
Communicator.relay_stats() of every peer (relay_bytes on the reachable ones, relayed_connections) and the bytes
each wan relay delivered in each direction. Goal (the issue's): >= 95 % of the all-reachable algbw for
0 < k <= N/2; for the forced relay the ratio is the reported cost. All peers and relays share this machine's
cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _procs  # noqa: E402
from _common import (Run, benchmark_parser, cpu_model, expected_sum, import_pccl_arrays,  # noqa: E402
                     join_worker, parse_size, pattern, print_footer, script_main, timed_calls)

MiB = 1 << 20
PIECE = 64 * 1024  # a 1 MiB piece would take a quarter second to fill a 4 MB/s connection's pipeline
GOAL_RATIO = 0.95  # algbw with 0 < k <= N/2 outbound-only peers, against all reachable
GOAL_BASELINE = 0.80  # the all-reachable group's wire rate against min(k c, L): the emulation is not CPU-bound
LAN_SIZE = 64 * MiB  # a profile with no caps has no bound to size by


def case_list(world: int) -> list[tuple[str, str, int]]:
    """(key, label, outbound-only peers) of each case; with 3 peers N/2 = 1 and that case is the 1-peer one."""
    cases = [("all_reachable", "all reachable", 0), ("one_outbound", "1 outbound-only", 1)]
    if world // 2 > 1:
        cases.append(("half_outbound", f"N/2 = {world // 2} outbound-only", world // 2))
    cases.append(("relay_forced", f"relay forced ({world // 2 + 1} outbound-only)", world // 2 + 1))
    return cases


def outbound_ranks(world: int, k: int) -> list[int]:
    """The last k ranks are the outbound-only ones (the ring order is the master's anyway)."""
    return list(range(world - k, world))


# -- worker side ---------------------------------------------------------------------------------------------------
def worker(a) -> dict:
    import numpy as np

    kw = {"listen": None} if a.outbound else {}
    c, relay = join_worker(a.master, a.world, None if a.outbound else a.profile, timeout=60,
                           connections=a.connections, piece_bytes=a.piece_bytes, **kw)
    n = a.size // 4
    x, out, expected = pattern(n, a.rank), np.empty(n, np.float32), expected_sum(n, a.world)
    tiny = np.zeros(1, np.float32)
    c.all_reduce(x, out=out)  # opens every connection (relayed ones too) and faults the pages in
    exact = [bool(np.array_equal(out, expected))]
    core_seconds, bytes_sent = [], []

    def reset():  # untimed: checks the previous repeat's result, then spoils the output
        if len(core_seconds) == len(exact):
            exact.append(bool(np.array_equal(out, expected)))
        out.fill(np.nan)

    def run():
        c.all_reduce(x, out=out)
        core_seconds.append(c.last_info.seconds)
        bytes_sent.append(c.last_info.bytes_sent)

    times = timed_calls(a.repeats, reset, lambda: c.all_reduce(tiny), run)
    exact.append(bool(np.array_equal(out, expected)))
    result = {"rank": a.rank, "peer_id": c.peer_id, "inbound": c.inbound, "declared_outbound": bool(a.outbound),
              "ring": c.ring(), "world": c.world_size, "seconds": times, "core_seconds": core_seconds,
              "bytes_sent": bytes_sent, "exact": exact, "relay": dict(c.relay_stats()),
              "wan_bytes": dict(relay.bytes) if relay else None}
    c.all_reduce(tiny)  # nobody leaves before everyone has read its figures
    c.close()
    if relay:
        relay.stop()
    return result


def worker_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="nat.py _worker")
    ap.add_argument("--master", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--outbound", type=int, default=0)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--piece-bytes", type=int, default=PIECE)
    _procs.report(worker(ap.parse_args(argv)))
    return 0


# -- parent side ---------------------------------------------------------------------------------------------------
def bound_Bps(profile, k: int):
    """A peer's wire bound min(k c, L) (None: the profile has no caps)."""
    caps = [v for v in (k * profile.conn_Bps if profile.conn_Bps else None, profile.link_Bps) if v]
    return min(caps) if caps else None


def size_for(profile, k: int, world: int, seconds: float) -> int:
    """Bytes of an all-reduce that takes about `seconds` at the bound (as in wan.py), a multiple of 4 KiB."""
    bound = bound_Bps(profile, k)
    if bound is None:
        return LAN_SIZE
    s = bound * seconds * world / (2 * (world - 1))
    s = max(s, k * 256 * 1024 + 4096)
    return int(s) // 4096 * 4096


def relay_for(a: int, b: int, reachable_ids: list[int]):
    """The peer id that relays between outbound-only peers a and b: the core's choice (ConnPool::relay_for in
    cpp/transport/dialing.cpp), a hash of the pair over the reachable peers in id order; None: the master."""
    m = (1 << 64) - 1
    cands = sorted(i for i in reachable_ids if i not in (a, b))
    if not cands:
        return None
    lo, hi = min(a, b), max(a, b)
    h = ((lo * 0x9E3779B97F4A7C15) & m) ^ ((hi + 0x632BE59BD9B4E019 + ((lo << 6) & m) + (lo >> 2)) & m)
    h ^= h >> 29
    return cands[h % len(cands)]


def edge_paths(ring_ids: list[int], inbound: dict, reachable_ids: list[int]) -> list[list[tuple[int, str]]]:
    """Per ring edge u -> v, the emulated link directions its bytes cross: (peer id whose wan relay, direction)."""
    paths = []
    for i, u in enumerate(ring_ids):
        v = ring_ids[(i + 1) % len(ring_ids)]
        if inbound[v]:
            paths.append([(v, "forward")])
        elif inbound[u]:
            paths.append([(u, "backward")])
        else:
            r = relay_for(u, v, reachable_ids)
            paths.append([] if r is None else [(r, "forward"), (r, "backward")])  # None: the master's relay
    return paths


def model_rate(paths, profile, k: int):
    """The ring's per-edge rate if every link direction's cap L is shared evenly by the edges crossing it."""
    per_conn = k * profile.conn_Bps if profile.conn_Bps else float("inf")
    load: dict = {}
    for p in paths:
        for link in p:
            load[link] = load.get(link, 0) + 1
    L = profile.link_Bps or float("inf")
    rate = min(min([per_conn] + [L / load[link] for link in p]) for p in paths)
    return None if rate == float("inf") else rate


class MasterWatch:
    """Polls the master's stats while a group runs: the most relayed edges and outbound-only peers seen (the
    figures describe the current rings, which end when the peers leave), and the master's relay counters."""

    def __init__(self, master, every: float = 0.05):
        self.master, self.every, self.seen = master, every, {"relayed_edges": 0, "outbound_only": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="nat-master-watch")
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self._read()
            self._stop.wait(self.every)

    def _read(self):
        s = self.master.stats()
        for key in ("relayed_edges", "outbound_only"):
            self.seen[key] = max(self.seen[key], s.get(key, 0))
        self.seen["master_relay_pipes"] = s.get("master_relay_pipes", 0)
        self.seen["master_relay_bytes"] = s.get("master_relay_bytes", 0)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._read()
        return dict(self.seen)


def run_case(pa, profile, world: int, k: int, size: int, repeats: int, connections: int, seconds: float) -> dict:
    """One group with k outbound-only peers: the workers' results and what the master saw."""
    outs = set(outbound_ranks(world, k))
    master = pa.Master("127.0.0.1:0").start()
    watch = MasterWatch(master)
    try:
        argvs = [[__file__, "_worker", "--master", master.address, "--rank", str(r), "--world", str(world),
                  "--profile", profile.name, "--outbound", str(int(r in outs)), "--size", str(size),
                  "--repeats", str(repeats), "--connections", str(connections), "--piece-bytes", str(PIECE)]
                 for r in range(world)]
        results = _procs.run_group(argvs, timeout=90 + 8 * seconds * (repeats + 1))
    finally:
        seen = watch.stop()
        master.stop()
    return {"results": results, "master": seen}


def summarize_run(key: str, label: str, k: int, rnd: int, raw: dict, profile, world: int, size: int,
                  connections: int, errors: list) -> dict:
    """One group's row: ring, reachability, relays, times; inconsistencies go to `errors`."""
    res = sorted(raw["results"], key=lambda r: r["rank"])
    rank_of = {r["peer_id"]: r["rank"] for r in res}
    inbound = {r["peer_id"]: r["inbound"] for r in res}
    ring_ids = res[0]["ring"]
    where = f"{label}, round {rnd + 1}"
    if any(r["ring"] != ring_ids for r in res) or sorted(ring_ids) != sorted(rank_of):
        errors.append(f"{where}: the peers disagree on the ring: {[r['ring'] for r in res]}")
    for r in res:
        if r["inbound"] == r["declared_outbound"]:
            errors.append(f"{where}: rank {r['rank']} declared outbound-only {r['declared_outbound']} but "
                          f"Communicator.inbound is {r['inbound']}")
        if r["world"] != world:
            errors.append(f"{where}: rank {r['rank']} ran in a group of {r['world']}, not {world}")
    ring = [rank_of.get(i, -1) for i in ring_ids]
    n = len(ring_ids)
    nat_neighbours = sum(1 for i in range(n) if not inbound[ring_ids[i]] and not inbound[ring_ids[(i + 1) % n]])
    want_relayed = max(0, 2 * k - world)
    master = raw["master"]
    if nat_neighbours != want_relayed or master["relayed_edges"] != want_relayed:
        errors.append(f"{where}: {nat_neighbours} ring edges between outbound-only peers (master: "
                      f"{master['relayed_edges']} relayed edges), the fewest possible is {want_relayed}")
    if not all(all(r["exact"]) for r in res):
        errors.append(f"{where}: a wrong all-reduce result on rank(s) "
                      f"{[r['rank'] for r in res if not all(r['exact'])]}")
    repeats = len(res[0]["seconds"])
    slowest = [max(r["seconds"][i] for r in res) for i in range(repeats)]
    sent = [statistics.mean(r["bytes_sent"][i] for r in res) for i in range(repeats)]
    reachable_ids = sorted(i for i, v in inbound.items() if v)
    paths = edge_paths(ring_ids, inbound, reachable_ids)
    relays_predicted = sorted({rank_of[p[0][0]] for p in paths if len(p) == 2})
    relays_seen = sorted(r["rank"] for r in res if r["relay"].get("relay_pipes", 0) > 0)
    rate = model_rate(paths, profile, connections)
    bound = bound_Bps(profile, connections)
    return {
        "case": key, "label": label, "round": rnd, "outbound_only": k, "outbound_ranks": outbound_ranks(world, k),
        "ring": ring, "ring_text": " ".join(f"{r}{'*' if not inbound[i] else ''}" for r, i in zip(ring, ring_ids)),
        "ring_peer_ids": ring_ids, "nat_neighbours": nat_neighbours, "relayed_edges": master["relayed_edges"],
        "master_outbound_only": master["outbound_only"], "master_relay_pipes": master.get("master_relay_pipes", 0),
        "master_relay_bytes": master.get("master_relay_bytes", 0),
        "exact": all(all(r["exact"]) for r in res), "bytes": size, "seconds": slowest,
        "core_seconds": [max(r["core_seconds"][i] for r in res) for i in range(repeats)],
        "algbw_MBps": [size / s / 1e6 for s in slowest], "wire_MBps": [b / s / 1e6 for b, s in zip(sent, slowest)],
        "relay": {
            "relay_bytes": {str(r["rank"]): r["relay"].get("relay_bytes", 0) for r in res if r["inbound"]},
            "relay_pipes": {str(r["rank"]): r["relay"].get("relay_pipes", 0) for r in res if r["inbound"]},
            "relayed_connections": {str(r["rank"]): r["relay"].get("relayed_connections", 0) for r in res},
            "via_master": sum(r["relay"].get("via_master", 0) for r in res),
            "relays_predicted": relays_predicted, "relays_seen": relays_seen,
        },
        "wan_bytes": {str(r["rank"]): r["wan_bytes"] for r in res if r["wan_bytes"]},
        "edge_paths": [[[rank_of[p], d] for p, d in path] for path in paths],
        "model_edge_MBps": None if rate is None or relays_predicted != relays_seen else rate / 1e6,
        "bound_MBps": None if bound is None else bound / 1e6,
    }


def evaluate(doc: dict) -> None:
    """Pools the rounds per case, ratios to all reachable, and the goals (recorded, never failing the run)."""
    world = doc["config"]["peers"]
    doc["cases"] = []
    for key, label, k in case_list(world):
        runs = [r for r in doc["runs"] if r["case"] == key]
        if not runs:
            continue
        algbw = [v for r in runs for v in r["algbw_MBps"]]
        wire = [v for r in runs for v in r["wire_MBps"]]
        last = runs[-1]
        relay_bytes = {p: sum(r["relay"]["relay_bytes"].get(p, 0) for r in runs) for p in last["relay"]["relay_bytes"]}
        relayed_conns = {p: sum(r["relay"]["relayed_connections"].get(p, 0) for r in runs)
                         for p in last["relay"]["relayed_connections"]}
        models = [r["model_edge_MBps"] for r in runs]
        doc["cases"].append({
            "case": key, "label": label, "outbound_only": k, "rounds": len(runs), "samples": len(algbw),
            "rings": [r["ring_text"] for r in runs], "relayed_edges": max(r["relayed_edges"] for r in runs),
            "nat_neighbours": max(r["nat_neighbours"] for r in runs), "exact": all(r["exact"] for r in runs),
            "bytes": last["bytes"], "algbw_MBps": statistics.median(algbw), "algbw_min_MBps": min(algbw),
            "algbw_max_MBps": max(algbw), "wire_MBps": statistics.median(wire), "bound_MBps": last["bound_MBps"],
            "relay_bytes": relay_bytes, "relayed_connections": relayed_conns,
            "via_master": sum(r["relay"]["via_master"] for r in runs),
            "master_relay_bytes": sum(r["master_relay_bytes"] for r in runs),
            "model_edge_MBps": None if None in models else min(models),
            "ratio": None, "model_ratio": None, "goal": None, "goal_met": None})
    base = next((c for c in doc["cases"] if c["case"] == "all_reachable"), None)
    if not base:
        return
    for c in doc["cases"]:
        c["ratio"] = c["algbw_MBps"] / base["algbw_MBps"]
        if c["model_edge_MBps"] is not None and base["model_edge_MBps"]:
            c["model_ratio"] = c["model_edge_MBps"] / base["model_edge_MBps"]
        if c["case"] == "all_reachable":
            if c["bound_MBps"]:
                c["goal"] = f"wire rate >= {GOAL_BASELINE:.0%} of min(k c, L) = {c['bound_MBps']:.2f} MB/s"
                c["goal_met"] = c["wire_MBps"] >= GOAL_BASELINE * c["bound_MBps"]
                doc["goals"].append({"case": c["case"], "met": c["goal_met"],
                                     "text": f"{c['label']}: wire rate {c['wire_MBps']:.2f} MB/s per peer, "
                                             f"{c['wire_MBps'] / c['bound_MBps']:.2f} of min(k c, L) = "
                                             f"{c['bound_MBps']:.2f} MB/s (goal >= {GOAL_BASELINE:.2f}: the "
                                             "baseline is the emulated link's, not this machine's CPU)"})
        elif 0 < c["outbound_only"] <= world // 2:
            c["goal"] = f"algbw >= {GOAL_RATIO:.0%} of all reachable"
            c["goal_met"] = c["ratio"] >= GOAL_RATIO
            doc["goals"].append({"case": c["case"], "met": c["goal_met"],
                                 "text": f"{c['label']}: {c['ratio']:.3f} of the all-reachable algbw, relayed edges "
                                         f"{c['relayed_edges']} (goal >= {GOAL_RATIO:.2f}, no relay needed)"})
    forced = next((c for c in doc["cases"] if c["case"] == "relay_forced"), None)
    if forced:
        model = f", the link-sharing model says {forced['model_ratio']:.2f}" if forced["model_ratio"] else ""
        doc["notes"].append(
            f"the forced relay costs: {forced['ratio']:.2f} of the all-reachable algbw with {forced['relayed_edges']} "
            f"relayed edge(s){model} (each relayed edge crosses the relay peer's link in both directions, shared "
            "with its own edges)")


def report(doc: dict) -> None:
    cfg = doc["config"]
    print(f"\nAll-reduce with peers behind NAT through the emulated WAN ({doc['machine']['cpu']}, "
          f"{doc['machine']['cores']} cores shared by every peer and relay)")
    print(f"{doc['profile']}; {cfg['peers']} peers, {cfg['connections']} connections per edge, "
          f"{cfg['size'] / MiB:.1f} MiB float32 arrays; median of {cfg['rounds']} round(s) x {cfg['repeats']} "
          "repeat(s)")
    print("ring: ranks in ring order, * = outbound-only (listen=None)")
    print(f"\n{'case':<36} {'out':>3} {'relayed':>7} {'algbw MB/s':>10} {'ratio':>6} {'model':>6} "
          f"{'relay bytes':>12}  ring")
    for c in doc["cases"]:
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.3f}"
        model = "-" if c["model_ratio"] is None else f"{c['model_ratio']:.2f}"
        rb = sum(c["relay_bytes"].values())
        print(f"{c['label']:<36} {c['outbound_only']:>3} {c['relayed_edges']:>7} {c['algbw_MBps']:>10.2f} "
              f"{ratio:>6} {model:>6} {rb / MiB:>9.1f}Mi  {' | '.join(dict.fromkeys(c['rings']))}")
    forced = next((c for c in doc["cases"] if c["case"] == "relay_forced"), None)
    if forced:
        per_peer = ", ".join(f"rank {p}: {b / MiB:.1f} MiB" for p, b in forced["relay_bytes"].items())
        conns = ", ".join(f"rank {p}: {n}" for p, n in forced["relayed_connections"].items())
        print(f"\nrelay forced: relay_bytes on the reachable peers ({per_peer}); relayed_connections ({conns}); "
              f"via the master {forced['via_master']}; master relayed_edges {forced['relayed_edges']}")
    print_footer(doc)


def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "nat", quick="4 peers, ~1 s operations, 2 repeats, one round (~30 s)")
    ap.add_argument("--peers", type=int, default=4, help="N, peers per group (at least 3; default 4)")
    ap.add_argument("--profile", default="continent", help="pccl_arrays.wan profile (default continent)")
    ap.add_argument("--connections", type=int, default=4, help="connections per ring edge (default 4)")
    ap.add_argument("--seconds", type=float, default=None, help="one operation at the bound (default 2; quick 1)")
    ap.add_argument("--size", type=parse_size, default=None, help="array bytes (default: from --seconds)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per group (default 3; quick 2)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of all cases (default 2; quick 1)")
    bench = Run.start(ap, argv)
    a = bench.args
    pa = import_pccl_arrays()
    from pccl_arrays import wan

    if a.peers < 3:
        ap.error("--peers: at least 3 (with 2, the forced relay would be the master's, which is not emulated)")
    profile = wan.profile_of(a.profile)
    seconds = a.seconds or (1.0 if a.quick else 2.0)
    repeats = a.repeats or (2 if a.quick else 3)
    rounds = a.rounds or (1 if a.quick else 2)
    size = a.size or size_for(profile, a.connections, a.peers, seconds)
    cases = case_list(a.peers)
    doc = {"benchmark": "nat", "command": ["python", os.path.relpath(__file__), *bench.argv],
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count()}, "profile": profile.describe(),
           "config": {"profile": profile.name, "peers": a.peers, "connections": a.connections, "seconds": seconds,
                      "size": size, "repeats": repeats, "rounds": rounds, "piece_bytes": PIECE,
                      "cases": {key: {"label": label, "outbound_only": k, "outbound_ranks": outbound_ranks(a.peers, k)}
                                for key, label, k in cases}},
           "runs": [], "cases": [], "goals": [], "errors": [], "notes": [
               "all peers and relays share this machine's cores; profiles are scaled about 1/50 of real links "
               "(pccl_arrays/wan.py)"]}
    jobs = [(rnd, case) for rnd in range(rounds) for case in (cases if rnd % 2 == 0 else cases[::-1])]
    for i, (rnd, (key, label, k)) in enumerate(jobs):
        sys.stderr.write(f"\r[{i + 1}/{len(jobs)}] round {rnd + 1}: {label:<40}")
        sys.stderr.flush()
        try:
            raw = run_case(pa, profile, a.peers, k, size, repeats, a.connections, seconds)
        except Exception as e:  # reported; the other cases go on
            doc["errors"].append(f"{label}, round {rnd + 1}: {str(e)[:1500]}")
            continue
        doc["runs"].append(summarize_run(key, label, k, rnd, raw, profile, a.peers, size, a.connections,
                                         doc["errors"]))
    sys.stderr.write("\r" + " " * 70 + "\r")
    evaluate(doc)
    return bench.finish(doc, report)


if __name__ == "__main__":
    sys.exit(script_main(main, worker_main))
