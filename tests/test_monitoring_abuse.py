"""The master's HTTP side under abuse (pccl_arrays/http_server.py): malformed and oversized requests, 500 idle
connections and a slow-loris client, while three peers all-reduce in a loop. Every bad request gets its 4xx,
the page keeps answering, and no operation of the peers fails."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

import pccl_arrays as pa
from pccl_arrays.http_server import HttpServer

pytestmark = pytest.mark.timeout(120)


def raw(address: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Sends data, then reads the whole response (the server closes after it)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):  # it answered and closed before all of it went
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


@pytest.fixture
def server():
    s = HttpServer("127.0.0.1:0", {"/": lambda: ("text/plain", b"hello"),
                                   "/boom": lambda: 1 / 0}, max_connections=16, request_timeout=1.0)
    yield s
    s.stop()


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
    (b"HEAD / HTTP/1.1\r\n\r\n", 200),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET /\r\n\r\n", 400),
    (b"GET  / HTTP/1.1\r\n\r\n", 400),
    (b"\x00\xff\xfe" * 50 + b"\r\n\r\n", 400),
    (b"G\xc3\xa9T / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 405),
    (b"GET /missing HTTP/1.1\r\n\r\n", 404),
    (b"GET /boom HTTP/1.1\r\n\r\n", 500),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),
    (b"GET / HTTP/1.1\r\n" + b"a" * 100000, 431),
], ids=["get", "head", "garbage", "no-version", "double-space", "binary", "non-ascii", "http2", "post", "404",
        "handler-raises", "huge-header", "no-end"])
def test_each_bad_request_gets_its_status_and_the_server_goes_on(server, request_bytes, status):
    response = raw(server.address, request_bytes)
    assert status_of(response) == status, response[:200]
    assert b"Connection: close" in response
    if request_bytes.startswith(b"HEAD"):
        assert response.endswith(b"\r\n\r\n")  # no body
    assert raw(server.address, b"GET / HTTP/1.1\r\n\r\n").endswith(b"hello")


def test_a_slow_client_gets_408_and_idle_ones_are_dropped_oldest_first(server):
    host, port = server.address.rsplit(":", 1)
    slow = socket.create_connection((host, int(port)), timeout=10)
    t0 = time.monotonic()
    response = b""
    try:
        for b in b"GET / HTTP/1.1\r\nX: y\r\n":  # a byte every 0.1 s, never the end of the head
            slow.sendall(bytes([b]))
            time.sleep(0.1)
            if time.monotonic() - t0 > 5:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        while chunk := slow.recv(4096):
            response += chunk
    except ConnectionResetError:
        pass
    slow.close()
    assert status_of(response) == 408 and time.monotonic() - t0 < 5.0
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(40)]  # cap: 16
    try:
        assert raw(server.address, b"GET / HTTP/1.1\r\n\r\n").endswith(b"hello")
        assert server.counts["dropped"] >= 40 - 16
        assert idle[0].recv(10) == b""  # the oldest were closed
    finally:
        for s in idle:
            s.close()


def test_abuse_leaves_the_master_serving_peers_with_no_failed_operation():
    with pa.Master("127.0.0.1:0", peer_timeout=5.0, rejoin_window=0.0, http="127.0.0.1:0") as master:
        address, http = master.address, master.http_address
        host, port = http.rsplit(":", 1)
        stop = threading.Event()
        done = threading.Barrier(3, timeout=60)
        counts, errors = [0, 0, 0], []

        def peer(i: int) -> None:
            try:
                with pa.Communicator(address, connections=2, data_timeout=10.0) as comm:
                    comm.wait_for_peers(3, timeout=30)
                    while True:
                        flag = comm.all_reduce(np.array([stop.is_set()], dtype=np.int64), "max")[0]
                        if flag:
                            break
                        r = comm.all_reduce(np.full(1 << 14, i, dtype=np.float32), "sum")
                        assert r[0] == 3.0
                        counts[i] += 1
                    done.wait()
            except BaseException as e:  # noqa: BLE001 - handed to the test thread
                errors.append(e)

        threads = [threading.Thread(target=peer, args=(i,), daemon=True) for i in range(3)]
        for t in threads:
            t.start()
        idle = []
        try:
            for _ in range(500):
                idle.append(socket.create_connection((host, int(port)), timeout=10))
            for bad in (b"GARBAGE\r\n\r\n", b"\xff" * 70000, b"DELETE /status.json HTTP/1.1\r\n\r\n",
                        b"GET / HTTP/1.1\r\nX: " + b"a" * 50000 + b"\r\n\r\n"):
                assert 400 <= status_of(raw(http, bad)) < 600
            slow = socket.create_connection((host, int(port)), timeout=10)
            slow.sendall(b"GET /metrics HTTP/1.1\r\n")  # and nothing more: the server's deadline ends it
            page = urllib.request.urlopen(f"http://{http}/", timeout=10).read()
            assert b"pccl_arrays master" in page
            t0 = time.monotonic()
            while time.monotonic() - t0 < 2.0:  # the page and the metrics answer while the peers run
                assert urllib.request.urlopen(f"http://{http}/metrics", timeout=10).status == 200
            assert status_of(slow.recv(4096) or b"HTTP/1.1 000 closed") in (408, 0)
            slow.close()
        finally:
            for s in idle:
                s.close()
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors
        assert min(counts) > 0 and len(set(counts)) == 1, counts
        stats = master.stats()
        assert stats["ops_aborted"] == 0 and stats["ops_rejected"] == 0, stats
        assert stats["evictions"] == 0 and stats["dropped_connections"] == 0, stats


def test_a_route_may_stop_its_own_server():
    """A finalizer (a Master or Communicator dropped during a request) may stop the server from its own thread:
    no deadlock, no error, the thread ends and the port closes."""
    holder: dict = {}

    def stop_route():
        holder["server"].stop()
        return "text/plain", b"bye"

    holder["server"] = server = HttpServer("127.0.0.1:0", {"/stop": stop_route})
    response = raw(server.address, b"GET /stop HTTP/1.1\r\n\r\n")
    assert response == b"" or status_of(response) == 200
    server._thread.join(5)
    assert not server._thread.is_alive()
    host, port = server.address.rsplit(":", 1)
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2)
    server.stop()  # again, from another thread: nothing to do
