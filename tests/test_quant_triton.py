"""The Triton kernels (pccl_arrays.kernels) against the NumPy reference of the quantization format
(docs/quantization.md), byte for byte and bit for bit; test_quant_reference.py checks the reference against the
spec, test_quant_triton_ptx.py what the compiler makes of the kernels.

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

# Overflow to infinity is the specified behaviour (a range or a sum that overflows poisons its block); the
# interpreter computes with NumPy, which warns about it.
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")


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
