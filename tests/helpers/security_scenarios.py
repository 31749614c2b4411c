"""What peers do in the authenticated-run tests (tests/test_security.py): the training loop with a secret,
optionally reached through a man in the middle (mitm.py) that this peer runs and advertises."""

from __future__ import annotations

import threading
import time

import numpy as np

from mitm import Mitm
from pccl_arrays import errors


def secure_loop(ctx) -> dict:
    """All-reduces until the test creates OUT/STOP (agreed with a max all-reduce, so every peer stops at the
    same round), or for ``rounds`` rounds. Each round's sum must be exact; a PeerLostError is recorded and the
    round retried. Args: secret, n, rounds, relay (this peer is reached through a Mitm), flip_at (the relay
    flips the byte at that offset of the first incoming stream that gets there), record (the relay's forward
    bytes go to OUT/relay{rank}.bin), known (rank 0's input is a known byte pattern)."""
    a = ctx.args
    kw = {"secret": a.get("secret")}
    relay = None
    if a.get("relay"):
        relay = Mitm(flip_forward_at=a.get("flip_at"), stall_forward_at=a.get("stall_at")).start()
        kw.update(listen="127.0.0.1:0", advertise=relay.address)
    comm = ctx.comm(**kw)
    if relay is not None:
        def point_relay():  # the data port exists once connect() has started
            while comm.data_port == 0:
                time.sleep(0.001)
            relay.set_target(f"127.0.0.1:{comm.data_port}")
        threading.Thread(target=point_relay, daemon=True).start()
    ctx.join(comm)
    ctx.event(f"data_port {comm.data_port}")
    n, rounds = a.get("n", 1 << 16), a.get("rounds", 1 << 30)
    pattern = (np.arange(n) % 1000).astype(np.float32)
    x = pattern * (ctx.rank + 1)
    if a.get("known") and ctx.rank == 0:
        x = np.frombuffer((b"KNOWN-PLAINTEXT!" * (n // 4 + 1))[: 4 * n], dtype=np.float32).copy()
        x[np.isnan(x) | np.isinf(x)] = 0
    expected = pattern * sum(range(1, ctx.world + 1))
    exact, failures, r = [], [], 0
    stop_file = ctx.out / "STOP"
    while r < rounds:
        t0 = time.monotonic()
        try:
            stop = comm.all_reduce(np.array([int(stop_file.exists())], dtype=np.int64), "max")
            if stop[0]:
                break
            t0 = time.monotonic()
            y = comm.all_reduce(x)
        except errors.PeerLostError as e:
            failures.append({"round": r, "error": type(e).__name__, "message": str(e),
                             "seconds": time.monotonic() - t0})
            continue
        exact.append(bool(np.array_equal(y, expected)) if not a.get("known") else True)
        r += 1
        if r == 1:
            ctx.event("first_round")
    comm.close()
    out = {"rounds": r, "exact": all(exact), "failures": failures}
    if relay is not None:
        out["relay_flipped"], out["relay_stalled"] = relay.flipped, relay.stalled
        if a.get("record"):
            (ctx.out / f"relay{ctx.rank}.bin").write_bytes(relay.recorded())
        relay.stop()
    return out
