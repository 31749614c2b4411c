"""The quantization format (docs/quantization.md): the NumPy reference against the spec's promises, and the
Triton kernels (kernels/) against the reference, byte for byte and bit for bit.

Without a CUDA device the kernels run in Triton's interpreter (about 5 ms per block here), so the sweeps keep
arrays small and mix many kinds of block (a "gallery") into each array rather than launching once per kind.
"""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import quant_reference as ref

BF16 = np.dtype(ml_dtypes.bfloat16)
NP_DTYPES = (np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64))
UINT_OF_SIZE = {2: np.uint16, 4: np.uint32, 8: np.uint64}
F32 = np.float32


def _load_kernels():
    """(kernels, torch, why-not). Without CUDA the interpreter is switched on first: triton picks compiled or
    interpreted kernels when @triton.jit decorates them, as pccl_arrays.kernels is imported."""
    try:
        import torch
    except ImportError:
        return None, None, "torch is not installed"
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        import triton  # noqa: F401
    except ImportError:
        return None, torch, "triton is not installed (pip install triton)"
    from pccl_arrays import kernels

    if not kernels.available():
        return None, torch, ("no CUDA device, and the Triton kernels were imported before TRITON_INTERPRET=1 "
                             "was set")
    return kernels, torch, ""


kernels, torch, _why = _load_kernels()
needs_triton = pytest.mark.skipif(kernels is None, reason=_why)
if kernels is None and os.environ.get("CI"):  # in CI a missing triton is a setup bug, not a reason to skip
    needs_triton = pytest.mark.usefixtures("_fail_missing_triton")

# Overflow to infinity is the specified behaviour (a range or a sum that overflows poisons its block); the
# interpreter computes with NumPy, which warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


# ---- data: a gallery of blocks ----------------------------------------------------------------------------------

def _tiny_of(dtype):
    """A few units of the dtype's smallest subnormal, as float32 sees it (float64's vanish, so float32's)."""
    return 2.0 ** {2: -24, 4: -149, 8: -149}[dtype.itemsize] if dtype != BF16 else 2.0**-133


PATTERNS = {
    "normal_outliers": lambda rng, nb, dt: rng.standard_normal(nb) * np.where(rng.random(nb) < 0.03, 1e3, 1.0),
    "constant": lambda rng, nb, dt: np.full(nb, rng.standard_normal() * 10),
    "signed_zeros": lambda rng, nb, dt: np.where(rng.random(nb) < 0.5, -0.0, 0.0),
    "tiny": lambda rng, nb, dt: rng.standard_normal(nb) * 1e-30,
    "subnormal": lambda rng, nb, dt: rng.integers(-4096, 4097, nb) * _tiny_of(dt),
    "huge": lambda rng, nb, dt: rng.standard_normal(nb) * 1e30,
    "range_overflows": lambda rng, nb, dt: rng.choice([-3e38, 3e38, 1.0], nb),
    "dtype_max": lambda rng, nb, dt: rng.choice([-1, 1], nb) * rng.uniform(0.25, 1, nb) * float(_finfo(dt).max),
    "positive": lambda rng, nb, dt: 100 + rng.standard_normal(nb),
    "negative": lambda rng, nb, dt: -100 + rng.standard_normal(nb),
    "offset_narrow": lambda rng, nb, dt: 1e4 + 1e-3 * rng.standard_normal(nb),
    "ties": lambda rng, nb, dt: _ties(rng, nb),
    "nonnegative_zeros": lambda rng, nb, dt: _nonnegative_with_zeros(rng, nb),
    "sparse": lambda rng, nb, dt: rng.standard_normal(nb) * 5 * (rng.random(nb) < 0.1),
    "nan": lambda rng, nb, dt: _poke(rng, rng.standard_normal(nb), np.nan),
    "inf": lambda rng, nb, dt: _poke(rng, rng.standard_normal(nb), np.inf),
    "neg_inf": lambda rng, nb, dt: _poke(rng, rng.standard_normal(nb), -np.inf),
}


def _finfo(dtype):
    return ml_dtypes.finfo(dtype) if dtype == BF16 else np.finfo(dtype)


def _ties(rng, nb):
    """Half-integers between an exact 0 and 255: scale is 1 and every code is a tie (both kinds)."""
    v = rng.integers(0, 255, nb) + 0.5
    v[0], v[-1] = 0.0, 255.0
    return v


def _nonnegative_with_zeros(rng, nb):
    """Values >= 0, a third of them zeros of either sign: lo is a zero whose sign the format must settle."""
    v = np.abs(rng.standard_normal(nb))
    zero = rng.random(nb) < 0.3
    v[zero] = np.where(rng.random(zero.sum()) < 0.5, -0.0, 0.0)
    return v


def _poke(rng, v, value):
    v[rng.integers(v.size)] = value
    return v


FINITE_PATTERNS = [p for p in PATTERNS if p not in ("nan", "inf", "neg_inf", "range_overflows", "dtype_max")]


def gallery(n, block, dtype, seed, names=tuple(PATTERNS)):
    """n elements of dtype; block k follows pattern k + seed (cyclically) of names."""
    rng = np.random.default_rng(seed)
    values = np.empty(n, np.float64)
    for k, first, nb, _ in ref.blocks(n, block):
        values[first:first + nb] = PATTERNS[names[(k + seed) % len(names)]](rng, nb, dtype)
    with np.errstate(over="ignore"):
        return values.astype(dtype)


# ---- helpers ----------------------------------------------------------------------------------------------------

def bits(a):
    """The raw bits of a float array, so NaN, -0 and the rest compare exactly."""
    return np.ascontiguousarray(a).view(UINT_OF_SIZE[a.dtype.itemsize])


def to_torch(a):
    if a.dtype == BF16:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(a))


def to_numpy(t):
    if t.dtype == torch.bfloat16:
        return t.cpu().view(torch.int16).numpy().view(BF16)
    return t.cpu().numpy()


def device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def on_device(a):
    return to_torch(a).to(device())


def assert_same_bytes(got, want, block):
    if not np.array_equal(got, want):
        i = int(np.flatnonzero(got != want)[0])
        k = i // (block + 8)
        pytest.fail(f"first differing byte {i} (block {k}, offset {i - k * (block + 8)}): "
                    f"got {got[k * (block + 8):k * (block + 8) + 8]} want {want[k * (block + 8):k * (block + 8) + 8]}")


def assert_same_bits(got, want):
    if not np.array_equal(bits(got), bits(want)):
        i = int(np.flatnonzero(bits(got) != bits(want))[0])
        pytest.fail(f"element {i}: got {got[i]!r} ({hex(bits(got)[i])}), want {want[i]!r} ({hex(bits(want)[i])})")


def header(q, block, k):
    """(p0, p1) of block k as float32."""
    pos = k * (block + 8)
    return struct.unpack("<ff", bytes(q[pos:pos + 8]))


# ---- the reference against the spec ------------------------------------------------------------------------------

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


# ---- Triton against the reference -------------------------------------------------------------------------------

SWEEP = [(block, n) for block in (64, 256, 1024) for n in (1, 63, 1000, 4097)] + [(1024, 65535)]


@needs_triton
@pytest.mark.parametrize("dtype", NP_DTYPES, ids=str)
@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
@pytest.mark.parametrize("block,n", SWEEP)
def test_quantize_matches_reference(block, n, kind, dtype):
    x = gallery(n, block, dtype, seed=n + block + kind)
    got = kernels.quantize(on_device(x), kind, block)
    assert got.dtype == torch.uint8 and got.device.type == device()
    assert_same_bytes(to_numpy(got), ref.quantize(x, kind, block), block)


@needs_triton
@pytest.mark.parametrize("dtype", NP_DTYPES, ids=str)
@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
def test_quantize_every_pattern_in_a_partial_block(kind, dtype):
    for seed in range(len(PATTERNS)):
        x = gallery(63, 64, dtype, seed)
        assert_same_bytes(to_numpy(kernels.quantize(on_device(x), kind, 64)), ref.quantize(x, kind, 64), 64)


@needs_triton
@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
@pytest.mark.parametrize("block,n", [(192, 1000), (4160, 9000), (65536, 65535)])
def test_quantize_blocks_that_are_not_one_tile(block, n, kind):
    """A block that is not a power of two, one wider than a tile (4096), and the largest."""
    x = gallery(n, 64, np.dtype(F32), seed=block, names=FINITE_PATTERNS)  # patterns change inside the block
    if block == 65536:
        x[40000] = 1e35  # lo and hi sit in late tiles
        x[50000] = -1e35
    assert_same_bytes(to_numpy(kernels.quantize(on_device(x), kind, block)), ref.quantize(x, kind, block), block)


@needs_triton
def test_quantize_shapes_and_empty():
    x = gallery(2 * 300, 64, np.dtype(F32), seed=1).reshape(2, 300)
    assert_same_bytes(to_numpy(kernels.quantize(on_device(x), 1, 64)), ref.quantize(x, 1, 64), 64)
    xt = on_device(x).t()  # not contiguous: quantized in C order of the transposed view
    assert_same_bytes(to_numpy(kernels.quantize(xt, 2, 64)), ref.quantize(np.ascontiguousarray(x.T), 2, 64), 64)
    assert kernels.quantize(torch.empty(0, device=device()), 1, 64).numel() == 0
    with pytest.raises(ValueError):
        kernels.quantize(torch.ones(4), 3, 64)
    with pytest.raises(ValueError):
        kernels.quantize(torch.ones(4), 1, 100)
    with pytest.raises(TypeError):
        kernels.quantize(torch.ones(4, dtype=torch.int32), 1, 64)


OUT_DTYPES = [(np.dtype(np.float16), "float16"), (BF16, "bfloat16"), (np.dtype(F32), "float32"),
              (np.dtype(np.float64), "float64")]


@needs_triton
@pytest.mark.parametrize("divide_by", [1, 3, 4])
@pytest.mark.parametrize("out", OUT_DTYPES, ids=lambda o: o[1])
@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
@pytest.mark.parametrize("block,n", [(64, 1000), (256, 4097), (1024, 4097)])
def test_dequantize_matches_reference(block, n, kind, out, divide_by):
    out_dtype, name = out
    q = ref.quantize(gallery(n, block, np.dtype(F32), seed=block + kind), kind, block)
    got = kernels.dequantize(on_device(q), n, kind, block, getattr(torch, name), divide_by)
    assert got.dtype == getattr(torch, name) and got.shape == (n,)
    assert_same_bits(to_numpy(got), ref.dequantize(q, n, kind, block, out_dtype, divide_by))


def _random_headers(kind, block, n, seed):
    """Quantized bytes with headers no quantize would write and random codes: decode arithmetic at its corners.

    Blocks cycle through: any finite float32 bit pattern (products and sums overflow to inf, underflow);
    subnormal p0 and p1; outputs 2**E * (1 + c * 2**-11), a float16 tie for every odd code c; the same with
    2**-8, a bfloat16 tie; and plausible headers. Block 7 is poisoned.
    """
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 256, ref.quantized_bytes(n, block), dtype=np.uint8)
    for k, _, _, pos in ref.blocks(n, block):
        p = rng.integers(0, 2**32, 2, dtype=np.uint64).astype(np.uint32)
        exponent_all_ones = (p & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
        p[exponent_all_ones] &= np.uint32(0xBFFFFFFF)
        p = p.view(F32)
        if k % 5 == 1:
            p = (p.view(np.uint32) & np.uint32(0x807FFFFF)).view(F32)
        elif k % 5 in (2, 3):
            e = int(rng.integers(-14, 16)) if k % 5 == 2 else int(rng.integers(-100, 100))
            tie = 2.0 ** (-11 if k % 5 == 2 else -8)
            sign = float(rng.choice([-1.0, 1.0]))
            # minmax: 2**E + c * 2**E * tie;  zeropoint: (c + 1 / tie) * 2**E * tie
            p = np.array([sign * 2.0**e, 2.0**e * tie] if kind == ref.MINMAX else [sign * 2.0**e * tie, -1 / tie], F32)
        elif k % 5 == 4:
            p = np.array([rng.standard_normal() * 10, abs(rng.standard_normal()) / 25] if kind == ref.MINMAX
                         else [abs(rng.standard_normal()) / 25, rng.integers(0, 256)], F32)
        if k == 7:
            p = np.array([ref.NAN, ref.NAN], F32)
        q[pos:pos + 8] = p.astype("<f4").view(np.uint8)
    return q


@needs_triton
@pytest.mark.parametrize("divide_by", [1, 3])
@pytest.mark.parametrize("out", OUT_DTYPES, ids=lambda o: o[1])
@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
def test_dequantize_arbitrary_headers(kind, out, divide_by):
    out_dtype, name = out
    n = 64 * 24 + 37
    q = _random_headers(kind, 64, n, seed=kind * 10 + divide_by)
    with np.errstate(over="ignore", under="ignore"):  # the interpreter computes with NumPy too
        want = ref.dequantize(q, n, kind, 64, out_dtype, divide_by)
        got = kernels.dequantize(on_device(q), n, kind, 64, getattr(torch, name), divide_by)
    assert_same_bits(to_numpy(got), want)


@needs_triton
def test_dequantize_into_out_and_rejects_bad_arguments():
    x = gallery(500, 64, np.dtype(F32), seed=3)
    q = on_device(ref.quantize(x, 2, 64))
    out = torch.full((20, 25), 7.0, dtype=torch.bfloat16, device=device())
    assert kernels.dequantize(q, 500, 2, 64, torch.bfloat16, 4, out=out) is out
    assert_same_bits(to_numpy(out).reshape(-1), ref.dequantize(ref.quantize(x, 2, 64), 500, 2, 64, BF16, 4))
    with pytest.raises(ValueError):
        kernels.dequantize(q, 501, 2, 64, torch.float32)  # the length does not match
    with pytest.raises(ValueError):
        kernels.dequantize(q, 500, 2, 64, torch.float32, out=torch.empty(500, dtype=torch.float64, device=device()))
    with pytest.raises(ValueError):
        kernels.dequantize(q, 500, 2, 64, torch.float32, divide_by=0)
    with pytest.raises(TypeError):
        kernels.dequantize(q, 500, 2, 64, torch.int32)
    assert kernels.dequantize(on_device(ref.quantize(np.zeros(0, F32), 1, 64)), 0, 1, 64, torch.float32).numel() == 0


@needs_triton
@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT])
def test_triton_round_trip_and_ring_hop_agree_with_reference(kind):
    """A device peer's whole path: quantize on the device, hop on the host (reference), decode on the device."""
    a, b = gallery(3000, 64, np.dtype(F32), seed=11), gallery(3000, 64, np.dtype(F32), seed=12)
    qa = to_numpy(kernels.quantize(on_device(a), kind, 64))
    qb = to_numpy(kernels.quantize(on_device(b), kind, 64))
    hop = np.frombuffer(ref.reduce_hop(qa, qb, 3000, kind, 64, "stochastic", seed=5, op_id=6, step=1), np.uint8)
    got = kernels.dequantize(on_device(hop.copy()), 3000, kind, 64, torch.float32, divide_by=2)
    assert_same_bits(to_numpy(got), ref.dequantize(hop, 3000, kind, 64, np.float32, divide_by=2))


# ---- what a GPU would run ---------------------------------------------------------------------------------------

# Runs in a fresh process: the interpreter patches triton.language for the whole process, so nothing compiles
# in one that has run interpreted kernels.
_PTX_SCRIPT = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import pccl_arrays.kernels
quantize, dequantize = sys.modules["pccl_arrays.kernels.quantize"], sys.modules["pccl_arrays.kernels.dequantize"]

def ptx(kernel, signature, constexprs):
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    target = GPUTarget("cuda", 90, 32)
    return triton.compile(source, target=target, options={"enable_fp_fusion": False}).asm["ptx"]

out = {}
for kind in (1, 2):
    for x in ("fp16", "bf16", "fp32", "fp64"):
        signature = {"x_ptr": "*i16" if x == "bf16" else "*" + x, "q_ptr": "*u8", "n": "i64", "B": "i32"}
        out[f"quantize kind {kind} {x}"] = ptx(
            quantize.quantize_kernel, signature, {"KIND": kind, "IN_BF16": x == "bf16", "CHUNK": 1024})
    for code, bits in enumerate(("i16", "i16", "i32", "i64")):
        signature = {"q_ptr": "*u8", "out_ptr": "*" + bits, "n": "i32", "B": "i32", "divide_by": "fp32"}
        out[f"dequantize kind {kind} out {code}"] = ptx(
            dequantize.dequantize_kernel, signature,
            {"KIND": kind, "OUT": code, "NAN": 0, "DIVIDE": True, "CHUNK": 4096})
print(json.dumps(out))
"""


@pytest.mark.skipif(kernels is None, reason=_why)
def test_kernels_compile_to_correctly_rounded_ptx():
    """Compiles (no GPU needed) what a GPU would run, and checks the arithmetic the interpreter cannot show:
    IEEE division, no FMA, no flush to zero, the rne magic number kept, float64 rounded to nearest. It also
    catches what only the compiler rejects (a kernel reading a global that is not constexpr)."""
    import json
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # From the tests' folder, so that the installed package is imported, not the checkout's unbuilt one.
    run = subprocess.run([sys.executable, "-c", _PTX_SCRIPT], cwd=Path(__file__).resolve().parent, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ptx = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(ptx) == 16
    for name, code in ptx.items():
        assert "div.rn.f32" in code, name
        for forbidden in ("fma", ".ftz", "div.full", "div.approx", "rcp.approx"):
            assert forbidden not in code, (name, forbidden)
        if name.startswith("quantize"):
            assert "0f4B400000" in code and "0fCB400000" in code, name  # (v + 1.5 * 2**23) - 1.5 * 2**23
    assert "cvt.rn.f32.f64" in ptx["quantize kind 1 fp64"]
    assert "mul.rn.f32" in ptx["dequantize kind 1 out 2"] and "add.rn.f32" in ptx["dequantize kind 1 out 2"]
    assert "cvt.rn.f16.f32" in ptx["dequantize kind 2 out 0"]
