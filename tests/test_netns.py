"""pccl_arrays.testing.netns builds a real NAT network out of network namespaces: homes connect out through
their router's masquerade, nobody connects in, and every attempt to is dropped and counted at the router.
Needs root, `ip` and `iptables`; skipped with the reason otherwise."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from pccl_arrays.testing import netns
except ImportError:  # an installed package older than netns.py: the module needs nothing else, load the file
    _spec = importlib.util.spec_from_file_location(
        "pccl_arrays_testing_netns", Path(__file__).resolve().parents[1] / "pccl_arrays" / "testing" / "netns.py")
    netns = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = netns
    _spec.loader.exec_module(netns)

_ok, _why = netns.available()
pytestmark = pytest.mark.skipif(not _ok, reason=_why)

# Accepts `n` connections on a port the OS picks, after printing it; prints each peer's address.
SERVER = ("import socket, sys\n"
          "s = socket.socket(); s.bind(('0.0.0.0', 0)); s.listen()\n"
          "print('listening', s.getsockname()[1], flush=True)\n"
          "for _ in range(int(sys.argv[1])):\n"
          "    c, a = s.accept(); print('from', a[0], flush=True); c.sendall(b'hi'); c.close()\n")
# Connects to argv[1]:argv[2] within argv[3] seconds; prints "got hi", "failed timeout" (no answer at all: the
# packets were dropped) or "failed <the error>".
CLIENT = ("import socket, sys\n"
          "try:\n"
          "    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))\n"
          "    print('got', s.recv(2).decode(), flush=True)\n"
          "except OSError as e:\n"
          "    print('failed', 'timeout' if isinstance(e, socket.timeout) else type(e).__name__, flush=True)\n")


@pytest.fixture
def net():
    with netns.NatNetwork() as n:
        yield n


def serve(host, connections=1):
    """A SERVER in host's namespace; returns (process, port) once it listens."""
    p = host.popen([sys.executable, "-c", SERVER, str(connections)], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().split()
    assert line[:1] == ["listening"], f"server in {host.ns} did not start: {line}"
    return p, int(line[1])


def connect(host, ip, port, timeout=0.5):
    """Run CLIENT in host's namespace against ip:port; returns its one line of output."""
    r = host.run([sys.executable, "-c", CLIENT, ip, str(port), str(timeout)], capture_output=True, text=True,
                 timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def accepted_from(server):
    """The peer addresses the server printed, once it has served all its connections."""
    out, _ = server.communicate(timeout=10)
    return [line.split()[1] for line in out.splitlines() if line.startswith("from")]


@pytest.mark.timeout(30)
def test_a_home_reaches_a_public_server_and_is_seen_as_its_router(net):
    m, h = net.public("m"), net.home("h1")
    assert h.public_ip != h.ip and h.public_ip.startswith(netns.INTERNET + ".")
    server, port = serve(m, connections=2)
    # Two processes in one home namespace (two peers behind the same NAT): both get out, as the same address.
    assert connect(h, m.ip, port) == "got hi"
    assert connect(h, m.ip, port) == "got hi"
    assert accepted_from(server) == [h.public_ip, h.public_ip]
    assert net.attempts_inward(h) == 0  # outgoing connections and their replies are not counted


@pytest.mark.timeout(30)
def test_nobody_outside_connects_to_a_home_and_the_router_counts_each_attempt(net):
    m, h = net.public("m"), net.home("h1")
    server, port = serve(h)  # something listens at the private address: only the NAT is in the way
    assert connect(m, h.ip, port) == "failed timeout"  # dropped, not refused, nor "network unreachable" here
    assert net.attempts_inward(h) >= 1
    assert connect(m, h.public_ip, port) == "failed ConnectionRefusedError"  # no port forwarding either
    net.reset_counters()
    assert net.attempts_inward(h) == 0
    assert connect(h, "127.0.0.1", port) == "got hi"  # the server was up all along
    assert accepted_from(server) == ["127.0.0.1"]
    other, other_port = serve(m)
    assert connect(h, m.ip, other_port) == "got hi"  # the other way round is not counted
    assert accepted_from(other) == [h.public_ip]
    assert net.attempts_inward(h) == 0


@pytest.mark.timeout(30)
def test_one_home_cannot_connect_to_another(net):
    m, h1, h2 = net.public("m"), net.home("h1"), net.home("h2")
    assert h1.ip != h2.ip and h1.public_ip != h2.public_ip
    server, port = serve(h2)
    assert connect(h1, h2.ip, port) == "failed timeout"
    assert net.attempts_inward(h2) >= 1 and net.attempts_inward(h1) == 0
    # A public machine added after the homes routes their subnets too, and both homes still get out.
    late = net.public("late")
    assert connect(late, h1.ip, port) == "failed timeout" and net.attempts_inward(h1) >= 1
    public, public_port = serve(late, connections=2)
    assert connect(h1, late.ip, public_port) == "got hi" and connect(h2, late.ip, public_port) == "got hi"
    assert accepted_from(public) == [h1.public_ip, h2.public_ip]
    server.kill()


def ours(net):
    return [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                        check=True).stdout.split() if ns.startswith(net.tag + "-")]


@pytest.mark.timeout(30)
def test_down_removes_every_namespace_and_process_even_after_an_error():
    net = netns.NatNetwork()
    with net:
        m, _ = net.public("m"), net.home("h1")
        assert len(ours(net)) == 4  # internet, m, h1 and its router
    assert ours(net) == []
    net.down()  # idempotent

    net = netns.NatNetwork()
    with pytest.raises(RuntimeError, match="boom"):
        with net:
            h = net.home("h1")
            sleeper = h.popen([sys.executable, "-c", "import time; time.sleep(60)"])
            raise RuntimeError("boom")
    assert sleeper.poll() is not None
    assert ours(net) == []
