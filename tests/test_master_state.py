"""The master's decisions as a pure state machine, driven with a fake clock: admission and ring order, operation
agreement, commit and abort, eviction and handshake deadlines, malformed or unexpected messages, peer groups.

The harness (a MasterState with a fake clock, helpers to play peers) is tests/helpers/fake_master.py.
"""

from __future__ import annotations

import pytest

from pccl_arrays import _core_testing
pytestmark = pytest.mark.timeout(30)

from fake_master import DESC, INVALID_ARGUMENT, MISMATCH, PEER_LOST, Master, closed, ring_of, running_op, sends, types


@pytest.fixture
def m():
    return Master()


# ------------------------------------------------------------------------------------------------ admission


def test_first_peer_is_admitted_at_once(m):
    assert m.connect(1) == []
    acts = m.msg(1, "hello", group=0, connections=4, host="10.0.0.1", port=9001)
    assert types(acts) == [("send", 1, "welcome"), ("send", 1, "topo_result")]
    assert acts[0][3] == {"peer_id": 1, "epoch": 0, "relay_port": 0}  # the fake master: epoch 0, no relay
    assert acts[1][3] == {"seq": 0, "world_size": 1, "pending": 0, "ring": ring_of(1), "kind": 0, "reason": ""}
    assert m.stats()["peers_accepted"] == 1


def test_second_peer_waits_for_every_accepted_peer_to_vote(m):
    m.join([1, 2])
    acts = m.hello(3)
    assert types(acts) == [("send", 3, "welcome")]  # pending, not admitted
    assert sends(m.msg(1, "heartbeat"), "heartbeat_ack") == {1: {"pending": 1}}
    assert sends(m.msg(3, "pending_request", seq=0), "pending_reply") == {3: {"pending": 1}}
    assert m.msg(1, "topo_request", seq=5) == []  # peer 2 has not voted yet
    acts = m.msg(2, "topo_request", seq=6)
    results = sends(acts, "topo_result")
    assert set(results) == {1, 2, 3}
    assert results[1] == {"seq": 5, "world_size": 3, "pending": 0, "ring": ring_of(1, 2, 3), "kind": 0, "reason": ""}
    assert results[2] == {"seq": 6, "world_size": 3, "pending": 0, "ring": ring_of(1, 2, 3), "kind": 0, "reason": ""}
    assert results[3] == {"seq": 0, "world_size": 3, "pending": 0, "ring": ring_of(1, 2, 3), "kind": 0, "reason": ""}
    assert m.stats()["peers_accepted"] == 3
    assert sends(m.msg(1, "heartbeat"), "heartbeat_ack") == {1: {"pending": 0}}


def test_ring_is_in_admission_order_not_connection_order(m):
    # Connection ids descend, so any ordering by id would put the ring backwards.
    m.join([30, 20, 10])
    results = sends(m.msg(30, "topo_request", seq=1) + m.msg(20, "topo_request", seq=1) +
                    m.msg(10, "topo_request", seq=1), "topo_result")
    for c in (30, 20, 10):
        assert results[c]["ring"] == ring_of(30, 20, 10)


def test_update_topology_without_newcomers_returns_the_same_ring(m):
    m.join([1, 2])
    before = m.stats()["topology_updates"]
    results = sends(m.msg(1, "topo_request", seq=9) + m.msg(2, "topo_request", seq=9), "topo_result")
    assert results == {c: {"seq": 9, "world_size": 2, "pending": 0, "ring": ring_of(1, 2), "kind": 0, "reason": ""} for c in (1, 2)}
    assert m.stats()["topology_updates"] == before + 1


def test_pending_peer_is_admitted_when_the_last_accepted_peer_leaves(m):
    m.join([1])
    assert types(m.hello(2)) == [("send", 2, "welcome")]
    acts = m.msg(1, "leave")
    assert closed(acts).keys() == {1}
    assert sends(acts, "topo_result") == {2: {"seq": 0, "world_size": 1, "pending": 0, "ring": ring_of(2), "kind": 0, "reason": ""}}


def test_vote_completes_when_a_silent_voter_is_evicted(m):
    m.join([1, 2])
    m.hello(3)
    assert m.msg(1, "topo_request", seq=1) == []
    m.tick(m.now + 6)
    m.msg(1, "heartbeat")
    m.msg(3, "heartbeat")
    acts = m.tick(m.now + 5)  # peer 2: 11 s of silence
    assert 2 in sends(acts, "kicked") and 2 in closed(acts)
    results = sends(acts, "topo_result")
    assert set(results) == {1, 3}
    assert results[1]["ring"] == ring_of(1, 3)


# ----------------------------------------------------------------------------------------------- operations


def test_op_agreement_sends_the_same_go_to_all(m):
    m.join([1], connections=4)
    m.join([2], connections=2)
    m.join([3], connections=8)
    assert m.msg(1, "op_start", tag=7, **DESC) == []
    assert m.msg(3, "op_start", tag=7, **DESC) == []
    go = sends(m.msg(2, "op_start", tag=7, **DESC), "op_go")
    assert set(go) == {1, 2, 3}
    first = go[1]
    assert all(g == first for g in go.values())
    assert first["tag"] == 7 and first["op_id"] >= 1
    assert first["ring"] == ring_of(1, 2, 3)
    assert first["stripes"] == 2  # the smallest connection count of the ring


def test_the_ring_goes_to_each_peer_once_per_epoch(m):
    """OP_GO carries the ring only to peers that have not had this ring epoch; later operations send the epoch
    alone (O(N) bytes per operation, not O(N^2)). An admission starts a new epoch: the ring goes out again."""
    def op(conns, tag):
        go = sends(m.start_all(conns, tag), "op_go")
        for c in conns:
            m.msg(c, "op_done", op_id=go[c]["op_id"], ok=1)
        return go
    m.join([1, 2, 3])
    first = op([1, 2, 3], 1)
    epoch = first[1]["ring_epoch"]
    assert all(g["ring"] == ring_of(1, 2, 3) and g["ring_epoch"] == epoch for g in first.values())
    again = op([1, 2, 3], 2)
    assert all(g["ring"] == [] and g["ring_epoch"] == epoch for g in again.values())
    m.join([4])
    grown = op([1, 2, 3, 4], 3)
    assert all(g["ring"] == ring_of(1, 2, 3, 4) and g["ring_epoch"] > epoch for g in grown.values())
    assert all(g["ring"] == [] for g in op([1, 2, 3, 4], 4).values())


def test_the_masters_answers_per_operation_grow_linearly_with_peers():
    """The bytes the master sends per all-reduce (OP_GO and OP_COMMIT to each member), measured without sockets
    by _core_testing.master_cost: doubling the group doubles them (the ring itself went out once, before)."""
    bytes_per_op = {n: _core_testing.master_cost(n, 20)["bytes_per_op"] for n in (16, 32, 64)}
    assert bytes_per_op[32] / bytes_per_op[16] < 2.1 and bytes_per_op[64] / bytes_per_op[32] < 2.1, bytes_per_op


@pytest.mark.parametrize("field,other,words", [
    ("count", 1025, ("shapes differ", "sum of float32 (1024,)", "sum of float32 (1025,)")),
    ("dtype", 11, ("dtypes differ", "sum of float32", "sum of float64")),
    ("op", 3, ("ops differ", "sum of float32", "max of float32")),
    ("quant", 1, ("quantization settings differ", "quantized minmax")),
    ("shape", [32, 32], ("shapes differ", "(1024,)", "(32, 32)")),
    ("structure", 77, ("tree structures differ",)),
])
def test_mismatched_descriptors_are_rejected_for_all(m, field, other, words):
    m.join([1, 2, 3])
    acts = m.msg(1, "op_start", tag=4, **DESC) + m.msg(2, "op_start", tag=4, **DESC)
    acts += m.msg(3, "op_start", tag=4, **{**DESC, field: other})
    rejects = sends(acts, "op_reject")
    assert set(rejects) == {1, 2, 3} and not sends(acts, "op_go")
    for r in rejects.values():
        assert r["tag"] == 4 and r["kind"] == MISMATCH
        for w in words:  # in words, not codes
            assert w in r["reason"], r["reason"]
    assert m.stats()["ops_rejected"] == 1
    # Everybody is free again: the next operation runs.
    assert set(sends(m.start_all([1, 2, 3], tag=5), "op_go")) == {1, 2, 3}


def test_a_rotation_on_one_peer_only_is_refused_in_words(m):
    """4-bit with rotation on two peers, without on the third: the reason names both settings."""
    four = {**DESC, "quant": 3, "qblock": 512, "qseed": 5}
    m.join([1, 2, 3])
    acts = m.msg(1, "op_start", tag=4, desc={**four, "qrotate": 1}) + m.msg(2, "op_start", tag=4, desc={**four, "qrotate": 1})
    acts += m.msg(3, "op_start", tag=4, desc=four)
    rejects = sends(acts, "op_reject")
    assert set(rejects) == {1, 2, 3}
    for r in rejects.values():
        assert r["kind"] == MISMATCH
        for w in ("quantization settings differ",
                  "quantized minmax4 (block 512, nearest-even rounding, seed 5, rotated, ring)",
                  "quantized minmax4 (block 512, nearest-even rounding, seed 5, ring)"):
            assert w in r["reason"], r["reason"]


@pytest.mark.parametrize("voter", [1, 2, 3])
def test_peer_in_update_topology_is_released_when_others_start_an_op(m, voter):
    # A peer one step behind (a newcomer's first update_topology(), say) must not break the others' operation:
    # its vote cannot complete, so it gets the current ring at once and goes on to the operation.
    m.join([1, 2, 3])
    others = [c for c in (1, 2, 3) if c != voter]
    assert m.msg(voter, "topo_request", seq=1) == []
    acts = m.start_all(others, tag=8)
    assert sends(acts, "topo_result") == {voter: {"seq": 1, "world_size": 3, "pending": 0, "ring": ring_of(1, 2, 3),
                                                  "kind": 0, "reason": ""}}
    assert not sends(acts, "op_reject") and not closed(acts)
    go = sends(m.msg(voter, "op_start", tag=8, **DESC), "op_go")
    assert set(go) == {1, 2, 3}


def test_update_topology_after_others_started_returns_at_once(m):
    m.join([1, 2, 3])
    assert m.start_all([1, 2], tag=3) == []
    acts = m.msg(3, "topo_request", seq=1)
    assert sends(acts, "topo_result")[3]["ring"] == ring_of(1, 2, 3)
    assert not sends(acts, "op_reject") and not closed(acts)
    assert set(sends(m.msg(3, "op_start", tag=3, **DESC), "op_go")) == {1, 2, 3}


def test_released_peers_do_not_admit_newcomers_until_all_vote(m):
    m.join([1, 2])
    m.hello(3)  # pending
    assert m.msg(2, "topo_request", seq=1) == []
    acts = m.msg(1, "op_start", tag=1, **DESC)
    assert sends(acts, "topo_result") == {2: {"seq": 1, "world_size": 2, "pending": 1, "ring": ring_of(1, 2),
                                              "kind": 0, "reason": ""}}
    assert set(sends(m.msg(2, "op_start", tag=1, **DESC), "op_go")) == {1, 2}  # 3 is still pending


def test_all_done_ok_commits(m):
    m.join([1, 2])
    op_id = running_op(m, [1, 2])
    assert m.msg(1, "op_done", op_id=op_id, ok=1) == []
    acts = m.msg(2, "op_done", op_id=op_id, ok=1)
    assert sends(acts, "op_commit") == {1: {"op_id": op_id}, 2: {"op_id": op_id}}
    assert m.stats()["ops_committed"] == 1
    # Both are idle again: the next op gets a new id.
    assert running_op(m, [1, 2], tag=2) == op_id + 1


def test_done_failed_aborts_for_all_members(m):
    m.join([1, 2, 3])
    op_id = running_op(m, [1, 2, 3])
    assert m.msg(1, "op_done", op_id=op_id, ok=1) == []
    acts = m.msg(2, "op_done", op_id=op_id, ok=0, kind=PEER_LOST, reason="recv from peer 3 timed out")
    aborts = sends(acts, "op_abort")
    assert set(aborts) == {1, 2, 3}
    for a in aborts.values():
        assert a["op_id"] == op_id and a["kind"] == PEER_LOST and "recv from peer 3 timed out" in a["reason"]
    assert m.stats()["ops_aborted"] == 1
    assert m.msg(3, "op_done", op_id=op_id, ok=1) == []  # a stale report is ignored
    assert not closed(acts)
    assert set(sends(m.start_all([1, 2, 3], tag=2), "op_go")) == {1, 2, 3}


def test_done_failed_without_a_kind_aborts_as_peer_lost(m):
    m.join([1, 2])
    op_id = running_op(m, [1, 2])
    aborts = sends(m.msg(1, "op_done", op_id=op_id, ok=0, kind=0, reason="boom"), "op_abort")
    assert {a["kind"] for a in aborts.values()} == {PEER_LOST}


@pytest.mark.parametrize("how", ["disconnect", "leave"])
def test_member_lost_mid_op_aborts_for_survivors(m, how):
    m.join([1, 2, 3])
    op_id = running_op(m, [1, 2, 3])
    m.msg(1, "op_done", op_id=op_id, ok=1)
    acts = m.disconnect(2) if how == "disconnect" else m.msg(2, "leave")
    assert 2 in closed(acts)
    aborts = sends(acts, "op_abort")
    assert set(aborts) == {1, 3}
    assert all(a["op_id"] == op_id and a["kind"] == PEER_LOST and "2" in a["reason"] for a in aborts.values())
    # Survivors retry on the smaller ring.
    go = sends(m.start_all([1, 3], tag=2), "op_go")
    assert go[1]["ring"] == ring_of(1, 3)


@pytest.mark.parametrize("how", ["disconnect", "leave", "evict"])
def test_waiting_op_starts_with_the_smaller_ring_when_a_member_goes(m, how):
    m.join([1, 2, 3])
    assert m.start_all([1, 3], tag=6) == []
    if how == "disconnect":
        acts = m.disconnect(2)
    elif how == "leave":
        acts = m.msg(2, "leave")
    else:
        m.now += 9
        m.msg(1, "heartbeat")
        m.msg(3, "heartbeat")
        acts = m.tick(m.now + 2)
    assert 2 in closed(acts)
    go = sends(acts, "op_go")
    assert set(go) == {1, 3}
    assert go[1] == go[3] and go[1]["tag"] == 6 and go[1]["ring"] == ring_of(1, 3)


def test_duplicate_tag_while_running_is_rejected_for_that_peer_only(m):
    m.join([1, 2])
    op_id = running_op(m, [1, 2], tag=7)
    acts = m.msg(2, "op_start", tag=7, **DESC)
    assert types(acts) == [("send", 2, "op_reject")], acts
    assert acts[0][3]["tag"] == 7 and acts[0][3]["kind"] == INVALID_ARGUMENT
    # The running operation is untouched.
    assert m.msg(1, "op_done", op_id=op_id, ok=1) == []
    assert set(sends(m.msg(2, "op_done", op_id=op_id, ok=1), "op_commit")) == {1, 2}


def test_op_done_from_a_non_member_is_ignored(m):
    m.join([1, 2], group=0)
    m.join([3], group=1)
    op_id = running_op(m, [1, 2])
    assert m.msg(3, "op_done", op_id=op_id, ok=0, reason="not mine") == []
    assert m.msg(1, "op_done", op_id=op_id + 50, ok=0) == []
    m.msg(1, "op_done", op_id=op_id, ok=1)
    assert set(sends(m.msg(2, "op_done", op_id=op_id, ok=1), "op_commit")) == {1, 2}


# ------------------------------------------------------------------------------------------------ liveness


def test_eviction_after_peer_timeout_but_not_before(m):
    m.join([1, 2])
    t0 = m.now
    assert m.tick(t0 + 10.0) == []  # exactly the deadline: still alive
    acts = m.tick(t0 + 10.01)
    assert types(acts)[:2] == [("send", 1, "kicked"), ("close", 1, acts[1][2])]
    assert set(sends(acts, "kicked")) == {1, 2} and set(closed(acts)) == {1, 2}
    assert "evicted" in sends(acts, "kicked")[1]["reason"]
    assert m.stats()["evictions"] == 2
    assert m.stats()["peers_accepted"] == 0
    assert m.tick(t0 + 30) == []


def test_heartbeats_keep_a_peer_alive(m):
    m.join([1, 2])
    t0 = m.now
    evicted_at = None
    for k in range(1, 11):  # peer 1 heartbeats every 4 s for 40 s; peer 2 stays silent
        m.now = t0 + 4 * k
        assert sends(m.msg(1, "heartbeat"), "heartbeat_ack") == {1: {"pending": 0}}
        acts = m.tick()
        if closed(acts):
            assert set(closed(acts)) == {2} and evicted_at is None
            evicted_at = m.now - t0
        else:
            assert acts == []
    assert evicted_at == 12
    assert m.stats()["evictions"] == 1
    assert sends(m.msg(1, "topo_request", seq=2), "topo_result")[1]["ring"] == ring_of(1)


def test_any_frame_counts_as_a_heartbeat(m):
    m.join([1, 2])
    t0 = m.now
    m.now = t0 + 8
    m.msg(1, "pending_request", seq=0)
    m.msg(2, "topo_request", seq=1)
    assert m.tick(t0 + 15) == []


def test_evicted_member_aborts_the_running_op(m):
    m.join([1, 2, 3])
    op_id = running_op(m, [1, 2, 3])
    m.now += 8
    m.msg(1, "op_done", op_id=op_id, ok=1)
    m.msg(3, "heartbeat")
    acts = m.tick(m.now + 3)
    assert 2 in sends(acts, "kicked") and 2 in closed(acts)
    aborts = sends(acts, "op_abort")
    assert set(aborts) == {1, 3} and all(a["kind"] == PEER_LOST for a in aborts.values())


def test_pending_peer_is_evicted_too(m):
    m.join([1])
    m.hello(2)
    m.now += 11
    m.msg(1, "heartbeat")
    acts = m.tick()
    assert set(closed(acts)) == {2}
    assert sends(m.msg(1, "heartbeat"), "heartbeat_ack") == {1: {"pending": 0}}


def test_handshake_timeout_drops_a_silent_connection():
    m = Master(peer_timeout=10.0, handshake_timeout=5.0)
    t0 = m.now
    m.connect(1)
    m.connect(2)
    m.now = t0 + 3
    m.msg(2, "hello", host="h", port=1)  # said hello in time
    assert m.tick(t0 + 5.0) == []
    acts = m.tick(t0 + 5.01)
    assert list(closed(acts)) == [1] and not sends(acts)
    assert "HELLO" in closed(acts)[1]
    s = m.stats()
    assert s["dropped_connections"] == 1 and s["evictions"] == 0
    assert any("HELLO" in r for r in s["recent_drops"])
    assert m.tick(t0 + 12.9) == []  # peer 2's own deadline counts from its hello
    assert set(closed(m.tick(t0 + 13.01))) == {2}


def test_disconnect_before_hello_counts_as_a_dropped_connection(m):
    m.connect(1)
    assert set(closed(m.disconnect(1))) == {1}
    assert m.stats()["dropped_connections"] == 1


# ------------------------------------------------------------------------------------ unexpected messages


@pytest.mark.parametrize("type_name,fields", [
    ("heartbeat", {}), ("topo_request", {"seq": 1}), ("op_start", {"tag": 1, **DESC}), ("leave", {}),
    ("op_done", {"op_id": 1, "ok": 1}),
])
def test_messages_before_hello_close_the_connection(m, type_name, fields):
    m.connect(1)
    acts = m.msg(1, type_name, **fields)
    assert types(acts) == [("close", 1, acts[0][2])]
    assert "before HELLO" in acts[0][2]
    assert m.stats()["dropped_connections"] == 1
    assert m.msg(1, "hello") == []  # the connection is gone


@pytest.mark.parametrize("type_name", ["welcome", "heartbeat_ack", "topo_result", "op_go", "op_reject",
                                       "op_commit", "op_abort", "pending_reply", "kicked", "peer_hello", "data"])
def test_types_a_master_never_receives_close_the_connection(m, type_name):
    m.join([1, 2])
    acts = m.msg(2, type_name)
    assert closed(acts).keys() == {2} and "unexpected message type" in closed(acts)[2]
    assert not sends(acts)
    assert m.stats()["dropped_connections"] == 1
    assert "unexpected message type" in m.stats()["recent_drops"][-1]


def test_bad_hellos_close_the_connection(m):
    m.join([1])
    m.connect(2)
    assert "connection count" in closed(m.msg(2, "hello", connections=0))[2]
    m.connect(3)
    assert "connection count" in closed(m.msg(3, "hello", connections=1025))[3]
    assert "second HELLO" in closed(m.msg(1, "hello"))[1]
    assert m.stats()["dropped_connections"] == 3


def test_pending_peer_may_only_wait(m):
    m.join([1])
    m.hello(2)
    assert sends(m.msg(2, "heartbeat"), "heartbeat_ack") == {2: {"pending": 1}}
    acts = m.msg(2, "op_start", tag=1, **DESC)
    assert closed(acts).keys() == {2} and "not yet admitted" in closed(acts)[2]
    m.hello(3)
    assert "not yet admitted" in closed(m.msg(3, "topo_request", seq=1))[3]
    assert m.stats()["dropped_connections"] == 2


def test_calls_out_of_order_close_the_connection(m):
    m.join([1, 2])
    assert m.msg(1, "topo_request", seq=1) == []  # waits for peer 2's vote
    assert "during update_topology" in closed(m.msg(1, "op_start", tag=1, **DESC))[1]
    assert set(sends(m.msg(2, "op_start", tag=1, **DESC), "op_go")) == {2}  # alone in the ring now
    assert "in flight" in closed(m.msg(2, "topo_request", seq=1))[2]
    assert m.stats()["dropped_connections"] == 2


def test_concurrent_operations_get_distinct_slots_and_a_tag_twice_is_refused(m):
    m.join([1, 2])
    go = {}
    for tag in (5, 6, 7):
        m.msg(1, "op_start", tag=tag, **DESC)
        go[tag] = sends(m.msg(2, "op_start", tag=tag, **DESC), "op_go")
    slots = {tag: msgs[1]["slot"] for tag, msgs in go.items()}
    assert sorted(slots.values()) == [0, 1, 2]  # three running at once: three connection slots
    for peer in (1, 2):  # tag 6 ends: its slot is free again for the next operation
        m.msg(peer, "op_done", op_id=go[6][1]["op_id"], ok=1)
    m.msg(1, "op_start", tag=8, **DESC)
    assert sends(m.msg(2, "op_start", tag=8, **DESC), "op_go")[1]["slot"] == slots[6]
    rejected = sends(m.msg(1, "op_start", tag=5, **DESC), "op_reject")  # tag 5 still runs: refused for peer 1 only
    assert list(rejected) == [1] and "in flight" in rejected[1]["reason"]
    m.msg(1, "op_start", tag=9, **DESC)
    assert "twice" in closed(m.msg(1, "op_start", tag=9, **DESC))[1]  # a tag this peer already announced


def test_unknown_type_names_are_refused_before_the_master(m):
    m.connect(1)
    with pytest.raises(ValueError):
        m.msg(1, "no_such_message")
    assert m.stats()["dropped_connections"] == 0


def test_events_for_unknown_connections_are_ignored(m):
    assert m.msg(42, "heartbeat") == []
    assert m.disconnect(42) == []


# ---------------------------------------------------------------------------------------------- peer groups


def test_ops_run_per_group(m):
    m.join([1, 2], group=0)
    m.join([3, 4], group=1)
    # The same tag in two groups is two operations: their descriptors need not agree across groups.
    acts = m.msg(1, "op_start", tag=1, **DESC) + m.msg(3, "op_start", tag=1, **{**DESC, "count": 7})
    assert acts == []  # each group waits for its own members only
    go0 = sends(m.msg(2, "op_start", tag=1, **DESC), "op_go")
    assert set(go0) == {1, 2} and go0[1]["ring"] == ring_of(1, 2)
    go1 = sends(m.msg(4, "op_start", tag=1, **{**DESC, "count": 7}), "op_go")
    assert set(go1) == {3, 4} and go1[3]["ring"] == ring_of(3, 4)
    assert go0[1]["op_id"] != go1[3]["op_id"]
    # A failure in group 1 leaves group 0 alone.
    acts = m.msg(3, "op_done", op_id=go1[3]["op_id"], ok=0, reason="x")
    assert set(sends(acts, "op_abort")) == {3, 4}
    m.msg(1, "op_done", op_id=go0[1]["op_id"], ok=1)
    assert set(sends(m.msg(2, "op_done", op_id=go0[1]["op_id"], ok=1), "op_commit")) == {1, 2}


def test_topology_votes_are_global(m):
    m.join([1, 2], group=0)
    m.join([3], group=1)
    assert types(m.hello(4, group=0)) == [("send", 4, "welcome")]
    assert m.msg(1, "topo_request", seq=1) + m.msg(2, "topo_request", seq=1) == []  # peer 3 holds the vote
    results = sends(m.msg(3, "topo_request", seq=1), "topo_result")
    assert set(results) == {1, 2, 3, 4}
    assert results[1]["ring"] == results[4]["ring"] == ring_of(1, 2, 4)
    assert results[3]["ring"] == ring_of(3)
    assert {r["world_size"] for r in results.values()} == {4}


def test_another_groups_vote_does_not_fail_an_op(m):
    m.join([1, 2], group=0)
    m.join([3], group=1)
    assert m.msg(3, "topo_request", seq=1) == []
    assert set(sends(m.start_all([1, 2]), "op_go")) == {1, 2}


def test_leaving_peer_of_another_group_does_not_touch_an_op(m):
    m.join([1, 2], group=0)
    m.join([3], group=1)
    op_id = running_op(m, [1, 2])
    acts = m.disconnect(3)
    assert not sends(acts, "op_abort")
    m.msg(1, "op_done", op_id=op_id, ok=1)
    assert set(sends(m.msg(2, "op_done", op_id=op_id, ok=1), "op_commit")) == {1, 2}


# ------------------------------------------------------------------------------------------- abusive peers


def test_a_peer_cannot_hold_more_than_1024_operations_in_the_master(m):
    """Each started operation holds a descriptor in the master: a peer that starts operations nobody else starts
    is refused (OP_REJECT, for that call only) past 1024, and the others' operations go on."""
    m.join([1, 2])
    for tag in range(1024):
        assert m.msg(1, "op_start", tag=tag, **DESC) == []
    rejected = sends(m.msg(1, "op_start", tag=5000, **DESC), "op_reject")
    assert set(rejected) == {1} and rejected[1]["kind"] == INVALID_ARGUMENT and "1024" in rejected[1]["reason"]
    go = sends(m.msg(2, "op_start", tag=0, **DESC), "op_go")
    assert set(go) == {1, 2}


def test_flooding_update_topology_closes_only_the_flooder(m):
    """A second TOPO_REQUEST before the first was answered breaks the protocol: that connection closes; the
    vote of the others completes without it."""
    m.join([1, 2, 3])
    m.hello(4)  # pending: the vote waits for every accepted peer
    assert m.msg(1, "topo_request", seq=1) == []
    acts = m.msg(1, "topo_request", seq=2)
    assert 1 in closed(acts)
    acts = m.msg(2, "topo_request", seq=1) + m.msg(3, "topo_request", seq=1)
    results = sends(acts, "topo_result")
    assert {2, 3} <= set(results) and 1 not in results
    assert [p["id"] for p in results[2]["ring"]] == [2, 3, 4]
