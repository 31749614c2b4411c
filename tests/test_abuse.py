"""Connections that abuse the master without breaking a frame (issue 16, docs/protocol.md "Limits"): hundreds of
connections that never say HELLO, greetings that claim a megabyte, DATA frames aimed at the master. Honest
peers keep joining and all-reducing, within a bound; the master drops the abusers at the header or when too
many wait, and its peak memory stays small."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from pccl_arrays import _core
from procs import spawn, start_master_process, wait_all

MAGIC, VERSION = 0x52414350, _core.PROTOCOL_VERSION
TYPES = {"hello": 1, "data": 33}


def header(type_code: int, length: int) -> bytes:
    return struct.pack("<IHHII", MAGIC, VERSION, type_code, length, 0)


def peak_rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def closed_by_peer(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.timeout(120)
def test_a_flood_of_idle_and_lying_connections_leaves_honest_peers_working(tmp_path):
    master, address = start_master_process(tmp_path)
    host, port = address.rsplit(":", 1)
    socks = []
    try:
        rss_before = peak_rss_mib(master.pid)
        silent = [socket.create_connection((host, int(port))) for _ in range(600)]  # never a byte
        big_hello = []
        for _ in range(100):  # a HELLO that claims 1 MiB, then one byte of it
            s = socket.create_connection((host, int(port)))
            s.sendall(header(TYPES["hello"], 1 << 20) + b"x")
            big_hello.append(s)
        data = []
        for _ in range(50):  # DATA to the master, which never carries any
            s = socket.create_connection((host, int(port)))
            s.sendall(header(TYPES["data"], 64 << 20) + b"\0" * 4096)
            data.append(s)
        socks = silent + big_hello + data

        def dropped(group, at_least, within):  # waits until at least that many were closed by the master
            deadline = time.monotonic() + within
            while True:
                n = sum(closed_by_peer(s) for s in group)
                if n >= at_least or time.monotonic() > deadline:
                    return n
                time.sleep(0.05)
        # Well inside the master's 5 s handshake deadline: dropped for what they are, not for their silence.
        assert dropped(big_hello + data, 150, 2.0) == 150, "a claim over the greeting limit, or DATA: refused at once"
        n = dropped(silent, len(silent) - 256, 2.0)
        assert n >= len(silent) - 256, f"at most 256 may wait for their HELLO ({n} of 600 dropped)"
        t0 = time.monotonic()
        peers = [spawn(address, "fresh_loop", r, 2, tmp_path, n=1 << 16, steps=20) for r in range(2)]
        wait_all(peers, 60)
        for p in peers:
            res = p.result()
            assert "error" not in res, res.get("traceback")
            assert res["exact"] and res["same_quantized"]
        took = time.monotonic() - t0
        rss = peak_rss_mib(master.pid)
        print(f"two honest peers joined and ran 40 all-reduces in {took:.1f} s after {len(socks)} abusive "
              f"connections; master peak RSS {rss_before:.0f} -> {rss:.0f} MiB")
        assert rss < rss_before + 64, (rss_before, rss)  # nothing sized from a claim: 100 x 1 MiB would show
    finally:
        for s in socks:
            s.close()
        master.kill()
        master.wait()


@pytest.mark.timeout(60)
def test_a_peer_that_announces_two_to_the_forty_elements_costs_nobody_memory(master):
    """A peer that speaks the protocol but claims an all-reduce of 2^40 float32 (4 TiB) beside peers that
    reduce 1024: every peer gets OperationMismatchError naming both sizes, within a second, nothing is
    allocated from the claim (the master compares, the peers size from their own arrays), and the next
    operation of the same peers works."""
    import resource

    import numpy as np
    from pccl_arrays import errors
    from test_api import run_peers

    f32, op_sum = _core.CODES["dtype"]["float32"], _core.CODES["op"]["sum"]

    def fn(rank, c):
        x = np.ones(1024, np.float32)
        t0 = time.monotonic()
        try:
            if rank == 0:  # the liar: its buffers hold 1024 elements
                y = np.empty_like(x)
                c._core.all_reduce(x.ctypes.data, y.ctypes.data, 2**40, f32, op_sum, 0, shape=[2**40])
            else:
                c.all_reduce(x)
        except errors.OperationMismatchError as e:
            caught = (str(e), time.monotonic() - t0)
        else:
            caught = None
        return caught, c.all_reduce(x, tag=1), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = run_peers(master, 3, fn)
    for (caught, after, _), rank in zip(results, range(3)):
        assert caught is not None, f"peer {rank} was not told"
        message, seconds = caught
        assert "1099511627776" in message and "1024" in message, message
        assert seconds < 1.0
        assert np.all(after == 3)
    assert results[0][2] < 2 << 20  # KiB: this process (three peers and the master) stayed under 2 GiB


@pytest.mark.timeout(120)
def test_a_peer_that_stops_reading_mid_transfer_costs_the_others_one_bounded_retry(master, tmp_path):
    """A slow reader: the relay in front of peer 1's data port stops reading 1 MiB into the first stream (the
    connection stays open; peer 1's process is alive and heartbeats). Its predecessor's sends stop moving and
    peer 1 hears nothing: every peer gets PeerLostError within data_timeout (2 s) plus a margin, the retry runs
    on fresh connections, and every sum is exact."""
    peers = [spawn(master.address, "secure_loop", r, 3, tmp_path, n=1 << 20, rounds=3, relay=(r == 1),
                   stall_at=1 << 20, data_timeout=2.0, connections=1) for r in range(3)]
    wait_all(peers, 90)
    results = [p.result() for p in peers]
    for res in results:
        assert "error" not in res, res.get("traceback")
        assert res["rounds"] == 3 and res["exact"], res
        assert len(res["failures"]) == 1 and res["failures"][0]["error"] == "PeerLostError", res
        assert res["failures"][0]["seconds"] < 2.0 + 2.0, res["failures"]
    assert results[1]["relay_stalled"], "the relay never stopped reading: the test did not test anything"
    assert any("no progress" in r["failures"][0]["message"] for r in results), results


@pytest.mark.timeout(120)
def test_floods_and_stray_data_frames_at_a_data_port_leave_the_operations_alone(master, tmp_path):
    """While two peers all-reduce in a loop: 400 connections to peer 0's data port that never greet (at most
    256 are kept, the rest dropped at once), and 20 that greet as a peer that is not in the ring and send DATA
    frames of an operation that does not exist (never read: no operation of this run asks for them). Every
    round stays exact, with no failure."""
    peers = [spawn(master.address, "secure_loop", r, 2, tmp_path, n=1 << 18) for r in range(2)]
    port = int(peers[0].wait_event("data_port", 60).split()[1])
    peers[0].wait_event("first_round", 60)
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(400)]
    stray = []
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", port))
        hello = struct.pack("<QQII", 999_000 + i, 0, 0, 0)  # from, to, index, slot
        piece = struct.pack("<QIIQ", 123_456, 0, 0, 0) + b"\x7f" * 65536  # op, step, stripe, offset
        s.sendall(header(32, len(hello)) + hello + header(33, len(piece)) + piece)
        stray.append(s)
    deadline = time.monotonic() + 2.0
    while sum(closed_by_peer(s) for s in silent) < len(silent) - 256 and time.monotonic() < deadline:
        time.sleep(0.05)
    dropped = sum(closed_by_peer(s) for s in silent)
    time.sleep(1.0)  # rounds run meanwhile
    (tmp_path / "STOP").touch()
    wait_all(peers, 60)
    for s in silent + stray:
        s.close()
    results = [p.result() for p in peers]
    for res in results:
        assert "error" not in res, res.get("traceback")
        assert res["exact"] and res["failures"] == [] and res["rounds"] >= 2, res
    assert dropped >= len(silent) - 256, f"at most 256 wait for their greeting ({dropped} of 400 dropped)"
