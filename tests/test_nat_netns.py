"""Peers behind real network address translation (docs/nat.md, testing/netns.py): the master and three reachable
peers in namespaces on a bridge (the "internet"), two peers in a home namespace behind a router namespace that
masquerades and drops every connection coming in, one more behind another such router. The churn schedule of
tests/test_nat_churn.py runs on it (all-reduce, shared state to newcomers behind NAT, optimize_topology(), peers
behind NAT and the relaying peer killed), then a peer behind NAT and the relaying peer are each killed while an
all-reduce moves (typed errors within 2 s, exact retries), and close() is shown not to wait for a dial nobody
answers. The routers count every connection attempt towards a home's private address: after admission there is
none.

The namespaces, bridge, addresses and rules are made by the test and removed at its end, also when it fails. Where
namespaces or iptables are not available the test skips, saying why; test_nat_churn.py's loopback run of the
same schedule (listen=None) always runs."""

from __future__ import annotations

import pytest

from pccl_arrays.testing import netns
from test_nat_churn import BEHIND_NAT, PUBLIC, run_nat_churn

OK, WHY = netns.available()
pytestmark = pytest.mark.skipif(not OK, reason=f"network namespaces with NAT are not available here: {WHY}")


@pytest.mark.timeout(180)
def test_churn_with_peers_behind_real_nat(tmp_path):
    with netns.NatNetwork() as net:
        m = net.public("m")
        hosts = {name: net.public(name) for name in sorted(set(PUBLIC.values()))}
        hosts.update({name: net.home(name) for name in sorted(set(BEHIND_NAT.values()))})
        # The master probes each newcomer's data address once, before admission: those attempts are dropped by
        # the routers like any other, but not counted.
        net.uncounted(m.ip)

        def placement(i: int) -> dict:
            return {"prefix": hosts[PUBLIC.get(i) or BEHIND_NAT[i]].prefix()}

        h, figures = run_nat_churn(tmp_path, placement=placement, after_start=net.reset_counters, master_process=True,
                                   master_host=m.ip, master_prefix=m.prefix())
        attempts = {home.name: net.attempts_inward(home) for home in net.homes()}
    print(figures, attempts)
    # Nobody ever tried to connect to a peer behind NAT: every connection to one was dialed by it.
    assert attempts == {"h1": 0, "h2": 0}
    master_log = "\n".join(line for lines in h.master.log_lines() for line in lines)
    assert master_log.count("admitting it as a peer that dials all its connections") == 4  # 3, 4, 5 and 6


_REACHABLE = """
import sys, numpy as np, pccl_arrays as pa
c = pa.Communicator(sys.argv[1], connections=2, connect_timeout=10.0, data_timeout=5.0)
c.connect(timeout=30)
c.wait_for_peers(2, timeout=30)
print("port", c.data_port, flush=True)
c.all_reduce(np.ones(1024, np.float32))
print("ready", flush=True)
while c.world_size >= 2:  # 1 MiB: two stripes, the second on a connection not opened yet; until the other left
    try:
        c.all_reduce_async(np.ones(1 << 18, np.float32)).wait()  # the same tags as the other's
    except pa.PCCLError:
        pass
    c.update_topology()
c.close()
"""

_BEHIND_NAT = """
import sys, time, numpy as np, pccl_arrays as pa
c = pa.Communicator(sys.argv[1], listen=None, connections=2, connect_timeout=10.0, data_timeout=5.0)
c.connect(timeout=30)
c.wait_for_peers(2, timeout=30)
c.all_reduce(np.ones(1024, np.float32))  # one stripe: connection 0 both ways, dialed before the wall goes up
print("ready", flush=True)
sys.stdin.readline()                        # the wall is up: no new connection reaches the reachable peer
# 1 MiB runs on two stripes: connection 1 to and from the reachable peer is new, and this peer dials both (the
# one from it as a call): the dials hang.
handle = c.all_reduce_async(np.ones(1 << 18, np.float32))
time.sleep(1.0)
t0 = time.monotonic()
c.close()
print("closed", time.monotonic() - t0, flush=True)
try:
    handle.wait(timeout=5)
    print("op ok", flush=True)
except pa.PCCLError as e:
    print("op", type(e).__name__, flush=True)
"""


@pytest.mark.timeout(90)
def test_close_does_not_wait_for_a_dial_nobody_answers(tmp_path):
    """A peer behind NAT dials a reachable peer whose port drops every new connection (SYNs blackholed, as a
    dead machine across the internet does): close() returns at once instead of after connect_timeout (10 s)."""
    import subprocess
    import sys

    from pccl_arrays.testing import MasterProcess

    with netns.NatNetwork() as net:
        m, p, h = net.public("m"), net.public("p"), net.home("h")
        master = MasterProcess(tmp_path, host=m.ip, prefix=m.prefix())
        master.start()
        try:
            # cwd: not the source tree, whose pccl_arrays has no core built in it
            reachable = p.popen([sys.executable, "-c", _REACHABLE, master.address], stdout=subprocess.PIPE, text=True,
                                cwd=tmp_path)
            nat = h.popen([sys.executable, "-c", _BEHIND_NAT, master.address], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True, cwd=tmp_path)
            port = int(reachable.stdout.readline().split()[1])
            assert nat.stdout.readline().strip() == "ready" and reachable.stdout.readline().strip() == "ready"
            p.run(["iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", str(port), "--syn", "-j", "DROP"],
                  check=True)
            nat.stdin.write("go\n")
            nat.stdin.flush()
            line = nat.stdout.readline().split()
            assert line and line[0] == "closed", line
            assert float(line[1]) < 2.0, f"close() took {line[1]} s"
            rest = nat.stdout.read()
            assert nat.wait(30) == 0, rest
            assert rest.split() == ["op", "CommunicatorStateError"], rest
        finally:
            master.kill()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victim", [1, 0], ids=["a peer behind NAT", "the relaying peer"])
def test_a_kill_mid_operation_behind_real_nat(tmp_path, victim):
    """test_nat.py's kill mid-operation behind real NAT: peer 0 reachable, peers 1 and 2 each behind a router of
    its own (their edge goes through peer 0's relay). The victim SIGKILLs itself while an all-reduce moves: every
    survivor gets PeerLostError within 2 s and the retry is exact (through the master's relay when peer 0 died);
    no connection was ever attempted towards a home."""
    from procs import spawn, wait_all
    from test_nat import check_kill_mid_operation

    from pccl_arrays.testing import MasterProcess

    with netns.NatNetwork() as net:
        m, p = net.public("m"), net.public("p")
        homes = [net.home("h1"), net.home("h2")]
        net.uncounted(m.ip)
        master = MasterProcess(tmp_path, host=m.ip, prefix=m.prefix())
        master.start()
        try:
            places = [p, *homes]
            peers = [spawn(master.address, "fail_mid_op", r, 3, tmp_path, prefix=places[r].prefix(), n=4 << 20,
                           victim=victim, how="kill") for r in range(3)]
            wait_all(peers, 90)
            check_kill_mid_operation(peers, victim, 3, tmp_path / "stamp")
            attempts = [net.attempts_inward(h) for h in homes]
        finally:
            master.kill()
    assert attempts == [0, 0]
    log = "\n".join(line for lines in master.log_lines() for line in lines)
    assert log.count("admitting it as a peer that dials all its connections") == 2
    assert ("relay: joined" in log) == (victim == 0), log[-3000:]
