"""Error feedback (pccl_arrays.ErrorFeedback, docs/quantization.md "Error feedback"): the residual is exactly
what quantizing the sent contribution lost, on the chunks the operation quantized (a host array's own chunk is
added exactly by the direct all-reduce, all but that chunk by the ring), sums telescope over steps, a failed
operation leaves the residual as it was, the state round-trips through a checkpoint, and bad uses are refused
in words."""

from __future__ import annotations

import numpy as np
import pytest

import pccl_arrays as pa
import quant_reference as ref
from pccl_arrays import errors
from pccl_arrays.feedback import owned_elements, residual_of
from test_api import run_peers

Q4 = pa.Quantization("minmax4", rotate=True, seed=7)


def reference_residual(y: np.ndarray, q: pa.Quantization, world: int = 1, rank: int = 0) -> np.ndarray:
    """y - D(Q(y)) by the NumPy reference, kept where a host array's contribution was quantized: the direct
    all-reduce sends every chunk but chunk `rank` quantized, the ring only chunk `rank` (RingPlan::region)."""
    kind = {"minmax": ref.MINMAX, "zeropoint": ref.ZEROPOINT, "minmax4": ref.MINMAX4}[q.kind]
    seed = q.seed if q.rotate else None
    back = ref.dequantize(ref.quantize(y, kind, q.block, rotate_seed=seed), y.size, kind, q.block, np.float32,
                          rotate_seed=seed)
    r = (y.astype(np.float32) - back).astype(y.dtype)
    if world > 1:
        blocks = ref.num_blocks(y.size, q.block)
        base, rem = divmod(blocks, world)
        first = rank * base + min(rank, rem)
        lo, hi = first * q.block, min(y.size, (first + base + (rank < rem)) * q.block)
        quantized = np.zeros(y.size, bool)
        quantized[lo:hi] = True
        r[quantized if q.reduce == "direct" else ~quantized] = 0
    return r


def test_owned_elements_split_blocks_as_the_core_does():
    assert owned_elements(10 * 64 + 5, 64, 3, 0) == (0, 4 * 64)  # 11 blocks: 4, 4, 3
    assert owned_elements(10 * 64 + 5, 64, 3, 1) == (4 * 64, 8 * 64)
    assert owned_elements(10 * 64 + 5, 64, 3, 2) == (8 * 64, 10 * 64 + 5)
    assert owned_elements(100, 64, 4, 3) == (100, 100)  # 2 blocks for 4 peers: the last two own nothing


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
@pytest.mark.parametrize("reduce", ["direct", "ring"])
def test_three_peers_agree_and_keep_their_own_residuals(master, reduce):
    """The residual is the reference's y - D(Q(y)) on exactly the chunks the core quantized (by the rank the
    operation reports), and each peer keeps its own."""
    q = pa.Quantization("minmax4", rotate=True, seed=7, reduce=reduce)
    rng = np.random.default_rng(3)
    data = [[rng.standard_normal(5000).astype(np.float32) for _ in range(3)] for _ in range(4)]

    def fn(rank, c):
        ef, results = pa.ErrorFeedback(), []
        for step in data:
            sent = ef.compensate(step[rank])
            r = c.all_reduce(step[rank], "avg", quantization=q, feedback=ef)
            info = c.last_info
            results.append(r)
            assert info.world_size == 3 and ef.residual.tobytes() == reference_residual(sent, q, 3, info.rank).tobytes()
            assert np.count_nonzero(ef.residual) > 0
        return results, ef.residual

    out = run_peers(master, 3, fn)
    for step in range(4):
        assert out[0][0][step].tobytes() == out[1][0][step].tobytes() == out[2][0][step].tobytes()
    assert out[0][1].tobytes() != out[1][1].tobytes()  # each peer's own loss, never shared


@pytest.mark.timeout(90)
@pytest.mark.parametrize("reduce", ["direct", "ring"])
def test_feedback_never_makes_the_accumulated_error_worse(master, reduce):
    """Three peers, 25 steps of heavy-tailed updates: the results' sum drifts from the exact sum less with
    feedback than without (feeding back error a host array's exactly-added chunks never lost would not)."""
    q = pa.Quantization("minmax4", rotate=True, seed=5, reduce=reduce)
    rng = np.random.default_rng(8)
    steps = [[rng.standard_t(3, 6000).astype(np.float32) * 1e-2 for _ in range(3)] for _ in range(25)]

    def fn(rank, c):
        ef = pa.ErrorFeedback()
        with_ef = sum(c.all_reduce(s[rank], "sum", quantization=q, feedback=ef).astype(np.float64) for s in steps)
        without = sum(c.all_reduce(s[rank], "sum", quantization=q).astype(np.float64) for s in steps)
        return with_ef, without

    with_ef, without = run_peers(master, 3, fn)[0]
    exact = sum(np.sum(s, axis=0, dtype=np.float64) for s in steps)
    drift_ef, drift_plain = np.sqrt(np.mean((with_ef - exact) ** 2)), np.sqrt(np.mean((without - exact) ** 2))
    assert drift_ef < drift_plain, (drift_ef, drift_plain)


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
