"""All-reduce bandwidth of pccl_arrays vs torch.distributed (gloo) on this machine, with the loopback bound.

Usage (from the repository root, in an environment with numpy and, for the gloo column, torch)::

    PYTHONPATH=. python benchmarks/allreduce.py              # full: 2 and 3 peers, 4 KiB .. 256 MiB float32
    PYTHONPATH=. python benchmarks/allreduce.py --quick      # CI smoke test: 4 KiB, 1 MiB, 16 MiB, 3 repeats

What it measures, in one run:

* the loopback bound: C, the throughput of one TCP stream over 127.0.0.1 between two processes with plain
  Python sockets (``sendall`` of 256 KiB, 1 MiB or 4 MiB writes, ``recv_into``; the best write size counts).
  A ring all-reduce of N peers on one host pushes 2(N-1) array sizes through the loopback in total, so its
  algbw is bounded by about C / (2(N-1)) (about: two streams in opposite directions can use both cores a bit
  better than one stream, so a ratio slightly above 1 is possible);
* for each peer count N and size S: N peer processes of pccl_arrays (``Communicator.all_reduce(x, out=y)``),
  and N processes of torch.distributed with gloo over 127.0.0.1 (``dist.all_reduce(t)``), float32, op sum.

Timing: before each timed all-reduce every peer runs a 4-byte all-reduce (a barrier), then times one all-reduce
of S bytes with ``time.perf_counter``. The time of a repeat is the **maximum over peers**; algbw = S / time (as
nccl-tests define it, GB/s = 1e9 bytes/s). Every size starts with one untimed all-reduce whose result each peer
compares with the exact expected sum (the inputs are small integers, exact in float32); the last timed result is
checked too, and a wrong result fails the run (exit status 1).

This machine's speed drifts (by up to 2x over tens of seconds), so the full run is split into rounds: every
(system, N) group runs once per round, the systems alternate in ABBA order, a loopback sample is taken before
every group, and the samples of all rounds are pooled. All peers and the master share this machine's cores: with
more peer threads than cores the numbers measure an oversubscribed host, not a network.
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKERS = str(HERE / "_allreduce_workers.py")
sys.path.insert(0, str(HERE))

import _procs  # noqa: E402
from _common import (Run, benchmark_parser, doc_head, fmt_size,  # noqa: E402
                     parse_size, print_footer, spread, systems_to_run)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
FULL_SIZES = [4 * KiB, 1 * MiB, 16 * MiB, 64 * MiB, 256 * MiB]
QUICK_SIZES = [4 * KiB, 1 * MiB, 16 * MiB]
GOAL_MIN_BYTES = 16 * MiB  # goals for bandwidth apply from this size on
LOOPBACK_CHUNKS = [256 * KiB, 1 * MiB, 4 * MiB]  # write sizes tried for C; the best one counts
MODES = {"fresh": "y = all_reduce(x)", "out": "all_reduce(x, out=y)", "inplace": "all_reduce(x, out=x)"}
MODE_ORDER = {m: i for i, m in enumerate(MODES)}
GOAL_VS_GLOO, GOAL_VS_BOUND, GOAL_LATENCY, GOAL_FRESH_VS_OUT = 1.15, 0.8, 2.0, 0.9


# ---------------------------------------------------------------------------------------------------------------
# helpers
def default_repeats(n: int, quick: bool) -> int:
    if quick:
        return 3
    if n <= 1 * MiB:
        return 20
    if n <= 16 * MiB:
        return 10
    return 5


# ---------------------------------------------------------------------------------------------------------------
# parent side
def measure_loopback(total: int, rounds: int, streams: int, chunk: int, timeout: float) -> dict:
    """C over 127.0.0.1: this process receives (recv_into, large buffer), a child process sends."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(streams)
    port = lsock.getsockname()[1]
    group = _procs.group([[WORKERS, "tcpsend", "--port", str(port), "--bytes", str(total),
                           "--chunk", str(chunk), "--streams", str(streams), "--rounds", str(rounds)]])
    conns, errors = [], []
    try:
        lsock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        while len(conns) < streams:  # accept, but notice a sender that died before connecting
            try:
                conn, _addr = lsock.accept()
            except socket.timeout:
                if group.procs[0].poll() is not None or time.monotonic() > deadline:
                    group.wait(0)  # raises with the sender's output
                    raise RuntimeError("the loopback sender did not connect")
                continue
            conn.settimeout(timeout)
            conns.append(conn)
        per_stream = total // streams

        def drain(conn):
            try:
                buf = memoryview(bytearray(chunk))
                for _ in range(rounds):
                    left = per_stream
                    while left:
                        k = conn.recv_into(buf, min(left, chunk))
                        if k == 0:
                            raise ConnectionError("sender closed early")
                        left -= k
                    conn.sendall(b"k")
            except Exception as e:  # reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=drain, args=(c,), daemon=True) for c in conns]
        for t in threads:
            t.start()
        (res,) = group.wait(timeout)
        for t in threads:
            t.join(timeout)
        if errors:
            raise RuntimeError(f"loopback receiver failed: {errors}")
    finally:
        group.close()
        for c in conns:
            c.close()
        lsock.close()
    gbps = [res["bytes"] / s / 1e9 for s in res["seconds"]]
    return {"streams": streams, "bytes_per_round": res["bytes"], "rounds": rounds, "chunk": chunk,
            "samples_GBps": gbps, "GBps": spread(gbps)}


def run_pccl(world: int, sizes, repeats, connections: int, piece_bytes: int, timeout: float,
             modes: list[str]) -> list[dict]:
    import pccl_arrays as pa
    m = pa.Master("127.0.0.1:0").start()
    try:
        argvs = [[WORKERS, "pccl", "--master", m.address, "--rank", str(r), "--world", str(world),
                  "--sizes", ",".join(map(str, sizes)), "--repeats", ",".join(map(str, repeats)),
                  "--connections", str(connections), "--piece-bytes", str(piece_bytes or 0),
                  "--modes", ",".join(modes)]
                 for r in range(world)]
        return _procs.run_group(argvs, timeout)
    finally:
        m.stop()


def run_gloo(world: int, sizes, repeats, timeout: float) -> list[dict]:
    port = _procs.free_port()
    argvs = [[WORKERS, "gloo", "--port", str(port), "--rank", str(r), "--world", str(world),
              "--sizes", ",".join(map(str, sizes)), "--repeats", ",".join(map(str, repeats))] for r in range(world)]
    # keep gloo on the loopback interface like pccl_arrays (it otherwise picks the interface of the hostname)
    return _procs.run_group(argvs, timeout, env={"GLOO_SOCKET_IFNAME": "lo"})


def merge_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Per peer, the rows of all rounds with their repeats concatenated (rows matched by size and mode, since the
    modes' order rotates from round to round)."""
    merged = []
    for peer in range(len(rounds[0])):
        rows = {}
        for rnd in rounds:
            for row in rnd[peer]["rows"]:
                key = (row["bytes"], row.get("mode"))
                if key not in rows:
                    rows[key] = {**row, "seconds": []}
                rows[key]["seconds"] += row["seconds"]
                rows[key]["correct"] = rows[key]["correct"] and row["correct"]
        merged.append({"rows": sorted(rows.values(), key=lambda r: (r["bytes"], MODE_ORDER.get(r.get("mode"), 0)))})
    return merged


def combine(system: str, world: int, results: list[dict]) -> list[dict]:
    """One row per size from the peers' results: per repeat, the max over peers of the peers' times."""
    rows = []
    for i, r0 in enumerate(results[0]["rows"]):
        size = r0["bytes"]
        per_peer = [res["rows"][i]["seconds"] for res in results]
        worst = [max(ts) for ts in zip(*per_peer)]
        bw = [size / t / 1e9 for t in worst]
        rows.append({
            "system": system, "mode": r0["mode"], "peers": world, "bytes": size, "size": fmt_size(size),
            "repeats": len(worst),
            "algbw_GBps": spread(bw), "latency_ms": spread([t * 1e3 for t in worst]),
            "correct": all(res["rows"][i]["correct"] for res in results),
            "seconds_per_peer": per_peer, "info_peer0": r0.get("info", {}),
        })
    return rows


def torch_status() -> tuple[str | None, str]:
    """(torch version or None, reason when gloo cannot run)."""
    try:
        import torch
        import torch.distributed as dist
    except Exception as e:  # not installed, or a broken install
        return None, f"torch cannot be imported ({type(e).__name__}: {e})"
    if not dist.is_available() or not dist.is_gloo_available():
        return torch.__version__, "this torch build has no torch.distributed gloo backend"
    return torch.__version__, ""




def print_table(doc: dict) -> None:
    lb = doc["loopback"]
    rows = doc["rows"]
    by = {(r["system"], r.get("mode", "out"), r["peers"], r["bytes"]): r for r in rows}
    modes = [m for m in MODES if any(r["system"] == "pccl_arrays" and r.get("mode") == m for r in rows)]
    print()
    print(f"Machine: {doc['machine']['nproc']} cores ({doc['machine']['cpu']}), Python {doc['machine']['python']}, "
          f"torch {doc['machine']['torch'] or '-'}")
    print(f"NOTE: every peer process (and the master) shares this machine's {doc['machine']['nproc']} cores; "
          "these are loopback numbers on an oversubscribed host, not network numbers.")
    if lb.get("C_GBps"):
        extra = ""
        if lb.get("multi_stream"):
            ms = lb["multi_stream"]
            extra = f"; {ms['streams']} streams together: {ms['GBps']['median']:.2f} GB/s (for information)"
        print(f"Loopback C (1 TCP stream, 127.0.0.1, Python sockets, best write size {fmt_size(lb['chunk'])}, "
              f"median of {len(lb['samples_GBps'])} x {fmt_size(lb['bytes_per_sample'])}): {lb['C_GBps']:.2f} GB/s "
              f"[{lb['GBps']['min']:.2f}-{lb['GBps']['max']:.2f}]{extra}")
        print("  by write size: " + ", ".join(f"{fmt_size(int(c))}: {v['GBps']['median']:.2f}"
                                              for c, v in lb["by_chunk"].items()))
        print("Ring bound C/(2(N-1)): " + ", ".join(f"N={n}: {b:.3f} GB/s" for n, b in lb["ring_bound_GBps"].items()))
    print("algbw = array bytes / time of one all-reduce (time = max over peers), GB/s = 1e9 B/s; "
          "median [min-max] over repeats. pccl_arrays columns: " + "; ".join(f"{m}: {MODES[m]}" for m in modes) +
          "; gloo: dist.all_reduce(t), in place")
    hdr = (f"{'N':>2} {'size':>8} {'reps':>4} | " + "".join(f"{'pccl ' + m + ' GB/s':>22} " for m in modes) +
           f"{'gloo GB/s':>22} | " + "".join(f"{m + '/gloo':>13}" for m in modes) + f" {'fresh/out':>9}"
           f" {'out/bound':>9}")
    print(hdr)
    print("-" * len(hdr))

    def cell(r):
        if not r:
            return f"{'-':>22} "
        b = r["algbw_GBps"]
        bad = "" if r["correct"] else " WRONG"
        return f"{b['median']:.3g} [{b['min']:.3g}-{b['max']:.3g}]{bad}".rjust(22) + " "

    def ratio(a, b, width):
        return f"{a['algbw_GBps']['median'] / b['algbw_GBps']['median']:{width}.3g}" if a and b else f"{'-':>{width}}"
    sizes = sorted({r["bytes"] for r in rows})
    for n in doc["config"]["peers"]:
        bound = lb.get("ring_bound_GBps", {}).get(str(n))
        for s in sizes:
            ps = {m: by.get(("pccl_arrays", m, n, s)) for m in modes}
            g = by.get(("gloo", "inplace", n, s))
            if not any(ps.values()) and not g:
                continue
            reps = next(r for r in [*ps.values(), g] if r)["repeats"]
            out = ps.get("out")
            ob = f"{out['algbw_GBps']['median'] / bound:9.3g}" if out and bound else f"{'-':>9}"
            print(f"{n:>2} {fmt_size(s):>8} {reps:>4} | " + "".join(cell(ps[m]) for m in modes) + cell(g) + "| " +
                  "".join(ratio(ps[m], g, 13) for m in modes) + " " + ratio(ps.get("fresh"), out, 9) + " " + ob)
        if any(r["peers"] == n and r["bytes"] == 4 * KiB for r in rows):
            lat = {m: by.get(("pccl_arrays", m, n, 4 * KiB)) for m in modes}
            g = by.get(("gloo", "inplace", n, 4 * KiB))
            print(f"{'':>2} {'4 KiB ms':>8} {'':>4} | " + "".join(
                f"{r['latency_ms']['median']:22.3f} " if r else f"{'-':>22} " for r in [*lat.values(), g]))
    print_footer(doc)


def evaluate_goals(doc: dict) -> list[dict]:
    goals = []
    by = {(r["system"], r.get("mode", "out"), r["peers"], r["bytes"]): r for r in doc["rows"]}
    bounds = doc["loopback"].get("ring_bound_GBps", {})
    for (system, mode, n, s), p in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][1])):
        if system != "pccl_arrays":
            continue
        g = by.get(("gloo", "inplace", n, s))
        pm = p["algbw_GBps"]["median"]
        if s >= GOAL_MIN_BYTES:
            if g:
                r = pm / g["algbw_GBps"]["median"]
                goals.append({"peers": n, "bytes": s, "mode": mode, "goal": "vs_gloo", "value": r,
                              "met": r >= GOAL_VS_GLOO,
                              "text": f"N={n} {fmt_size(s)} {mode}: pccl/gloo = {r:.2f} (goal >= {GOAL_VS_GLOO})"})
            if str(n) in bounds and mode == "out":
                r = pm / bounds[str(n)]
                goals.append({"peers": n, "bytes": s, "mode": mode, "goal": "vs_bound", "value": r,
                              "met": r >= GOAL_VS_BOUND,
                              "text": f"N={n} {fmt_size(s)}: pccl out=/bound = {r:.2f} (goal >= {GOAL_VS_BOUND})"})
            out = by.get(("pccl_arrays", "out", n, s))
            if mode == "fresh" and out:
                r = pm / out["algbw_GBps"]["median"]
                goals.append({"peers": n, "bytes": s, "mode": mode, "goal": "fresh_vs_out", "value": r,
                              "met": r >= GOAL_FRESH_VS_OUT,
                              "text": f"N={n} {fmt_size(s)}: fresh/out= = {r:.2f} (goal >= {GOAL_FRESH_VS_OUT})"})
        if s == 4 * KiB and g and mode == "out":
            r = p["latency_ms"]["median"] / g["latency_ms"]["median"]
            goals.append({"peers": n, "bytes": s, "mode": mode, "goal": "latency", "value": r,
                          "met": r <= GOAL_LATENCY,
                          "text": f"N={n} 4 KiB: pccl {p['latency_ms']['median']:.3f} ms vs gloo "
                                  f"{g['latency_ms']['median']:.3f} ms = {r:.2f}x (goal <= {GOAL_LATENCY}x)"})
    return goals


def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "allreduce", quick="4 KiB, 1 MiB, 16 MiB, 3 repeats (CI smoke test)")
    ap.add_argument("--peers", type=int, nargs="+", default=[2, 3, 4], help="peer counts (default: 2 3 4)")
    ap.add_argument("--sizes", type=parse_size, nargs="+", help="array sizes in bytes (4KiB, 16MiB, ...)")
    ap.add_argument("--repeats", type=int, help="timed repeats per size (default: 20 up to 1 MiB, 10 up to "
                                                "16 MiB, 5 above; 3 with --quick)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds; repeats are split over them "
                                               "(default 3, 1 with --quick)")
    ap.add_argument("--connections", type=int, default=4, help="pccl_arrays connections per peer (default 4)")
    ap.add_argument("--piece-bytes", type=parse_size, default=None, help="pccl_arrays piece_bytes (default: "
                                                                         "the library's)")
    ap.add_argument("--systems", nargs="+", choices=["pccl", "gloo"], default=["pccl", "gloo"])
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES),
                    help="how pccl_arrays returns the result (default: all three, each on the same peers)")
    ap.add_argument("--loopback-bytes", type=parse_size, default=None,
                    help="bytes per loopback round (default 1 GiB, 256 MiB with --quick)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds before a group of peers counts as hung (default 600, 120 with --quick)")
    bench = Run.start(ap, argv)
    a = bench.args
    if any(n < 2 for n in a.peers):
        ap.error("--peers must be >= 2")
    sizes = a.sizes or (QUICK_SIZES if a.quick else FULL_SIZES)
    repeats = [a.repeats or default_repeats(s, a.quick) for s in sizes]
    rounds = a.rounds or (1 if a.quick else 3)
    reps_per_round = [-(-r // rounds) for r in repeats]
    lb_per = 3 if rounds == 1 else 1  # loopback samples per write size before each group
    if a.timeout is None:
        a.timeout = 120.0 if a.quick else 600.0
    repeats = [r * rounds for r in reps_per_round]
    lb_bytes = a.loopback_bytes or (256 * MiB if a.quick else 1 * GiB)

    tv, why_no_gloo = torch_status()
    notes, errors, rows = [], [], []
    systems, pv = systems_to_run(a.systems, why_no_gloo, notes, errors)

    doc = {
        **doc_head("allreduce", __file__, bench.argv, tv, pv),
        "config": {"quick": a.quick, "peers": a.peers, "sizes": sizes, "repeats": repeats, "dtype": "float32",
                   "op": "sum", "rounds": rounds, "repeats_per_round": reps_per_round,
                   "connections": a.connections, "piece_bytes": a.piece_bytes, "modes": a.modes,
                   "systems": systems,
                   "timing": "per repeat: a 4-byte all-reduce as barrier, then one timed all-reduce on each peer; "
                             "time = max over peers; algbw = bytes / time; GB/s = 1e9 B/s",
                   "note": f"all peers share this machine's {os.cpu_count()} cores (oversubscribed loopback)"},
        "loopback": {}, "rows": rows, "goals": [], "errors": errors, "notes": notes,
    }
    print(f"all peers share this machine's {os.cpu_count()} cores; sizes {[fmt_size(s) for s in sizes]}, "
          f"repeats {repeats}, peers {a.peers}, systems {systems}", flush=True)

    # Rounds: every (system, N) group runs once per round, systems in ABBA order, a loopback sample is taken
    # before every group, and the samples of all rounds are pooled, so a slow spell of this (shared, virtual)
    # machine does not land on one system (or on the bound) only.
    lb_tries: dict[int, list[float]] = {c: [] for c in LOOPBACK_CHUNKS}
    runs: dict[tuple[str, int], list[list[dict]]] = {}

    def loopback_sample(label: str) -> None:
        """One sample of C per write size; taken before every group, so C covers the same spells as they do."""
        try:
            t = time.monotonic()
            for chunk in LOOPBACK_CHUNKS:
                lb_tries[chunk] += measure_loopback(lb_bytes, lb_per, 1, chunk, a.timeout)["samples_GBps"]
            got = ", ".join(f"{fmt_size(c)}: {statistics.median(v[-lb_per:]):.2f}" for c, v in lb_tries.items() if v)
            print(f"  loopback before {label}, 1 stream, GB/s: {got} [{time.monotonic() - t:.1f} s]", flush=True)
        except Exception as e:
            errors.append(f"loopback measurement before {label} failed: {e}")
            print(f"ERROR: {errors[-1]}", flush=True)

    for rnd in range(rounds):
        print(f"-- round {rnd + 1}/{rounds}", flush=True)
        for n in a.peers:
            for system in (systems if rnd % 2 == 0 else systems[::-1]):
                name = "pccl_arrays" if system == "pccl" else "gloo"
                loopback_sample(f"{name} N={n}")
                if rnd == 0 and a.connections > 1 and "multi_stream" not in doc["loopback"]:
                    try:
                        multi = measure_loopback(lb_bytes, 1, a.connections, 4 * MiB, a.timeout)
                        doc["loopback"]["multi_stream"] = multi
                        print(f"  loopback, {a.connections} streams together: {multi['GBps']['median']:.2f} GB/s "
                              "(information only)", flush=True)
                    except Exception as e:
                        errors.append(f"multi-stream loopback measurement failed: {e}")
                t = time.monotonic()
                try:
                    if system == "pccl":
                        turn = rnd % len(a.modes)  # each mode goes first in some round (this machine's speed drifts)
                        res = run_pccl(n, sizes, reps_per_round, a.connections, a.piece_bytes, a.timeout,
                                       a.modes[turn:] + a.modes[:turn])
                    else:
                        res = run_gloo(n, sizes, reps_per_round, a.timeout)
                except Exception as e:
                    errors.append(f"{name} with {n} peers failed in round {rnd + 1}: {e}")
                    print(f"ERROR: {errors[-1]}", flush=True)
                    continue
                runs.setdefault((name, n), []).append(res)
                summary = ", ".join(f"{fmt_size(r['bytes'])} {r['mode']}: {statistics.median(r['seconds']) * 1e3:.2f} ms"
                                    for r in res[0]["rows"])
                print(f"{name} N={n} [{time.monotonic() - t:.1f} s] peer 0 median times: {summary}", flush=True)
    if not systems:
        loopback_sample("nothing (no system to run)")

    if any(lb_tries.values()):
        valid = {c: v for c, v in lb_tries.items() if v}
        best = max(valid, key=lambda c: statistics.median(valid[c]))
        doc["loopback"].update({
            "C_GBps": statistics.median(valid[best]), "chunk": best, "samples_GBps": valid[best],
            "GBps": spread(valid[best]), "bytes_per_sample": lb_bytes,
            "by_chunk": {str(c): {"samples_GBps": v, "GBps": spread(v)} for c, v in valid.items()},
            "definition": "C = throughput of one TCP stream over 127.0.0.1 between two processes (Python "
                          "sockets, sendall of CHUNK bytes, recv_into a CHUNK buffer), median of the samples (taken "
                          "before every group of peers, all rounds), for the best CHUNK of "
                          f"{[fmt_size(c) for c in LOOPBACK_CHUNKS]}; "
                          "ring bound of N peers = C / (2(N-1))"})
        doc["loopback"]["ring_bound_GBps"] = {str(n): doc["loopback"]["C_GBps"] / (2 * (n - 1)) for n in a.peers}
    for n in a.peers:
        for name in ("pccl_arrays", "gloo"):
            if (name, n) in runs:
                new_rows = combine(name, n, merge_rounds(runs[(name, n)]))
                rows.extend(new_rows)
                for r in new_rows:
                    if not r["correct"]:
                        errors.append(f"{name} N={n} {r['size']}: WRONG all-reduce result")

    doc["goals"] = evaluate_goals(doc)
    return bench.finish(doc, print_table)


if __name__ == "__main__":
    sys.exit(main())
