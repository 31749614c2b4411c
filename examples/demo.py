"""The README demo: a local master and 3 peer processes, holding torch, JAX and NumPy arrays, all-reduce
them together and print what happened.

    python examples/demo.py [--peers 3] [--connections 4] [--frameworks torch,jax,numpy]

The master runs in this process; each peer is a separate process (this file with --peer), as it would be on
separate machines. Every peer prints its results; this process checks they are bitwise identical across frameworks.
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


FRAMEWORKS = ["torch", "jax", "numpy"]


def make(framework: str, dtype: str, n: int, fill: float):
    """An array of `framework` holding a deterministic pattern plus `fill`."""
    base = np.arange(n) % 7 + fill
    if framework == "torch":
        import torch

        return torch.tensor(base, dtype=getattr(torch, dtype))
    if framework == "jax":
        import jax.numpy as jnp

        return jnp.asarray(base, dtype=dtype)
    import ml_dtypes  # NumPy's bfloat16

    return base.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


def to_numpy(r) -> np.ndarray:
    if type(r).__module__.startswith("torch"):
        return r.float().numpy() if str(r.dtype) == "torch.bfloat16" else r.numpy()
    a = np.asarray(r)
    return a.astype(np.float32) if a.dtype.name == "bfloat16" else a


def peer(master: str, rank: int, world: int, connections: int, frameworks: list[str]) -> None:
    framework = frameworks[rank % len(frameworks)]
    if framework == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # so int64/float64 stay 64-bit
    comm = pa.Communicator(master, connections=connections)
    comm.connect(timeout=60)
    while comm.total_world_size < world:  # admit the others as they arrive
        if comm.are_peers_pending():
            comm.update_topology()
        else:
            time.sleep(0.005)
    comm.all_reduce(make(framework, "float32", 1, 0))  # a first operation, so timings exclude start-up skew
    cases = [("float32", "avg", 1 << 20), ("float32", "sum", 16 << 20), ("int64", "sum", 1000),
             ("float64", "max", 4099), ("bfloat16", "sum", 1 << 16), ("float16", "avg", 4096)]
    rows = []
    for dtype, op, n in cases:
        x = make(framework, dtype, n, rank + 1)
        r = comm.all_reduce(x, op)
        info = comm.last_info
        host = to_numpy(r)
        rows.append({
            "framework": framework, "type": f"{type(r).__module__.split('.')[0]}.{type(r).__name__}",
            "dtype": dtype, "op": op, "n": n, "first": float(host.reshape(-1)[0]), "ms": info.seconds * 1e3,
            "MB/s": host.nbytes / info.seconds / 1e6 if dtype != "bfloat16" else n * 2 / info.seconds / 1e6,
            "sent": info.bytes_sent, "world": info.world_size, "stripes": info.stripes,
            "sha": hashlib.sha256(np.ascontiguousarray(host).tobytes()).hexdigest()[:12],
        })
    tree = {"w": make(framework, "float32", 1000, rank + 1), "step": make(framework, "int64", 1, 1)}
    out = comm.all_reduce_tree(tree, "sum")
    rows.append({"framework": framework, "type": "pytree", "dtype": "f32+i64", "op": "sum", "n": 1001,
                 "first": float(to_numpy(out["w"]).reshape(-1)[0]), "ms": comm.last_info.seconds * 1e3,
                 "MB/s": 0.0, "sent": comm.last_info.bytes_sent, "world": comm.last_info.world_size,
                 "stripes": comm.last_info.stripes,
                 "sha": hashlib.sha256(to_numpy(out["w"]).tobytes()).hexdigest()[:12]})
    comm.close()
    print(json.dumps({"rank": rank, "peer_id": comm.peer_id, "rows": rows}), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, default=3)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                    help="the peers' array frameworks, in turn (default: torch,jax,numpy)")
    ap.add_argument("--peer", nargs=2, metavar=("MASTER", "RANK"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    frameworks = a.frameworks.split(",")
    if not frameworks or any(f not in FRAMEWORKS for f in frameworks):
        ap.error(f"--frameworks takes a comma-separated list of {', '.join(FRAMEWORKS)}")
    if a.peer:
        peer(a.peer[0], int(a.peer[1]), a.peers, a.connections, frameworks)
        return 0

    with pa.Master("127.0.0.1:0") as master:
        print(f"master listening on {master.address}; starting {a.peers} peer processes "
              f"({a.connections} connections each; all share this machine's cores)")
        procs = [subprocess.Popen([sys.executable, __file__, "--peers", str(a.peers), "--connections",
                                   str(a.connections), "--frameworks", a.frameworks, "--peer", master.address, str(r)],
                                  stdout=subprocess.PIPE, text=True) for r in range(a.peers)]
        reports = []
        for p in procs:
            out, _ = p.communicate(timeout=300)
            if p.returncode != 0:
                print(f"a peer failed (exit {p.returncode})")
                return 1
            reports.append(json.loads(out.strip().splitlines()[-1]))
        stats = master.stats()

    reports.sort(key=lambda r: r["rank"])
    print(f"\n{'peer':>4} {'result type':>15} {'dtype':>9} {'op':>4} {'elements':>9} {'result[0]':>10} {'ms':>8} "
          f"{'MB/s':>8} {'sent B':>10} {'world':>5} {'stripes':>7} {'sha256':>12}")
    for rep in reports:
        for row in rep["rows"]:
            print(f"{rep['rank']:>4} {row['type']:>15} {row['dtype']:>9} {row['op']:>4} {row['n']:>9} "
                  f"{row['first']:>10.3f} {row['ms']:>8.2f} {row['MB/s']:>8.1f} {row['sent']:>10} {row['world']:>5} "
                  f"{row['stripes']:>7} {row['sha']:>12}")
    identical = all(len({rep["rows"][i]["sha"] for rep in reports}) == 1 for i in range(len(reports[0]["rows"])))
    print(f"\nresults bitwise identical on all peers: {identical}")
    print(f"master: {stats['ops_committed']} operations committed, {stats['ops_aborted']} aborted, "
          f"{stats['topology_updates']} topology updates")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
