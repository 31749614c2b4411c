"""A man in the middle for tests: a TCP relay that forwards both ways, records what flows toward the target,
can flip one byte at a chosen offset of a stream (once, on the first connection that gets that far), and can
stop reading a forward stream at a chosen offset (once: a slow reader that keeps the connection open)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Optional


class Mitm:
    def __init__(self, target: Optional[str] = None, flip_forward_at: Optional[int] = None,
                 flip_backward_at: Optional[int] = None, stall_forward_at: Optional[int] = None):
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._target: Optional[tuple[str, int]] = None
        self._target_set = threading.Event()
        self._flip = {"forward": flip_forward_at, "backward": flip_backward_at}
        self._lock = threading.Lock()
        self.flipped: list[tuple[str, int]] = []  # (direction, connection index) of the flip done
        self._stall_at = stall_forward_at
        self.stalled: list[int] = []  # the connection whose forward stream stopped being read
        self.forward: list[bytearray] = []  # per connection, the bytes sent toward the target
        self._socks: list[socket.socket] = []
        self._stopped = False
        if target:
            self.set_target(target)

    def set_target(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._target_set.set()

    def start(self) -> "Mitm":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        for s in list(self._socks):
            try:
                s.close()
            except OSError:
                pass

    def recorded(self) -> bytes:
        return b"".join(bytes(b) for b in self.forward)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if not self._target_set.wait(30):
                client.close()
                continue
            try:
                server = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                index = len(self.forward)
                self.forward.append(bytearray())
                self._socks += [client, server]
            for src, dst, direction in ((client, server, "forward"), (server, client, "backward")):
                threading.Thread(target=self._pipe, args=(src, dst, direction, index), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, direction: str, index: int) -> None:
        offset = 0
        at = self._flip[direction]
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                with self._lock:
                    stall = (direction == "forward" and self._stall_at is not None and not self.stalled and
                             offset + len(data) > self._stall_at)
                    if stall:
                        self.stalled.append(index)
                if stall:  # stop reading (the bytes of this recv are never delivered); keep the socket open
                    while not self._stopped:
                        time.sleep(0.05)
                    return
                with self._lock:
                    if at is not None and not self.flipped and offset <= at < offset + len(data):
                        data = bytearray(data)
                        data[at - offset] ^= 0x01
                        self.flipped.append((direction, index))
                    if direction == "forward":
                        self.forward[index] += data
                dst.sendall(data)
                offset += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
