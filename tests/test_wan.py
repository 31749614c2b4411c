"""The WAN emulator (pccl_arrays.wan) against its own promises: the round trip of the profile, one flow at the
per-connection cap, k flows at min(k x cap, link cap), and no cap from the machine itself."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from pccl_arrays import wan

pytestmark = pytest.mark.timeout(60)


class Server:
    """A TCP server on port 0 that echoes (mode "echo") or swallows and counts (mode "sink")."""

    def __init__(self, mode: str):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.mode, self.received = mode, 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with c:
            while data := c.recv(1 << 16):
                if self.mode == "echo":
                    c.sendall(data)
                else:
                    with self.lock:
                        self.received += len(data)

    def close(self):
        self.sock.close()


def throughput(profile: wan.Profile, flows: int, warm: float = 0.7, seconds: float = 2.0) -> float:
    """Bytes/s a sink receives through a relay while `flows` connections send as fast as they can, measured
    after `warm` s (so kernel buffers have filled and only the relay's pacing limits the rate)."""
    sink = Server("sink")
    try:
        with wan.Relay(sink.address, profile) as relay:
            host, port = relay.address.rsplit(":", 1)
            stop = time.monotonic() + warm + seconds
            blob = b"\0" * (1 << 16)

            def flow():
                with socket.create_connection((host, int(port))) as s:
                    s.settimeout(0.2)
                    while time.monotonic() < stop:
                        try:
                            s.send(blob)
                        except socket.timeout:
                            pass

            threads = [threading.Thread(target=flow) for _ in range(flows)]
            for t in threads:
                t.start()
            time.sleep(warm)
            before, t0 = sink.received, time.monotonic()
            time.sleep(seconds)
            rate = (sink.received - before) / (time.monotonic() - t0)
            for t in threads:
                t.join()
            return rate
    finally:
        sink.close()


@pytest.mark.parametrize("name", ["continent", "transatlantic"])
def test_round_trip_matches_the_profile(name):
    profile = wan.PROFILES[name]
    echo = Server("echo")
    try:
        with wan.Relay(echo.address, profile) as relay:
            rtt = wan.measure_rtt(relay.address, samples=5)
    finally:
        echo.close()
    assert profile.rtt_s <= rtt < profile.rtt_s + 0.01, rtt


SMALL = wan.Profile("test", 0.02, 2e6, 8e6)  # cap 2 MB/s per connection, 8 MB/s link: 4 flows fill it


@pytest.mark.parametrize("flows,expected", [(1, 2e6), (2, 4e6), (4, 8e6), (8, 8e6)])
def test_k_flows_get_min_of_k_caps_and_the_link(flows, expected):
    rate = throughput(SMALL, flows)
    assert 0.8 * expected <= rate <= 1.1 * expected, (flows, rate / 1e6)


def test_the_machine_is_not_the_bottleneck():
    # The largest profile's link is 32 MB/s; one relay carries well over twice that even with the senders and
    # the sink competing for this process's GIL (in the benchmarks each peer's relay has its own process).
    rate = throughput(wan.Profile("uncapped", 0.02, None, None), 4, seconds=1.0)
    assert rate > 2 * max(p.link_Bps for p in wan.PROFILES.values() if p.link_Bps), rate / 1e6


def test_relay_command_forwards_with_the_profile_delay(tmp_path):
    import subprocess
    import sys

    echo = Server("echo")
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from pccl_arrays.cli import main; sys.exit(main())",
                             "wan-relay", "--target", echo.address, "--rtt-ms", "30", "--conn-mbps", "0",
                             "--link-mbps", "0"], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line
        address = line.split("listening on ", 1)[1].split(" ", 1)[0]
        assert 0.030 <= wan.measure_rtt(address) < 0.040
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
        echo.close()
