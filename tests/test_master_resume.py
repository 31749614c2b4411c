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

pytestmark = pytest.mark.timeout(90)

HEADER = 16  # docs/protocol.md: magic, version, type, length (u32 at offset 8, little-endian), reserved
N = 1000


class HoldingProxy:
    """A TCP forwarder to the master for one peer. Once armed, it stops passing frames from the master at the
    next OP_COMMIT (the peer never hears that verdict); cut() ends every connection through it, and later
    connections go through to whatever listens on the master's address then."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        self.armed = False
        self.held = threading.Event()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                c, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                u = socket.create_connection(self.target, timeout=5)
            except OSError:  # the master is down: the peer sees a refused link and tries again
                c.close()
                continue
            with self.lock:
                self.socks += [c, u]
            threading.Thread(target=self._upstream, args=(c, u), daemon=True).start()
            threading.Thread(target=self._downstream, args=(u, c), daemon=True).start()

    @staticmethod
    def _upstream(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def _downstream(self, src: socket.socket, dst: socket.socket) -> None:
        buf, holding = b"", False
        try:
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
        except OSError:
            pass

    def cut(self) -> None:
        """Ends every connection through the proxy (the peer loses its master link); it keeps accepting."""
        with self.lock:
            socks, self.socks = self.socks, []
            self.armed = False
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        self.cut()
        self.listener.close()


def test_a_peer_that_commits_by_verdict_redoes_the_step_with_the_others():
    """Three peers run the README's loop shape. In step 1 the master's OP_COMMIT of the first all-reduce is held
    back from peer C; A and B get it and start the second all-reduce; the master dies and is restarted on its
    address. A and B's second all-reduce fails; C's first is committed by the new master's verdict, and its
    second raises PeerLostError before reaching the master, so all three redo step 1 from update_topology() and
    every step ends with the same results on every peer, and no other error reaches the loop."""
    master = pa.Master("127.0.0.1:0", peer_timeout=5.0).start()
    address = master.address
    proxy = HoldingProxy(address)
    names = ["A", "B", "C"]
    records: dict = {n: [] for n in names}
    lost: dict = {n: [] for n in names}
    errors: list = []
    joined = threading.Barrier(3, timeout=30)
    past_first = {n: threading.Event() for n in names}
    # Step 1's first all-reduce starts once all three are past its update_topology(), the proxy armed.
    in_step_1 = threading.Barrier(3, action=lambda: setattr(proxy, "armed", True), timeout=30)

    def loop(name: str) -> None:
        comm = pa.Communicator(proxy.address if name == "C" else address, connections=1, connect_timeout=10.0,
                               data_timeout=10.0)
        try:
            comm.connect()
            comm.wait_for_peers(3, timeout=30)
            joined.wait()
            step = 0
            while step < 3:
                try:
                    comm.update_topology()
                    if step == 1 and not past_first[name].is_set():
                        in_step_1.wait()
                    agreed = int(comm.all_reduce(np.array([step], dtype=np.int64), "max")[0])
                    if agreed == 1:
                        past_first[name].set()
                    total = comm.all_reduce(np.full(N, 1.0, dtype=np.float32), "sum")
                except pa.PeerLostError as e:
                    lost[name].append((step, str(e)))
                    continue
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
        assert proxy.held.wait(30), "the master never committed step 1's first all-reduce"
        assert past_first["A"].wait(30) and past_first["B"].wait(30), errors
        assert not past_first["C"].is_set()  # C still waits for the verdict
        master.stop()  # the master dies with A and B past the first all-reduce and C in doubt about it
        proxy.cut()
        master = pa.Master(address, peer_timeout=5.0).start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a peer hung"
    finally:
        proxy.close()
        master.stop()
    assert not errors, errors
    assert past_first["C"].is_set()
    expected = [(s, 3, 3.0, 3.0) for s in range(3)]
    assert all(records[n] == expected for n in names), records
    for n in names:  # every peer redid step 1, and only it
        assert [s for s, _ in lost[n]] == [1], lost
    assert "redo the step" in lost["C"][0][1], lost["C"]  # raised before the master (waiting for it, or after)
