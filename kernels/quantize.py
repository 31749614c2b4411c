"""Quantize a float array into the block-wise uint8 format of docs/quantization.md, on the device.

How this works: one program quantizes one block. A first pass over the block's elements (in tiles of CHUNK)
finds lo and hi and whether any element is NaN or infinite; the program then computes the block's scale (and,
for zeropoint, its zero), writes the 8-byte header p0, p1, and a second pass writes one code per element.
Everything is float32 arithmetic with one rounding per operation, exactly as the spec spells it out, so the
bytes equal those of the C++ host kernels and the NumPy reference (tests/helpers/quant_reference.py):

- division is `tl.math.div_rn` (PTX div.rn.f32), never `/`, which Triton 3.9 lowers to the approximate
  div.full.f32 (up to 2 ulp) on NVIDIA GPUs;
- the launch passes `enable_fp_fusion=False`, so no multiply and add is contracted into an FMA;
- rne(v) is the spec's `(v + 1.5 * 2**23) - 1.5 * 2**23`, not a library rint.

lo and hi are found on order-preserving integer keys of the float32 bits. That makes the result independent
of the order of the reduction and gives signed zeros a fixed order, -0 below +0 (IEEE 754-2019 minimum and
maximum): a block whose smallest value is zero has lo = -0 exactly when it holds a -0. The spec leaves that
sign open; it only shows in minmax's p0 bytes.

Stochastic rounding is not here: in the design it only re-quantizes partial sums on the ring, on the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .format import BITS_DTYPE, FLOAT_DTYPES, ZEROPOINT, check_block, check_device, check_kind, chunk_for
from .format import num_blocks, quantized_bytes

# Globals a kernel reads must be constexpr (compiled Triton rejects others; the interpreter does not check).
RNE_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: (v + m) - m rounds 0 <= v < 2**22 to nearest, ties to even
NAN_F32_BITS = tl.constexpr(0x7FC00000)  # the positive quiet NaN stored as p0 and p1 of a poisoned block
INT32_MIN = tl.constexpr(-0x80000000)
INT32_MAX = tl.constexpr(0x7FFFFFFF)
_ZEROPOINT = tl.constexpr(ZEROPOINT)


@triton.jit
def _order_key(x):
    """An int32 that orders like the float32 x (for non-NaN x), with -0 just below +0."""
    bits = x.to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _from_order_key(key):
    """The float32 whose _order_key is key (the mapping is its own inverse)."""
    return (key ^ ((key >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _rne(v):
    return (v + RNE_MAGIC) - RNE_MAGIC


@triton.jit
def _clamp(v):
    return tl.minimum(tl.maximum(v, 0.0), 255.0)


@triton.jit
def _load_f32(x_ptr, offs, mask, IN_BF16: tl.constexpr):
    """Elements as float32: exact for float16/bfloat16/float32, round to nearest for float64.

    bfloat16 arrives as raw 16-bit words and is widened by shifting: the interpreter's own bfloat16
    conversion is not the IEEE one, the shift is exact everywhere.
    """
    if IN_BF16:
        raw = tl.load(x_ptr + offs, mask=mask, other=0)
        bits = raw.to(tl.uint16, bitcast=True).to(tl.uint32) << 16
        return bits.to(tl.float32, bitcast=True)
    else:
        return tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_f32_le(ptr, bits):
    """Writes the int32 bits of a float32 as 4 little-endian bytes."""
    for i in tl.static_range(4):
        tl.store(ptr + i, ((bits >> (8 * i)) & 0xFF).to(tl.uint8))


@triton.jit
def quantize_kernel(x_ptr, q_ptr, n, B, KIND: tl.constexpr, IN_BF16: tl.constexpr, CHUNK: tl.constexpr):
    """Quantizes block `program_id(0)` of x into q.

    Args:
        x_ptr: the n input elements, contiguous: float16, float32 or float64, or bfloat16 as int16 words.
        q_ptr: the uint8 output, ceil(n / B) * 8 + n bytes.
        n: number of elements of x.
        B: elements per block (a multiple of 64, at most 65536).
        KIND: 1 = minmax (p0 = lo, p1 = scale), 2 = zeropoint (p0 = scale, p1 = zero).
        IN_BF16: x holds bfloat16 bit patterns.
        CHUNK: power-of-two tile width; blocks wider than it are walked in several tiles.
    """
    block = tl.program_id(0).to(tl.int64)
    first = block * B  # the block's first element
    nb = tl.minimum(n - first, B)  # its length: B, or what is left for the last block
    base = q_ptr + block * (B + 8)  # its header; the codes follow at base + 8
    lanes = tl.arange(0, CHUNK)

    # Pass 1: lo, hi and whether the block holds a NaN or an infinity (all exponent bits set).
    lo_key = tl.full([CHUNK], INT32_MAX, tl.int32)
    hi_key = tl.full([CHUNK], INT32_MIN, tl.int32)
    nonfinite = tl.zeros([CHUNK], tl.int32)
    for start in range(0, nb, CHUNK):
        offs = start + lanes
        mask = offs < nb
        x = _load_f32(x_ptr + first, offs, mask, IN_BF16)
        key = _order_key(x)
        lo_key = tl.minimum(lo_key, tl.where(mask, key, INT32_MAX))
        hi_key = tl.maximum(hi_key, tl.where(mask, key, INT32_MIN))
        exponent = x.to(tl.int32, bitcast=True) & 0x7F800000
        nonfinite = tl.maximum(nonfinite, (mask & (exponent == 0x7F800000)).to(tl.int32))
    lo_key = tl.min(lo_key, 0)
    hi_key = tl.max(hi_key, 0)
    if KIND == _ZEROPOINT:
        # The range always holds 0 (+0, whose key is 0).
        lo_key = tl.minimum(lo_key, 0)
        hi_key = tl.maximum(hi_key, 0)
    poisoned = tl.max(nonfinite, 0) != 0
    # A poisoned block's lo and hi mean nothing; zeros keep the arithmetic below free of NaN.
    lo = tl.where(poisoned, 0.0, _from_order_key(lo_key))
    hi = tl.where(poisoned, 0.0, _from_order_key(hi_key))
    span = hi - lo
    poisoned = poisoned | ((span.to(tl.int32, bitcast=True) & 0x7F800000) == 0x7F800000)  # hi - lo overflowed
    scale = tl.math.div_rn(span, 255.0)
    flat = poisoned | (scale == 0.0)  # every code is 0: a constant (or poisoned) block
    divisor = tl.where(flat, 1.0, scale)  # never divide by zero, even in lanes whose result is discarded

    if KIND == _ZEROPOINT:
        zero = tl.where(flat, 0.0, _clamp(_rne(tl.math.div_rn(-lo, divisor))))
        p0 = scale
        p1 = zero
    else:
        zero = 0.0
        p0 = lo
        p1 = scale
    p0_bits = tl.where(poisoned, NAN_F32_BITS, p0.to(tl.int32, bitcast=True))
    p1_bits = tl.where(poisoned, NAN_F32_BITS, p1.to(tl.int32, bitcast=True))
    _store_f32_le(base, p0_bits)
    _store_f32_le(base + 4, p1_bits)

    # Pass 2: the codes.
    for start in range(0, nb, CHUNK):
        offs = start + lanes
        mask = offs < nb
        x = _load_f32(x_ptr + first, offs, mask, IN_BF16)
        x = tl.where(poisoned, 0.0, x)
        if KIND == _ZEROPOINT:
            code = _clamp(_rne(tl.math.div_rn(x, divisor)) + zero)
        else:
            code = _clamp(_rne(tl.math.div_rn(x - lo, divisor)))
        code = tl.where(flat, 0.0, code)
        tl.store(base + 8 + offs, code.to(tl.uint8), mask=mask)


def quantize(x: torch.Tensor, kind: int, block: int) -> torch.Tensor:
    """Quantizes x (float16, bfloat16, float32 or float64, any shape, read in C order) into a new uint8 tensor.

    Args:
        x: the array, on a CUDA device (or on the CPU under TRITON_INTERPRET=1).
        kind: 1 = minmax, 2 = zeropoint.
        block: elements per block, a multiple of 64 in [64, 65536].

    Returns:
        A uint8 tensor of ceil(n / block) * 8 + n bytes on x's device, laid out as docs/quantization.md says.

    Raises:
        ValueError: an unknown kind, a bad block size, a CPU tensor for compiled kernels.
        TypeError: x is not a tensor of a supported floating dtype.
    """
    check_kind(kind)
    check_block(block)
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"quantize takes a float16, bfloat16, float32 or float64 tensor, not {_describe(x)}")
    check_device(x, quantize_kernel)
    x = x.detach().contiguous().reshape(-1)
    n = x.numel()
    q = torch.empty(quantized_bytes(n, block), dtype=torch.uint8, device=x.device)
    if n == 0:
        return q
    is_bf16 = x.dtype == torch.bfloat16
    src = x.view(BITS_DTYPE[x.dtype]) if is_bf16 else x
    quantize_kernel[(num_blocks(n, block),)](
        src, q, n, block, KIND=kind, IN_BF16=is_bf16, CHUNK=chunk_for(block), enable_fp_fusion=False)
    return q


def _describe(x) -> str:
    return f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__

