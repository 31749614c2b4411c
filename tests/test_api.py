"""The Python API in one process: peers as threads (the core releases the GIL), argument checking, in-place
and strided arrays, edge-case lengths, states and timeouts."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pccl_arrays as pa
from pccl_arrays import errors


def run_peers(master, n, fn, groups=None, **kw):  # also used by test_arrays_frameworks.py, test_api_surface.py
    """Connects n communicators (threads; peer groups `groups[rank]`, default 0), runs fn(rank, comm) on each,
    returns the results in rank order."""
    comms = [pa.Communicator(master.address, connections=2, peer_group=groups[r] if groups else 0, **kw)
             for r in range(n)]
    results, failures = [None] * n, []
    ready = threading.Barrier(n)

    def body(rank):
        try:
            c = comms[rank]
            c.connect(timeout=20)
            while c.total_world_size < n:
                if c.are_peers_pending():
                    c.update_topology()
                else:
                    time.sleep(0.002)
            ready.wait()
            results[rank] = fn(rank, c)
        except BaseException as e:  # surfaced in the test thread
            failures.append(e)
            ready.abort()

    threads = [threading.Thread(target=body, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for c in comms:
        c.close()
    if failures:
        raise failures[0]
    return results


@pytest.mark.timeout(30)
def test_in_place_out_of_place_and_given_out(master):
    def fn(rank, c):
        x = np.arange(10, dtype=np.float32) + rank
        x_id = x.__array_interface__["data"][0]
        same = c.all_reduce(x, out=x)  # in place: the caller's own array holds the result
        y = np.arange(10, dtype=np.float32) + rank
        fresh = c.all_reduce(y)  # new array, input untouched
        out = np.empty(10, dtype=np.float32)
        given = c.all_reduce(y, out=out)
        return rank, same is x and x.__array_interface__["data"][0] == x_id, x, y, fresh, given is out, out

    for rank, is_same, x, y, fresh, given_is_out, out in run_peers(master, 2, fn):
        expected = 2 * np.arange(10, dtype=np.float32) + 1
        assert is_same and np.array_equal(x, expected)
        assert np.array_equal(fresh, expected) and fresh is not y
        assert np.array_equal(y, np.arange(10, dtype=np.float32) + rank)  # the input is untouched
        assert given_is_out and np.array_equal(out, expected)


@pytest.mark.timeout(30)
def test_strided_views_0d_and_empty_arrays(master):
    def fn(rank, c):
        base = np.zeros((6, 8), dtype=np.int32) + 100
        view = base[:, ::2]  # non-contiguous
        view[...] = np.arange(24, dtype=np.int32).reshape(6, 4) * (rank + 1)
        r1 = c.all_reduce(view)
        c.all_reduce(view, out=view)  # in place into a strided view: written back element by element
        scalar = c.all_reduce(np.array(2.5 * (rank + 1)), "max")
        empty = c.all_reduce(np.zeros(0, dtype=np.float64))
        t = np.arange(12, dtype=np.float64).reshape(3, 4).T * (rank + 1)  # a transpose
        r2 = c.all_reduce(t, "sum")
        return r1, base, scalar, empty, r2, c.last_info

    for r1, base, scalar, empty, r2, info in run_peers(master, 2, fn):
        expected = np.arange(24, dtype=np.int32).reshape(6, 4) * 3
        assert r1.shape == (6, 4) and np.array_equal(r1, expected)
        assert np.array_equal(base[:, ::2], expected) and np.all(base[:, 1::2] == 100)
        assert scalar.shape == () and scalar == 5.0
        assert empty.shape == (0,) and empty.dtype == np.float64
        assert np.array_equal(r2, np.arange(12, dtype=np.float64).reshape(3, 4).T * 3)
        assert info.world_size == 2 and info.bytes_sent > 0 and info.seconds > 0


@pytest.mark.timeout(30)
def test_bad_arguments_raise_before_anything_is_sent(master):
    def fn(rank, c):
        raised = []
        bad_calls = [
            lambda: c.all_reduce(np.zeros(4, dtype=np.complex64)),
            lambda: c.all_reduce(np.zeros(4, dtype=bool)),
            lambda: c.all_reduce(np.zeros(4, dtype=np.int32), "avg"),
            lambda: c.all_reduce(np.zeros(4), "median"),
            lambda: c.all_reduce([1.0, 2.0]),
            lambda: c.all_reduce(np.zeros(4), out=np.zeros(5)),
            lambda: c.all_reduce(np.zeros(4), out=np.zeros(4, dtype=np.float32)),
            lambda: c.all_reduce(np.zeros(4), tag=-1),
        ]
        ro = np.zeros(4)
        ro.flags.writeable = False
        bad_calls.append(lambda: c.all_reduce(ro, out=ro))
        overlap = np.zeros(8)
        bad_calls.append(lambda: c.all_reduce(overlap[:4], out=overlap[2:6]))
        for call in bad_calls:
            try:
                call()
                raised.append(None)
            except Exception as e:
                raised.append(e)
        ok = c.all_reduce(np.ones(3))  # the job is unharmed
        return raised, ok

    for raised, ok in run_peers(master, 2, fn):
        assert all(isinstance(e, errors.PCCLError) for e in raised), raised
        assert isinstance(raised[0], TypeError) and "complex64" in str(raised[0])
        assert isinstance(raised[1], TypeError) and "bool" in str(raised[1])
        assert isinstance(raised[2], TypeError) and "avg" in str(raised[2])
        assert all(isinstance(e, ValueError) for e in raised[3:])
        assert "read-only" in str(raised[8])
        assert np.array_equal(ok, [2.0, 2.0, 2.0])
    assert master.stats()["ops_rejected"] == 0


@pytest.mark.timeout(30)
def test_single_peer_world_reduces_to_itself(master):
    with pa.Communicator(master.address) as c:
        c.connect(timeout=10)
        x = np.arange(5, dtype=np.float32)
        assert np.array_equal(c.all_reduce(x, "avg"), x)
        assert c.last_info.world_size == 1 and c.total_world_size == 1 and c.world_size == 1 and c.rank == 0
        with pytest.deprecated_call():
            assert c.group_world_size == 1  # the old name of world_size, for one release


@pytest.mark.timeout(30)
def test_states_and_timeouts():
    c = pa.Communicator("127.0.0.1:1", connect_timeout=1.0)
    with pytest.raises(errors.CommunicatorStateError):
        c.all_reduce(np.zeros(2))
    t0 = time.monotonic()
    with pytest.raises(errors.MasterUnreachableError):
        c.connect()
    assert time.monotonic() - t0 < 3.0
    with pytest.raises(errors.InvalidArgumentError):
        pa.Communicator("no-port-here")
    with pytest.raises(ValueError):
        pa.Communicator("127.0.0.1:5", connections=0)


@pytest.mark.timeout(30)
def test_a_list_of_masters_is_tried_in_order_and_bad_lists_are_refused(master):
    for bad in ([], ["127.0.0.1:1", ""], "127.0.0.1:1,,127.0.0.1:2", ["a:1,b:2"], [1234], "127.0.0.1:1,nohost"):
        with pytest.raises(errors.InvalidArgumentError):
            pa.Communicator(bad)
    for grace in (-1, "60", None):
        with pytest.raises(errors.InvalidArgumentError, match="master_grace"):
            pa.Communicator(master.address, master_grace=grace)
    # The first address refuses connections: the second (the standby) is the one used.
    with pa.Communicator(["127.0.0.1:9", master.address], connect_timeout=5.0) as c:
        assert c.world_size == 1
    with pa.Communicator(f"127.0.0.1:9, {master.address}", connect_timeout=5.0) as c:
        assert c.world_size == 1
    t0 = time.monotonic()
    with pytest.raises(errors.MasterUnreachableError, match="127.0.0.1:9.*127.0.0.1:10|127.0.0.1:10.*127.0.0.1:9"):
        pa.Communicator("127.0.0.1:9,127.0.0.1:10", connect_timeout=1.0).connect()
    assert time.monotonic() - t0 < 3.0


@pytest.mark.timeout(30)
def test_admission_waits_for_a_vote_and_honours_its_timeout(master):
    with pa.Communicator(master.address) as first:
        first.connect(timeout=10)
        late = pa.Communicator(master.address)
        t0 = time.monotonic()
        with pytest.raises(errors.PCCLTimeoutError):  # `first` never votes
            late.connect(timeout=0.5)
        assert 0.4 < time.monotonic() - t0 < 3.0
        assert first.are_peers_pending()
        late.close()


def test_error_hierarchy_is_typed_and_retryable_where_it_should_be():
    assert errors.PeerLostError.retryable and errors.TooFewPeersError.retryable
    assert not errors.MasterUnreachableError.retryable and not errors.OperationMismatchError.retryable
    assert issubclass(errors.InvalidArgumentError, ValueError)
    assert issubclass(errors.UnsupportedDTypeError, TypeError)
    assert issubclass(errors.PCCLTimeoutError, TimeoutError)
    for name in ("peer_lost", "master_unreachable", "mismatch", "evicted", "protocol", "timeout"):
        assert issubclass(errors.error_class(name), errors.PCCLError)


def test_import_pulls_in_no_array_framework():
    code = "import sys, pccl_arrays; print(sorted(m for m in ('torch', 'jax', 'cupy') if m in sys.modules))"
    # cwd: the tests folder, so `-c` cannot pick up an unbuilt source tree from the repository root
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parent).stdout
    assert out.strip() == "[]"


@pytest.mark.timeout(30)
def test_master_cli_runs_until_signalled(tmp_path):
    from procs import start_master_process

    proc, address = start_master_process(tmp_path)
    try:
        with pa.Communicator(address) as c:
            c.connect(timeout=10)
            assert c.total_world_size == 1
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


@pytest.mark.timeout(60)
def test_master_cli_handles_a_signal_sent_the_moment_its_line_appears(tmp_path):
    """Scripts wait for the "listening on" line and may stop the master at once: its handler is in place by
    then (CI saw SIGTERM kill a master whose main thread had printed the line but not yet installed it)."""
    from procs import start_master_process

    for _ in range(5):
        proc, _address = start_master_process(tmp_path)
        proc.terminate()
        assert proc.wait(10) == 0
