"""Shared state with bit parity: elections, revisions, strategies, dirty-entry transfers striped over every
holder, newcomers that never win, layout mismatches and refusals, against a real master with peers in threads.
Process-level failures (a holder killed mid-transfer) are in test_state_failures.py."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import pccl_arrays as pa
from pccl_arrays import errors
from conftest import needs_jax, needs_torch
from test_api import run_peers

MiB = 1 << 20


def collective(fns):
    """Runs every callable in its own thread; returns their results, exceptions included, in order."""
    out = [None] * len(fns)

    def body(i):
        try:
            out[i] = fns[i]()
        except BaseException as e:  # returned for the test to assert on
            out[i] = e

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a collective hung"
    return out


def admit(existing, master_address, **kw):
    """A new peer that joins a running group: connect() while the existing peers vote it in."""
    comm = pa.Communicator(master_address, connections=2, **kw)
    t = threading.Thread(target=comm.connect, kwargs={"timeout": 20})
    t.start()
    deadline = time.monotonic() + 20
    while not existing[0].are_peers_pending():
        assert time.monotonic() < deadline, "the newcomer never showed up as pending"
        time.sleep(0.005)
    collective([c.update_topology for c in existing])
    t.join(20)
    assert comm._core.connected
    return comm


def sync_all(comms, states, strategies=None):
    strategies = strategies or ["enforce_popular"] * len(comms)
    return collective([lambda c=c, s=s, k=k: c.sync_shared_state(s, k) for c, s, k in zip(comms, states, strategies)])


def assert_ok(results):
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def model(seed, n=1 << 18):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal(n, dtype=np.float32), "b": rng.standard_normal(1000).astype(np.float64),
            "step": np.array(seed, dtype=np.int64)}


@pytest.mark.timeout(60)
def test_newcomer_receives_64_mib_bit_exact_striped_over_every_holder(master):
    def fn(rank, c):
        if rank < 3:
            w = np.arange(16 * MiB, dtype=np.float32) * np.float32(0.5)  # 64 MiB
            strategy = "enforce_popular"
        else:
            w = np.zeros(16 * MiB, dtype=np.float32)
            strategy = "receive_only"
        state = pa.SharedState({"w": w}, revision=7 if rank < 3 else 0)
        first = c.sync_shared_state(state, strategy)
        second = c.sync_shared_state(state)  # the newcomer now holds the state: nothing moves
        return c.peer_id, first, second, state.hashes()["w"], state.revision, bool(np.array_equal(
            w, np.arange(16 * MiB, dtype=np.float32) * np.float32(0.5)))

    results = run_peers(master, 4, fn)
    ids = [r[0] for r in results]
    newcomer = results[3][1]
    assert newcomer.fetched == ("w",) and newcomer.bytes_received == 64 * MiB
    assert set(newcomer.received_from) == set(ids[:3]), "every holder sends a share"
    for holder in ids[:3]:
        assert abs(newcomer.received_from[holder] - 64 * MiB / 3) < 1024
    for rank in range(3):
        assert results[rank][1].sent_to == {ids[3]: newcomer.received_from[ids[rank]]}
        assert results[rank][1].fetched == ()
    assert len({r[3] for r in results}) == 1 and all(r[5] for r in results), "not bit-identical"
    assert all(r[4] == 7 for r in results)
    for r in results:
        assert r[2].bytes_sent == r[2].bytes_received == 0 and r[2].fetched == ()


@pytest.mark.timeout(60)
def test_divergent_entry_is_repaired_from_the_majority_and_only_it_moves(master):
    def fn(rank, c):
        m = model(1)
        if rank == 2:
            m["b"][17] += 1.0  # one element of one entry diverged
        state = pa.SharedState(m, revision=3)
        return c.peer_id, c.sync_shared_state(state), state.hashes(), m["b"][17]

    results = run_peers(master, 3, fn)
    ids = [r[0] for r in results]
    repaired = results[2][1]
    assert repaired.fetched == ("b",) and repaired.bytes_received == 8000
    assert set(repaired.received_from) == set(ids[:2]) and sum(repaired.received_from.values()) == 8000
    assert results[0][1].fetched == results[1][1].fetched == ()
    assert results[0][2] == results[1][2] == results[2][2]
    assert results[2][3] == model(1)["b"][17]


@pytest.mark.timeout(60)
def test_a_newcomer_never_wins_not_even_one_against_one(master):
    a = pa.Communicator(master.address, connections=2).connect(timeout=20)
    try:
        held = pa.SharedState(model(1), revision=4)
        assert_ok(sync_all([a], [held]))  # a alone: its state becomes the group's
        b = admit([a], master.address)
        try:
            # b arrives with other content, a higher revision and the default strategy: it still receives
            fresh = pa.SharedState(model(2), revision=5)
            ra, rb = assert_ok(sync_all([a, b], [held, fresh]))
            assert set(rb.fetched) == {"w", "b", "step"} and ra.fetched == ()
            assert fresh.hashes() == held.hashes() and fresh.revision == 4
            # from now on b holds the state: a divergence on a is a 1-1 tie, which the senior peer wins
            held["w"][0] += 1
            ra, rb = assert_ok(sync_all([a, b], [held, fresh]))
            assert ra.fetched == () and rb.fetched == ("w",)
        finally:
            b.close()
    finally:
        a.close()


@pytest.mark.timeout(60)
def test_revision_rules_behind_catches_up_one_ahead_wins_more_is_refused(master):
    def fn(rank, c):
        m = model(1)
        state = pa.SharedState(m, revision=10)
        out = [c.sync_shared_state(state)]
        # behind: rank 1 did not advance; the others advanced to 11 with an update
        if rank != 1:
            m["w"] *= 2
            state.revision = 11
        out.append((c.sync_shared_state(state), state.revision, state.hashes()))
        # one ahead: rank 0 advanced alone to 12 with new content; it is the only current peer and wins
        if rank == 0:
            m["b"] += 1
            state.revision = 12
        out.append((c.sync_shared_state(state), state.revision, state.hashes()))
        # more than one ahead: rank 2 jumps to 14; it is refused, the others sync (nothing to move)
        if rank == 2:
            state.revision = 14
        try:
            out.append(c.sync_shared_state(state))
        except errors.SharedStateError as e:
            out.append(str(e))
        return out

    r0, r1, r2 = run_peers(master, 3, fn)
    assert r1[1][0].fetched == ("w",) and r1[1][1] == 11
    assert r0[1][2] == r1[1][2] == r2[1][2]
    assert r1[2][0].fetched == r2[2][0].fetched == ("b",) and r1[2][1] == r2[2][1] == 12
    assert r0[2][2] == r1[2][2] == r2[2][2]
    assert "ahead of the group's revision 12 by more than one" in r2[3]
    assert r0[3].fetched == () and r0[3].revision == 12


@pytest.mark.timeout(60)
def test_strategies_receive_only_never_votes_send_only_must_win(master):
    def fn(rank, c):
        m = model(1 if rank == 0 else 2)  # two peers hold content Y, rank 0 holds X
        strategy = "enforce_popular" if rank == 0 else "receive_only"
        state = pa.SharedState(m, revision=1)
        out = [c.sync_shared_state(state, strategy), state.hashes()]
        # send_only on the peer that holds the group's state: fine. On one that diverged: refused.
        if rank == 2:
            m["b"][0] = -1
        strategy = "send_only" if rank in (0, 2) else "enforce_popular"
        try:
            out.append(c.sync_shared_state(state, strategy))
        except errors.SharedStateError as e:
            out.append(str(e))
        out.append(state.hashes())
        return out

    r0, r1, r2 = run_peers(master, 3, fn)
    assert r0[0].fetched == () and set(r1[0].fetched) == set(r2[0].fetched) == {"w", "b", "step"}
    assert r0[1] == r1[1] == r2[1] == pa.SharedState(model(1)).hashes()
    assert r0[2].fetched == () and r1[2].fetched == ()
    assert "send_only" in r2[2] and "lost the election" in r2[2]
    assert r2[3]["b"] != r0[3]["b"], "a refused peer's state is left alone"


@pytest.mark.timeout(60)
def test_everyone_receive_only_is_refused_with_a_reason(master):
    def fn(rank, c):
        try:
            c.sync_shared_state(pa.SharedState(model(rank)), "receive_only")
        except errors.SharedStateError as e:
            return str(e)

    for msg in run_peers(master, 2, fn):
        assert "no peer of the group offers state" in msg


@pytest.mark.timeout(60)
@pytest.mark.parametrize("change,needle", [
    (lambda m: m.update(extra=np.zeros(3)), "has entry 'extra'"),
    (lambda m: m.pop("b"), "lacks entry 'b'"),
    (lambda m: m.update(b=m["b"].astype(np.float32)), "entry 'b' has dtype"),
    (lambda m: m.update(w=m["w"][:-1].copy()), "entry 'w' has shape (262143,)"),
])
def test_mismatched_names_dtypes_shapes_refuse_that_peer_only(master, change, needle):
    def fn(rank, c):
        m = model(1)
        if rank == 2:
            change(m)
        state = pa.SharedState(m, revision=1)
        try:
            return c.sync_shared_state(state)
        except errors.SharedStateError as e:
            return str(e)

    r0, r1, r2 = run_peers(master, 3, fn)
    assert isinstance(r2, str) and needle in r2, r2
    assert r0.fetched == r1.fetched == ()


@pytest.mark.timeout(60)
def test_tolerant_entries_stay_per_peer_and_a_newcomer_gets_the_senior_holders(master):
    a = pa.Communicator(master.address, connections=2).connect(timeout=20)
    b = admit([a], master.address)
    try:
        sa = pa.SharedState({"w": np.ones(1000), "rng": np.array([1, 2, 3])}, allow_content_inequality=["rng"])
        sb = pa.SharedState({"w": np.ones(1000), "rng": np.array([4, 5, 6])}, allow_content_inequality=["rng"])
        ra, rb = assert_ok(sync_all([a, b], [sa, sb]))
        assert ra.fetched == rb.fetched == () and list(sb["rng"]) == [4, 5, 6]
        c = admit([a, b], master.address)
        try:
            sc = pa.SharedState({"w": np.zeros(1000), "rng": np.zeros(3, dtype=np.int64)},
                                allow_content_inequality=["rng"])
            *_, rc = assert_ok(sync_all([a, b, c], [sa, sb, sc]))
            assert set(rc.fetched) == {"w", "rng"} and list(sc["rng"]) == [1, 2, 3]
            assert set(rc.received_from) == {a.peer_id, b.peer_id}  # w striped over both, rng from a
            # a holder whose tolerant entry changed moves nothing
            sb["rng"][0] = 99
            assert all(r.bytes_received == 0 for r in assert_ok(sync_all([a, b, c], [sa, sb, sc])))
        finally:
            c.close()
    finally:
        a.close()
        b.close()


@pytest.mark.timeout(60)
def test_sync_refuses_while_all_reduces_are_in_flight_and_misordered_collectives_fail(master):
    def fn(rank, c):
        state = pa.SharedState(model(1))
        h = c.all_reduce_async(np.ones(4 * MiB, dtype=np.float32))
        try:
            c.sync_shared_state(state)
            refused = None
        except errors.CommunicatorStateError as e:
            refused = str(e)
        h.wait(30)
        # rank 0 syncs while rank 1 all-reduces: both fail, neither hangs
        try:
            if rank == 0:
                c.sync_shared_state(state)
            else:
                c.all_reduce(np.ones(10))
            order = None
        except errors.OperationMismatchError as e:
            order = str(e)
        # and they recover: the next collective in the same order works
        info = c.sync_shared_state(state)
        return refused, order, info.fetched

    for refused, order, fetched in run_peers(master, 2, fn):
        assert "in flight" in refused
        assert order is not None and "same order" in order
        assert fetched == ()


@pytest.mark.timeout(60)
@needs_torch
@needs_jax
def test_state_of_torch_jax_and_numpy_arrays_including_bfloat16(master):
    import jax.numpy as jnp
    import ml_dtypes
    import torch

    def make(rank):
        g = np.random.default_rng(5)
        vals = g.standard_normal(5000).astype(np.float32)
        scale = 1.0 if rank == 0 else 0.0  # rank 0 holds the content; the others are newcomers
        return {
            "t": torch.from_numpy(vals * scale).to(torch.bfloat16),
            "j": jnp.asarray((vals * scale).reshape(50, 100)),
            "n": (vals * scale).astype(ml_dtypes.bfloat16),
            "i": np.arange(7, dtype=np.uint16) * int(scale),
            "strided": torch.from_numpy(vals * scale).reshape(50, 100)[:, ::2],
        }

    def fn(rank, c):
        arrays = make(rank)
        state = pa.SharedState(arrays)
        info = c.sync_shared_state(state, "enforce_popular" if rank == 0 else "receive_only")
        return info.fetched, state.hashes(), state, arrays

    results = run_peers(master, 3, fn)
    assert results[0][0] == ()
    assert set(results[1][0]) == {"t", "j", "n", "i", "strided"}
    assert results[0][1] == results[1][1] == results[2][1]
    state, arrays = results[2][2], results[2][3]
    assert state["t"] is arrays["t"] and state["n"] is arrays["n"], "mutable arrays are updated in place"
    assert state["j"] is not arrays["j"] and type(state["j"]).__module__.startswith("jax")
    assert bool(torch.equal(state["strided"], results[0][2]["strided"]))
    np.testing.assert_array_equal(np.asarray(state["j"]), np.asarray(results[0][2]["j"]))


def test_content_hash_is_pinned_and_sees_every_bit():
    # The hash is part of the protocol (peers of different versions compare hashes): pinned values.
    data = np.arange(1000, dtype=np.uint8)
    h = [pa.SharedState({"x": data[:n].copy()}).hashes()["x"] for n in (0, 1, 7, 8, 31, 32, 33, 1000)]
    assert len(set(h)) == len(h)
    assert h == PINNED
    x = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)
    base = pa.SharedState({"x": x}).hashes()["x"]
    for bit in range(0, 4096 * 8, 97):
        y = x.copy()
        y[bit // 8] ^= 1 << (bit % 8)
        assert pa.SharedState({"x": y}).hashes()["x"] != base


PINNED = [11306980954581204356, 17920085742350687448, 1216911243180200771, 12351479161264066984,
          11491467379641043436, 10426401127002079115, 8512196039387417462, 11294559943867999565]


def test_shared_state_refuses_bad_input():
    with pytest.raises(errors.InvalidArgumentError):
        pa.SharedState({})
    with pytest.raises(errors.InvalidArgumentError):
        pa.SharedState({"": np.ones(2)})
    with pytest.raises(errors.InvalidArgumentError):
        pa.SharedState({"x": np.ones(2)}, revision=-1)
    with pytest.raises(errors.InvalidArgumentError):
        pa.SharedState({"x": np.ones(2)}, allow_content_inequality=["y"])
    ro = np.ones(3)
    ro.flags.writeable = False
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        pa.SharedState({"x": ro})
    with pytest.raises(TypeError):
        pa.SharedState({"x": np.ones(3, dtype=np.complex64)})
    s = pa.SharedState({"x": np.ones(2)})
    with pytest.raises(errors.InvalidArgumentError, match="not an entry"):
        s["y"] = np.ones(2)


@pytest.mark.timeout(60)
def test_device_entries_are_hashed_through_host_staging_and_written_back_in_place(master, monkeypatch):
    from test_arrays_frameworks import _FakeCudaArray, install_fake_cupy

    install_fake_cupy(monkeypatch)

    def fn(rank, c):
        x = _FakeCudaArray(np.arange(1000, dtype=np.float32) * (1 if rank == 0 else 0))
        state = pa.SharedState({"x": x, "h": np.full(4, rank)})
        info = c.sync_shared_state(state, "enforce_popular" if rank == 0 else "receive_only")
        return info, x, state

    (i0, x0, s0), (i1, x1, s1) = run_peers(master, 2, fn)
    assert i0.fetched == () and set(i1.fetched) == {"x", "h"}
    assert s1["x"] is x1 and x1.staged >= 1, "the device array itself is updated, through host staging"
    assert np.array_equal(x1._mem, np.arange(1000, dtype=np.float32)) and list(s1["h"]) == [0, 0, 0, 0]
    assert s0.hashes() == s1.hashes()
