"""Run as a script by test_arrays_frameworks.py: two peers (threads) all-reduce large arrays of one framework and
report how much the process's peak resident memory grew during each operation (Linux /proc)."""

from __future__ import annotations

import json
import sys
import threading

import numpy as np

import pccl_arrays as pa
from pccl_arrays.testing import process_status, reset_peak_rss


def main() -> None:
    fw, n = sys.argv[1], int(sys.argv[2])
    if fw == "torch":
        import torch

        make = lambda k: torch.full((n,), float(k))  # noqa: E731
        empty = lambda: torch.zeros(n)  # noqa: E731
    elif fw == "jax":
        import jax.numpy as jnp

        make = lambda k: jnp.full((n,), float(k), dtype=jnp.float32)  # noqa: E731
        empty = None
    else:
        make = lambda k: np.full(n, float(k), dtype=np.float32)  # noqa: E731
        empty = lambda: np.ones(n, dtype=np.float32)  # noqa: E731  (ones: pages really allocated up front)

    with pa.Master("127.0.0.1:0") as master:
        comms = [pa.Communicator(master.address, connections=2) for _ in range(2)]
        xs = [make(k + 1) for k in range(2)]
        outs = [empty() for _ in range(2)] if empty else None
        results: dict = {}

        def run(kind: str) -> None:
            errors = []

            def body(k):
                try:
                    c = comms[k]
                    if kind == "connect":
                        c.connect(timeout=20)
                        while c.total_world_size < 2:
                            if c.are_peers_pending():
                                c.update_topology()
                        c.all_reduce(np.ones(1024, dtype=np.float32))  # open the data connections
                    elif kind == "out":
                        c.all_reduce(xs[k], out=outs[k])
                    elif kind == "inplace":
                        c.all_reduce(xs[k], out=xs[k])
                    elif kind == "new":
                        results[k] = c.all_reduce(xs[k])
                except BaseException as e:
                    errors.append(e)

            ts = [threading.Thread(target=body, args=(k,)) for k in range(2)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            if errors:
                raise errors[0]

        run("connect")
        report = {"array_bytes": n * 4}
        kinds = ["new"] if fw == "jax" else ["out", "inplace", "new"]
        for kind in kinds:
            reset_peak_rss()
            before = process_status().rss
            run(kind)
            report[kind] = process_status().peak_rss - before
            results.clear()
        for c in comms:
            c.close()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
