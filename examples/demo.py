"""The README demo: a local master and 3 peer processes all-reducing arrays, printing what happened.

    python examples/demo.py [--peers 3] [--connections 4]

The master runs in this process; each peer is a separate process (this file with --peer), as it would be on
separate machines. Every peer prints its results; this process checks they are bitwise identical.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time

import numpy as np

import pccl_arrays as pa


def peer(master: str, rank: int, world: int, connections: int) -> None:
    comm = pa.Communicator(master, connections=connections)
    comm.connect(timeout=60)
    while comm.world_size < world:  # admit the others as they arrive
        if comm.are_peers_pending():
            comm.update_topology()
        else:
            time.sleep(0.005)
    cases = [
        ("float32", "avg", 1 << 20), ("float32", "sum", 16 << 20), ("int64", "sum", 1000), ("float64", "max", 4099),
    ]
    try:
        import ml_dtypes

        cases.append((np.dtype(ml_dtypes.bfloat16).name, "sum", 1 << 16))
    except ImportError:
        pass
    rows = []
    for dtype, op, n in cases:
        if dtype == "bfloat16":
            import ml_dtypes

            x = np.full(n, rank + 1, dtype=ml_dtypes.bfloat16)
        else:
            x = (np.arange(n) % 7 + rank + 1).astype(dtype)
        r, info = comm.all_reduce(x, op, return_info=True)
        rows.append({
            "dtype": dtype, "op": op, "n": n, "first": float(r.reshape(-1)[0]), "ms": info.seconds * 1e3,
            "MB/s": x.nbytes / info.seconds / 1e6, "sent": info.bytes_sent, "world": info.world_size,
            "stripes": info.stripes, "sha": hashlib.sha256(r.tobytes()).hexdigest()[:12],
        })
    comm.close()
    print(json.dumps({"rank": rank, "peer_id": comm.peer_id, "rows": rows}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=3)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--peer", nargs=2, metavar=("MASTER", "RANK"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.peer:
        peer(a.peer[0], int(a.peer[1]), a.peers, a.connections)
        return 0

    with pa.Master("127.0.0.1:0") as master:
        print(f"master listening on {master.address}; starting {a.peers} peer processes "
              f"({a.connections} connections each; all share this machine's cores)")
        procs = [subprocess.Popen([sys.executable, __file__, "--peers", str(a.peers), "--connections",
                                   str(a.connections), "--peer", master.address, str(r)], stdout=subprocess.PIPE,
                                  text=True) for r in range(a.peers)]
        reports = []
        for p in procs:
            out, _ = p.communicate(timeout=300)
            if p.returncode != 0:
                print(f"a peer failed (exit {p.returncode})")
                return 1
            reports.append(json.loads(out.strip().splitlines()[-1]))
        stats = master.stats()

    reports.sort(key=lambda r: r["rank"])
    print(f"\n{'peer':>4} {'dtype':>9} {'op':>4} {'elements':>9} {'result[0]':>10} {'ms':>8} {'MB/s':>8} "
          f"{'sent B':>10} {'world':>5} {'stripes':>7} {'sha256':>12}")
    for rep in reports:
        for row in rep["rows"]:
            print(f"{rep['rank']:>4} {row['dtype']:>9} {row['op']:>4} {row['n']:>9} {row['first']:>10.3f} "
                  f"{row['ms']:>8.2f} {row['MB/s']:>8.1f} {row['sent']:>10} {row['world']:>5} {row['stripes']:>7} "
                  f"{row['sha']:>12}")
    identical = all(len({rep["rows"][i]["sha"] for rep in reports}) == 1 for i in range(len(reports[0]["rows"])))
    print(f"\nresults bitwise identical on all peers: {identical}")
    print(f"master: {stats['ops_committed']} operations committed, {stats['ops_aborted']} aborted, "
          f"{stats['topology_updates']} topology updates")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
