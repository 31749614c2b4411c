"""The 4-bit format and the rotation of the NumPy reference (tests/helpers/quant_reference.py) against what
docs/quantization.md promises: the nibble layout, the segments of a short block, the inverse, orthogonality,
poisoning, and that rotation pays for itself on heavy-tailed data. The C++ kernels (test_quant_kernels.py) and
the Triton kernels (test_quant_triton.py) are held to this reference bit for bit."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import quant_reference as ref

F32 = np.float32

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


def test_minmax4_layout_by_hand():
    x = np.concatenate([np.arange(16) * 2.0 + 10, np.full(48, 10.0), np.arange(3) * 1.0]).astype(F32)
    q = ref.quantize(x, ref.MINMAX4, 64)  # a full block of 64 and a short one of 3 elements (odd)
    assert q.size == ref.quantized_bytes(67, 64, ref.MINMAX4) == 8 + 32 + 8 + 2
    assert bytes(q[:8]) == struct.pack("<ff", 10.0, 2.0)  # lo 10, scale (40 - 10) / 15 = 2
    assert q[8:16].tolist() == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]  # codes 0..15, low nibble first
    assert set(q[16:40].tolist()) == {0}
    assert bytes(q[40:48]) == struct.pack("<ff", 0.0, F32(2) / F32(15))
    assert q[48:].tolist() == [0x70, 0x0F]  # codes 0, 7 (1 / RN(2/15) is just below 7.5), 15; the last high nibble 0
    got = ref.dequantize(q, 67, ref.MINMAX4, 64, np.float32)
    assert got[:16].tolist() == x[:16].tolist() and got[16:64].tolist() == [10.0] * 48


def test_minmax4_error_is_half_a_step():
    x = np.random.default_rng(1).standard_normal(64 * 50).astype(F32)
    got = ref.dequantize(ref.quantize(x, ref.MINMAX4, 64), x.size, ref.MINMAX4, 64, np.float32)
    for b in range(50):
        v = x[64 * b:64 * (b + 1)]
        step = (v.max() - v.min()) / 15
        assert np.abs(got[64 * b:64 * (b + 1)] - v).max() <= 0.5 * step * (1 + 1e-5)


def hadamard(m: int) -> np.ndarray:
    h = np.ones((1, 1))
    for _ in range(m):
        h = np.block([[h, h], [h, -h]])
    return h


@pytest.mark.parametrize("nb", [64, 1024, 100, 63, 1])
def test_rotation_is_signs_then_hadamard_per_segment(nb):
    """Against a dense Hadamard matrix in float64: segments of the length's binary digits, largest first, each
    transformed on its own and scaled by 2^-floor(m/2)."""
    x = np.random.default_rng(nb).standard_normal(nb).astype(F32)
    seed, block_index = 77, 5
    got = ref.rotate(x, 4096, seed, first_block=block_index).astype(np.float64)
    signed = np.where(ref.rotation_signs(seed, block_index, nb), -1.0, 1.0) * x.astype(np.float64)
    at = 0
    for m in range(12, -1, -1):
        if nb & (1 << m):
            seg = slice(at, at + (1 << m))
            want = hadamard(m) @ signed[seg] * 2.0 ** -(m // 2)
            np.testing.assert_allclose(got[seg], want, rtol=0, atol=1e-5 * np.abs(want).max() + 1e-30)
            at += 1 << m
    assert at == nb


def test_signs_are_a_fair_coin_and_depend_on_seed_and_block():
    a = ref.rotation_signs(1, 0, 4096)
    assert 0.45 < a.mean() < 0.55
    assert (a != ref.rotation_signs(2, 0, 4096)).mean() > 0.4
    assert (a != ref.rotation_signs(1, 1, 4096)).mean() > 0.4


@pytest.mark.parametrize("n,block", [(4096, 1024), (3000, 512), (77, 64)])
def test_inverse_undoes_the_rotation_and_norms_scale_by_a_power_of_two(n, block):
    x = np.random.default_rng(n).standard_normal(n).astype(F32)
    y = ref.rotate(x, block, 123)
    back = ref.unrotate(y, block, 123)
    assert np.abs(back - x).max() <= 1e-6 * np.abs(x).max()
    if n % block == 0:  # full blocks of 2^m: |R x| = 2^(m/2 - floor(m/2)) |x|
        m = block.bit_length() - 1
        ratio = np.linalg.norm(y.astype(np.float64)) / np.linalg.norm(x.astype(np.float64))
        assert ratio == pytest.approx(2.0 ** (m / 2 - m // 2), rel=1e-5)


def test_sums_commute_with_the_rotation():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(2048).astype(F32), rng.standard_normal(2048).astype(F32)
    lhs = ref.rotate(a, 1024, 9) + ref.rotate(b, 1024, 9)
    rhs = ref.rotate(a + b, 1024, 9)
    assert np.abs(lhs - rhs).max() <= 1e-5 * np.abs(rhs).max()


def test_rotation_poisons_and_never_rotates_a_poisoned_block_back():
    x = np.random.default_rng(4).standard_normal(256).astype(F32)
    x[70] = np.nan  # block 1 of 64
    x[200] = 3e38  # block 3: finite, but its rotated values overflow
    x[201] = 3e38
    q = ref.quantize(x, ref.MINMAX4, 64, rotate_seed=1)
    for k in (1, 3):
        assert bytes(q[k * 40:k * 40 + 8]) == struct.pack("<I", 0x7FC00000) * 2
    out = ref.dequantize(q, 256, ref.MINMAX4, 64, np.float32, rotate_seed=1)
    for k in (1, 3):
        assert out[64 * k:64 * (k + 1)].view(np.uint32).tolist() == [0x7FC00000] * 64  # the positive quiet NaN
    assert np.isfinite(out[:64]).all() and np.isfinite(out[128:192]).all()


def rms_error(x: np.ndarray, kind: int, block: int, rotate_seed) -> float:
    got = ref.dequantize(ref.quantize(x, kind, block, rotate_seed=rotate_seed), x.size, kind, block, np.float32,
                         rotate_seed=rotate_seed)
    return float(np.sqrt(np.mean((got.astype(np.float64) - x) ** 2)))


@pytest.mark.parametrize("kind,block", [(ref.MINMAX, 1024), (ref.MINMAX4, 512)])
def test_rotation_at_least_halves_the_error_on_heavy_tails(kind, block):
    """Student-t with 3 degrees of freedom: a block's range is set by its largest element without rotation."""
    x = np.random.default_rng(5).standard_t(3, 64 * 1024).astype(F32)
    plain, rotated = rms_error(x, kind, block, None), rms_error(x, kind, block, 11)
    assert rotated <= 0.5 * plain, (plain, rotated)


def test_rotated_quantization_is_unbiased():
    x = np.random.default_rng(6).standard_t(3, 64 * 1024).astype(F32)
    got = ref.dequantize(ref.quantize(x, ref.MINMAX4, 512, rotate_seed=2), x.size, ref.MINMAX4, 512, np.float32,
                         rotate_seed=2)
    err = got.astype(np.float64) - x
    assert abs(err.mean()) <= 3 * err.std() / np.sqrt(err.size)


def test_rotation_needs_a_power_of_two_block_of_at_most_4096():
    x = np.zeros(10, F32)
    for block in (192, 8192):
        with pytest.raises(ValueError, match="power-of-two"):
            ref.quantize(x, ref.MINMAX4, block, rotate_seed=0)
    ref.quantize(x, ref.MINMAX4, 192)  # without rotation any multiple of 64


def test_a_block_whose_rotation_did_not_overflow_comes_back_finite():
    """One 1e38 among zeros: every rotated value is about 1e38 / 8 (no overflow, no poison), and the inverse
    scales before its butterflies, so the sum of 64 of them never passes 1e38 on the way back. The C++ kernels
    give the same bytes and floats (the Triton kernels are held to the reference in test_quant_triton.py)."""
    from pccl_arrays import _core_testing
    from pccl_arrays.dtypes import dtype_code

    x = np.zeros(64, F32)
    x[3] = 1e38
    q = ref.quantize(x, ref.MINMAX4, 64, rotate_seed=4)
    assert not np.isnan(np.frombuffer(q[:8].tobytes(), "<f4")).any()
    back = ref.dequantize(q, 64, ref.MINMAX4, 64, np.float32, rotate_seed=4)
    assert np.isfinite(back).all() and abs(back[3] - 1e38) < 0.1 * 1e38
    got_q = np.empty_like(q)
    _core_testing.quantize(x.ctypes.data, dtype_code("float32"), 64, ref.MINMAX4, 64, got_q.ctypes.data, rotate=True,
                           seed=4)
    got = np.empty(64, F32)
    _core_testing.dequantize(q.ctypes.data, 64, ref.MINMAX4, 64, dtype_code("float32"), got.ctypes.data, 1, rotate=True,
                             seed=4)
    assert got_q.tobytes() == q.tobytes() and got.tobytes() == back.tobytes()
