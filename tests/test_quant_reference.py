"""The NumPy reference of the quantization format (tests/helpers/quant_reference.py) against the spec's
promises (docs/quantization.md): layout, rounding, error bound, poisoned blocks, the ring hop, stochastic
rounding. The C++ and Triton kernels are then held to this reference bit for bit."""

from __future__ import annotations

import struct

import numpy as np
import pytest

import quant_reference as ref
from quant_gallery import BF16, bits, gallery, header

F32 = np.float32

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")



def test_subnormals_are_not_flushed_in_this_process():
    """The reference (and the interpreter) compute with NumPy: a library that sets FTZ/DAZ would break both."""
    tiny = np.array([2.0**-149], F32)
    assert (tiny * F32(3))[0] == F32(3 * 2.0**-149) and (tiny / F32(2))[0] == 0  # 2**-150 ties to even: 0
    assert (np.array([3 * 2.0**-149], F32) / F32(2))[0] == F32(2 * 2.0**-149)  # 1.5 units -> 2


def test_rne_rounds_half_to_even_and_clamp():
    v = np.array([0.0, 0.5, 1.5, 2.5, 3.49, 254.5, 255.5, -0.5, -1.5, -2.5], F32)
    assert ref.rne(v).tolist() == [0, 0, 2, 2, 3, 254, 256, 0, -2, -2]
    assert ref.clamp(np.array([-3, 17, 256, 300], F32)).tolist() == [0, 17, 255, 255]


def test_layout_minmax_by_hand():
    x = np.concatenate([np.arange(256) + 1000.0, 2 * np.arange(64)]).astype(F32)
    q = ref.quantize(x, ref.MINMAX, 256)  # a full block and a partial one of 64 elements
    assert q.dtype == np.uint8 and q.size == 2 * 8 + 320
    assert bytes(q[:8]) == struct.pack("<ff", 1000.0, 1.0)  # lo 1000, scale (1255 - 1000) / 255 = 1
    assert q[8:264].tolist() == list(range(256))
    assert bytes(q[264:272]) == struct.pack("<ff", 0.0, F32(126) / F32(255))  # block 1 starts at 1 * (256 + 8)
    assert q[272:].tolist() == [round(2 * i * 255 / 126) for i in range(64)]


def test_layout_zeropoint_by_hand():
    x = np.array([-1.0, 0.0, 254.0] + [0.0] * 61, F32)  # lo -1, hi 254: scale 1, zero 1
    q = ref.quantize(x, ref.ZEROPOINT, 64)
    assert bytes(q[:8]) == struct.pack("<ff", 1.0, 1.0)
    assert q[8:11].tolist() == [0, 1, 255] and set(q[11:].tolist()) == {1}
    q = ref.quantize(np.full(64, 5.0, F32), ref.ZEROPOINT, 64)  # the range widens to [0, 5]: zero 0
    assert header(q, 64, 0) == (np.float32(5) / np.float32(255), 0.0) and set(q[8:].tolist()) == {255}


def test_signed_zero_lo_is_order_independent():
    """-0 orders below +0: lo is -0 exactly when the block holds a -0 (a choice the spec leaves open)."""
    for order in ([0.0, -0.0, 1.0], [-0.0, 0.0, 1.0], [1.0, 0.0, -0.0]):
        q = ref.quantize(np.array(order * 22, F32)[:64], ref.MINMAX, 64)
        assert bytes(q[:4]) == struct.pack("<f", -0.0)
    q = ref.quantize(np.array([0.0, 1.0] * 32, F32), ref.MINMAX, 64)
    assert bytes(q[:4]) == struct.pack("<f", 0.0)
    q = ref.quantize(np.array([-0.0] * 64, F32), ref.ZEROPOINT, 64)
    assert bytes(q[:8]) == struct.pack("<ff", 0.0, 0.0)


def _error_bound(x, q, kind, block):
    """Per element, the spec's bound 0.5 * scale + ulp(x'), widened by what the spec's wording leaves out.

    Measured, the literal bound fails by up to about half an ulp of the block's largest magnitude M (the
    rounding of x - lo and of code * scale happens at M's scale, not x''s), and by tens of subnormal units
    where the scale itself is subnormal (or rounds to 0 for a range below 127.5 * 2**-149). So:
    0.5 * scale + ulp(x') + 2 ulp(M) + 128 ulp(scale).
    """
    y, _ = ref.decode_float32(q, x.size, kind, block)
    bound = np.empty(x.size)
    for k, first, nb, _ in ref.blocks(x.size, block):
        p0, p1 = header(q, block, k)
        scale = F32(p1 if kind == ref.MINMAX else p0)
        m = np.abs(x[first:first + nb]).max()
        bound[first:first + nb] = (0.5 * float(scale) + np.spacing(np.abs(y[first:first + nb])).astype(float)
                                   + 2 * float(np.spacing(m)) + 128 * float(np.spacing(scale)))
    return np.abs(y.astype(np.float64) - x.astype(np.float64)), bound


@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
def test_reference_error_bound(kind):
    rng = np.random.default_rng(kind)
    parts = [rng.standard_normal(64 * 200) * s + o for s, o in [(1, 0), (1e-3, 0), (1e3, 0), (1, 10), (1, -1e4)]]
    parts.append(rng.integers(-300, 300, 64 * 50) * 2.0**-149)  # subnormal blocks
    parts.append(rng.standard_normal(64 * 50) * 1e30)
    x = np.concatenate(parts).astype(F32)
    q = ref.quantize(x, kind, 64)
    err, bound = _error_bound(x, q, kind, 64)
    assert np.all(err <= bound), f"worst excess {np.max(err - bound)} at {np.argmax(err - bound)}"


def test_reference_constant_blocks():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.standard_normal(500) * 10, [0.0, -0.0, 1e-45, -3e38, 3e38, 1e-30]]).astype(F32)
    x = np.repeat(values, 64)
    y, _ = ref.decode_float32(ref.quantize(x, ref.MINMAX, 64), x.size, ref.MINMAX, 64)
    assert np.array_equal(y, x)  # minmax: scale 0, every code 0, x' = lo exactly
    # zeropoint widens the range to hold 0, so a constant c != 0 has scale |c| / 255 and decodes as
    # 255 * RN(|c| / 255): exact for most c, one ulp off for some (the spec promises exactness for minmax only).
    y, _ = ref.decode_float32(ref.quantize(x, ref.ZEROPOINT, 64), x.size, ref.ZEROPOINT, 64)
    assert np.all(np.abs(y.astype(float) - x) <= np.spacing(np.abs(x)).astype(float))


def test_reference_zeropoint_decodes_zero_exactly():
    x = gallery(64 * 400, 64, np.dtype(F32), seed=5)
    x[::7] = 0.0
    y, poisoned = ref.decode_float32(ref.quantize(x, ref.ZEROPOINT, 64), x.size, ref.ZEROPOINT, 64)
    zeros = (x == 0) & ~poisoned
    assert zeros.sum() > 1000 and np.all(y[zeros] == 0) and not np.any(np.signbit(y[zeros]))


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
def test_reference_poisons_the_block(kind, value):
    x = np.random.default_rng(0).standard_normal(64 * 3).astype(F32)
    x[64 + 17] = value
    q = ref.quantize(x, kind, 64)
    assert bytes(q[72:80]) == struct.pack("<II", 0x7FC00000, 0x7FC00000) and not q[80:144].any()
    out = ref.dequantize(q, x.size, kind, 64, np.float16)
    assert np.all(bits(out[64:128]) == 0x7E00) and np.all(np.isfinite(out[:64])) and np.all(np.isfinite(out[128:]))
    # A range that overflows float32 poisons too.
    q = ref.quantize(np.array([-3e38, 3e38] * 32, F32), kind, 64)
    assert np.isnan(header(q, 64, 0)).all()


def test_reference_float64_rounds_to_nearest():
    x = np.array([1 + 2.0**-24 + 2.0**-40, 1 + 2.0**-24, 1e39, -1e-50], np.float64)
    assert bits(ref.to_float32(x)).tolist() == bits(np.array([1 + 2.0**-23, 1.0, np.inf, -0.0], F32)).tolist()


def test_reference_dequantize_converts_with_rne():
    # minmax with scale 0 decodes lo exactly: a way to feed chosen float32 values through dequantize.
    halfway = [1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8, 65520.0, 2.0**-25]
    q = ref.quantize(np.repeat(np.array(halfway, F32), 64), ref.MINMAX, 64)
    assert ref.dequantize(q, 6 * 64, 1, 64, np.float16)[::64].tolist() == [1, 1 + 2**-9, 1 + 2**-8, 1 + 3 * 2**-8,
                                                                             np.inf, 0.0]
    assert ref.dequantize(q, 6 * 64, 1, 64, BF16)[::64].astype(float).tolist()[:4] == [1, 1, 1, 1 + 2**-6]
    assert ref.dequantize(q[:72], 64, 1, 64, np.float32, divide_by=3)[0] == F32(1 + 2.0**-11) / F32(3)


def _decode(q, n, kind, block):
    return ref.decode_float32(q, n, kind, block)[0]


@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
def test_reduce_hop_is_decode_add_requantize(kind):
    a = gallery(64 * 40 + 9, 64, np.dtype(F32), seed=1)
    b = gallery(64 * 40 + 9, 64, np.dtype(F32), seed=2)
    qa, qb = ref.quantize(a, kind, 64), ref.quantize(b, kind, 64)
    with np.errstate(over="ignore", invalid="ignore"):
        total = _decode(qa, a.size, kind, 64) + _decode(qb, a.size, kind, 64)
    want = ref.quantize(total, kind, 64).tobytes()
    assert ref.reduce_hop(qa, qb, a.size, kind, 64) == want
    assert ref.reduce_hop(bytes(qa), bytes(qb), a.size, kind, 64, first_block=7) == want  # rne ignores the index
    # A sum that overflows poisons its block.
    big = ref.quantize(np.full(64, 3e38, F32), kind, 64)
    assert np.isnan(header(np.frombuffer(ref.reduce_hop(big, big, 64, kind, 64), np.uint8), 64, 0)).all()


def _fmix32_python(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_fmix32_matches_plain_python():
    values = np.random.default_rng(0).integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    assert ref.fmix32(values).tolist() == [_fmix32_python(int(v)) for v in values]
    assert ref.fmix32(0).tolist() == [0]


@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
def test_stochastic_rounding_follows_the_formula(kind):
    """Recomputes one stochastic hop element by element with plain-Python hashing and float32 scalars."""
    rng = np.random.default_rng(4)
    qa = ref.quantize(rng.standard_normal(3 * 64).astype(F32), kind, 64)
    qb = ref.quantize(rng.standard_normal(3 * 64).astype(F32), kind, 64)
    seed, op_id, step, first_block = 0xDEADBEEF, (7 << 32) | 12345, 3, 5
    got = np.frombuffer(ref.reduce_hop(qa, qb, 192, kind, 64, "stochastic", seed, op_id, step, first_block), np.uint8)
    total = _decode(qa, 192, kind, 64) + _decode(qb, 192, kind, 64)
    for k in range(3):
        v = total[64 * k:64 * k + 64]
        p0, p1 = header(got, 64, k)
        for i in range(64):
            h = _fmix32_python(i)
            for key in (first_block + k, step, op_id & 0xFFFFFFFF, seed):
                h = _fmix32_python(key ^ h)
            u = F32(h >> 8) * F32(2.0**-24)
            if kind == ref.MINMAX:
                want = ref.clamp(np.floor((v[i] - F32(p0)) / F32(p1) + u))
            else:
                want = ref.clamp(np.floor(v[i] / F32(p0) + u) + F32(p1))
            assert got[k * 72 + 8 + i] == want, (k, i)


def test_stochastic_rounding_is_deterministic_and_seeded():
    rng = np.random.default_rng(6)
    qa = ref.quantize(rng.standard_normal(4 * 64).astype(F32), ref.MINMAX, 64)
    qb = ref.quantize(rng.standard_normal(4 * 64).astype(F32), ref.MINMAX, 64)

    def hop(**kw):
        args = dict(rounding="stochastic", seed=1, op_id=2, step=3, first_block=4) | kw
        return ref.reduce_hop(qa, qb, 256, ref.MINMAX, 64, **args)

    assert hop() == hop()
    assert len({hop(), hop(seed=9), hop(op_id=9), hop(step=9), hop(first_block=9), hop(rounding="nearest")}) == 6
    assert hop(op_id=2 + (5 << 32)) == hop()  # only the op id's low 32 bits count
    # The hash sees the global block index: a chunk hop equals per-block hops at first_block + k.
    pieces = [ref.reduce_hop(qa[72 * k:72 * k + 72], qb[72 * k:72 * k + 72], 64, ref.MINMAX, 64, "stochastic",
                             1, 2, 3, 4 + k) for k in range(4)]
    assert b"".join(pieces) == hop()


@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
def test_stochastic_rounding_is_unbiased(kind):
    """Over many seeds the mean decoded value approaches the exact one; round-to-nearest keeps its bias."""
    rng = np.random.default_rng(7)
    v = (rng.standard_normal(64) * 3).astype(F32)
    draws = np.array([_decode(ref.quantize_float32(v, kind, 64, "stochastic", seed=s), 64, kind, 64)
                      for s in range(600)])
    q = ref.quantize(v, kind, 64)
    scale = header(q, 64, 0)[1 if kind == ref.MINMAX else 0]
    bias = draws.mean(axis=0) - v
    nearest_error = _decode(q, 64, kind, 64) - v
    assert np.max(np.abs(bias)) < 0.1 * scale  # std of a 600-draw mean is at most 0.02 scale
    assert np.mean(np.abs(bias)) < 0.3 * np.mean(np.abs(nearest_error))


