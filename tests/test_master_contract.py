"""The master's side of the user contract, driven with a fake clock (harness: tests/helpers/fake_master.py):
waits for the others to start a collective end at the starter's timeout naming who did not come, a group
below min_world refuses collectives and makes update_topology() wait for newcomers, a group whose state
holders are all gone refuses to start over silently, and a newcomer whose data address refuses connections
is never admitted."""

from __future__ import annotations

import pytest

from pccl_arrays import _core_testing
from fake_master import DESC, NETWORK, SHARED_STATE, TIMEOUT, TOO_FEW_PEERS, Master, closed, sends
from test_master_sync import state_entries, sync_all

pytestmark = pytest.mark.timeout(30)

@pytest.fixture
def m():
    return Master()


def test_an_operation_nobody_else_starts_times_out_at_the_starters_deadline(m):
    m.join([1, 2, 3])
    assert m.msg(1, "op_start", tag=4, timeout_ms=5000, **DESC) == []
    assert m.msg(2, "op_start", tag=4, timeout_ms=9000, **DESC) == []
    assert not sends(m.tick(104.9), "op_reject")  # 1 started at 100 with 5 s
    rejects = sends(m.tick(105.0), "op_reject")
    assert set(rejects) == {1, 2}
    for r in rejects.values():
        assert r["kind"] == TIMEOUT and "5 s" in r["reason"] and "peer 3 (10.0.0.3" in r["reason"], r
        assert "peer 1 (" not in r["reason"]  # only the peers that did not start are named
    # Both are free again, and the late peer's own start is a new operation.
    assert m.msg(3, "op_start", tag=4, **DESC) == []
    assert set(sends(m.start_all([1, 2], tag=4), "op_go")) == {1, 2, 3}


def test_without_a_timeout_an_operation_waits(m):
    m.join([1, 2])
    m.msg(1, "op_start", tag=1, **DESC)
    for t in range(101, 1000, 5):  # hours pass; both keep heartbeating
        m.now = t
        m.msg(1, "heartbeat"), m.msg(2, "heartbeat")
        assert not sends(m.tick(t), "op_reject")


def test_a_sync_nobody_else_starts_times_out(m):
    m.join([1, 2])
    m.msg(1, "sync_start", revision=1, strategy=0, timeout_ms=2000, entries=state_entries(5))
    plans = sends(m.tick(102.5), "sync_plan")
    assert plans[1]["ok"] == 0 and plans[1]["kind"] == TIMEOUT and "peer 2 (" in plans[1]["reason"]


def test_update_topology_times_out_naming_the_peers_that_did_not_vote(m):
    m.join([1, 2, 3])
    m.hello(4)  # pending: a vote is needed
    assert m.msg(1, "topo_request", seq=7, timeout_ms=3000) == []
    assert m.msg(2, "topo_request", seq=7) == []
    results = sends(m.tick(103.0), "topo_result")
    assert set(results) == {1}
    assert results[1]["kind"] == TIMEOUT and results[1]["seq"] == 7 and "peer 3 (" in results[1]["reason"]
    assert "peer 2 (" not in results[1]["reason"]


def test_an_operation_below_min_world_is_refused_on_every_peer(m):
    m.join([1, 2])
    m.msg(1, "op_start", tag=1, min_world=3, **DESC)
    rejects = sends(m.msg(2, "op_start", tag=1, **DESC), "op_reject")
    assert set(rejects) == {1, 2}
    assert all(r["kind"] == TOO_FEW_PEERS and "at least 3" in r["reason"] for r in rejects.values())
    assert set(sends(m.start_all([1, 2], tag=2), "op_go")) == {1, 2}  # without the minimum it runs


def test_a_sync_below_min_world_is_refused(m):
    m.join([1])
    plans = sends(m.msg(1, "sync_start", revision=0, strategy=0, min_world=2, entries=state_entries(5)), "sync_plan")
    assert plans[1]["ok"] == 0 and plans[1]["kind"] == TOO_FEW_PEERS


def test_update_topology_waits_for_newcomers_up_to_min_world(m):
    m.join([1])
    assert m.msg(1, "topo_request", seq=1, min_world=3) == []
    m.hello(2)  # two peers once admitted: still below 3
    assert m.msg(1, "heartbeat") and not sends(m.tick(101.0), "topo_result")
    acts = m.hello(3)
    results = sends(acts, "topo_result")
    assert set(results) == {1, 2, 3} and results[1]["seq"] == 1 and results[1]["world_size"] == 3


def _holders_synced(m: Master, conns, revision: int = 4):
    plans = sends(sync_all(m, {c: 5 for c in conns}, revision=revision), "sync_plan")
    assert all(p["ok"] for p in plans.values())


def test_state_lost_when_every_holder_is_gone_is_refused_loudly(m):
    m.join([1, 2])
    _holders_synced(m, [1, 2])
    m.hello(3)
    m.disconnect(1)
    acts = m.disconnect(2)  # 3 is admitted: nobody is left to vote
    assert sends(acts, "topo_result")[3]["seq"] == 0
    m.accepted = [3]
    m.join([4])
    plans = sends(sync_all(m, {3: 0, 4: 0}, revision=0), "sync_plan")
    assert set(plans) == {3, 4}
    for p in plans.values():
        assert p["ok"] == 0 and p["kind"] == SHARED_STATE
        assert "lost" in p["reason"] and "revision was 4" in p["reason"] and "send_only" in p["reason"]


def test_a_send_only_peer_resumes_a_group_whose_state_was_lost(m):
    m.join([1])
    _holders_synced(m, [1], revision=9)
    m.hello(2)
    m.disconnect(1)
    m.accepted = [2]
    m.join([3, 4])
    acts = m.msg(2, "sync_start", revision=9, strategy=2, entries=state_entries(77))  # from a checkpoint
    acts += sync_all(m, {3: 0, 4: 0}, revision=0)
    plans = sends(acts, "sync_plan")
    assert all(p["ok"] for p in plans.values()), plans
    assert plans[3]["fetch"] == [0] and plans[4]["fetch"] == [0] and plans[3]["revision"] == 9
    assert plans[3]["expect"] == [77]


def test_a_brand_new_groups_first_sync_is_unaffected(m):
    m.join([1, 2])
    assert all(p["ok"] for p in sends(sync_all(m, {1: 0, 2: 0}, revision=0), "sync_plan").values())


def test_a_newcomer_is_admitted_only_after_its_address_answers():
    m = Master()
    m.state = _core_testing.MasterState(peer_timeout=10.0, handshake_timeout=5.0, probe_addresses=True)
    acts = m.hello(1)
    assert [a[:3] for a in acts] == [("send", 1, "welcome"), ("probe", 1, "10.0.0.1:9001")]
    results = sends(m.state.on_probe_result(1, True, "", m.now), "topo_result")
    assert results[1]["seq"] == 0 and results[1]["kind"] == 0


def test_a_newcomer_counts_as_pending_only_once_its_address_answered():
    # Peers vote a newcomer in when the master says one is pending (are_peers_pending()); a newcomer still being
    # probed cannot be admitted by that vote, so it must not be counted yet.
    m = Master()
    m.state = _core_testing.MasterState(peer_timeout=10.0, handshake_timeout=5.0, probe_addresses=True)
    m.hello(1)
    m.state.on_probe_result(1, True, "", m.now)
    m.hello(2)  # probing its address
    assert sends(m.msg(1, "pending_request"), "pending_reply")[1]["pending"] == 0
    assert sends(m.msg(1, "heartbeat"), "heartbeat_ack")[1]["pending"] == 0
    m.state.on_probe_result(2, True, "", m.now)
    assert sends(m.msg(1, "pending_request"), "pending_reply")[1]["pending"] == 1
    admitted = sends(m.msg(1, "topo_request", seq=1), "topo_result")  # the vote this triggers admits it
    assert set(admitted) == {1, 2} and [p["id"] for p in admitted[1]["ring"]] == [1, 2]


def test_an_unreachable_newcomer_is_admitted_as_a_peer_that_dials_and_nobody_notices():
    m = Master()
    m.state = _core_testing.MasterState(peer_timeout=10.0, handshake_timeout=5.0, probe_addresses=True)
    m.hello(1)
    m.state.on_probe_result(1, True, "", m.now)
    m.hello(2)
    assert m.state.on_probe_result(2, False, "Connection timed out", m.now) == []  # admitted at the next vote
    admitted = sends(m.msg(1, "topo_request", seq=1), "topo_result")
    assert set(admitted) == {1, 2} and all(r["kind"] == 0 for r in admitted.values())
    assert [(p["id"], p["inbound"]) for p in admitted[1]["ring"]] == [(1, 1), (2, 0)]
    assert m.stats()["peers_accepted"] == 2


def test_with_require_inbound_a_newcomer_whose_address_refuses_is_told_why_and_nobody_notices():
    m = Master()
    m.state = _core_testing.MasterState(peer_timeout=10.0, handshake_timeout=5.0, probe_addresses=True,
                                        require_inbound=True)
    m.hello(1)
    m.state.on_probe_result(1, True, "", m.now)
    m.hello(2)
    acts = m.state.on_probe_result(2, False, "Connection refused", m.now)
    refusal = sends(acts, "topo_result")
    assert set(refusal) == {2} and refusal[2]["kind"] == NETWORK
    assert "10.0.0.2:9002" in refusal[2]["reason"] and "advertise" in refusal[2]["reason"]
    assert 2 in closed(acts) and m.stats()["peers_accepted"] == 1
    assert set(sends(m.msg(1, "op_start", tag=2, **DESC), "op_go")) == {1}  # peer 1 goes on as before
