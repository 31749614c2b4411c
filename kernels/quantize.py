"""Quantize a float array into the block-wise format of docs/quantization.md, on the device.

How this works: one program quantizes one block. A first pass over the block's elements (in tiles of CHUNK)
finds lo and hi and whether any element is NaN or infinite; the program then computes the block's scale (and,
for zeropoint, its zero), writes the 8-byte header p0, p1, and a second pass writes the codes: one byte per
element, or for minmax4 (15 levels instead of 255) two per byte, the tile's codes viewed as [CHUNK / 2, 2]
pairs and split into the low (even element) and high (odd element) nibbles.
Everything is float32 arithmetic with one rounding per operation, exactly as the spec spells it out, so the
bytes equal those of the C++ host kernels and the NumPy reference (tests/helpers/quant_reference.py):

- division is `tl.math.div_rn` (PTX div.rn.f32), never `/`, which Triton 3.9 lowers to the approximate
  div.full.f32 (up to 2 ulp) on NVIDIA GPUs;
- the launch passes `enable_fp_fusion=False`, so no multiply and add is contracted into an FMA;
- rne(v) is the spec's `(v + 1.5 * 2**23) - 1.5 * 2**23`, not a library rint.

With rotation (ROTATE) the block is a power of two of at most one tile, so the program loads it once, rotates
it in registers (rotate.py) and runs both passes on the rotated tile; a rotated value that overflows poisons
the block like an infinite input.

lo and hi are found on order-preserving integer keys of the float32 bits. That makes the result independent
of the order of the reduction and gives signed zeros a fixed order, -0 below +0 (IEEE 754-2019 minimum and
maximum): a block whose smallest value is zero has lo = -0 exactly when it holds a -0. The spec leaves that
sign open; it only shows in minmax's p0 bytes.

Stochastic rounding is not here: in the design it only quantizes sums (the direct all-reduce's owners, the
ring's hops), on the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .format import BITS_DTYPE, FLOAT_DTYPES, MINMAX4, ZEROPOINT, check_block, check_device, check_kind
from .format import check_rotation, chunk_for, num_blocks, quantized_bytes, rotation_key
from .rotate import rotate_tile

# Globals a kernel reads must be constexpr (compiled Triton rejects others; the interpreter does not check).
RNE_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: (v + m) - m rounds 0 <= v < 2**22 to nearest, ties to even
NAN_F32_BITS = tl.constexpr(0x7FC00000)  # the positive quiet NaN stored as p0 and p1 of a poisoned block
INT32_MIN = tl.constexpr(-0x80000000)
INT32_MAX = tl.constexpr(0x7FFFFFFF)
_ZEROPOINT = tl.constexpr(ZEROPOINT)
_MINMAX4 = tl.constexpr(MINMAX4)


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
def _clamp(v, KIND: tl.constexpr):
    """min(max(v, 0), L): L = 15 for minmax4, 255 for the 8-bit kinds."""
    if KIND == _MINMAX4:
        return tl.minimum(tl.maximum(v, 0.0), 15.0)
    else:
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
def _scan(x, mask, lo_key, hi_key, nonfinite):
    """Pass 1 on one tile: folds its real lanes into the running lo and hi keys and the non-finite flag."""
    key = _order_key(x)
    lo_key = tl.minimum(lo_key, tl.where(mask, key, INT32_MAX))
    hi_key = tl.maximum(hi_key, tl.where(mask, key, INT32_MIN))
    exponent = x.to(tl.int32, bitcast=True) & 0x7F800000
    nonfinite = tl.maximum(nonfinite, (mask & (exponent == 0x7F800000)).to(tl.int32))
    return lo_key, hi_key, nonfinite


@triton.jit
def _codes(x, mask, poisoned, flat, divisor, lo, zero, KIND: tl.constexpr):
    """Pass 2 on one tile: the float32 codes, 0 in lanes past the block's end and in a flat block."""
    x = tl.where(poisoned, 0.0, x)
    if KIND == _ZEROPOINT:
        code = _clamp(_rne(tl.math.div_rn(x, divisor)) + zero, KIND)
    else:
        code = _clamp(_rne(tl.math.div_rn(x - lo, divisor)), KIND)
    return tl.where(mask, tl.where(flat, 0.0, code), 0.0)


@triton.jit
def _store_codes(codes_ptr, start, offs, mask, nb, code, KIND: tl.constexpr, CHUNK: tl.constexpr):
    """Writes the codes of the tile of elements start + [0, CHUNK) (start even): bytes, or nibble pairs."""
    if KIND == _MINMAX4:
        even, odd = tl.split(tl.reshape(code.to(tl.uint8), [CHUNK // 2, 2]))
        pos = start // 2 + tl.arange(0, CHUNK // 2)
        tl.store(codes_ptr + pos, even | (odd << 4), mask=pos < (nb + 1) // 2)
    else:
        tl.store(codes_ptr + offs, code.to(tl.uint8), mask=mask)


@triton.jit
def quantize_kernel(x_ptr, q_ptr, n, B, KIND: tl.constexpr, IN_BF16: tl.constexpr, CHUNK: tl.constexpr):
    """Quantizes block `program_id(0)` of x into q, without rotation (arguments: see _quantize_block)."""
    _quantize_block(x_ptr, q_ptr, n, B, 0, KIND, IN_BF16, CHUNK, False, 0)


@triton.jit(do_not_specialize=["key"])  # key == 1 must not turn into a constexpr
def quantize_rotated_kernel(x_ptr, q_ptr, n, B, key, KIND: tl.constexpr, IN_BF16: tl.constexpr,
                            CHUNK: tl.constexpr, LOG2B: tl.constexpr):
    """Rotates block `program_id(0)` of x and quantizes it into q (arguments: see _quantize_block)."""
    _quantize_block(x_ptr, q_ptr, n, B, key, KIND, IN_BF16, CHUNK, True, LOG2B)


@triton.jit
def _quantize_block(x_ptr, q_ptr, n, B, key, KIND: tl.constexpr, IN_BF16: tl.constexpr, CHUNK: tl.constexpr,
                    ROTATE: tl.constexpr, LOG2B: tl.constexpr):
    """Quantizes block `program_id(0)` of x into q.

    Args:
        x_ptr: the n input elements, contiguous: float16, float32 or float64, or bfloat16 as int16 words.
        q_ptr: the uint8 output, format.quantized_bytes(n, B, KIND) bytes.
        n: number of elements of x.
        B: elements per block (a multiple of 64, at most 65536).
        KIND: 1 = minmax (p0 = lo, p1 = scale), 2 = zeropoint (p0 = scale, p1 = zero), 3 = minmax4 (as minmax,
            15 levels, two codes per byte).
        IN_BF16: x holds bfloat16 bit patterns.
        key: with ROTATE, the int32 bits of seed ^ 0x9E3779B9 (format.rotation_key).
        CHUNK: power-of-two tile width; blocks wider than it are walked in several tiles.
        ROTATE: rotate each block first; then B == CHUNK == 2**LOG2B.
        LOG2B: log2(B), with ROTATE.
    """
    block = tl.program_id(0).to(tl.int64)
    first = block * B  # the block's first element
    nb = tl.minimum(n - first, B)  # its length: B, or what is left for the last block
    if KIND == _MINMAX4:
        base = q_ptr + block * (B // 2 + 8)  # its header; the codes follow at base + 8
    else:
        base = q_ptr + block * (B + 8)
    lanes = tl.arange(0, CHUNK)

    # Pass 1: lo, hi and whether the block holds a NaN or an infinity (all exponent bits set).
    lo_key = tl.full([CHUNK], INT32_MAX, tl.int32)
    hi_key = tl.full([CHUNK], INT32_MIN, tl.int32)
    nonfinite = tl.zeros([CHUNK], tl.int32)
    if ROTATE:  # the whole block is this one tile, kept in registers for pass 2
        mask = lanes < nb
        xr = rotate_tile(_load_f32(x_ptr + first, lanes, mask, IN_BF16), lanes, nb, block, key, CHUNK, LOG2B)
        lo_key, hi_key, nonfinite = _scan(xr, mask, lo_key, hi_key, nonfinite)
    else:
        for start in range(0, nb, CHUNK):
            offs = start + lanes
            mask = offs < nb
            x = _load_f32(x_ptr + first, offs, mask, IN_BF16)
            lo_key, hi_key, nonfinite = _scan(x, mask, lo_key, hi_key, nonfinite)
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
    if KIND == _MINMAX4:
        scale = tl.math.div_rn(span, 15.0)
    else:
        scale = tl.math.div_rn(span, 255.0)
    flat = poisoned | (scale == 0.0)  # every code is 0: a constant (or poisoned) block
    divisor = tl.where(flat, 1.0, scale)  # never divide by zero, even in lanes whose result is discarded

    if KIND == _ZEROPOINT:
        zero = tl.where(flat, 0.0, _clamp(_rne(tl.math.div_rn(-lo, divisor)), KIND))
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
    if ROTATE:
        code = _codes(xr, mask, poisoned, flat, divisor, lo, zero, KIND)
        _store_codes(base + 8, 0, lanes, mask, nb, code, KIND, CHUNK)
    else:
        for start in range(0, nb, CHUNK):
            offs = start + lanes
            mask = offs < nb
            x = _load_f32(x_ptr + first, offs, mask, IN_BF16)
            code = _codes(x, mask, poisoned, flat, divisor, lo, zero, KIND)
            _store_codes(base + 8, start, offs, mask, nb, code, KIND, CHUNK)


def quantize(x: torch.Tensor, kind: int, block: int, rotate_seed: int | None = None) -> torch.Tensor:
    """Quantizes x (float16, bfloat16, float32 or float64, any shape, read in C order) into a new uint8 tensor.

    Args:
        x: the array, on a CUDA device (or on the CPU under TRITON_INTERPRET=1).
        kind: 1 = minmax, 2 = zeropoint, 3 = minmax4.
        block: elements per block, a multiple of 64 in [64, 65536].
        rotate_seed: None, or the quantization's seed (an int in [0, 2**32)) to rotate each block with before
            quantizing it; needs a power-of-two block of at most 4096.

    Returns:
        A uint8 tensor of format.quantized_bytes(n, block, kind) bytes on x's device, laid out as
        docs/quantization.md says.

    Raises:
        ValueError: an unknown kind, a bad block size or rotation, a CPU tensor for compiled kernels.
        TypeError: x is not a tensor of a supported floating dtype.
    """
    check_kind(kind)
    check_block(block)
    check_rotation(block, rotate_seed)
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"quantize takes a float16, bfloat16, float32 or float64 tensor, not {_describe(x)}")
    check_device(x, quantize_kernel)
    x = x.detach().contiguous().reshape(-1)
    n = x.numel()
    q = torch.empty(quantized_bytes(n, block, kind), dtype=torch.uint8, device=x.device)
    if n == 0:
        return q
    is_bf16 = x.dtype == torch.bfloat16
    src = x.view(BITS_DTYPE[x.dtype]) if is_bf16 else x
    grid = (num_blocks(n, block),)
    if rotate_seed is None:
        quantize_kernel[grid](src, q, n, block, KIND=kind, IN_BF16=is_bf16, CHUNK=chunk_for(block),
                              enable_fp_fusion=False)
    else:
        quantize_rotated_kernel[grid](src, q, n, block, rotation_key(rotate_seed), KIND=kind, IN_BF16=is_bf16,
                                      CHUNK=block, LOG2B=block.bit_length() - 1, enable_fp_fusion=False)
    return q


def _describe(x) -> str:
    return f"a {x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
