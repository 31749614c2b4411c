"""broadcast, all_gather, reduce_scatter and barrier between real peer processes and a real master: every dtype
and op against NumPy's definitions, torch and JAX arrays, a peer SIGKILLed mid-operation, peers that disagree,
and the barrier's order and timeout (docs/collectives.md)."""

from __future__ import annotations

import signal

import numpy as np
import pytest

import data
from collective_scenarios import REDUCE_OPS, rs_shape
from conftest import needs_jax, needs_torch
from procs import spawn, wait_all

N = 4 * 1024 * 1024  # 16 MiB of float32: an operation is in flight for a while


def _by_rank(peers) -> tuple[list[dict], list[dict]]:
    """Results and arrays ordered by ring rank (the order inputs were made in)."""
    got = sorted(((p.result(), p.arrays()) for p in peers), key=lambda ra: ra[0]["rank"])
    for res, _ in got:
        assert "error" not in res, res.get("traceback")
    return [g[0] for g in got], [g[1] for g in got]


def _chunks(rows: int, world: int) -> list[tuple[int, int]]:
    base, rem = divmod(rows, world)
    return [(r * base + min(r, rem), base + (r < rem)) for r in range(world)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("world", [2, 3])
def test_every_dtype_and_op_matches_numpy(master, tmp_path, world):
    peers = [spawn(master.address, "collectives_cases", r, world, tmp_path) for r in range(world)]
    wait_all(peers, 150)
    results, arrays = _by_rank(peers)
    assert [r["rank"] for r in results] == list(range(world))
    ids = [r["peer_id"] for r in results]
    for a in arrays:
        assert a["peers"].tolist() == ids  # info.peers: ring order, the order of all_gather's rows
    for case, name in enumerate(data.DTYPES):
        n = data.length(case)
        inputs = [data.make(name, "sum", n, r, case) for r in range(world)]
        for r in range(world):
            bc, ag = arrays[r][f"bc_{name}"], arrays[r][f"ag_{name}"]
            assert bc.tobytes() == inputs[case % world].tobytes(), (name, r)  # the root's bytes, bit for bit
            assert ag.shape == (world, n) and ag.tobytes() == np.stack(inputs).tobytes(), (name, r)
        for op in REDUCE_OPS:
            if op == "avg" and name not in data.FLOATS:
                continue
            shape = rs_shape(case)
            ins = [data.make(name, op, int(np.prod(shape)), r, case).reshape(shape) for r in range(world)]
            ref = data.reference(name, op, ins)
            for r, (first, rows) in enumerate(_chunks(shape[0], world)):
                got = arrays[r][f"rs_{name}_{op}"]
                if name == "bfloat16":
                    got = got.view(data.np_dtype(name))
                assert got.shape == (rows,) + shape[1:], (name, op, r, got.shape)
                sl = slice(first, first + rows)
                data.assert_reduced(name, op, got, ref[sl], [i[sl] for i in ins], world, (name, op, r))


@needs_torch
@needs_jax
@pytest.mark.timeout(120)
def test_torch_and_jax_arrays_and_async_forms(master, tmp_path):
    world = 3
    peers = [spawn(master.address, "collectives_frameworks", r, world, tmp_path) for r in range(world)]
    wait_all(peers, 100)
    results, arrays = _by_rank(peers)
    for r, (res, a) in enumerate(zip(results, arrays)):
        assert res["types"] == ["torch", "torch", "jax", "jax"], res
        assert np.array_equal(a["bc"], np.arange(1000, dtype=np.float32) + 1000 * (world - 1))
        col = np.arange(2 * 501).reshape(501, 2)[:, 1]
        assert np.array_equal(a["ag"], np.stack([col * (k + 1) for k in range(world)]))
        j = np.arange(12, dtype=np.float32).reshape(4, 3)
        assert np.array_equal(a["jag"], np.stack([j * (k + 1) for k in range(world)]))
        first, rows = _chunks(4, world)[r]
        assert np.array_equal(a["jrs"], (j * sum(range(1, world + 1)))[first:first + rows])
        assert np.array_equal(a["rs"], np.full((_chunks(7, world)[r][1], 5), float(world)))
        assert res["async"] == [[[k] for k in range(world)], [0, 0], None], res


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind,victim", [("broadcast", 1), ("broadcast", 0), ("all_gather", 1), ("reduce_scatter", 2)])
def test_sigkill_mid_collective_fails_every_survivor_and_the_retry_is_exact(master, tmp_path, kind, victim):
    """victim: a ring rank (broadcast's root is rank 0, so ("broadcast", 0) loses the root)."""
    world = 3
    peers = [spawn(master.address, "collective_fail_mid_op", r, world, tmp_path, n=N, victim=victim, kind=kind)
             for r in range(world)]
    wait_all(peers, 60)
    killed = [p for p in peers if p.proc.returncode == -signal.SIGKILL]
    assert len(killed) == 1
    t_kill = float((tmp_path / "stamp").read_text())
    survivors = [(p.result(), p.arrays()) for p in peers if p is not killed[0]]
    old = {}  # the retry's ring rank -> the survivor's rank before (its input is rank + 1)
    for res, _ in survivors:
        assert res["error"] == "PeerLostError" and res["retryable"], res
        assert res["t_error"] - t_kill < 2.0, res
        assert res["input_intact"], res  # a broadcast in place publishes nothing before the commit
        assert res["retry_world"] == world - 1, res
        assert res["retry_peers"] == survivors[0][0]["retry_peers"]
        old[res["retry_rank"]] = res["old_rank"]
        # Only a lost root makes the immediate retry fail, in words; update_topology() then picks a new rank 0.
        assert ("retry_error" in res) == (kind == "broadcast" and victim == 0), res
        if "retry_error" in res:
            assert "its root" in res["retry_error"] and "is not in the group" in res["retry_error"], res
    for res, a in survivors:
        retry = a["retry"]
        if kind == "broadcast":
            assert retry.shape == (N,) and np.all(retry == old[0] + 1), (old, retry[:4])
        elif kind == "all_gather":
            assert retry.shape == (world - 1, N)
            for k in range(world - 1):
                assert np.all(retry[k] == old[k] + 1), (k, old)
        else:
            first, rows = _chunks(N, world - 1)[res["retry_rank"]]
            assert retry.shape == (rows,) and np.all(retry == sum(v + 1 for v in old.values()))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case,words", [("roots", "roots differ"), ("kinds", "collectives differ: broadcast and all_gather"),
                                        ("shapes", "shapes differ")])
def test_peers_that_disagree_are_refused_in_words(master, tmp_path, case, words):
    world = 2
    peers = [spawn(master.address, "collective_mismatch", r, world, tmp_path, case=case) for r in range(world)]
    wait_all(peers, 50)
    for p in peers:
        res = p.result()
        assert res["error"] == "OperationMismatchError", res
        assert words in res["message"] or words.replace("broadcast and all_gather", "all_gather and broadcast") \
            in res["message"], res
        assert sorted(res["after"]) == [0, 1], res  # the communicator stays usable


@pytest.mark.timeout(60)
def test_barrier_returns_after_the_last_call_and_times_out_naming_the_absent(master, tmp_path):
    world = 3
    peers = [spawn(master.address, "barrier_order", r, world, tmp_path, late=1, delay=0.5) for r in range(world)]
    for p in peers:
        p.wait_event("done", 50)
    (tmp_path / "release").write_text("")
    wait_all(peers, 30)
    results = sorted((p.result() for p in peers), key=lambda r: r["rank"])
    late = results[1]
    for res in results:
        assert res["returned"] >= late["called"], res  # nobody passed the barrier before the late peer reached it
        if res["rank"] != 1:
            assert res["second"] == "PCCLTimeoutError", res
            assert f"peer {late['peer_id']}" in res["second_message"] and "barrier tag 1" in res["second_message"], res


@pytest.mark.timeout(90)
def test_quantized_all_gather_and_reduce_scatter(master, tmp_path):
    """8-bit and 4-bit rotated: all_gather's result is the same bytes on every peer (its own row decoded too),
    within the format's error of the inputs; reduce_scatter's chunk is within it of the average; both send
    about a quarter (an eighth) of the plain bytes; peers with different settings are refused in words."""
    world = 3
    peers = [spawn(master.address, "collectives_quantized", r, world, tmp_path) for r in range(world)]
    wait_all(peers, 80)
    results, arrays = _by_rank(peers)
    xs = np.stack([np.random.default_rng([r, 1]).standard_normal(100_003).astype(np.float32) for r in range(world)])
    ys = [np.random.default_rng([r, 2]).standard_normal((1001, 7)).astype(np.float32) for r in range(world)]
    mean = sum(y.astype(np.float64) for y in ys) / world

    def rel(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2)))

    for bits, bound, ratio in (("8", 0.01, 0.27), ("4", 0.15, 0.145)):
        for r in range(world):
            ag, rs = arrays[r][f"ag{bits}"], arrays[r][f"rs{bits}"]
            assert ag.tobytes() == arrays[0][f"ag{bits}"].tobytes(), (bits, r)
            assert ag.shape == xs.shape and 0 < rel(ag, xs) < bound, (bits, rel(ag, xs))
            first, rows = _chunks(1001, world)[r]
            assert rs.shape == (rows, 7) and 0 < rel(rs, mean[first:first + rows]) < bound, bits
            sent = results[r]["sent"]
            assert sent[f"ag{bits}"] < ratio * sent["plain"], (bits, sent)
    for res in results:
        assert res["mismatch"].startswith("OperationMismatchError") and "quantization settings differ" in res["mismatch"]
