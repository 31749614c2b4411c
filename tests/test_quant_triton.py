"""The Triton kernels (pccl_arrays.kernels) against the NumPy reference of the quantization format
(docs/quantization.md), byte for byte and bit for bit, for the three kinds (minmax, zeropoint, minmax4), with and
without rotation; test_quant_reference.py checks the reference against the spec, test_quant_triton_ptx.py what
the compiler makes of the kernels.

Without a CUDA device the kernels run in Triton's interpreter (about 5 ms per block here), so the sweeps keep
arrays small and mix many kinds of block (a "gallery") into each array rather than launching once per kind.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import quant_reference as ref
from quant_gallery import BF16, FINITE_PATTERNS, NP_DTYPES, PATTERNS, bits, gallery

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

# Overflow to infinity is the specified behaviour (a range or a sum that overflows poisons its block), and so is
# inf - inf in the rotation's butterflies of a block that is then poisoned; the interpreter computes with NumPy,
# which warns about both.
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")]


# ---- helpers ----------------------------------------------------------------------------------------------------

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


def assert_same_bytes(got, want, block, kind=ref.MINMAX):
    if got.shape != want.shape:
        pytest.fail(f"got {got.size} bytes, want {want.size}")
    if not np.array_equal(got, want):
        i = int(np.flatnonzero(got != want)[0])
        stride = ref.HEADER_BYTES + ref.code_bytes(block, kind)
        k = i // stride
        pytest.fail(f"first differing byte {i} (block {k}, offset {i - k * stride}): "
                    f"got {got[k * stride:k * stride + 8]} want {want[k * stride:k * stride + 8]}")


def assert_same_bits(got, want):
    if not np.array_equal(bits(got), bits(want)):
        i = int(np.flatnonzero(bits(got) != bits(want))[0])
        pytest.fail(f"element {i}: got {got[i]!r} ({hex(bits(got)[i])}), want {want[i]!r} ({hex(bits(want)[i])})")


# ---- Triton against the reference -------------------------------------------------------------------------------

SWEEP = [(block, n) for block in (64, 256, 1024) for n in (1, 63, 1000, 4097)] + [(1024, 65535)]
KINDS = [ref.MINMAX, ref.ZEROPOINT, ref.MINMAX4]


@needs_triton
@pytest.mark.parametrize("dtype", NP_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block,n", SWEEP)
def test_quantize_matches_reference(block, n, kind, dtype):
    x = gallery(n, block, dtype, seed=n + block + kind)
    got = kernels.quantize(on_device(x), kind, block)
    assert got.dtype == torch.uint8 and got.device.type == device()
    assert got.numel() == ref.quantized_bytes(n, block, kind)
    assert_same_bytes(to_numpy(got), ref.quantize(x, kind, block), block, kind)


@needs_triton
@pytest.mark.parametrize("dtype", NP_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_every_pattern_in_a_partial_block(kind, dtype):
    for seed in range(len(PATTERNS)):
        x = gallery(63, 64, dtype, seed)
        assert_same_bytes(to_numpy(kernels.quantize(on_device(x), kind, 64)), ref.quantize(x, kind, 64), 64, kind)


@needs_triton
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block,n", [(192, 1000), (4160, 9001), (65536, 65535)])
def test_quantize_blocks_that_are_not_one_tile(block, n, kind):
    """A block that is not a power of two, one wider than a tile (4096), and the largest (both with an odd last
    block: minmax4's second tile of a block starts at a code byte of its own, its last byte is half used)."""
    x = gallery(n, 64, np.dtype(F32), seed=block, names=FINITE_PATTERNS)  # patterns change inside the block
    if block == 65536:
        x[40000] = 1e35  # lo and hi sit in late tiles
        x[50000] = -1e35
    want = ref.quantize(x, kind, block)
    assert_same_bytes(to_numpy(kernels.quantize(on_device(x), kind, block)), want, block, kind)


@needs_triton
def test_quantize_shapes_and_empty():
    x = gallery(2 * 300, 64, np.dtype(F32), seed=1).reshape(2, 300)
    assert_same_bytes(to_numpy(kernels.quantize(on_device(x), 1, 64)), ref.quantize(x, 1, 64), 64)
    xt = on_device(x).t()  # not contiguous: quantized in C order of the transposed view
    assert_same_bytes(to_numpy(kernels.quantize(xt, 2, 64)), ref.quantize(np.ascontiguousarray(x.T), 2, 64), 64)
    assert kernels.quantize(torch.empty(0, device=device()), 1, 64).numel() == 0
    assert kernels.quantize(torch.empty(0, device=device()), 3, 64, rotate_seed=1).numel() == 0
    for kind in (0, 4):
        with pytest.raises(ValueError):
            kernels.quantize(torch.ones(4), kind, 64)
    with pytest.raises(ValueError):
        kernels.quantize(torch.ones(4), 1, 100)
    for block in (192, 8192):  # rotation needs a power-of-two block of at most 4096
        with pytest.raises(ValueError):
            kernels.quantize(torch.ones(4), 3, block, rotate_seed=1)
    for seed in (-1, 2**32, 1.5):
        with pytest.raises(ValueError):
            kernels.quantize(torch.ones(4), 1, 64, rotate_seed=seed)
    with pytest.raises(TypeError):
        kernels.quantize(torch.ones(4, dtype=torch.int32), 1, 64)


OUT_DTYPES = [(np.dtype(np.float16), "float16"), (BF16, "bfloat16"), (np.dtype(F32), "float32"),
              (np.dtype(np.float64), "float64")]


@needs_triton
@pytest.mark.parametrize("divide_by", [1, 3, 4])
@pytest.mark.parametrize("out", OUT_DTYPES, ids=lambda o: o[1])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block,n", [(64, 1000), (256, 4097), (1024, 4097)])
def test_dequantize_matches_reference(block, n, kind, out, divide_by):
    out_dtype, name = out
    q = ref.quantize(gallery(n, block, np.dtype(F32), seed=block + kind), kind, block)
    got = kernels.dequantize(on_device(q), n, kind, block, getattr(torch, name), divide_by)
    assert got.dtype == getattr(torch, name) and got.shape == (n,)
    assert_same_bits(to_numpy(got), ref.dequantize(q, n, kind, block, out_dtype, divide_by))


def _random_headers(kind, block, n, seed, overflow=True):
    """Quantized bytes with headers no quantize would write and random codes: decode arithmetic at its corners.

    Blocks cycle through: any finite float32 bit pattern (products and sums overflow to inf, underflow), or
    without overflow plausible headers instead; subnormal p0 and p1; outputs 2**E * (1 + c * 2**-11), a float16
    tie for every odd code c (minmax's codes; minmax4's stop at 15); the same with 2**-8, a bfloat16 tie; and
    plausible headers. Block 7 is poisoned. The codes are random bytes: a minmax4 block of odd length has a
    nonzero high nibble in its last byte, which decoding ignores.
    """
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 256, ref.quantized_bytes(n, block, kind), dtype=np.uint8)
    for k, _, _, pos in ref.blocks(n, block, kind):
        p = rng.integers(0, 2**32, 2, dtype=np.uint64).astype(np.uint32)
        exponent_all_ones = (p & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
        p[exponent_all_ones] &= np.uint32(0xBFFFFFFF)
        p = p.view(F32)
        if k % 5 == 0 and not overflow:
            p = np.array([rng.standard_normal() * 1e3, abs(rng.standard_normal())] if kind != ref.ZEROPOINT
                         else [abs(rng.standard_normal()), rng.integers(0, 256)], F32)
        elif k % 5 == 1:
            p = (p.view(np.uint32) & np.uint32(0x807FFFFF)).view(F32)
        elif k % 5 in (2, 3):
            e = int(rng.integers(-14, 16)) if k % 5 == 2 else int(rng.integers(-100, 100))
            tie = 2.0 ** (-11 if k % 5 == 2 else -8)
            sign = float(rng.choice([-1.0, 1.0]))
            # minmax: 2**E + c * 2**E * tie;  zeropoint: (c + 1 / tie) * 2**E * tie
            p = np.array([sign * 2.0**e, 2.0**e * tie] if kind != ref.ZEROPOINT else [sign * 2.0**e * tie, -1 / tie],
                         F32)
        elif k % 5 == 4:
            p = np.array([rng.standard_normal() * 10, abs(rng.standard_normal()) / 25] if kind != ref.ZEROPOINT
                         else [abs(rng.standard_normal()) / 25, rng.integers(0, 256)], F32)
        if k == 7:
            p = np.array([ref.NAN, ref.NAN], F32)
        q[pos:pos + 8] = p.astype("<f4").view(np.uint8)
    return q


@needs_triton
@pytest.mark.parametrize("divide_by", [1, 3])
@pytest.mark.parametrize("out", OUT_DTYPES, ids=lambda o: o[1])
@pytest.mark.parametrize("kind", KINDS)
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
    with pytest.raises(ValueError):
        kernels.dequantize(q, 500, 3, 64, torch.float32)  # minmax4's 500 elements take fewer bytes
    with pytest.raises(ValueError):
        kernels.dequantize(q, 500, 4, 64, torch.float32)
    q4 = on_device(ref.quantize(x, 3, 64))
    assert q4.numel() == ref.quantized_bytes(500, 64, 3) == 8 * 8 + 250
    for block in (192, 8192):
        with pytest.raises(ValueError):
            kernels.dequantize(on_device(ref.quantize(x, 3, block)), 500, 3, block, torch.float32, rotate_seed=1)
    with pytest.raises(ValueError):
        kernels.dequantize(q4, 500, 3, 64, torch.float32, rotate_seed=-1)


@needs_triton
@pytest.mark.parametrize("kind", KINDS)
def test_triton_round_trip_and_ring_hop_agree_with_reference(kind):
    """A device peer's whole path: quantize on the device, hop on the host (reference), decode on the device."""
    a, b = gallery(3000, 64, np.dtype(F32), seed=11), gallery(3000, 64, np.dtype(F32), seed=12)
    qa = to_numpy(kernels.quantize(on_device(a), kind, 64))
    qb = to_numpy(kernels.quantize(on_device(b), kind, 64))
    hop = np.frombuffer(ref.reduce_hop(qa, qb, 3000, kind, 64, "stochastic", seed=5, op_id=6, step=1), np.uint8)
    got = kernels.dequantize(on_device(hop.copy()), 3000, kind, 64, torch.float32, divide_by=2)
    assert_same_bits(to_numpy(got), ref.dequantize(hop, 3000, kind, 64, np.float32, divide_by=2))


# ---- rotation (docs/quantization.md, "Rotation") ----------------------------------------------------------------

# Last blocks of 1 (only sign-flipped), 511 and 4095 elements (a segment for every binary digit).
ROTATED = [(64, 449), (512, 2047), (4096, 8191)]


@needs_triton
@pytest.mark.parametrize("dtype", NP_DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block,n", ROTATED)
def test_quantize_rotated_matches_reference(block, n, kind, dtype):
    """The gallery rotated: infinities and NaN spread over their block, rotated values overflow (huge and
    dtype_max blocks), subnormals scaled by powers of two."""
    x = gallery(n, block, dtype, seed=n + kind)
    seed = 0x9E3779B8 if dtype == BF16 else n * 7919 + kind  # seed ^ 0x9E3779B9 == 1: no constexpr specialization
    got = kernels.quantize(on_device(x), kind, block, rotate_seed=seed)
    assert got.numel() == ref.quantized_bytes(n, block, kind)
    assert_same_bytes(to_numpy(got), ref.quantize(x, kind, block, rotate_seed=seed), block, kind)


@needs_triton
@pytest.mark.parametrize("divide_by", [1, 3])
@pytest.mark.parametrize("out", OUT_DTYPES, ids=lambda o: o[1])
@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_rotated_matches_reference(kind, out, divide_by):
    out_dtype, name = out
    n, block, seed = 1537, 256, 2**32 - 1
    q = ref.quantize(gallery(n, block, np.dtype(F32), seed=kind), kind, block, rotate_seed=seed)
    got = kernels.dequantize(on_device(q), n, kind, block, getattr(torch, name), divide_by, rotate_seed=seed)
    assert got.dtype == getattr(torch, name) and got.shape == (n,)
    assert_same_bits(to_numpy(got), ref.dequantize(q, n, kind, block, out_dtype, divide_by, rotate_seed=seed))


@needs_triton
@pytest.mark.parametrize("kind", KINDS)
def test_dequantize_rotated_arbitrary_headers(kind):
    """Random codes and headers rotated back: subnormal results of the power-of-two scalings, ties."""
    n = 64 * 10 + 37
    q = _random_headers(kind, 64, n, seed=kind + 40, overflow=False)
    for out_dtype, name in OUT_DTYPES[1:3]:
        with np.errstate(over="ignore", under="ignore"):
            want = ref.dequantize(q, n, kind, 64, out_dtype, 3, rotate_seed=kind)
            got = kernels.dequantize(on_device(q), n, kind, 64, getattr(torch, name), 3, rotate_seed=kind)
        assert_same_bits(to_numpy(got), want)


@needs_triton
@pytest.mark.parametrize("kind", KINDS)
def test_rotation_of_a_partial_last_block(kind):
    """A block shorter than B is its power-of-two segments, largest first, each rotated on its own: 1000 =
    512 + 256 + 128 + 64 + 32 + 8, 63 = 32 + 16 + 8 + 4 + 2 + 1, and 1 (only a sign flip)."""
    rng = np.random.default_rng(kind)
    for nb in (1000, 63, 1):
        x = (rng.standard_normal(1024 + nb) * np.where(rng.random(1024 + nb) < 0.01, 100, 1)).astype(F32)
        q = kernels.quantize(on_device(x), kind, 1024, rotate_seed=nb)
        assert_same_bytes(to_numpy(q), ref.quantize(x, kind, 1024, rotate_seed=nb), 1024, kind)
        y = to_numpy(kernels.dequantize(q, x.size, kind, 1024, torch.float32, rotate_seed=nb))
        assert_same_bits(y, ref.dequantize(to_numpy(q), x.size, kind, 1024, np.float32, rotate_seed=nb))
        assert np.max(np.abs(y - x)) < (8.0 if kind == ref.MINMAX4 else 0.5)  # it decodes to about x (|x| <~ 400)


@needs_triton
def test_rotation_overflow_poisons_the_block():
    """Finite inputs whose rotated values overflow poison their block (NaN header, zero codes, NaN out);
    the other blocks are untouched."""
    x = np.zeros(3 * 64, F32)
    x[64:128:2] = 3e38  # block 1: a + b of two of them overflows in the first stage
    x[128] = -3e38  # block 2: a single spike spreads without overflow
    for kind in KINDS:
        want = ref.quantize(x, kind, 64, rotate_seed=5)
        q = kernels.quantize(on_device(x), kind, 64, rotate_seed=5)
        assert_same_bytes(to_numpy(q), want, 64, kind)
        stride = ref.HEADER_BYTES + ref.code_bytes(64, kind)
        assert np.isnan(to_numpy(q)[stride:stride + 8].view(F32)).all()
        assert not np.isnan(to_numpy(q)[2 * stride:2 * stride + 8].view(F32)).any()
        y = to_numpy(kernels.dequantize(q, x.size, kind, 64, torch.float16, rotate_seed=5))
        assert_same_bits(y, ref.dequantize(want, x.size, kind, 64, np.float16, rotate_seed=5))
        assert (bits(y[64:128]) == 0x7E00).all() and not np.isnan(y[:64]).any()


@needs_triton
@pytest.mark.parametrize("kind", KINDS)
def test_rotated_round_trip_and_ring_hop_agree_with_reference(kind):
    """The device path with rotation: quantize rotated on the device, a hop on the host in the rotated domain
    (reference), decode and rotate back on the device, then `avg`'s division."""
    a, b = gallery(1100, 64, np.dtype(F32), seed=21), gallery(1100, 64, np.dtype(F32), seed=22)
    qa = to_numpy(kernels.quantize(on_device(a), kind, 256, rotate_seed=9))
    qb = to_numpy(kernels.quantize(on_device(b), kind, 256, rotate_seed=9))
    assert_same_bytes(qa, ref.quantize(a, kind, 256, rotate_seed=9), 256, kind)
    hop = np.frombuffer(ref.reduce_hop(qa, qb, 1100, kind, 256, "stochastic", seed=5, op_id=6, step=1), np.uint8)
    got = kernels.dequantize(on_device(hop.copy()), 1100, kind, 256, torch.bfloat16, divide_by=2, rotate_seed=9)
    assert_same_bits(to_numpy(got), ref.dequantize(hop, 1100, kind, 256, BF16, divide_by=2, rotate_seed=9))
