"""Peers behind real network address translation (docs/nat.md, testing/netns.py): the master and three reachable
peers in namespaces on a bridge (the "internet"), two peers in a home namespace behind a router namespace that
masquerades and drops every connection coming in, one more behind another such router. The churn schedule of
tests/test_nat_churn.py runs on it (all-reduce, shared state to newcomers behind NAT, optimize_topology(), a peer
behind NAT and a relaying peer killed mid-operation: exact results, typed errors, exact retries), and the routers
count every connection attempt towards a home's private address: after admission there is none.

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
    assert sum(r["peer_lost"] for r in h.results().values()) >= 1
