"""All-reduce through the emulated WAN (pccl_arrays.wan): throughput against the number of connections k,
float32 against 8-bit (uint8) and 4-bit quantization, each quantized kind with the direct and the ring
reduce-scatter, for each profile, and the time a 1-billion-parameter pseudo-gradient would take at the measured
rates.

    PYTHONPATH=. python benchmarks/wan.py --quick        # 2 peers, k in {1,2,4,8,16,32}, both profiles (~70 s)
    PYTHONPATH=. python benchmarks/wan.py                # 2, 3 and 4 peers, 2 repeats (~20 min)

Every peer is a process with its own relay in front of its data port (it advertises the relay's address), so
every byte between peers crosses one emulated path: a one-way delay of RTT/2, a per-connection cap c and a
link cap L shared by the connections into that peer (pccl_arrays/wan.py). One all-reduce of S bytes makes each
peer send 2(N-1)/N S bytes; its wire rate is bytes sent / seconds, its bound min(k c, L). The effective rate
counts float32 bytes (for the quantized kinds, the bytes the float32 array would have needed). Sizes are chosen
per k so an operation takes about --seconds at the bound (uint8 operations reduce arrays 4x larger, 4-bit ones
8x larger, so that they too are bandwidth-bound rather than latency-bound), and pieces are 64 KiB (with a
1 MB/s connection a 1 MiB piece would take a second to fill the pipeline). The kinds (--kinds picks a subset;
--quick runs float32, uint8 and 4bit: with 2 peers the ring and the direct reduce-scatter move the same bytes
between the same two peers, so the ring variants say something only with 3 or more):

    float32      no quantization
    uint8        Quantization("minmax") (8 bits, block 1024), reduce="direct" (the default)
    uint8-ring   the same with reduce="ring"
    4bit         Quantization("minmax4", rotate=True) (4 bits, block 512, rotated), reduce="direct"
    4bit-ring    the same with reduce="ring"
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _procs  # noqa: E402
from _common import Run, benchmark_parser, import_pccl_arrays, join_worker, print_footer, script_main  # noqa: E402

MiB = 1 << 20
KS = [1, 2, 4, 8, 16, 32]
PIECE = 64 * 1024
PARAMS_1B = 1_000_000_000
# kind: (Quantization arguments or None, array scale: quantized operations reduce larger arrays, so that they too
# last about --seconds on the wire)
KINDS = {
    "float32": (None, 1),
    "uint8": ({"kind": "minmax", "reduce": "direct"}, 4),
    "uint8-ring": ({"kind": "minmax", "reduce": "ring"}, 4),
    "4bit": ({"kind": "minmax4", "rotate": True, "reduce": "direct"}, 8),
    "4bit-ring": ({"kind": "minmax4", "rotate": True, "reduce": "ring"}, 8),
}
GOAL_RATIO = {"uint8": 3.0, "4bit": 7.5}  # effective rate / float32's (wire bytes: 3.97x and 7.76x fewer)


# -- worker side ---------------------------------------------------------------------------------------------------
def worker(a) -> dict:
    import numpy as np
    import pccl_arrays as pa

    c, relay = join_worker(a.master, a.world, a.profile, timeout=60, connections=a.k, piece_bytes=PIECE)
    rows = []
    for kind in a.kinds:
        args, scale = KINDS[kind]
        quant = pa.Quantization(**args) if args else None
        size = a.size * scale
        n = size // 4
        x = (np.arange(n, dtype=np.float32) % 13) * np.float32(a.rank + 1)
        out = np.empty_like(x)
        c.all_reduce(x[: 1 << 16], out=out[: 1 << 16], quantization=quant)  # opens the connections
        for _ in range(a.repeats):
            c.all_reduce(np.zeros(1, np.float32))  # lines the peers up
            t0 = time.perf_counter()
            c.all_reduce(x, out=out, quantization=quant)
            info = c.last_info
            wall = time.perf_counter() - t0
            rows.append({"kind": kind, "bytes": size, "seconds": info.seconds, "bytes_sent": info.bytes_sent,
                         "stripes": info.stripes, "world": info.world_size, "wall_seconds": wall})
        x = out = None  # freed before the next kind allocates
    c.close()
    relay.stop()
    return {"rows": rows}


def worker_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="wan.py _worker")
    ap.add_argument("--master", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--size", type=int, required=True)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--kinds", default=",".join(KINDS))
    a = ap.parse_args(argv)
    a.kinds = a.kinds.split(",")
    _procs.report(worker(a))
    return 0


# -- parent side ---------------------------------------------------------------------------------------------------
def size_for(profile, k: int, world: int, seconds: float) -> int:
    """Bytes of an all-reduce that takes about `seconds` at the bound, with room for k stripes of 256 KiB."""
    bound = min(k * profile.conn_Bps, profile.link_Bps)
    s = bound * seconds * world / (2 * (world - 1))
    s = max(s, k * 256 * 1024 + 1024 * 4)
    return int(s) // 4096 * 4096


class Progress:
    """A one-line text progress bar on stderr."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.monotonic()

    def step(self, label: str) -> None:
        width = 30
        filled = int(width * self.done / max(1, self.total))
        eta = (time.monotonic() - self.t0) / max(1, self.done) * (self.total - self.done) if self.done else 0
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {label:<40} "
                         f"eta {eta:4.0f} s")
        sys.stderr.flush()
        self.done += 1

    def close(self) -> None:
        sys.stderr.write(f"\r{' ' * 100}\r")
        sys.stderr.flush()


def run_config(pa, profile, world: int, k: int, seconds: float, repeats: int, kinds: list[str]) -> list[dict]:
    from pccl_arrays.testing import WorkerError
    size = size_for(profile, k, world, seconds)
    master = pa.Master("127.0.0.1:0").start()
    try:
        argvs = [[__file__, "_worker", "--master", master.address, "--rank", str(r), "--world", str(world),
                  "--profile", profile.name, "--k", str(k), "--size", str(size), "--repeats", str(repeats),
                  "--kinds", ",".join(kinds)] for r in range(world)]
        results = _procs.run_group(argvs, timeout=120 + 4 * seconds * repeats * len(kinds))
    finally:
        master.stop()
    rows = []
    for res in results:  # the core's figures must be plausible (a library that does not match its module is not)
        for r in res["rows"]:
            if not (0 < r["seconds"] <= r["wall_seconds"] + 0.05 and r["stripes"] >= 1 and r["world"] == world):
                raise WorkerError(f"implausible AllReduceInfo from a peer: seconds {r['seconds']!r} (the call took "
                                  f"{r['wall_seconds']:.3f} s), stripes {r['stripes']}, world {r['world']}")
    for kind in kinds:
        per_rep = [[r for r in res["rows"] if r["kind"] == kind] for res in results]
        for rep in range(repeats):
            ops = [peer[rep] for peer in per_rep]
            secs = max(o["seconds"] for o in ops)
            sent = sum(o["bytes_sent"] for o in ops) / len(ops)
            nbytes = ops[0]["bytes"]
            f32_equiv = 2 * (world - 1) / world * nbytes
            bound = min(k * profile.conn_Bps, profile.link_Bps)
            rows.append({"profile": profile.name, "peers": world, "k": k, "kind": kind,
                         "quantization": KINDS[kind][0], "bytes": nbytes,
                         "seconds": secs, "wire_MBps": sent / secs / 1e6, "effective_MBps": f32_equiv / secs / 1e6,
                         "bound_MBps": bound / 1e6, "stripes": ops[0]["stripes"]})
    return rows


def best(rows, profile, peers, kind, k=None):
    sel = [r for r in rows if r["profile"] == profile and r["peers"] == peers and r["kind"] == kind
           and (k is None or r["k"] == k)]
    return max(sel, key=lambda r: r["effective_MBps"]) if sel else None


def evaluate(doc: dict) -> None:
    from pccl_arrays import wan

    rows = doc["rows"]
    for name in doc["config"]["profiles"]:
        p = wan.PROFILES[name]
        knee = p.link_Bps / p.conn_Bps
        for peers in doc["config"]["peers"]:
            for k in doc["config"]["ks"]:
                if k > knee:
                    continue
                r = best(rows, name, peers, "float32", k)
                if r:
                    doc["goals"].append({"text": f"{name}, {peers} peers, k={k}: float32 wire rate "
                                                 f"{r['wire_MBps']:.2f} MB/s >= 80% of min(k c, L) = "
                                                 f"{r['bound_MBps']:.2f} MB/s", "met": r["wire_MBps"] >= 0.8 * r["bound_MBps"]})
            f32 = best(rows, name, peers, "float32")
            if not f32:
                continue
            for kind, goal in GOAL_RATIO.items():
                q = best(rows, name, peers, kind, f32["k"])
                if not q:
                    continue
                ratio = q["effective_MBps"] / f32["effective_MBps"]
                ring = best(rows, name, peers, f"{kind}-ring", f32["k"])
                beside = f"; ring {ring['effective_MBps'] / f32['effective_MBps']:.2f}x" if ring else ""
                doc["goals"].append({"text": f"{name}, {peers} peers, k={f32['k']}: {kind} (direct) raises the "
                                             f"effective rate {ratio:.2f}x (goal >= {goal:g}x){beside}",
                                     "kind": kind, "ratio": ratio, "met": ratio >= goal})


def extrapolate(doc: dict) -> None:
    """Seconds to all-reduce a 1B-parameter float32 pseudo-gradient at the best measured effective rates."""
    out = []
    for name in doc["config"]["profiles"]:
        for peers in doc["config"]["peers"]:
            row = {"profile": name, "peers": peers}
            for kind in doc["config"]["kinds"]:
                b = best(doc["rows"], name, peers, kind)
                if b:
                    f32_per_peer = 2 * (peers - 1) / peers * 4 * PARAMS_1B
                    row[kind] = {"k": b["k"], "seconds": f32_per_peer / (b["effective_MBps"] * 1e6)}
            out.append(row)
    doc["extrapolation_1B"] = out


def plot(doc: dict, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot (pip install matplotlib)"
    profiles = doc["config"]["profiles"]
    fig, axes = plt.subplots(1, len(profiles), figsize=(6 * len(profiles), 4.5), squeeze=False)
    for ax, name in zip(axes[0], profiles):
        for peers in doc["config"]["peers"]:
            for kind, style in (("float32", "o-"), ("uint8", "s--"), ("uint8-ring", "s:"), ("4bit", "^--"),
                                ("4bit-ring", "^:")):
                sel = sorted((r for r in doc["rows"] if r["profile"] == name and r["peers"] == peers
                              and r["kind"] == kind), key=lambda r: r["k"])
                if not sel:
                    continue
                ks = sorted({r["k"] for r in sel})
                eff = [max(r["effective_MBps"] for r in sel if r["k"] == k) for k in ks]
                ax.plot(ks, eff, style, label=f"{peers} peers, {kind} (float32-equivalent)")
        bound = sorted({(r["k"], r["bound_MBps"]) for r in doc["rows"] if r["profile"] == name})
        ax.plot([k for k, _ in bound], [b for _, b in bound], "k:", label="min(k c, L): the wire bound")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("connections k (one operation striped over all)")
        ax.set_ylabel("MB/s per peer")
        ax.set_title(doc["profiles"][name])
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return f"wrote {path}"


def report(doc: dict) -> None:
    print(f"\nAll-reduce through the emulated WAN ({doc['machine']}); rates per peer, MB/s; eff = effective rate "
          "(float32 bytes the operation stands for / time), x = eff / float32's eff")
    kinds = [k for k in doc["config"]["kinds"] if k != "float32"]
    for name in doc["config"]["profiles"]:
        print(f"\n{doc['profiles'][name]}")
        print(f"{'peers':>5} {'k':>3} {'size':>9} {'bound':>7} {'f32 wire':>9} {'of bound':>8}"
              + "".join(f" | {kind + ' wire':>15} {'eff':>7} {'x':>5}" for kind in kinds))
        for peers in doc["config"]["peers"]:
            for k in doc["config"]["ks"]:
                f = best(doc["rows"], name, peers, "float32", k)
                if not f:
                    continue
                cells = ""
                for kind in kinds:
                    q = best(doc["rows"], name, peers, kind, k)
                    if not q:
                        cells += f" | {'-':>15} {'-':>7} {'-':>5}"
                        continue
                    cells += (f" | {q['wire_MBps']:>15.2f} {q['effective_MBps']:>7.1f} "
                              f"{q['effective_MBps'] / f['effective_MBps']:>5.2f}")
                print(f"{peers:>5} {k:>3} {f['bytes'] / MiB:>7.1f}Mi {f['bound_MBps']:>7.2f} {f['wire_MBps']:>9.2f} "
                      f"{f['wire_MBps'] / f['bound_MBps']:>8.2f}{cells}")
    print("\n1-billion-parameter float32 pseudo-gradient at the best measured rate (emulated link speeds):")
    for row in doc["extrapolation_1B"]:
        parts = [f"{kind} {row[kind]['seconds']:.0f} s (k={row[kind]['k']})" for kind in doc["config"]["kinds"]
                 if kind in row]
        print(f"  {row['profile']}, {row['peers']} peers: " + ", ".join(parts))
    print_footer(doc)


def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "wan", quick="2 peers, one repeat")
    ap.add_argument("--profiles", default="continent,transatlantic")
    ap.add_argument("--peers", default=None, help="comma list (default 2,3,4; --quick: 2)")
    ap.add_argument("--ks", default=",".join(map(str, KS)))
    ap.add_argument("--seconds", type=float, default=None, help="target duration of one operation at the bound")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--kinds", default=None, help=f"comma list of {', '.join(KINDS)} (default: all; --quick: "
                                                  "float32,uint8,4bit)")
    ap.add_argument("--plot", default=None, help="PNG path (default: next to --out)")
    bench = Run.start(ap, argv)
    a = bench.args
    pa = import_pccl_arrays()
    from pccl_arrays import wan
    from pccl_arrays.testing import WorkerError

    profiles = [wan.profile_of(p) for p in a.profiles.split(",")]
    peers = [int(v) for v in (a.peers or ("2" if a.quick else "2,3,4")).split(",")]
    ks = [int(v) for v in a.ks.split(",")]
    seconds = a.seconds or (1.0 if a.quick else 2.0)
    repeats = a.repeats or (1 if a.quick else 2)
    kinds = [v for v in (a.kinds or ("float32,uint8,4bit" if a.quick else ",".join(KINDS))).split(",") if v]
    if "float32" not in kinds or any(v not in KINDS for v in kinds):
        ap.error(f"--kinds: a comma list of {', '.join(KINDS)} that includes float32")
    import os
    doc = {"benchmark": "wan", "machine": f"{os.cpu_count()} cores, all peers and relays on this machine",
           "config": {"profiles": [p.name for p in profiles], "peers": peers, "ks": ks, "seconds": seconds,
                      "repeats": repeats, "piece_bytes": PIECE, "kinds": kinds,
                      "quantization": {k: KINDS[k][0] for k in kinds}},
           "profiles": {p.name: p.describe() for p in profiles}, "rows": [], "goals": [], "errors": [], "notes": []}
    configs = [(p, n, k) for p in profiles for n in peers for k in ks]
    bar = Progress(len(configs))
    for p, n, k in configs:
        bar.step(f"{p.name} {n} peers k={k}")
        try:
            doc["rows"] += run_config(pa, p, n, k, seconds, repeats, kinds)
        except WorkerError as e:
            doc["errors"].append(f"{p.name} {n} peers k={k}: {str(e)[:1500]}")
    bar.close()
    evaluate(doc)
    extrapolate(doc)
    out = Path(a.out)
    doc["notes"].append(plot(doc, Path(a.plot) if a.plot else out.with_suffix(".png")))
    doc["notes"].append("profiles are scaled about 1/50 of real links so this machine is not the bottleneck "
                        "(tests/test_wan.py); at real speeds the times scale down by the same factor")
    return bench.finish(doc, report)


if __name__ == "__main__":
    sys.exit(script_main(main, worker_main))
