"""The names a torch or JAX user reaches for mean what they expect: world_size is the group collectives run
over, rank its position, last_info belongs to the calling thread, one way to say "in place" (out=), and the
old spellings still work for a release with a DeprecationWarning."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import pccl_arrays as pa
from test_api import run_peers


@pytest.mark.timeout(60)
def test_world_size_is_the_group_and_total_world_size_counts_every_group(master):
    def fn(rank, c):
        r = c.all_reduce(np.ones(3))
        return c.world_size, c.total_world_size, c.rank, c.ring().index(c.peer_id), float(r[0])

    # groups 0, 0 and 5: a collective of group 0 runs over two peers, group 5's over one
    results = run_peers(master, 3, fn, groups=[0, 0, 5])
    for (world, total, rank, position, value), group in zip(results, [0, 0, 5]):
        assert total == 3 and world == value == (2 if group == 0 else 1)
        assert rank == position
    assert sorted(r[2] for r in results[:2]) == [0, 1] and results[2][2] == 0


@pytest.mark.timeout(60)
def test_last_info_belongs_to_the_calling_thread(master):
    with pa.Communicator(master.address) as c:
        seen, start = {}, threading.Barrier(2)

        def call(tag):
            start.wait()
            for _ in range(20):
                c.all_reduce(np.ones(10 * tag, np.float32), tag=tag)
                seen.setdefault(tag, set()).add(c.last_info.op_id)
            seen[f"last{tag}"] = c.last_info.op_id

        threads = [threading.Thread(target=call, args=(t,)) for t in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert c.last_info is None  # this thread made no call
        assert not seen[1] & seen[2], "a thread saw the other thread's operation"
        assert seen["last1"] in seen[1] and seen["last2"] in seen[2]
        h = c.all_reduce_async(np.ones(4, np.float32))
        h.wait()
        assert h.info is not None and c.last_info is None  # an async call's info is its handle's


@pytest.mark.timeout(60)
def test_old_spellings_warn_and_still_work(master):
    with pa.Communicator(master.address) as c:
        x = np.arange(4, dtype=np.float32)
        with pytest.deprecated_call():
            r, info = c.all_reduce(x, return_info=True)
        assert np.array_equal(r, x) and info == c.last_info
        with pytest.deprecated_call():
            assert c.group_world_size == c.world_size == 1
        outs = [np.zeros(4, np.float32)]
        with pytest.deprecated_call():
            c.all_reduce_many([x], outs=outs)
        assert np.array_equal(outs[0], x)
        out = [np.zeros(4, np.float32)]
        c.all_reduce_many([x], out=out)
        assert np.array_equal(out[0], x)
        tree = {"a": np.ones(3)}
        with pytest.deprecated_call():
            c.all_reduce_tree(tree, inplace=True)
        c.all_reduce_tree(tree, out=tree)
        with pytest.raises(pa.errors.InvalidArgumentError, match="the tree itself"):
            c.all_reduce_tree(tree, out={"a": np.ones(3)})


@pytest.mark.timeout(60)
def test_all_reduce_tree_quantizes_floating_leaves_and_reduces_integers_exactly(master):
    def fn(rank, c):
        rng = np.random.default_rng(rank)
        tree = {"w": rng.standard_normal(5000).astype(np.float32), "step": np.array([7 + rank], np.int64)}
        # Operation ids start at the master's epoch << 16 (docs/master.md): the first one is that.
        before = c.last_info.op_id if c.last_info else (master.epoch << 16) - 1
        out = c.all_reduce_tree(tree, "sum", quantization="minmax")
        return out, c.last_info.op_id - before

    results = run_peers(master, 2, fn)
    exact = sum(np.random.default_rng(r).standard_normal(5000).astype(np.float32).astype(np.float64) for r in range(2))
    for out, ops in results:
        assert ops == 2  # one operation per dtype
        assert int(out["step"][0]) == 15
        err = np.sqrt(np.mean((out["w"] - exact) ** 2) / np.mean(exact**2))
        assert 0 < err < 0.02, err  # quantized (not exact), within 8-bit error
    assert results[0][0]["w"].tobytes() == results[1][0]["w"].tobytes()


@pytest.mark.timeout(60)
def test_wait_for_peers_admits_the_peers_started_together_and_times_out_in_words(master):
    comms = [pa.Communicator(master.address) for _ in range(3)]
    errors = []

    def join(c):
        try:
            c.connect(timeout=20)
            c.wait_for_peers(3, timeout=20)
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=join, args=(c,)) for c in comms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    try:
        assert not errors, errors
        assert [c.world_size for c in comms] == [3, 3, 3]
        with pytest.raises(pa.errors.PCCLTimeoutError, match="the group has 3 of 4 peers"):
            comms[0].wait_for_peers(4, timeout=0.3)
    finally:
        for c in comms:
            c.close()
