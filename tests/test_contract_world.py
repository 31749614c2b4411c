"""A minimum world, loud state loss and reachability at admission, with real peers: what every peer sees."""

from __future__ import annotations

import time

import pytest

import pccl_arrays as pa

from procs import spawn, wait_all


@pytest.mark.timeout(90)
def test_min_world_size_refuses_to_reduce_alone(master, tmp_path):
    peers = [spawn(master.address, "min_world", r, 2, tmp_path) for r in range(2)]
    peers[0].wait_event("running", 60)
    peers[1].kill()
    wait_all([peers[0]], 30)
    res = peers[0].result()
    assert res["error"] == "TooFewPeersError" and "at least 2" in res["message"], res
    assert res["worlds"] == [2], "never a result computed alone"
    assert res["topology"].startswith("PCCLTimeoutError") and "min_world_size" in res["topology"], res
    assert res["topology_seconds"] < 1.0 + 1.0


@pytest.mark.timeout(120)
def test_state_lost_is_loud_and_a_send_only_checkpoint_resumes(master, tmp_path):
    holders = [spawn(master.address, "state_holder", r, 2, tmp_path) for r in range(2)]
    for h in holders:
        h.wait_event("synced", 60)
    newcomers = [spawn(master.address, "state_newcomer", r, 2, tmp_path, resume=3) for r in (2, 3)]
    time.sleep(0.5)  # the newcomers connect and wait as pending peers
    for h in holders:
        h.kill()
    wait_all(newcomers, 60)
    for n in newcomers:
        res = n.result()
        assert res["first"].startswith("SharedStateError"), res
        assert "lost" in res["first"] and "revision was 5" in res["first"] and "send_only" in res["first"]
        assert res["w"] == [7.0] * 16 and res["revision"] == 5, res  # the checkpoint, on both


@pytest.mark.timeout(90)
def test_with_require_inbound_an_unreachable_newcomer_is_refused_and_nobody_else_notices(tmp_path):
    """The old strictness, asked for (docs/nat.md): without require_inbound the newcomer would be admitted as a
    peer that dials all its connections (tests/test_nat.py)."""
    with pa.Master("127.0.0.1:0", peer_timeout=2.0, handshake_timeout=2.0, rejoin_window=0.0,
                   require_inbound=True) as master:
        _unreachable_newcomer_is_refused(master, tmp_path)


def _unreachable_newcomer_is_refused(master, tmp_path):
    peers = [spawn(master.address, "reachability", r, 3, tmp_path) for r in range(2)]
    peers[0].wait_event("running", 60)
    bad = spawn(master.address, "reachability", 2, 3, tmp_path)
    wait_all([bad], 30)
    res = bad.result()
    assert res["error"] == "NetworkError" and "127.0.0.1:1" in res["message"] and "advertise" in res["message"]
    assert "require_inbound" in res["message"]
    assert res["seconds"] < 5.0  # its connect_timeout
    time.sleep(0.3)  # the others keep going after the refusal
    (tmp_path / "release").write_text("")
    wait_all(peers, 30)
    for p in peers:
        r = p.result()
        assert r["failures"] == [] and r["ops"] >= 10, r
