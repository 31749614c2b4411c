"""The shared-state election as a pure function (cpp/planning/state_election.hpp): who votes, which content wins, who
is refused and why, what each peer fetches, and how a receiver's bytes are striped over the holders."""

from __future__ import annotations

import pytest

from fake_master import F32, SHARED_STATE
from pccl_arrays import _core_testing
pytestmark = pytest.mark.timeout(30)


def entries(*hashes, sizes=None, tolerate=()):
    sizes = sizes or [400] * len(hashes)
    return [{"name": f"e{i}", "dtype": F32, "shape": [n // 4], "nbytes": n, "hash": h, "tolerate": int(i in tolerate)}
            for i, (h, n) in enumerate(zip(hashes, sizes))]


def peer(id, hashes, revision=1, strategy=0, synced=False, connections=1, **kw):
    return {"id": id, "revision": revision, "strategy": strategy, "synced": synced, "connections": connections,
            "entries": entries(*hashes, **kw)}


def elect(peers, group_revision=None):
    return _core_testing.elect_state(peers, group_revision)


def covered(plan_of_receiver, plans, receiver):
    """Checks that the holders' sends to `receiver` tile its stream exactly; returns {holder: bytes}."""
    ranges = sorted((r["begin"], r["end"], r["from"]) for r in plan_of_receiver["recvs"])
    at = 0
    for b, e, src in ranges:
        assert b == at
        at = e
        send = [s for s in plans[src]["sends"] if s["to"]["id"] == receiver]
        assert len(send) == 1 and (send[0]["begin"], send[0]["end"]) == (b, e)
        assert send[0]["fetch"] == plan_of_receiver["fetch"]
    return {src: e - b for b, e, src in ranges}, at


def test_majority_wins_and_the_minority_fetches_only_dirty_entries():
    d = elect([peer(1, [1, 2, 3]), peer(2, [1, 2, 3]), peer(3, [1, 9, 3])])
    assert d["members"] == [1, 2, 3] and d["moves"]
    p3 = d["plans"][3]
    assert p3["fetch"] == [1] and p3["expect"] == [2]
    shares, total = covered(p3, d["plans"], 3)
    assert total == 400 and shares == {1: 200, 2: 200}
    assert d["plans"][1]["fetch"] == d["plans"][2]["fetch"] == []


def test_equal_state_moves_nothing():
    d = elect([peer(1, [1, 2]), peer(2, [1, 2])])
    assert not d["moves"] and all(p["ok"] and not p["sends"] and not p["recvs"] for p in d["plans"].values())


def test_a_tie_goes_to_the_most_senior_holder():
    d = elect([dict(peer(5, [7]), seniority=2), dict(peer(6, [8]), seniority=1)])
    assert d["plans"][5]["fetch"] == [0] and d["plans"][6]["fetch"] == []


@pytest.mark.parametrize("newcomer_revision", [1, 2, 50])
def test_newcomers_never_vote_against_state_holders_even_one_against_one(newcomer_revision):
    d = elect([dict(peer(1, [1], synced=True), seniority=9), dict(peer(2, [2], revision=newcomer_revision), seniority=1)],
              group_revision=1)
    assert d["plans"][2]["ok"] and d["plans"][2]["fetch"] == [0] and d["revision"] == 1
    # three newcomers against one holder: still the holder
    d = elect([peer(1, [1], synced=True)] + [peer(i, [2]) for i in (2, 3, 4)], group_revision=1)
    assert all(d["plans"][i]["fetch"] == [0] for i in (2, 3, 4))
    shares, _ = covered(d["plans"][3], d["plans"], 3)
    assert shares == {1: 400}


def test_receive_only_never_votes_and_all_receive_only_is_refused():
    d = elect([peer(1, [1]), peer(2, [2], strategy=1), peer(3, [2], strategy=1)])
    assert d["plans"][2]["fetch"] == d["plans"][3]["fetch"] == [0]
    d = elect([peer(1, [1], strategy=1), peer(2, [1], strategy=1)])
    assert d["members"] == []
    for p in d["plans"].values():
        assert not p["ok"] and p["kind"] == SHARED_STATE and "no peer of the group offers state" in p["reason"]


def test_send_only_must_win():
    d = elect([peer(1, [1], strategy=2), peer(2, [2]), peer(3, [2])])
    assert not d["plans"][1]["ok"] and "lost the election" in d["plans"][1]["reason"]
    assert d["members"] == [2, 3] and not d["moves"]
    d = elect([peer(1, [1], strategy=2), peer(2, [2])])  # a tie it wins by seniority (id order here)
    assert d["plans"][1]["ok"] and d["plans"][2]["fetch"] == [0]
    d = elect([peer(1, [1], synced=True), peer(2, [1], strategy=2)], group_revision=1)
    assert not d["plans"][2]["ok"] and "has not synced with the group yet" in d["plans"][2]["reason"]


def test_revision_rules():
    # behind catches up, even with identical content
    d = elect([peer(1, [1], revision=5, synced=True), peer(2, [1], revision=4, synced=True)], group_revision=4)
    assert d["revision"] == 5 and d["plans"][2]["ok"] and d["plans"][2]["fetch"] == []
    # one ahead is the current revision: it wins against a majority that stayed behind
    d = elect([peer(1, [9], revision=5, synced=True)] + [peer(i, [1], revision=4, synced=True) for i in (2, 3)],
              group_revision=4)
    assert d["revision"] == 5 and d["plans"][2]["fetch"] == [0]
    # more than one ahead is refused; the rest go on
    d = elect([peer(1, [9], revision=6, synced=True), peer(2, [1], revision=5, synced=True),
               peer(3, [1], revision=5, synced=True)], group_revision=4)
    assert not d["plans"][1]["ok"] and "ahead of the group's revision 4 by more than one" in d["plans"][1]["reason"]
    assert d["members"] == [2, 3] and d["revision"] == 5
    # without peers holding state (a new group) there is no rule to break
    d = elect([peer(1, [1], revision=100), peer(2, [1], revision=3)], group_revision=4)
    assert d["revision"] == 100 and d["members"] == [1, 2]


def test_layout_mismatches_refuse_that_peer_with_the_difference():
    base = peer(1, [1, 2])
    cases = {
        "lacks entry 'e1'": dict(peer(3, [1]), ),
        "entry 'e0' has shape (50,)": peer(3, [1, 2], sizes=[200, 400]),
        "marked allow_content_inequality": peer(3, [1, 2], tolerate=(0,)),
    }
    wrong_dtype = peer(3, [1, 2])
    wrong_dtype["entries"][1]["dtype"] = 11
    cases["entry 'e1' has dtype code 11"] = wrong_dtype
    for needle, bad in cases.items():
        d = elect([base, peer(2, [1, 2]), bad])
        assert not d["plans"][3]["ok"] and needle in d["plans"][3]["reason"], (needle, d["plans"][3]["reason"])
        assert d["members"] == [1, 2]


def test_tolerant_entries_go_whole_from_the_senior_holder_to_peers_without_state_only():
    ps = [peer(1, [1, 5], synced=True, tolerate=(1,)), peer(2, [1, 6], synced=True, tolerate=(1,)),
          peer(3, [0, 0], tolerate=(1,), sizes=[400, 400])]
    d = elect(ps, group_revision=1)
    assert d["plans"][1]["fetch"] == d["plans"][2]["fetch"] == []  # holders keep their own
    p3 = d["plans"][3]
    assert p3["fetch"] == [1, 0] and p3["expect"] == [5, 1]  # tolerant first, the senior holder's hash
    shares, total = covered(p3, d["plans"], 3)
    assert total == 800 and shares[1] >= 400  # the senior holder carries the whole tolerant entry


def test_striping_uses_every_holder_and_the_smaller_connection_count():
    ps = [peer(i, [1], connections=8, sizes=[1 << 20]) for i in (1, 2, 3, 4)]
    ps.append(peer(5, [0], connections=2, sizes=[1 << 20]))
    d = elect(ps)
    shares, total = covered(d["plans"][5], d["plans"], 5)
    assert total == 1 << 20 and set(shares) == {1, 2, 3, 4} and max(shares.values()) - min(shares.values()) <= 1
    assert {r["stripes"] for r in d["plans"][5]["recvs"]} == {2}
