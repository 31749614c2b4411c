"""Collectives inside jax.jit (pccl_arrays/jax.py): a jitted step with two all-reduces and a broadcast on three
real peer processes (results, the same collectives in the same order on every peer, unused results still
executed, identical calls not merged), a peer lost during the jitted call (PeerLostError on every survivor,
after the call, and the retry on the smaller ring), and in one process what a user sees of errors."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from conftest import needs_jax
from procs import spawn, wait_all

pytestmark = needs_jax


def _results(peers) -> list[dict]:
    got = sorted(((p.result(), p.arrays()) for p in peers), key=lambda ra: ra[0]["rank"])
    for res, _ in got:
        assert "traceback" not in res, res["traceback"]  # the scenario raised
    return got


@pytest.mark.timeout(60)
def test_jitted_step_gives_the_eager_results_in_the_same_order_on_every_peer(master, tmp_path):
    world = 3
    peers = [spawn(master.address, "jax_jit_step", r, world, tmp_path) for r in range(world)]
    wait_all(peers, 50)
    got = _results(peers)
    assert [res["rank"] for res, _ in got] == list(range(world))
    for rank, (res, arr) in enumerate(got):
        for s in range(3):
            a = 3 * np.arange(4, dtype=np.float32) + 30 * s + 3  # the sum of arange(4) + 10 s + r over r
            assert np.array_equal(arr[f"a{s}"], a), (rank, s, arr[f"a{s}"])
            assert np.array_equal(arr[f"b{s}"], a[:3] * world), (rank, s)  # max over r of a[:3] * (r + 1)
            x1 = np.arange(4, dtype=np.float32) + 10 * s + 1  # rank 1's input
            assert np.array_equal(arr[f"c{s}"], x1.reshape(2, 2) * 10), (rank, s)
            assert arr[f"eager{s}"].tolist() == [3 * s + 3]
        assert np.array_equal(arr["unused"], np.full(5, 2.0, np.float32))
        assert np.array_equal(arr["gather"], np.stack([np.full((2, 3), 2 * r, np.int32) for r in range(world)]))
        assert res["traces"] == {"step": 1, "unused": 1, "gather": 1}, res["traces"]  # compiled once each
        assert res["last_world"] == world
    # Every peer ran the same collectives, in program order: the same kinds, shapes and master's op ids.
    logs = [[entry[:5] for entry in res["log"]] for res, _ in got]
    assert all(log == logs[0] for log in logs), logs
    step = [["all_reduce", [4]], ["all_reduce", [3]], ["broadcast", [2, 2]], ["all_reduce", [1]]]  # + eager
    want = [[s, *k] for s in range(3) for k in step] + [[10, "all_reduce", [5]]] * 2 + [[20, "all_gather", [2, 3]]] * 2
    assert [e[:3] for e in logs[0]] == want, logs[0]  # the unused, identical all-reduces both ran
    ops = [e[3] for e in logs[0]]
    assert ops == sorted(ops) and len(set(ops)) == len(ops), ops
    assert all(e[4] == world for e in logs[0])
    assert got[0][0]["last_op"] == ops[-1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["kill", "exit_inside", "exit_before"])
def test_a_peer_lost_during_the_jitted_call_raises_peer_lost_error_after_it(master, tmp_path, how):
    """kill: SIGKILLed while the step's data moves; exit_inside: the victim's process exits between the step's
    first two collectives, so the others' second one runs without it: the call must not return results mixed
    from two rings; exit_before: it exits before its own call, while the others wait inside theirs: their
    call runs on the smaller ring, no error (as an eager collective would)."""
    world, victim, n = 3, 1, 1 << 21
    peers = [spawn(master.address, "jax_jit_lost", r, world, tmp_path, n=n, victim=victim, how=how)
             for r in range(world)]
    wait_all(peers, 50)
    lost = [p for p in peers if p.proc.returncode == (-signal.SIGKILL if how == "kill" else 3)]
    assert len(lost) == 1, [p.proc.returncode for p in peers]
    t_lost = float((tmp_path / "stamp").read_text())
    survivors = [(p.result(), p.arrays()) for p in peers if p is not lost[0]]
    assert len(survivors) == world - 1
    expected = sum(r + 1 for r in range(world) if r != victim)  # x = rank + 1 everywhere
    for res, arr in survivors:
        assert "traceback" not in res, res["traceback"]
        failed = [e for e in res["log"] if e[0] == 1]  # the second call's collectives, as the recorder saw them
        if how == "exit_before":
            assert res["error"] is None, res
            assert [e[1] for e in failed] == ["all_reduce", "all_reduce", "broadcast"], failed
            assert all(e[4] == world - 1 for e in failed), failed
        else:
            assert res["error"] == "PeerLostError" and res["retryable"], res  # typed, not a JaxRuntimeError
            assert res["t_error"] - t_lost < 10.0, res
            if how == "kill":  # the collective that failed is the call's last: nothing ran after it
                assert failed and failed[-1][3:] == ["error", "PeerLostError"], failed
            else:  # the first ran on 3 peers, the second on 2 (then the call failed): no broadcast
                assert [e[1:3] + e[4:5] for e in failed] == [["all_reduce", [n], 3], ["all_reduce", [n], 2]], failed
                assert "a peer was lost during the call" in res["message"], res
        assert res["retry_world"] == world - 1
        assert res["retry_sum"] == [float(expected)] * 8 and res["retry_bcast"] == res["retry_sum"], res
        assert all(e[4] == world - 1 for e in res["log"] if e[0] >= 2), res["log"]
        assert arr["gather_before"].shape == (world, 3)
        gathered = arr["gather"]  # traced again for the smaller group: row r from the peer at ring rank r
        assert gathered.shape == (world - 1, 3) and res["gather_traces"] == 2, (gathered.shape, res)
        assert gathered[res["retry_rank"]].tolist() == [res["old_rank"] + 1] * 3
    logs = [[e[:4] for e in res["log"] if e[0] >= 2] for res, _ in survivors]
    assert logs[0] == logs[1], logs


@pytest.mark.timeout(60)
def test_errors_inside_a_jitted_call_come_out_typed(master):
    """One peer: a bad root is only found when the callback runs; pccl_arrays.jax.jit and typed_errors() raise
    it as InvalidArgumentError, plain jax.jit as a JaxRuntimeError naming it; bad arguments fail when traced."""
    import jax
    import jax.numpy as jnp

    import pccl_arrays as pa
    import pccl_arrays.jax as pjax
    from pccl_arrays import errors

    assert pjax.jax is jax and pjax.jax.__name__ == "jax"  # the real JAX, not this module
    comm = pa.Communicator(master.address, heartbeat_interval=0.2)
    comm.connect(timeout=20)
    try:
        def bad(x):
            y = pjax.all_reduce(x, comm=comm)
            return pjax.broadcast(y, root=5, comm=comm)  # a group of one has rank 0 only

        with pytest.raises(errors.InvalidArgumentError, match="root must be a rank") as e:
            pjax.jit(bad)(jnp.ones(3))
        assert e.value.__cause__ is None
        plain = jax.jit(bad)
        with pytest.raises(jax.errors.JaxRuntimeError, match="InvalidArgumentError: root must be a rank"):
            plain(jnp.ones(3)).block_until_ready()
        with pytest.raises(errors.InvalidArgumentError):
            with pjax.typed_errors():
                jax.block_until_ready(plain(jnp.ones(3)))
        with pytest.raises(errors.UnsupportedDTypeError):  # found when traced
            pjax.jit(lambda x: pjax.all_reduce(x, comm=comm))(jnp.ones(3, jnp.bool_))
        with pytest.raises(errors.UnsupportedDTypeError):
            pjax.jit(lambda x: pjax.all_reduce(x, "avg", comm=comm))(jnp.ones(3, jnp.int32))
        previous = pjax.set_communicator(None)
        with pytest.raises(errors.CommunicatorStateError, match="set_communicator"):
            pjax.jit(lambda x: pjax.all_gather(x))(jnp.ones(3))
        pjax.set_communicator(previous)
        # The communicator stays usable; eager use of the functions works too.
        f = pjax.jit(lambda x: pjax.all_reduce(x, "max", comm=comm) + pjax.all_gather(x, comm=comm)[0])
        assert f(jnp.arange(3.0)).tolist() == [0.0, 2.0, 4.0]
        assert pjax.broadcast(jnp.arange(2), comm=comm).tolist() == [0, 1]
        inner = pjax.jit(lambda x: pjax.all_reduce(x, comm=comm))
        assert pjax.jit(lambda x: inner(x) * 2)(jnp.ones(2)).tolist() == [2.0, 2.0]  # nested: one trace
        assert pjax.last_info(comm).world_size == 1
    finally:
        comm.close()
