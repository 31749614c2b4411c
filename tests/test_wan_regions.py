"""The multi-region emulator (pccl_arrays.wan_regions): layouts parse or are refused in words, each ordered
pair of peers gets its regions' delay and bandwidth (told apart by the source address the core dials from),
and real peers all-reduce exactly across it."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

import pccl_arrays as pa
from pccl_arrays.errors import InvalidArgumentError
from pccl_arrays.wan_regions import Regions
from test_wan import Server

pytestmark = pytest.mark.timeout(60)

LAYOUT = {
    "regions": {"a": 2, "b": 1},
    "inside": {"delay_ms": 2, "mbps": 80},
    "links": [{"from": "a", "to": "b", "delay_ms": 30, "mbps": 16},   # 2 MB/s toward b
              {"from": "b", "to": "a", "delay_ms": 10, "mbps": 8}],   # 1 MB/s back
}


def test_layouts_parse_and_bad_ones_are_refused(tmp_path):
    path = tmp_path / "layout.json"
    path.write_text(__import__("json").dumps(LAYOUT))
    net = Regions(path)
    assert net.peers == 3 and net.region_of == ["a", "a", "b"] and net.host(2) == "127.0.0.12"
    assert net.peer_of("127.0.0.11") == 1 and net.peer_of("127.0.0.1") is None
    bw, lat = net.matrix()
    assert bw[0][2] == 2e6 and bw[2][0] == 1e6 and bw[0][1] == 10e6 and lat[0][2] == 0.03 and lat[2][1] == 0.01
    symmetric = Regions({"regions": {"a": 1, "b": 1}, "links": [{"from": "a", "to": "b", "delay_ms": 5, "mbps": 8}]})
    assert symmetric.link(1, 0) == symmetric.link(0, 1)
    for bad, words in (({"regions": {"a": 1, "b": 1}}, "no link between"),
                       ({"regions": {"a": 1}, "links": [{"from": "a", "to": "x", "delay_ms": 1}]}, "unknown region"),
                       ({"links": []}, "needs 'regions'")):
        with pytest.raises(InvalidArgumentError, match=words):
            Regions(bad)


def _rtt(source: str, relay) -> float:
    host, port = relay.address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), source_address=(source, 0)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            samples.append(time.perf_counter() - t0)
    return sorted(samples)[2]


def _rate(source: str, relay, sink: Server, seconds: float = 1.5, warm: float = 0.5) -> float:
    host, port = relay.address.rsplit(":", 1)
    stop = time.monotonic() + warm + seconds
    with socket.create_connection((host, int(port)), source_address=(source, 0)) as s:
        s.settimeout(0.2)
        blob = b"\0" * (1 << 16)
        before = t0 = None
        while time.monotonic() < stop:
            if before is None and time.monotonic() > stop - seconds:
                before, t0 = sink.received, time.monotonic()
            try:
                s.send(blob)
            except socket.timeout:
                pass
        return (sink.received - before) / (time.monotonic() - t0)


def test_each_pair_gets_its_regions_delay_and_bandwidth():
    net = Regions(LAYOUT)
    echo, sink = Server("echo"), Server("sink")
    relays = []
    try:
        to_b = net.relay(2)
        to_b.set_target(echo.address)
        to_a = net.relay(1)
        to_a.set_target(echo.address)
        relays = [to_b.start(), to_a.start()]
        assert 0.040 <= _rtt(net.host(0), to_b) < 0.055  # 30 ms there, 10 ms back
        assert 0.004 <= _rtt(net.host(0), to_a) < 0.015  # inside region a: 2 + 2 ms
        assert _rtt("127.0.0.1", to_b) < 0.01  # not a peer of the layout: passed through
        sink_b = net.relay(2)
        sink_b.set_target(sink.address)
        relays.append(sink_b.start())
        rate = _rate(net.host(0), sink_b, sink)
        assert 0.8 * 2e6 <= rate <= 1.1 * 2e6, rate / 1e6
    finally:
        for r in relays:
            r.stop()
        echo.close()
        sink.close()


def test_peers_all_reduce_exactly_across_regions():
    net = Regions(LAYOUT)
    with pa.Master("127.0.0.1:0", peer_timeout=5.0) as master:
        relays = [net.relay(p).start() for p in range(net.peers)]
        comms = [pa.Communicator(master.address, connections=2, listen=f"{net.host(p)}:0",
                                 advertise=relays[p].address) for p in range(net.peers)]
        results: dict[int, np.ndarray] = {}

        def peer(p):
            c = comms[p]
            relays[p].follow(c, net.host(p))
            c.connect(timeout=30)
            while c.total_world_size < net.peers:
                if c.are_peers_pending():
                    c.update_topology()
                else:
                    time.sleep(0.005)
            results[p] = c.all_reduce(np.arange(1 << 16, dtype=np.float32) * (p + 1))

        threads = [threading.Thread(target=peer, args=(p,)) for p in range(net.peers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(45)
        for c in comms:
            c.close()
        for r in relays:
            r.stop()
    want = np.arange(1 << 16, dtype=np.float32) * 6
    assert sorted(results) == [0, 1, 2] and all(np.array_equal(r, want) for r in results.values())
    # The data went through the relays, each connection told apart by the address its peer dials from.
    assert all(r.bytes["forward"] > 0 and r.sources and r.peer not in r.sources for r in relays)

