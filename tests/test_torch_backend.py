"""The torch.distributed backend "pccl_arrays" (pccl_arrays/torch.py) between real peer processes and a real
master: torch's own DistributedDataParallel and the collectives give what gloo gives (same seeds, same data per
torch rank), with our ring order deliberately different from torch's rank order; and a SIGKILLed peer makes the
survivors' work.wait() raise PeerLostError within seconds, after which the group recovers with fewer ranks."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest

from conftest import needs_torch
from procs import spawn, wait_all
from torch_scenarios import OPS, RS_ROWS, ag_input, ar_input, rs_input

ADMISSION = [2, 0, 1]  # torch ranks in the order the master admits them: ring order [2, 0, 1]


def _by_rank(peers) -> tuple[list[dict], list[dict]]:
    out = [(p.result(), p.arrays()) for p in peers]
    for res, _ in out:
        assert "error" not in res, res.get("traceback")
    return [o[0] for o in out], [o[1] for o in out]


def _admit_in_order(master, folder, order, timeout: float = 60.0) -> None:
    """Lets the gated peers call init_process_group one at a time, each once the previous one is admitted."""
    deadline = time.monotonic() + timeout
    for k, rank in enumerate(order):
        (folder / f"go{rank}").write_text("")
        while master.stats()["peers_accepted"] < k + 1:
            assert time.monotonic() < deadline, f"torch rank {rank} was not admitted"
            time.sleep(0.01)


def _expected(world: int) -> dict:
    """Exact results of the collectives from the scenario's inputs (also where gloo has no counterpart: AVG)."""
    exp = {}
    for dtype in ("float32", "int64"):
        ins = np.stack([ar_input(r, dtype) for r in range(world)])
        for op, fn in (("SUM", np.sum), ("PRODUCT", np.prod), ("MIN", np.min), ("MAX", np.max)):
            exp[f"ar_{dtype}_{op}"] = fn(ins, axis=0).astype(dtype)
    exp["ar_float32_AVG"] = (np.stack([ar_input(r, "float32") for r in range(world)]).sum(0) / world).astype(np.float32)
    for src in range(world):
        exp[f"bc_{src}"] = np.full(5, 11.0 * src, dtype=np.float32)
    exp["ag_list"] = np.stack([np.arange(6, dtype=np.int32).reshape(2, 3) + 10 * r for r in range(world)])
    exp["ag_tensor"] = np.concatenate([ag_input(r) for r in range(world)])
    exp["ag_tensor_2d"] = np.concatenate([ag_input(r).reshape(2, 2) for r in range(world)])
    return exp


def _expected_rs(op: str, rank: int, world: int) -> np.ndarray:
    chunks = np.stack([rs_input(r, world)[rank * RS_ROWS:(rank + 1) * RS_ROWS] for r in range(world)])
    fn = {"SUM": np.sum, "PRODUCT": np.prod, "MIN": np.min, "MAX": np.max}.get(op)
    return (chunks.sum(0) / world if fn is None else fn(chunks, axis=0)).astype(np.float32)


@needs_torch
@pytest.mark.timeout(150)
def test_ddp_and_collectives_over_pccl_arrays_match_gloo(master, tmp_path):
    world, steps = 3, 24
    ours = [spawn(master.address, "torch_ddp", r, world, tmp_path / "pccl", backend="pccl_arrays", steps=steps,
                  gate=True) for r in range(world)]
    gloo = [spawn(master.address, "torch_ddp", r, world, tmp_path / "gloo", backend="gloo", steps=steps)
            for r in range(world)]
    _admit_in_order(master, tmp_path / "pccl", ADMISSION)
    wait_all(ours + gloo, 120)
    ours_res, ours_arr = _by_rank(ours)
    gloo_res, gloo_arr = _by_rank(gloo)
    exp = _expected(world)
    for r in range(world):
        res, arr, ref = ours_res[r], ours_arr[r], gloo_arr[r]
        assert (res["rank"], res["world"], res["backend"]) == (r, world, "pccl_arrays"), res
        assert res["ring_order"] == ADMISSION, res  # rank mapping was needed: ring position != torch rank
        # DDP: the same losses as over gloo, step by step (each rank had its own batches)
        ours_l, gloo_l = np.array(res["losses"]), np.array(gloo_res[r]["losses"])
        assert len(ours_l) == steps and np.all(np.abs(ours_l - gloo_l) <= 1e-6 * np.abs(gloo_l)), (ours_l, gloo_l)
        # every collective: what gloo gives where it has the op, and the exact value everywhere
        for key in ref:
            if not key.startswith(("param", "async_completed")):
                assert np.array_equal(arr[key], ref[key]), (key, r, arr[key], ref[key])
        for key, want in exp.items():
            assert arr[key].dtype == want.dtype and np.array_equal(arr[key], want), (key, r, arr[key], want)
        for op in OPS:  # torch rank r got chunk r, whatever its ring position
            assert np.array_equal(arr[f"rs_{op}"], _expected_rs(op, r, world)), (op, r, arr[f"rs_{op}"])
        assert np.array_equal(arr["async_ar"], exp["ar_float32_SUM"])
        assert np.array_equal(arr["async_ag"], exp["ag_tensor"])
        assert np.array_equal(arr["async_rs"], _expected_rs("SUM", r, world))
        assert np.array_equal(arr["async_bc"], np.full(3, float(world - 1)))
        assert arr["async_completed"].all()
    params = [k for k in ours_arr[0] if k.startswith("param")]
    assert len(params) == 6
    for key in params:
        for r in range(1, world):  # our peers' parameters: bit-identical
            assert ours_arr[r][key].tobytes() == ours_arr[0][key].tobytes(), (key, r)
        np.testing.assert_allclose(ours_arr[0][key], gloo_arr[0][key], rtol=1e-5, atol=1e-6)


@needs_torch
@pytest.mark.timeout(90)
def test_sigkilled_peer_fails_work_wait_with_peer_lost_error_then_the_group_recovers(master, tmp_path):
    world, victim, n = 3, 1, 4 * 1024 * 1024  # 16 MiB of float32: the all_reduce is in flight for a while
    peers = [spawn(master.address, "torch_lost_peer", r, world, tmp_path, backend="pccl_arrays", n=n, victim=victim)
             for r in range(world)]
    wait_all(peers, 75)
    assert peers[victim].proc.returncode == -signal.SIGKILL
    t_kill = float((tmp_path / "stamp").read_text())
    for old, p in enumerate(peers):
        if old == victim:
            continue
        res = p.result()
        assert res["error"] == "PeerLostError" and res["retryable"], res
        assert res["t_error"] - t_kill < 2.0, res
        assert res["input_intact"] and res["completed"] and not res["success"], res
        new_rank = 0 if old == 0 else 1  # ranks 0 and 2 are renumbered densely: 0 and 1
        assert res["recovered"] == [new_rank, world - 1], res
        assert (res["get_rank"], res["get_world_size"]) == (new_rank, world - 1), res
        assert res["after_sum"] == 1.0 + 3.0, res  # the survivors' (old rank + 1)
        assert res["gathered"] == [0.0, 2.0], res  # old ranks, in new rank order
        assert res["broadcast"] == 2.0, res  # new rank 1 is old rank 2


@needs_torch
@pytest.mark.timeout(120)
def test_fault_tolerant_ddp_loop_recovers_and_a_replacement_gets_the_parameters(master, tmp_path):
    world, steps, victim, kill_at = 3, 10, 1, 4
    args = dict(backend="pccl_arrays", steps=steps, victim=victim, kill_at=kill_at)
    peers = [spawn(master.address, "torch_ft_loop", r, world, tmp_path, **args) for r in range(world)]
    peers[victim].proc.wait(timeout=60)
    assert peers[victim].proc.returncode == -signal.SIGKILL
    new = spawn(master.address, "torch_ft_loop", victim, world, tmp_path / "newcomer", newcomer=True, **args)
    survivors = [p for p in peers if p.rank != victim]
    wait_all(survivors + [new], 90)
    params = []
    for p in survivors:
        res = p.result()
        assert "error" not in res, res.get("traceback")
        assert len(res["failures"]) == 1 and res["failures"][0][0] == kill_at, res["failures"]
        assert [s for s, _, _ in res["records"]] == list(range(steps)), res["records"]  # the failed step was redone
        assert all(w == world for _, _, w in res["records"]), res["records"]
        new_rank = 0 if p.rank == 0 else 1  # members first, in their old order
        assert {r for s, r, _ in res["records"] if s >= kill_at} == {new_rank}, res["records"]
        params.append(p.arrays())
    res = new.result()
    assert "error" not in res, res.get("traceback")
    assert res["failures"] == [] and [s for s, _, _ in res["records"]] == list(range(kill_at, steps)), res
    assert {r for _, r, _ in res["records"]} == {world - 1}, res["records"]  # the newcomer comes last
    params.append(new.arrays())
    for key in params[0]:
        assert all(q[key].tobytes() == params[0][key].tobytes() for q in params), key


@needs_torch
@pytest.mark.timeout(30)
def test_options_errors_and_a_group_of_one_found_through_the_environment(master, monkeypatch):
    import torch
    import torch.distributed as dist

    import pccl_arrays.torch as pt
    from pccl_arrays.errors import InvalidArgumentError, PeerLostError

    assert pt._parse("pccl://h:1?connections=4&data_timeout=2.5&advertise=10.0.0.5&rank=0&world_size=3") == (
        "h:1", {"connections": 4, "data_timeout": 2.5, "advertise": "10.0.0.5"})
    with pytest.raises(InvalidArgumentError, match="unknown pccl:// option 'colour'"):
        pt._parse("pccl://h:1?colour=red")
    # A primary and a standby (docs/master.md), and the grace, through the URL.
    assert pt._parse("pccl://a:1,b:2?master_grace=5") == ("a:1,b:2", {"master_grace": 5.0})
    # A peer behind NAT (docs/nat.md): a flag, not bool("false").
    assert pt._parse("pccl://h:1?inbound=false") == ("h:1", {"inbound": False})
    assert pt._parse("pccl://h:1?inbound=True") == ("h:1", {"inbound": True})
    with pytest.raises(InvalidArgumentError, match="takes true or false"):
        pt._parse("pccl://h:1?inbound=maybe")
    monkeypatch.setenv(pt.ENV_MASTER, f"{master.address},127.0.0.1:9")  # the standby is never needed here
    dist.init_process_group("pccl_arrays", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert (dist.get_backend(), dist.get_rank(), dist.get_world_size()) == ("pccl_arrays", 0, 1)
        t = torch.arange(4.0)
        dist.all_reduce(t, op=dist.ReduceOp.AVG)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
        with pytest.raises(InvalidArgumentError, match="BAND"):
            dist.all_reduce(t, op=dist.ReduceOp.BAND)
    finally:
        dist.destroy_process_group()
    assert pt.retryable(PeerLostError("x")) and not pt.retryable(InvalidArgumentError("x"))
    assert pt.retryable(RuntimeError("Got the following error when running the callback: PeerLostError: lost"))
    assert not pt.retryable(RuntimeError("something else"))
