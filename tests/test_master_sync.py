"""The master's shared-state syncs as a pure state machine (harness: tests/helpers/fake_master.py): plans,
commits with and without a transfer, aborts when a member is lost, refusals, misordered collectives, groups."""

from __future__ import annotations

import pytest

from fake_master import DESC, F32, MISMATCH, PEER_LOST, SHARED_STATE, Master, closed, sends

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def m():
    return Master()


def state_entries(h):
    return [{"name": "w", "dtype": F32, "shape": [256], "nbytes": 1024, "hash": h, "tolerate": 0}]


def sync_all(m: Master, hashes: dict, revision: int = 1, strategy: int = 0):
    acts = []
    for c, h in hashes.items():
        acts += m.msg(c, "sync_start", revision=revision, strategy=strategy, entries=state_entries(h))
    return acts


def test_a_sync_where_nothing_moves_commits_with_its_plan(m):
    m.join([1, 2, 3])
    acts = sync_all(m, {1: 5, 2: 5, 3: 5})
    plans = sends(acts, "sync_plan")
    assert set(plans) == {1, 2, 3} and all(p["ok"] and p["commit_now"] for p in plans.values())
    assert not sends(acts, "op_commit")
    assert m.stats()["syncs_committed"] == 1


def test_a_sync_with_a_transfer_commits_when_every_member_is_done(m):
    m.join([1, 2, 3])
    plans = sends(sync_all(m, {1: 5, 2: 5, 3: 6}), "sync_plan")
    assert plans[3]["fetch"] == [0] and not plans[3]["commit_now"]
    sid = plans[1]["sync_id"]
    assert sends(m.msg(1, "op_done", op_id=sid, ok=1), "op_commit") == {}
    assert sends(m.msg(2, "op_done", op_id=sid, ok=1), "op_commit") == {}
    assert set(sends(m.msg(3, "op_done", op_id=sid, ok=1), "op_commit")) == {1, 2, 3}
    # peer 3 now holds the state: a newcomer cannot outvote it, even with a higher revision
    m.join([4])
    plans = sends(sync_all(m, {1: 5, 2: 5, 3: 5, 4: 9}, revision=2), "sync_plan")
    assert plans[4]["fetch"] == [0] and plans[4]["revision"] == 2


@pytest.mark.parametrize("how", ["disconnect", "failed_done"])
def test_a_member_lost_mid_sync_aborts_it_for_everyone(m, how):
    m.join([1, 2, 3])
    sid = sends(sync_all(m, {1: 5, 2: 5, 3: 6}), "sync_plan")[1]["sync_id"]
    if how == "disconnect":
        acts = m.disconnect(2)
    else:
        acts = m.msg(3, "op_done", op_id=sid, ok=0, kind=PEER_LOST, reason="nothing arrived from peer 2")
    aborts = sends(acts, "op_abort")
    assert set(aborts) == ({1, 3} if how == "disconnect" else {1, 2, 3})
    assert all(a["op_id"] == sid and a["kind"] == PEER_LOST for a in aborts.values())
    assert m.stats()["syncs_aborted"] == 1
    # the survivors can sync again
    survivors = {1: 5, 3: 6} if how == "disconnect" else {1: 5, 2: 5, 3: 6}
    assert all(p["ok"] for p in sends(sync_all(m, survivors), "sync_plan").values())


def test_a_ring_change_while_waiting_lets_the_sync_start_with_the_smaller_group(m):
    m.join([1, 2, 3])
    acts = sync_all(m, {1: 5, 2: 5})
    assert not sends(acts, "sync_plan")
    acts = m.disconnect(3)
    assert set(sends(acts, "sync_plan")) == {1, 2}


def test_a_refused_peer_is_told_why_and_the_rest_go_on(m):
    m.join([1, 2, 3])
    acts = sync_all(m, {1: 5, 2: 5})
    acts += m.msg(3, "sync_start", revision=1, strategy=0,
                  entries=[{"name": "v", "dtype": F32, "shape": [256], "nbytes": 1024, "hash": 5}])
    plans = sends(acts, "sync_plan")
    assert not plans[3]["ok"] and plans[3]["kind"] == SHARED_STATE and "lacks entry 'w'" in plans[3]["reason"]
    assert plans[1]["ok"] and plans[1]["commit_now"] and m.stats()["syncs_refused"] == 1
    # it may call anything next; here another sync, which waits for the others' next sync
    assert not sends(m.msg(3, "sync_start", revision=1, strategy=0, entries=state_entries(5)), "sync_plan")
    assert set(sends(sync_all(m, {1: 5, 2: 5}), "sync_plan")) == {1, 2, 3}


def test_misordered_sync_and_all_reduce_fail_both_on_every_peer(m):
    m.join([1, 2])
    acts = m.msg(1, "sync_start", revision=1, strategy=0, entries=state_entries(5))
    acts += m.msg(2, "op_start", tag=1, **DESC)
    assert "sync_shared_state()" in sends(acts, "op_reject")[2]["reason"]
    plan = sends(acts, "sync_plan")[1]
    assert not plan["ok"] and plan["kind"] == MISMATCH
    # the other order
    acts = m.msg(2, "op_start", tag=2, **DESC) + m.msg(1, "sync_start", revision=1, strategy=0, entries=state_entries(5))
    assert sends(acts, "op_reject")[2]["kind"] == MISMATCH and sends(acts, "sync_plan")[1]["kind"] == MISMATCH
    # and both recover: the same collective in the same order works
    assert all(p["ok"] for p in sends(sync_all(m, {1: 5, 2: 5}), "sync_plan").values())


def test_update_topology_while_others_sync_returns_at_once(m):
    m.join([1, 2])
    acts = m.msg(1, "sync_start", revision=1, strategy=0, entries=state_entries(5))
    acts += m.msg(2, "topo_request", seq=4)
    assert sends(acts, "topo_result")[2]["kind"] == 0 and not sends(acts, "sync_plan")
    plans = sends(m.msg(2, "sync_start", revision=1, strategy=0, entries=state_entries(5)), "sync_plan")
    assert set(plans) == {1, 2} and all(p["ok"] for p in plans.values())


def test_sync_calls_out_of_order_close_the_connection(m):
    m.join([1, 2, 3])
    assert not sends(m.msg(2, "topo_request", seq=1), "topo_result")  # 3 has not voted: 2 waits in the vote
    assert 2 in closed(m.msg(2, "sync_start", revision=1, strategy=0, entries=state_entries(5)))
    m.msg(1, "sync_start", revision=1, strategy=0, entries=state_entries(5))
    assert 1 in closed(m.msg(1, "sync_start", revision=1, strategy=0, entries=state_entries(5)))


def test_syncs_run_per_group(m):
    m.join([1, 2], group=0)
    m.join([3, 4], group=1)
    assert set(sends(sync_all(m, {1: 5, 2: 6}), "sync_plan")) == {1, 2}
    assert set(sends(sync_all(m, {3: 7, 4: 7}), "sync_plan")) == {3, 4}


def test_flooding_sync_shared_state_closes_only_the_flooder_and_the_others_commit(m):
    """A second SYNC_START before the first was answered breaks the protocol: that connection closes (nothing of
    the flood is kept), and the sync of the others commits without it."""
    m.join([1, 2, 3])
    assert not sends(m.msg(1, "sync_start", revision=1, strategy=0, entries=state_entries(5)), "sync_plan")
    flood = []
    for _ in range(100):
        flood += m.msg(1, "sync_start", revision=2**63, strategy=0, entries=state_entries(9))
    assert 1 in closed(flood)
    plans = sends(sync_all(m, {2: 5, 3: 5}), "sync_plan")
    assert set(plans) == {2, 3} and all(p["ok"] and p["commit_now"] for p in plans.values()), plans
