"""Multi-process all-reduce against NumPy: every op x dtype for 2, 3 and 4 peers, odd lengths, a 64 MiB array
striped over 4 connections, and bitwise-identical results on every peer."""

from __future__ import annotations

import pytest

import data
from procs import spawn, wait_all


def _expected_inputs(world: int):
    case = 0
    for name in data.DTYPES:
        for op in data.OPS:
            case += 1
            n = data.length(case)
            yield name, op, [data.make(name, op, n, r, case) for r in range(world)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("world", [2, 3, 4])
def test_every_op_and_dtype_matches_numpy(master, tmp_path, world):
    peers = [spawn(master.address, "ops_dtypes", r, world, tmp_path) for r in range(world)]
    wait_all(peers, 150)
    results = [p.arrays() for p in peers]
    for p in peers:
        res = p.result()
        assert "error" not in res, res.get("traceback")
        # avg on integers is refused locally with a TypeError, before anything is sent
        assert len(res["refused"]) == 8 and all(r.endswith("UnsupportedDTypeError") for r in res["refused"])
    assert check_against_numpy(results, world) == 12 * 4 + 4  # 12 dtypes x (sum, prod, max, min) + 4 float avg


def check_against_numpy(results: list[dict], world: int) -> int:
    """Every peer's result is bitwise identical to the others' and matches NumPy; returns the cases checked."""
    checked = 0
    for name, op, inputs in _expected_inputs(world):
        if op == "avg" and name not in data.FLOATS:
            continue
        key = f"{name}_{op}"
        got = [r[key] for r in results]
        for g in got[1:]:  # bitwise identical everywhere
            assert g.tobytes() == got[0].tobytes(), key
        value = got[0].view(data.np_dtype(name)) if name == "bfloat16" else got[0]
        data.assert_reduced(name, op, value, data.reference(name, op, inputs), inputs, world, key)
        checked += 1
    return checked


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_64mib_striped_over_all_connections(master, tmp_path):
    n = 16 * 1024 * 1024 + 7  # 64 MiB of float32, not divisible by world x connections
    world = 3
    peers = [spawn(master.address, "big", r, world, tmp_path, n=n, connections=4) for r in range(world)]
    wait_all(peers, 200)
    res = [p.result() for p in peers]
    for r in res:
        assert "error" not in r, r.get("traceback")
        assert r["exact"] and r["stripes"] == 4 and r["world"] == world
    assert len({r["sha256"] for r in res}) == 1
    for r in res:
        sends = [s for s in r["stats"] if s["direction"] == "send"]
        recvs = [s for s in r["stats"] if s["direction"] == "recv"]
        assert sorted(s["index"] for s in sends) == [0, 1, 2, 3]
        assert sorted(s["index"] for s in recvs) == [0, 1, 2, 3]
        # every connection carried its share (about 1/4 of 2(N-1)/N of the array each way)
        share = 2 * (world - 1) / world * n * 4 / 4
        for s in sends + recvs:
            assert 0.9 * share < s["moved"] < 1.1 * share, s
