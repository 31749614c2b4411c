"""optimize_topology() with real peers behind an emulated two-region network (pccl_arrays.wan_regions): every
peer ends with the same ring, which crosses between regions as few times as possible; a peer killed while
probing costs every other peer a retryable error and the retry succeeds; a join afterwards probes only the
newcomer's edges."""

from __future__ import annotations

import pytest

from procs import spawn, wait_all

pytestmark = pytest.mark.timeout(150)

# Fast inside a region (25 MB/s), slow between (2 MB/s): the crossing order is 12x slower than the best.
LAYOUT = {"regions": {"a": 2, "b": 2}, "inside": {"delay_ms": 2, "mbps": 200},
          "links": [{"from": "a", "to": "b", "delay_ms": 20, "mbps": 16}]}
REGION = {0: "a", 1: "a", 2: "b", 3: "b"}


def crossings(ring_slots: list[int]) -> int:
    return sum(REGION[ring_slots[k]] != REGION[ring_slots[(k + 1) % len(ring_slots)]] for k in range(len(ring_slots)))


def slots_of(results: dict, ring: list[int]) -> list[int]:
    by_id = {res["peer_id"]: slot for slot, res in results.items()}
    return [by_id[i] for i in ring]


def test_every_peer_takes_the_same_ring_and_it_stays_inside_regions(master, tmp_path):
    order = [0, 2, 1, 3]  # started so that admission tends to alternate regions
    peers = [spawn(master.address, "topo_optimize", r, 4, tmp_path, layout=LAYOUT, slot=order[r], hold=True)
             for r in range(4)]
    for p in peers:
        p.wait_event("optimized", 90)
    links = master.links()  # while every peer is still in the group
    (tmp_path / "STOP").touch()
    wait_all(peers, 60)
    results = {order[p.rank]: p.result() for p in peers}
    for res in results.values():
        assert "error" not in res, res.get("traceback")
        assert res["attempts"] == ["ok"] and res["exact"] == [True], results
    rings = {tuple(res["rings"][0]) for res in results.values()}
    assert len(rings) == 1, results
    assert crossings(slots_of(results, list(rings.pop()))) == 2, (results, links)
    assert sum(res["measured"][0] for res in results.values()) == 12, results  # the full mesh, once
    assert master.stats()["links_probed"] == 12 and master.stats()["optimizations"] == 1
    links = {(l["from"], l["to"]): l["bandwidth"] for l in links}
    slot = {res["peer_id"]: s for s, res in results.items()}
    inside = [b for (i, j), b in links.items() if REGION[slot[i]] == REGION[slot[j]]]
    between = [b for (i, j), b in links.items() if REGION[slot[i]] != REGION[slot[j]]]
    assert len(links) == 12 and min(inside) > 2 * max(between), links  # 25 MB/s against 2 MB/s, emulated


def test_a_peer_killed_while_probing_costs_the_others_a_retry(master, tmp_path):
    victim = 3
    peers = [spawn(master.address, "topo_optimize", r, 4, tmp_path, layout=LAYOUT, slot=r,
                   kill_after_s=0.5 if r == victim else None) for r in range(4)]
    wait_all(peers, 120)
    assert peers[victim].proc.returncode == -9
    survivors = {p.rank: p.result() for p in peers if p.rank != victim}
    for res in survivors.values():
        assert "error" not in res, res.get("traceback")
        assert res["attempts"][0].startswith("PeerLostError") and res["attempts"][-1] == "ok", res["attempts"]
        assert res["exact"] == [True]
    rings = {tuple(res["rings"][0]) for res in survivors.values()}
    assert len(rings) == 1 and len(rings.pop()) == 3


def test_a_join_afterwards_probes_only_the_newcomers_edges(master, tmp_path):
    peers = [spawn(master.address, "topo_optimize", r, 3, tmp_path, layout=LAYOUT, slot=r, then_world=4)
             for r in range(3)]
    for p in peers:
        p.wait_event("optimized", 90)
    assert master.stats()["links_probed"] == 6
    peers.append(spawn(master.address, "topo_optimize", 3, 4, tmp_path, layout=LAYOUT, slot=3, newcomer=True))
    wait_all(peers, 120)
    results = {p.rank: p.result() for p in peers}
    for res in results.values():
        assert "error" not in res, res.get("traceback")
        assert all(a == "ok" for a in res["attempts"]) and all(res["exact"])
    assert master.stats()["links_probed"] == 6 + 6  # the newcomer's 3 edges each way, nothing else
    assert [results[r]["measured"][-1] for r in range(4)] == [1, 1, 1, 3]
    rings = {tuple(results[r]["rings"][-1]) for r in range(4)}
    assert len(rings) == 1
    assert crossings(slots_of(results, list(rings.pop()))) == 2


def test_the_documented_loop_optimizes_on_agreed_steps_with_a_newcomer(master, tmp_path):
    """docs/topology.md's loop, a newcomer joining mid-run: no peer ever disagrees about when to optimize."""
    args = dict(layout=LAYOUT, steps=24, every=4, compute_s=0.1)
    peers = [spawn(master.address, "topo_loop", r, 3, tmp_path, slot=r, **args) for r in range(3)]
    peers[0].wait_event("revision_5", 90)
    peers.append(spawn(master.address, "topo_loop", 3, 4, tmp_path, slot=3, newcomer=True, **args))
    wait_all(peers, 120)
    results = [p.result() for p in peers]
    for res in results:
        assert "error" not in res, res.get("traceback")
        assert res["revision"] == 24 and res["retries"] == 0, res
    assert len({res["w"] for res in results}) == 1  # the same state everywhere
    old = [r["revision"] for r in results[0]["optimized"]]
    assert old == [0, 4, 8, 12, 16, 20]
    newcomer = [r["revision"] for r in results[3]["optimized"]]
    assert newcomer and set(newcomer) <= set(old) and newcomer == old[len(old) - len(newcomer):]
    final_rings = {tuple(res["optimized"][-1]["ring"]) for res in results}
    assert len(final_rings) == 1 and len(final_rings.pop()) == 4
    assert master.stats()["links_probed"] == 6 + 6  # the first three peers' mesh, then the newcomer's links
