"""The two reduce-scatters of a quantized all-reduce on this machine's loopback: the ring (re-quantizes the
partial sum at every hop) against the direct one (each chunk straight to its owner, summed and quantized once;
docs/quantization.md), for 8- and 4-bit blocks, at several peer counts.

    .venv/bin/python benchmarks/reduce_scatter.py            # N = 2, 3, 4; 64 MiB of float32; 5 repeats
    .venv/bin/python benchmarks/reduce_scatter.py --quick    # CI smoke test: N = 2, 3; 4 MiB; 2 repeats

Each peer is a process (host arrays: the C++ kernels quantize, sum and decode on the stripes' threads, 4
connections). Per setting, after one untimed call, every repeat lines the peers up with a 4-byte all-reduce and
times one quantized all-reduce; a repeat's time is the slowest peer's and the table shows the median. The
settings alternate inside each repeat (ring, direct, ring, ...), so a slow spell of this shared machine falls
on both. Both algorithms send the same bytes; the direct one uses N-1 connections per stripe where the ring
uses one. All peers share this machine's cores: at N > 2 the peers oversubscribe it and the figures measure
compute as much as the loopback, so compare the two columns, not the absolute rates.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _procs  # noqa: E402
from _common import MiB, Run, benchmark_parser, cpu_model, import_pccl_arrays, join_worker, print_footer  # noqa: E402
from _common import script_main  # noqa: E402

SETTINGS = [("minmax", False), ("minmax4", True)]  # (kind, rotate)
REDUCES = ("ring", "direct")


def worker(a) -> dict:
    import numpy as np
    import pccl_arrays as pa

    c, _ = join_worker(a.master, a.world, timeout=60, connections=4)
    x = np.random.default_rng(a.rank).standard_normal(a.size // 4).astype(np.float32)
    out = np.empty_like(x)
    quants = {(kind, red): pa.Quantization(kind, rotate=rot, reduce=red) for kind, rot in SETTINGS for red in REDUCES}
    for q in quants.values():
        c.all_reduce(x, out=out, quantization=q)  # untimed: connections open, scratch grows
    times: dict = {f"{k}/{r}": [] for k, r in quants}
    sent: dict = {}
    for _ in range(a.repeats):
        for (kind, red), q in quants.items():
            c.all_reduce(np.zeros(1, np.float32))  # lines the peers up
            c.all_reduce(x, out=out, quantization=q)
            info = c.last_info
            times[f"{kind}/{red}"].append(info.seconds)
            sent[f"{kind}/{red}"] = info.bytes_sent
    c.close()
    return {"times": times, "sent": sent}


def worker_main(argv) -> int:
    ap = argparse.ArgumentParser(prog="reduce_scatter.py _worker")
    for name in ("--master",):
        ap.add_argument(name, required=True)
    for name in ("--rank", "--world", "--size", "--repeats"):
        ap.add_argument(name, type=int, required=True)
    _procs.report(worker(ap.parse_args(argv)))
    return 0


def report(doc: dict) -> None:
    print(f"Quantized all-reduce on loopback, {doc['size_mib']} MiB of float32, host arrays, 4 connections "
          f"({doc['cpu']}; {doc['repeats']} repeats, medians)")
    print(f"{'N':>3} {'format':>16} {'ring ms':>9} {'direct ms':>10} {'direct/ring':>12} {'bytes sent':>12}")
    for row in doc["rows"]:
        print(f"{row['world']:>3} {row['format']:>16} {row['ring_ms']:>9.1f} {row['direct_ms']:>10.1f} "
              f"{row['direct_ms'] / row['ring_ms']:>12.2f} {row['bytes_sent']:>12}")
    print_footer(doc)


def main(argv=None) -> int:
    ap = benchmark_parser(__doc__, "reduce_scatter", quick="N = 2, 3; 4 MiB; 2 repeats")
    ap.add_argument("--peers", default=None, help="comma list (default 2,3,4; --quick: 2,3)")
    ap.add_argument("--size-mib", type=int, default=None, help="float32 MiB per peer (default 64; --quick: 4)")
    ap.add_argument("--repeats", type=int, default=None)
    run = Run.start(ap, argv)
    a = run.args
    pa = import_pccl_arrays()
    peers = [int(p) for p in (a.peers or ("2,3" if a.quick else "2,3,4")).split(",")]
    size = (a.size_mib or (4 if a.quick else 64)) * MiB
    repeats = a.repeats or (2 if a.quick else 5)
    doc = {"benchmark": "reduce_scatter", "cpu": cpu_model(), "size_mib": size // MiB, "repeats": repeats, "rows": [],
           "goals": [], "errors": [], "notes": []}
    for world in peers:
        master = pa.Master("127.0.0.1:0").start()
        try:
            argvs = [[__file__, "_worker", "--master", master.address, "--rank", str(r), "--world", str(world),
                      "--size", str(size), "--repeats", str(repeats)] for r in range(world)]
            results = _procs.run_group(argvs, timeout=300)
        except Exception as e:  # a failed group is reported, the others still run
            doc["errors"].append(f"N={world}: {e}")
            continue
        finally:
            master.stop()
        for kind, rot in SETTINGS:
            med = {red: statistics.median(max(r["times"][f"{kind}/{red}"][i] for r in results)
                                          for i in range(repeats)) for red in REDUCES}
            sent = {red: results[0]["sent"][f"{kind}/{red}"] for red in REDUCES}
            if sent["ring"] != sent["direct"]:
                doc["errors"].append(f"N={world} {kind}: the ring sent {sent['ring']} bytes, direct {sent['direct']}")
            doc["rows"].append({"world": world, "format": kind + (" rotated" if rot else ""),
                                "ring_ms": med["ring"] * 1e3, "direct_ms": med["direct"] * 1e3,
                                "bytes_sent": sent["direct"]})
    doc["notes"].append("all peers share this machine's cores: compare the columns, not the absolute rates")
    return run.finish(doc, report)


if __name__ == "__main__":
    sys.exit(script_main(main, worker_main))
