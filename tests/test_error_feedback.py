"""Error feedback (pccl_arrays.ErrorFeedback, docs/quantization.md "Error feedback"): the residual is exactly
what quantizing the sent contribution lost, sums telescope over steps, a failed operation leaves the residual
as it was, the state round-trips through a checkpoint, and bad uses are refused in words."""

from __future__ import annotations

import numpy as np
import pytest

import pccl_arrays as pa
import quant_reference as ref
from pccl_arrays import errors
from pccl_arrays.feedback import residual_of
from test_api import run_peers

Q4 = pa.Quantization("minmax4", rotate=True, seed=7)


def reference_residual(y: np.ndarray, q: pa.Quantization) -> np.ndarray:
    kind = {"minmax": ref.MINMAX, "zeropoint": ref.ZEROPOINT, "minmax4": ref.MINMAX4}[q.kind]
    seed = q.seed if q.rotate else None
    back = ref.dequantize(ref.quantize(y, kind, q.block, rotate_seed=seed), y.size, kind, q.block, np.float32,
                          rotate_seed=seed)
    return (y.astype(np.float32) - back).astype(y.dtype)


@pytest.mark.parametrize("q", [Q4, pa.Quantization("minmax"), pa.Quantization("zeropoint", block=256)],
                         ids=["minmax4-rotated", "minmax", "zeropoint"])
def test_the_residual_is_what_quantizing_loses(q):
    y = np.random.default_rng(1).standard_t(3, 3001).astype(np.float32)
    y[5] = np.nan  # a poisoned block keeps nothing
    got = residual_of(y, q)
    want = reference_residual(y, q)
    want[~np.isfinite(want)] = 0
    assert got.dtype == y.dtype and got.tobytes() == want.tobytes()


@pytest.mark.timeout(60)
def test_one_peer_telescopes_exactly(master):
    """Alone, the all-reduce returns D(Q(y)) and the residual is y - D(Q(y)): the results of T steps sum to the
    inputs' sum minus the last residual, up to float32 additions, far closer than without feedback."""
    rng = np.random.default_rng(2)
    steps = [rng.standard_t(3, 4096).astype(np.float32) * 1e-2 for _ in range(30)]

    def fn(rank, c):
        ef = pa.ErrorFeedback()
        with_ef = [c.all_reduce(g, "sum", quantization=Q4, feedback=ef) for g in steps]
        without = [c.all_reduce(g, "sum", quantization=Q4) for g in steps]
        return with_ef, without, ef.residual

    with_ef, without, last = run_peers(master, 1, fn)[0]
    exact = np.sum(steps, axis=0, dtype=np.float64)
    drift_ef = np.sum(with_ef, axis=0, dtype=np.float64) - exact
    drift_plain = np.sum(without, axis=0, dtype=np.float64) - exact
    assert np.abs(drift_ef + last).max() < 1e-5
    assert np.sqrt(np.mean(drift_ef**2)) < 0.25 * np.sqrt(np.mean(drift_plain**2))


@pytest.mark.timeout(60)
def test_three_peers_agree_and_keep_their_own_residuals(master):
    rng = np.random.default_rng(3)
    data = [[rng.standard_normal(5000).astype(np.float32) for _ in range(3)] for _ in range(4)]

    def fn(rank, c):
        ef, results = pa.ErrorFeedback(), []
        for step in data:
            sent = ef.compensate(step[rank])
            results.append(c.all_reduce(step[rank], "avg", quantization=Q4, feedback=ef))
            assert ef.residual.tobytes() == reference_residual(sent, Q4).tobytes()
        return results, ef.residual

    out = run_peers(master, 3, fn)
    for step in range(4):
        assert out[0][0][step].tobytes() == out[1][0][step].tobytes() == out[2][0][step].tobytes()
    assert out[0][1].tobytes() != out[1][1].tobytes()  # each peer's own loss, never shared


@pytest.mark.timeout(60)
def test_a_failed_operation_leaves_the_residual_as_it_was(master):
    """Peer 1 never calls the second operation: peer 0's call times out, and its residual is the first one's."""
    def fn(rank, c):
        ef = pa.ErrorFeedback()
        x = np.linspace(-1, 1, 1000, dtype=np.float32) * (rank + 1)
        c.all_reduce(x, "sum", quantization=Q4, feedback=ef)
        before = ef.residual.copy()
        if rank == 0:
            with pytest.raises(errors.PCCLTimeoutError):
                c.all_reduce(x * 3, "sum", quantization=Q4, feedback=ef, timeout=1.0)
            assert ef.residual.tobytes() == before.tobytes()
        return True

    assert run_peers(master, 2, fn) == [True, True]


def test_state_dict_round_trips_and_shapes_are_checked():
    ef = pa.ErrorFeedback()
    assert ef.state_dict() == {"residual": None}
    g = np.ones(100, np.float32)
    assert ef.compensate(g) is g  # nothing to add before the first operation
    ef.update(g * 0.3, Q4)
    saved = ef.state_dict()
    again = pa.ErrorFeedback()
    again.load_state_dict(saved, like=g)
    assert again.residual.tobytes() == ef.residual.tobytes()
    assert again.compensate(g).tobytes() == (g + ef.residual).tobytes()
    with pytest.raises(errors.InvalidArgumentError, match="one ErrorFeedback per array"):
        again.compensate(np.ones(99, np.float32))
    with pytest.raises(errors.InvalidArgumentError, match="shape"):
        pa.ErrorFeedback().load_state_dict(saved, like=np.ones(7, np.float32))


def test_torch_bfloat16_residuals_survive_a_checkpoint():
    torch = pytest.importorskip("torch")
    g = torch.linspace(-2, 2, 700, dtype=torch.bfloat16)
    ef = pa.ErrorFeedback()
    ef.update(g, Q4)
    assert isinstance(ef.residual, torch.Tensor) and ef.residual.dtype == torch.bfloat16
    again = pa.ErrorFeedback()
    again.load_state_dict(ef.state_dict(), like=g)
    assert torch.equal(again.residual.view(torch.int16), ef.residual.view(torch.int16))


def test_bad_uses_are_refused_in_words(master):
    with pa.Communicator(master.address) as c:
        x = np.ones(10, np.float32)
        with pytest.raises(errors.InvalidArgumentError, match="needs quantization="):
            c.all_reduce(x, feedback=pa.ErrorFeedback())
        with pytest.raises(errors.InvalidArgumentError, match="must be a pccl_arrays.ErrorFeedback"):
            c.all_reduce(x, quantization="minmax4", feedback={})
        with pytest.raises(errors.InvalidArgumentError, match="floating"):
            residual_of(np.ones(10, np.int32), Q4)
