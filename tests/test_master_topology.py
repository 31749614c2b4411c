"""The master's side of optimize_topology() as a pure state machine (harness: tests/helpers/fake_master.py):
the probe plan covers exactly the unmeasured edges in rounds where nobody sends or receives twice, the solved
order reaches every member and every later operation, a join costs only the newcomer's edges, and a lost
member, a conflicting collective or a timeout ends it on every member."""

from __future__ import annotations

import pytest

from fake_master import DESC, MISMATCH, PEER_LOST, TIMEOUT, Master, sends

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def m():
    return Master()


def start_all(m: Master, conns, seq: int = 7, **kw):
    acts = []
    for c in conns:
        acts += m.msg(c, "opt_start", seq=seq, **kw)
    return acts


def edges(plans: dict) -> list[tuple[int, int]]:
    """(sender, receiver) of every probe in the plans, checking that both ends agree round by round."""
    out = []
    rounds = {len(p["rounds"]) for p in plans.values()}
    assert len(rounds) == 1, "every member gets the same number of rounds"
    for r in range(rounds.pop()):
        senders, receivers = [], []
        for c, p in plans.items():
            rnd = p["rounds"][r]
            if rnd["send_to"]["id"]:
                to = rnd["send_to"]["id"]
                assert plans[to]["rounds"][r]["recv_from"] == c
                senders.append(c)
                out.append((c, to))
            if rnd["recv_from"]:
                receivers.append(c)
        assert len(set(senders)) == len(senders) and len(set(receivers)) == len(receivers)
    return out


def report(m: Master, plans: dict, bandwidth) -> list:
    acts = []
    for c, p in plans.items():
        links = [{"from": rnd["recv_from"], "to": c, "bandwidth": int(bandwidth(rnd["recv_from"], c)), "rtt_us": 1000}
                 for rnd in p["rounds"] if rnd["recv_from"]]
        acts += m.msg(c, "opt_report", opt_id=p["opt_id"], links=links)
    return acts


def ring_ids(result) -> list[int]:
    return [p["id"] for p in result["ring"]]


def test_the_first_call_probes_every_ordered_pair_once_and_the_solved_order_reaches_everyone(m):
    m.join([1, 2, 3, 4])
    plans = sends(start_all(m, [1, 2, 3, 4]), "opt_plan")
    assert set(plans) == {1, 2, 3, 4} and all(p["seq"] == 7 for p in plans.values())
    assert sorted(edges(plans)) == sorted((a, b) for a in range(1, 5) for b in range(1, 5) if a != b)
    # Fast pairs: 1-3 and 2-4 both ways, 3->2 and 4->1; everything else slow. Best ring: 1 3 2 4.
    fast = {(1, 3), (3, 1), (2, 4), (4, 2), (3, 2), (4, 1)}
    results = sends(report(m, plans, lambda a, b: 1e9 if (a, b) in fast else 1e7), "topo_result")
    assert set(results) == {1, 2, 3, 4} and all(r["kind"] == 0 and r["seq"] == 7 for r in results.values())
    assert {tuple(ring_ids(r)) for r in results.values()} == {(1, 3, 2, 4)}
    go = sends(m.start_all([1, 2, 3, 4]), "op_go")
    assert ring_ids(go[1]) == [1, 3, 2, 4]  # the next operation runs on the new ring
    assert m.stats()["optimizations"] == 1 and m.stats()["links_probed"] == 12 and m.stats()["links_known"] == 12


def test_known_links_are_not_probed_again_and_a_newcomer_costs_only_its_edges(m):
    m.join([1, 2, 3])
    plans = sends(start_all(m, [1, 2, 3]), "opt_plan")
    report(m, plans, lambda a, b: 1e8)
    again = start_all(m, [1, 2, 3], seq=8)
    assert not sends(again, "opt_plan") and all(r["kind"] == 0 for r in sends(again, "topo_result").values())
    m.join([4])
    plans = sends(start_all(m, [1, 2, 3, 4], seq=9), "opt_plan")
    probed = edges(plans)
    assert sorted(probed) == sorted([(4, 1), (4, 2), (4, 3), (1, 4), (2, 4), (3, 4)])
    results = sends(report(m, plans, lambda a, b: 1e8), "topo_result")
    assert set(results) == {1, 2, 3, 4} and m.stats()["links_probed"] == 6 + 6


def test_a_member_lost_while_probing_aborts_it_everywhere_and_takes_its_edges(m):
    m.join([1, 2, 3])
    plans = sends(start_all(m, [1, 2, 3]), "opt_plan")
    opt_id = plans[1]["opt_id"]
    m.msg(1, "opt_report", opt_id=opt_id, links=[])
    acts = m.disconnect(3)
    aborts, results = sends(acts, "op_abort"), sends(acts, "topo_result")
    assert set(aborts) == {1, 2} and all(a["op_id"] == opt_id and a["kind"] == PEER_LOST for a in aborts.values())
    assert set(results) == {1, 2} and all(r["kind"] == PEER_LOST and "lost" in r["reason"] for r in results.values())
    # The retry on the survivors probes their two edges (nothing was reported before the loss).
    plans = sends(start_all(m, [1, 2], seq=8), "opt_plan")
    assert sorted(edges(plans)) == [(1, 2), (2, 1)]


def test_a_failed_probe_reported_by_a_member_ends_it_for_all(m):
    m.join([1, 2])
    plans = sends(start_all(m, [1, 2]), "opt_plan")
    acts = m.msg(2, "op_done", op_id=plans[2]["opt_id"], ok=0, kind=PEER_LOST, reason="the probe from peer 1 broke off")
    results = sends(acts, "topo_result")
    assert set(results) == {1, 2} and all(r["kind"] == PEER_LOST and "broke off" in r["reason"] for r in results.values())


def test_an_all_reduce_started_by_others_fails_both(m):
    m.join([1, 2, 3])
    start_all(m, [1])
    acts = m.msg(2, "op_start", tag=1, **DESC)
    rejects, results = sends(acts, "op_reject"), sends(acts, "topo_result")
    assert rejects[2]["kind"] == MISMATCH and "optimize_topology" in rejects[2]["reason"]
    assert results[1]["kind"] == MISMATCH


def test_a_peer_that_never_calls_it_times_out_the_others(m):
    m.join([1, 2, 3])
    start_all(m, [1, 2], timeout_ms=2000)
    acts = m.tick(m.now + 2.5)
    results = sends(acts, "topo_result")
    assert set(results) == {1, 2} and all(r["kind"] == TIMEOUT and "peer 3" in r["reason"] for r in results.values())


def test_a_report_about_other_pairs_is_ignored(m):
    m.join([1, 2])
    plans = sends(start_all(m, [1, 2]), "opt_plan")
    opt_id = plans[1]["opt_id"]
    m.msg(1, "opt_report", opt_id=opt_id, links=[{"from": 2, "to": 1, "bandwidth": 5, "rtt_us": 1},
                                                   {"from": 1, "to": 2, "bandwidth": 10**12, "rtt_us": 1}])
    m.msg(2, "opt_report", opt_id=opt_id, links=[{"from": 1, "to": 2, "bandwidth": 7, "rtt_us": 1}])
    assert m.stats()["links_known"] == 2
