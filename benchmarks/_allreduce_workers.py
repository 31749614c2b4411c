"""The peer processes of benchmarks/allreduce.py, one per rank: pccl_arrays, torch.distributed (gloo), and a
plain TCP sender for the loopback bound. Each is ``python _allreduce_workers.py KIND ...`` and hands in one
result (_procs.py)."""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _procs  # noqa: E402
from _common import expected_sum, join_group, pattern, timed_calls  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20


def _measure(sizes, repeats, world, rank, barrier, modes) -> list[dict]:
    """The timing loop shared by both systems: per size, each mode in turn on the same input.
    modes: {name: prepare}, prepare(x) -> (reset, run, result, info); reset() runs outside the timing."""
    import numpy as np
    rows = []
    for size, reps in zip(sizes, repeats):
        n = size // 4
        x = pattern(n, rank)
        expected = expected_sum(n, world)
        for mode, prepare in modes.items():
            reset, run, result, info = prepare(x)
            for _ in range(2):  # untimed warm-up, checked; twice, so the pool of fresh results holds two
                reset()
                barrier()
                run()
            ok_first = bool(np.array_equal(result(), expected))
            times = timed_calls(reps, reset, barrier, run)
            ok_last = bool(np.array_equal(result(), expected))
            rows.append({"bytes": size, "mode": mode, "seconds": times, "correct": ok_first and ok_last,
                         "info": info()})
            del reset, run, result, info
        del x, expected
    return rows


# How a pccl_arrays user gets the result: a new array (what every JAX user gets), a preallocated ``out``, or x
# itself. Each prepare returns (reset, run, result, info) for _measure.
def _pccl_modes(c) -> dict:
    import numpy as np

    def info():
        i = c.last_info
        return {"stripes": i.stripes, "world_size": i.world_size, "bytes_sent": i.bytes_sent,
                "bytes_received": i.bytes_received, "core_seconds": i.seconds}

    def fresh(x):
        held = [None]  # the previous result stays alive during the next call, as in `y = all_reduce(x)` loops

        def run():
            held[0] = c.all_reduce(x)
        return (lambda: None), run, (lambda: held[0]), info

    def out(x):
        y = np.empty_like(x)
        y.fill(0)  # touch the pages outside the timed region

        def run():
            c.all_reduce(x, out=y)
        return (lambda: None), run, (lambda: y), info

    def inplace(x):
        t = x.copy()

        def run():
            c.all_reduce(t, out=t)
        return (lambda: np.copyto(t, x)), run, (lambda: t), info
    return {"fresh": fresh, "out": out, "inplace": inplace}


def worker_pccl(a) -> dict:
    import numpy as np
    import pccl_arrays as pa

    kw = {"piece_bytes": a.piece_bytes} if a.piece_bytes else {}
    c = pa.Communicator(a.master, connections=a.connections, listen="127.0.0.1:0", **kw)
    join_group(c, a.world)
    tiny, tiny_out = np.zeros(1, np.float32), np.zeros(1, np.float32)

    def barrier():
        c.all_reduce(tiny, out=tiny_out)

    modes = {m: p for m, p in _pccl_modes(c).items() if m in a.modes}
    rows = _measure(a.sizes, a.repeats, a.world, a.rank, barrier, modes)
    c.close()
    return {"rows": rows}


def worker_gloo(a) -> dict:
    import datetime
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=a.rank, world_size=a.world,
                            timeout=datetime.timedelta(seconds=300))
    tiny = torch.zeros(1, dtype=torch.float32)

    def barrier():
        dist.all_reduce(tiny)

    def prepare(x):
        src = torch.from_numpy(x)
        t = src.clone()

        def run():
            dist.all_reduce(t)  # in place: the only form gloo has; reset() restores the input outside the timing
        return (lambda: t.copy_(src)), run, (lambda: t.numpy()), (lambda: {})

    rows = _measure(a.sizes, a.repeats, a.world, a.rank, barrier, {"inplace": prepare})
    dist.destroy_process_group()
    return {"rows": rows, "torch": torch.__version__}


def worker_tcpsend(a) -> dict:
    """Sends a.bytes over each of a.streams connections, a.rounds times; times each round until all acks."""
    socks = []
    for _ in range(a.streams):
        s = socket.create_connection(("127.0.0.1", a.port))
        socks.append(s)
    buf = memoryview(bytearray(b"\x5a" * a.chunk))
    per_stream = a.bytes // a.streams

    def pump(s):
        left = per_stream
        while left:
            k = min(left, a.chunk)
            s.sendall(buf[:k])
            left -= k
        if s.recv(1) != b"k":
            raise RuntimeError("no ack from the receiver")

    seconds = []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        threads = [threading.Thread(target=pump, args=(s,)) for s in socks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds.append(time.perf_counter() - t0)
    for s in socks:
        s.close()
    return {"seconds": seconds, "bytes": per_stream * a.streams}


def worker_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="_allreduce_workers.py")
    ap.add_argument("kind", choices=["pccl", "gloo", "tcpsend"])
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=1)
    ap.add_argument("--master", default="")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--sizes", default="")
    ap.add_argument("--repeats", default="")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--piece-bytes", type=int, default=0)
    ap.add_argument("--bytes", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=4 * MiB)
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--modes", default="fresh,out,inplace")
    a = ap.parse_args(argv)
    a.sizes = [int(s) for s in a.sizes.split(",") if s]
    a.repeats = [int(s) for s in a.repeats.split(",") if s]
    a.modes = a.modes.split(",")
    fn = {"pccl": worker_pccl, "gloo": worker_gloo, "tcpsend": worker_tcpsend}[a.kind]
    _procs.report(fn(a))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
