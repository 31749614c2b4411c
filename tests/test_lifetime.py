"""What a communicator holds ends with it: close() lets its threads and slot buffers go, even while the object
is still referenced, and a dropped communicator is freed at once (no reference cycle waits for the cycle
collector). A peer that rejoins after an eviction makes a new communicator each time; before this, every old
one kept its stripe threads and scratch buffers until a full garbage collection."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import numpy as np
import pytest

import pccl_arrays as pa
from pccl_arrays.testing import process_status


def os_threads() -> int:
    return process_status().threads


def pair(master, group: int) -> list:
    """Two connected peers in a group of their own (a group whose state holders left would refuse a sync)."""
    comms = [pa.Communicator(master.address, peer_group=group, connections=2) for _ in range(2)]
    comms[0].connect(timeout=20)
    joiner = threading.Thread(target=comms[1].connect, kwargs={"timeout": 20})
    joiner.start()
    while comms[0].total_world_size < 2:
        if comms[0].are_peers_pending():
            comms[0].update_topology()
        else:
            time.sleep(0.005)
    joiner.join()
    return comms


def workload(c) -> None:
    """Everything that creates threads or buffers: async plain and quantized all-reduces at once (two slots),
    in place, a tree, a shared-state sync."""
    x = np.ones(1 << 18, np.float32)
    for _ in range(2):
        handles = [c.all_reduce_async(x), c.all_reduce_async(x, quantization=pa.Quantization(kind="minmax"))]
        for h in handles:
            assert np.all(h.wait() == 2.0)
    y = x.copy()
    c.all_reduce(y, out=y)
    c.all_reduce_tree({"a": x, "b": [x[:10]]})
    c.sync_shared_state(pa.SharedState({"w": np.zeros(1024, np.float32)}, revision=1))


def run_both(comms, fn) -> None:
    threads = [threading.Thread(target=fn, args=(c,)) for c in comms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.timeout(60)
def test_close_lets_threads_go_and_a_dropped_communicator_is_freed_at_once(master):
    run_both(pair(master, 1), lambda c: (workload(c), c.close()))  # warm up: the log thread, the master's threads
    before = os_threads()
    gc.disable()
    try:
        comms = pair(master, 2)
        run_both(comms, workload)
        during = os_threads()
        for c in comms:
            c.close()
        deadline = time.monotonic() + 2.0
        while os_threads() > before and time.monotonic() < deadline:
            time.sleep(0.01)
        after_close = os_threads()
        refs = [weakref.ref(c) for c in comms]
        del comms, c
        freed = [r() is None for r in refs]
    finally:
        gc.enable()
    assert during >= before + 4, (before, during)  # the test made threads to lose
    assert after_close <= before, f"{after_close - before} threads outlived close() ({before} before, {during} during)"
    assert freed == [True, True], "a closed communicator still referenced by a cycle"


@pytest.mark.timeout(60)
def test_a_communicator_dropped_without_close_is_freed_and_its_peer_sees_it_leave(master):
    comms = pair(master, 3)
    run_both(comms, workload)
    gc.disable()
    try:
        ref = weakref.ref(comms[1])
        comms.pop()
        freed = ref() is None
    finally:
        gc.enable()
    assert freed, "a dropped communicator stayed alive"
    deadline = time.monotonic() + 5.0
    while comms[0].total_world_size > 1 and time.monotonic() < deadline:  # its destructor said LEAVE to the master
        if comms[0].are_peers_pending():
            comms[0].update_topology()
        try:
            comms[0].update_topology(timeout=1)
        except pa.PCCLError:
            pass
    assert comms[0].total_world_size == 1
    comms[0].close()


@pytest.mark.timeout(60)
def test_a_failed_async_all_reduce_holds_nothing_once_its_handle_is_gone(master):
    """The error of a failed operation, raised from handle.wait() or all_reduce_many(), does not tie the handle,
    its future and the arrays into a reference cycle: they are freed as soon as the caller drops them (before,
    a long run kept the arrays of every failed step until the cycle collector ran: megabytes per lost peer).
    And the operation's own PCCLTimeoutError reaches the caller of wait() as it is (it was mistaken for wait()'s
    own timeout, a TimeoutError too, and replaced by "did not finish within None s; it is still running")."""
    comms = pair(master, 4)
    gc.disable()
    try:
        x = np.ones(1 << 16, np.float32)
        ref_async = weakref.ref(x)
        h = comms[0].all_reduce_async(x, timeout=0.3)  # the other peer never calls: the operation times out
        try:
            h.wait()
            raise AssertionError("the operation did not fail")
        except pa.errors.PCCLTimeoutError as e:  # the operation's own error, not one of wait() (it has no timeout)
            message = str(e)
        del h, x
        y = np.ones(1 << 16, np.float32)
        ref_many = weakref.ref(y)
        try:
            comms[0].all_reduce_many([y], retries=0, timeout=0.3)
            raise AssertionError("the operation did not fail")
        except pa.errors.PCCLTimeoutError:
            pass
        del y
        freed = (ref_async() is None, ref_many() is None)
    finally:
        gc.enable()
    assert freed == (True, True), freed
    assert "did not start it" in message and "peer" in message, message
    for c in comms:
        c.close()
