"""A TCP forwarder for tests that come between a peer and its master (tests/test_master_restart.py cuts it,
tests/test_master_resume.py holds frames back in it)."""

from __future__ import annotations

import socket
import threading


class Proxy:
    """Forwards every connection made to :attr:`address` to `target` (dialed afresh for each one, so a master
    restarted on its address is reached again). :meth:`drop` ends the connections through it and keeps
    accepting; :meth:`cut` also closes the listener (the peers behind it cannot reach that master again).
    Subclasses may override :meth:`forward` to look at or hold back the bytes of one direction."""

    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.socks: list[socket.socket] = []
        self.dropped: list[socket.socket] = []  # shut down, closed by cut() once their pumps are gone
        self.lock = threading.Lock()
        self.closed = False
        self.connections = 0
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

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
            except OSError:  # nobody listens there now: the peer sees its link end and tries again
                c.close()
                continue
            for s in (c, u):
                s.settimeout(None)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                if self.closed:
                    c.close()
                    u.close()
                    return
                self.socks += [c, u]
                self.connections += 1
                for a, b, up in ((c, u, True), (u, c, False)):
                    self.threads.append(threading.Thread(target=self._pump, args=(a, b, up), daemon=True))
                    self.threads[-1].start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            self.forward(src, dst, upstream)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def forward(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        """Copies src to dst until src ends (upstream: toward the target)."""
        while data := src.recv(65536):
            dst.sendall(data)

    def drop(self) -> None:
        """Shuts every connection through the proxy down (their pumps see the end and stop); it keeps accepting."""
        with self.lock:
            socks, self.socks = self.socks, []
            self.dropped += socks
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """Shuts every connection down and stops accepting, then closes the sockets once no thread uses them:
        closing a socket another thread reads is a race on its descriptor."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            threads = list(self.threads)
        self.drop()
        for t in threads:  # the acceptor polls `closed` every 0.05 s; the pumps saw their sockets shut down
            t.join(5)
        self.listener.close()
        for s in self.dropped:
            s.close()
