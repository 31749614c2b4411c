"""The pool behind results returned as new arrays (cpp/python/buffer_pool.hpp): memory comes back when the last
array viewing it dies, whatever framework holds it; the pool keeps at most its bound; close() frees it; a
result outlives the pool. And the training loop `y = all_reduce(x)` with real peers reuses its memory."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import pccl_arrays as pa
from pccl_arrays import _core, arrays
from pccl_arrays.errors import InvalidArgumentError
from procs import spawn, wait_all

MiB = 1 << 20
F32 = _core.CODES["dtype"]["float32"]


def new(pool, n_bytes: int):
    return _core.HostBuffer([n_bytes // 4], F32, pool)


def test_a_dead_array_returns_its_memory_and_the_next_result_takes_it():
    pool = _core.BufferPool(64 * MiB)
    a = np.from_dlpack(new(pool, 4 * MiB))
    ptr = a.ctypes.data
    assert pool.stats()["held_bytes"] == 0  # in use: the user's, not the pool's
    del a
    gc.collect()
    assert pool.stats()["held_bytes"] == 4 * MiB
    b = np.from_dlpack(new(pool, 4 * MiB - 4096))  # close enough in size: the same block
    assert b.ctypes.data == ptr
    assert pool.stats()["reused"] == 1 and pool.stats()["held_bytes"] == 0


def test_blocks_serve_only_requests_of_about_their_size():
    pool = _core.BufferPool(64 * MiB)
    buf = new(pool, 16 * MiB)
    del buf
    small = new(pool, 4 * MiB)  # a 16 MiB block would waste 12 MiB: a new block
    large = new(pool, 32 * MiB)  # too small for it
    assert pool.stats()["reused"] == 0 and pool.stats()["allocated"] == 3
    del small, large


def test_small_buffers_are_not_pooled():
    pool = _core.BufferPool(64 * MiB)
    for _ in range(3):
        buf = new(pool, 64 << 10)
        del buf
    assert pool.stats() == {"held_bytes": 0, "max_bytes": 64 * MiB, "reused": 0, "allocated": 0}


def test_the_pool_keeps_at_most_its_bound_dropping_the_oldest():
    pool = _core.BufferPool(10 * MiB)
    bufs = [new(pool, 4 * MiB) for _ in range(3)]
    ptrs = [b.data for b in bufs]
    del bufs
    assert pool.stats()["held_bytes"] == 8 * MiB  # the third return pushed out the first
    assert new(pool, 4 * MiB).data in ptrs[1:]
    assert pool.stats()["held_bytes"] <= 10 * MiB
    huge = new(pool, 16 * MiB)  # larger than the bound: never kept
    del huge
    assert pool.stats()["held_bytes"] <= 10 * MiB


def test_release_frees_what_is_held_and_live_results_survive_it():
    pool = _core.BufferPool(64 * MiB)
    spare = new(pool, 4 * MiB)
    del spare
    live = np.from_dlpack(new(pool, 8 * MiB))
    live[:] = 7
    pool.release()
    assert pool.stats()["held_bytes"] == 0
    del pool
    assert np.all(live == 7)  # the array owns its memory; the pool only recycles it
    live[:] = 3
    assert np.all(live == 3)
    del live  # freed, not returned to a pool that is gone


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_results_held_by_torch_and_jax_come_back_when_they_die(framework):
    pytest.importorskip(framework)
    pool = _core.BufferPool(64 * MiB)
    buf = new(pool, 4 * MiB)
    result = arrays.wrap(buf, "float32", framework)
    del buf
    gc.collect()
    assert pool.stats()["held_bytes"] == 0  # the framework's array keeps it
    del result
    gc.collect()
    assert pool.stats()["held_bytes"] == 4 * MiB


def test_buffer_pool_bytes_is_checked():
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(InvalidArgumentError, match="buffer_pool_bytes"):
            pa.Communicator("127.0.0.1:1", buffer_pool_bytes=bad)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("pool", [1 << 30, 0])
def test_the_users_loop_reuses_result_memory(master, tmp_path, pool):
    """Two peers, 8 steps of y = all_reduce(x) and a quantized one, each 4 MiB: after the first steps every
    result takes memory a dead one returned; exact results; close() empties the pool; a result outlives it.
    With buffer_pool_bytes=0 nothing is pooled and the results are the same."""
    steps = 8
    peers = [spawn(master.address, "fresh_loop", r, 2, tmp_path, n=MiB, steps=steps, pool=pool) for r in range(2)]
    wait_all(peers, 100)
    for p in peers:
        res = p.result()
        assert "error" not in res, res.get("traceback")
        assert res["exact"] and res["same_quantized"] and res["still_readable"]
        stats = res["stats"]
        if pool:
            assert stats["reused"] >= 2 * (steps - 2), stats
            assert stats["held_bytes"] <= pool
        else:
            assert stats["reused"] == 0 and stats["held_bytes"] == 0, stats
        assert res["after_close"]["held_bytes"] == 0
