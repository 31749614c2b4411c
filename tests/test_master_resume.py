"""Where the peers of a group meet again after losing their master (docs/master.md, "What a peer does when the
master is lost"): at update_topology(), whatever call each of them was in.

The case that needs it: the master commits an operation and dies while its OP_COMMIT is on the way. Peers that
got it go on to the step's next collective, which fails with the lost master (PeerLostError: their loop redoes
the step from update_topology()). A peer that did not get it holds the operation in doubt, and the next master's
verdict commits it, so that peer goes on to the next collective too — one call ahead of the others. Unless that
collective raises as well, it meets the others' first call of the redone step: a different operation under the
same tag (OperationMismatchError, or worse, two operations that happen to look alike combined), or a sync
against an all-reduce. The loop here is the README's shape (update_topology(), then two collectives); the
master's OP_COMMIT to one peer is held back by a proxy on its master link, so the case is deterministic.
"""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest

import pccl_arrays as pa
from pccl_arrays import _core_testing
from tcp_proxy import Proxy

pytestmark = pytest.mark.timeout(90)

HEADER = 16  # docs/protocol.md: magic, version, type, length (u32 at offset 8, little-endian), reserved
N = 1000


class HoldingProxy(Proxy):
    """The forwarder of one peer's master link. Once armed, it stops passing frames from the master at the next
    OP_COMMIT (the peer never hears that verdict); drop() ends the link, and the peer's next one goes through
    to whatever listens on the master's address then."""

    def __init__(self, target: str):
        super().__init__(target)
        self.armed = False
        self.held = threading.Event()

    def forward(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        if upstream:
            return super().forward(src, dst, upstream)
        buf, holding = b"", False
        while data := src.recv(65536):
            buf += data
            while len(buf) >= HEADER:
                end = HEADER + int.from_bytes(buf[8:12], "little")
                if len(buf) < end:
                    break
                frame, buf = buf[:end], buf[end:]
                if self.armed and _core_testing.decode_frame(frame)[0] == "op_commit":
                    holding = True
                    self.held.set()
                if not holding:
                    dst.sendall(frame)


class Hooks:
    """What a peer's loop reports around step 1's first all-reduce: the three start it together with the proxy
    armed (once), and each says when it has its result (then goes on to the second)."""

    def __init__(self, name: str, in_step_1: threading.Barrier, past_first: threading.Event):
        self.name, self.in_step_1, self.past_first, self.waited = name, in_step_1, past_first, False

    def before_first(self, step: int) -> None:
        if step == 1 and not self.waited:
            self.waited = True
            self.in_step_1.wait()

    def after_first(self, agreed: int) -> None:
        if agreed == 1:
            self.past_first.set()


def _readme_step(comm, step: int, lost: list, hooks: Hooks):
    """update_topology(), then two all-reduces; a PeerLostError redoes the whole step (None)."""
    try:
        comm.update_topology()
        hooks.before_first(step)
        agreed = int(comm.all_reduce(np.array([step], dtype=np.int64), "max")[0])
        hooks.after_first(agreed)
        return agreed, comm.all_reduce(np.full(N, 1.0, dtype=np.float32), "sum")
    except pa.PeerLostError as e:
        lost.append((step, str(e)))
        return None


def _retry_each_call_step(comm, step: int, lost: list, hooks: Hooks):
    """The same two all-reduces, each retried on PeerLostError until it commits; never update_topology()."""
    def retried(fn):
        while True:
            try:
                return fn()
            except pa.PeerLostError as e:
                lost.append((step, str(e)))

    hooks.before_first(step)
    agreed = int(retried(lambda: comm.all_reduce(np.array([step], dtype=np.int64), "max"))[0])
    hooks.after_first(agreed)
    return agreed, retried(lambda: comm.all_reduce(np.full(N, 1.0, dtype=np.float32), "sum"))


@pytest.mark.parametrize("step_fn", [_readme_step, _retry_each_call_step], ids=["redo-the-step", "retry-each-call"])
def test_a_peer_that_commits_by_verdict_meets_the_others_at_the_same_call(step_fn):
    """Three peers step: the README's shape (update_topology(), two all-reduces, a failure redoes the step), or a
    loop that retries each failed call and never calls update_topology(). In step 1 the master's OP_COMMIT of the
    first all-reduce is held back from peer C; A and B get it and start the second all-reduce; the master dies
    and is restarted on its address. A and B's second all-reduce fails; C's first is committed by the new
    master's verdict, and its second raises PeerLostError before reaching the master, so all three redo step 1
    (or its second call) together: every step ends with the same results on every peer, each peer saw failures
    in step 1 only, and no other error reached the loop (no livelock either: the retry after a failure the
    loop has seen goes to the master)."""
    master = pa.Master("127.0.0.1:0", peer_timeout=5.0).start()
    address = master.address
    proxy = HoldingProxy(address)
    names = ["A", "B", "C"]
    records: dict = {n: [] for n in names}
    lost: dict = {n: [] for n in names}
    errors: list = []
    joined = threading.Barrier(3, timeout=30)
    past_first = {n: threading.Event() for n in names}
    # Step 1's first all-reduce starts once all three are ready for it, the proxy armed.
    in_step_1 = threading.Barrier(3, action=lambda: setattr(proxy, "armed", True), timeout=30)

    def loop(name: str) -> None:
        comm = pa.Communicator(proxy.address if name == "C" else address, connections=1, connect_timeout=10.0,
                               data_timeout=10.0)
        hooks = Hooks(name, in_step_1, past_first[name])
        try:
            comm.connect()
            comm.wait_for_peers(3, timeout=30)
            joined.wait()
            step = 0
            while step < 3:
                done = step_fn(comm, step, lost[name], hooks)
                if done is None:
                    continue
                agreed, total = done
                records[name].append((agreed, comm.last_info.world_size, float(total[0]), float(total.min())))
                step = agreed + 1
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append((name, e))
        finally:
            comm.close()

    threads = [threading.Thread(target=loop, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    try:
        assert proxy.held.wait(30), f"the master never committed step 1's first all-reduce {errors}"
        assert past_first["A"].wait(30) and past_first["B"].wait(30), errors
        assert not past_first["C"].is_set()  # C still waits for the verdict
        master.stop()  # the master dies with A and B past the first all-reduce and C in doubt about it
        proxy.armed = False
        proxy.drop()
        master = pa.Master(address, peer_timeout=5.0).start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a peer hung"
    finally:
        proxy.cut()
        master.stop()
    assert not errors, errors
    assert past_first["C"].is_set()
    expected = [(s, 3, 3.0, 3.0) for s in range(3)]
    assert all(records[n] == expected for n in names), records
    for n in names:  # failures in step 1 only (A and B: perhaps one more, local, after the one mid-call)
        assert {s for s, _ in lost[n]} == {1} and 1 <= len(lost[n]) <= 2, lost
    assert "redo the step" in lost["C"][0][1], lost["C"]  # raised before the master (waiting for it, or after)
