"""A small read-only HTTP server for monitoring (docs/monitoring.md): GET (and HEAD) of a fixed set of paths.

How this works. One thread runs a selector loop over the listening socket and every connection; nothing else
of the master or peer runs on it, and it takes no lock of theirs except through the route functions (which copy
what they need under the core's lock and format outside it). Each connection may send one request head of at
most ``max_request_bytes`` within ``request_timeout`` seconds of being accepted; then it gets one response and is
closed (``Connection: close``). So:

- a slow client (slow-loris) holds a connection for at most ``request_timeout`` seconds, then gets 408;
- idle or slow connections never crowd out a scraper: past ``max_connections`` the oldest one is closed for
  each new one (like a master's ungreeted connections);
- an oversized head gets 431, a malformed request line 400, another method 405 (nothing can change state
  through HTTP), an unknown path 404, a handler that raises 500 (logged), and the loop goes on in every case;
- a response is written without blocking; a client that does not read it is dropped at the same deadline.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
import threading
import time
from typing import Callable, Optional

from .errors import InvalidArgumentError

log = logging.getLogger("pccl_arrays")

# A route returns (content type, body bytes) or (content type, body, extra header lines as bytes); it is called on
# the HTTP thread for each GET / HEAD of its path.
Route = Callable[[], tuple]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 505: "HTTP Version Not Supported"}


def parse_listen(listen: str, what: str = "http") -> tuple[str, int]:
    """``host:port`` (port 0: the OS chooses) -> (host, port); a bare port means 127.0.0.1."""
    if isinstance(listen, int) and not isinstance(listen, bool):
        listen = f"127.0.0.1:{listen}"
    if not isinstance(listen, str) or not listen:
        raise InvalidArgumentError(f"{what} must be 'host:port' (e.g. '127.0.0.1:9100'), not {listen!r}")
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", listen
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise InvalidArgumentError(f"{what} must be 'host:port' with a port 0-65535, not {listen!r}")
    return host, int(port)


class _Conn:
    __slots__ = ("sock", "since", "inbox", "outbox", "responded")

    def __init__(self, sock: socket.socket, now: float):
        self.sock, self.since = sock, now
        self.inbox, self.outbox = b"", b""
        self.responded = False


class HttpServer:
    """Serves ``routes`` ({path: Route}) on ``listen`` from a thread of its own until :meth:`stop`."""

    def __init__(self, listen: str, routes: dict, *, max_connections: int = 64, max_request_bytes: int = 8192,
                 request_timeout: float = 5.0, what: str = "http"):
        host, port = parse_listen(listen, what)
        self._routes = dict(routes)
        self._max_connections, self._max_request = max_connections, max_request_bytes
        self._timeout = request_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind((host, port))
        except OSError as e:
            self._listener.close()
            raise InvalidArgumentError(f"{what}: cannot listen on {host}:{port}: {e.strerror}") from None
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.host, self.port = host, self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._conns: dict[int, _Conn] = {}  # by fd, in accept order (oldest first)
        self._running = True
        self.counts = {"requests": 0, "bad_requests": 0, "dropped": 0}  # read by tests and the exporter
        self._thread = threading.Thread(target=self._loop, name=f"pccl-{what}", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Stops serving and closes every socket; safe to call again, and from a route (a finalizer may run on
        the server's own thread: then the loop ends after this request)."""
        if not self._running:
            return
        self._running = False
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(10)

    # -- the loop -------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self._serve()
        finally:  # the loop's own sockets are closed by the loop, whoever stopped it
            for c in list(self._conns.values()):
                self._close(c)
            for s in (self._listener, self._wake_r, self._wake_w):
                s.close()
            self._sel.close()

    def _serve(self) -> None:
        while self._running:
            for key, events in self._sel.select(timeout=0.25):
                if key.data == "wake":
                    return
                if key.data is None:
                    self._accept()
                    continue
                c = self._conns.get(key.fd)
                if c is None:
                    continue
                try:
                    if events & selectors.EVENT_READ and not c.responded:
                        self._read(c)
                    if c.outbox and events & selectors.EVENT_WRITE:
                        self._write(c)
                except OSError:
                    self._close(c)
            self._expire(time.monotonic())

    def _accept(self) -> None:
        for _ in range(64):  # a burst of connections: bounded work per turn
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: leave them in the backlog for a later turn
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED):
                    log.warning("http: accept failed: %s", e)
                return
            sock.setblocking(False)
            while len(self._conns) >= self._max_connections:  # the oldest goes (idle, slow or stuck)
                self.counts["dropped"] += 1
                self._close(next(iter(self._conns.values())))
            c = _Conn(sock, time.monotonic())
            self._conns[sock.fileno()] = c
            self._sel.register(sock, selectors.EVENT_READ, "conn")

    def _read(self, c: _Conn) -> None:
        data = c.sock.recv(4096)
        if not data:
            self._close(c)
            return
        c.inbox += data
        end = c.inbox.find(b"\r\n\r\n")
        if end < 0:
            if len(c.inbox) > self._max_request:
                self._respond(c, 431, b"request head too large\n")
            return
        if end > self._max_request:
            self._respond(c, 431, b"request head too large\n")
            return
        self._handle(c, c.inbox[:end])

    def _handle(self, c: _Conn, head: bytes) -> None:
        self.counts["requests"] += 1
        try:
            line = head.split(b"\r\n", 1)[0].decode("ascii")
            method, target, version = line.split(" ")
        except (UnicodeDecodeError, ValueError):
            self._respond(c, 400, b"malformed request line\n")
            return
        if not version.startswith("HTTP/1."):
            self._respond(c, 505, b"HTTP/1.x only\n")
            return
        if method not in ("GET", "HEAD"):
            self._respond(c, 405, b"read-only: GET or HEAD\n", extra=b"Allow: GET, HEAD\r\n")
            return
        route = self._routes.get(target.split("?", 1)[0])
        if route is None:
            self._respond(c, 404, b"not found; try " + ", ".join(sorted(self._routes)).encode() + b"\n")
            return
        try:
            ctype, body, *extra = route()
        except Exception:  # noqa: BLE001 - a bug in a page must not stop the server
            log.exception("http: %s failed", target)
            self._respond(c, 500, b"internal error (logged)\n")
            return
        self._respond(c, 200, body, ctype=ctype, extra=extra[0] if extra else b"", head_only=method == "HEAD")

    def _respond(self, c: _Conn, status: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                 extra: bytes = b"", head_only: bool = False) -> None:
        if status >= 400:
            self.counts["bad_requests"] += 1
        head = (f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n"
                "Connection: close\r\n").encode() + extra + b"\r\n"
        c.outbox = head + (b"" if head_only else body)
        c.inbox, c.responded = b"", True
        self._sel.modify(c.sock, selectors.EVENT_WRITE, "conn")
        self._write(c)

    def _write(self, c: _Conn) -> None:
        try:
            n = c.sock.send(c.outbox)
        except (BlockingIOError, InterruptedError):
            return
        c.outbox = c.outbox[n:]
        if not c.outbox:
            self._close(c)

    def _expire(self, now: float) -> None:
        for c in list(self._conns.values()):  # at most max_connections
            if now - c.since <= self._timeout:
                continue
            if c.responded:
                self._close(c)  # it would not read its response
                continue
            try:
                self._respond(c, 408, b"request not complete in time\n")
            except OSError:
                self._close(c)
            if c.sock.fileno() >= 0:
                c.since = now - self._timeout + 1.0  # one more second to take the 408, then closed

    def _close(self, c: _Conn) -> None:
        fd = c.sock.fileno()
        if fd >= 0 and self._conns.pop(fd, None) is not None:
            try:
                self._sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
        c.sock.close()

