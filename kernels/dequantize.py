"""Decode the block-wise uint8 format of docs/quantization.md into a float array, on the device.

How this works: one program decodes one block. It reads the header p0, p1 (float32, little-endian, assembled
from bytes so the quantized buffer needs no alignment), then walks the block's codes in tiles of CHUNK:

    minmax, minmax4: x' = lo + code * scale    (p0 = lo, p1 = scale; the product rounds, then the sum)
    zeropoint:       x' = (code - zero) * scale  (p0 = scale, p1 = zero)

A minmax4 code is a nibble: element j reads code byte j // 2 and keeps its low nibble for even j, its high
nibble for odd j. With rotation (ROTATE) the block is one tile and the decoded tile is rotated back in
registers (rotate.py) before anything else. The program then optionally divides x' by the world size (`avg`)
with `tl.math.div_rn`, and converts to the output dtype with round-to-nearest-even. The launch passes
`enable_fp_fusion=False` so `lo + code * scale` is never an FMA.

Every output is written as raw bits through an integer view of the output:

- bfloat16 is rounded from the float32 bits by integer arithmetic (add 0x7FFF plus the kept lowest bit, keep
  the high half), which is round-to-nearest-even on every backend; the interpreter's own float32 -> bfloat16
  conversion truncates;
- a poisoned block (p0 or p1 NaN) writes the dtype's positive quiet NaN, the same bits the host writes,
  instead of whichever NaN the hardware's arithmetic would produce (and is not rotated back).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .format import BITS_DTYPE, FLOAT_DTYPES, MINMAX4, NAN_BITS, ZEROPOINT, check_block, check_device, check_kind
from .format import check_rotation, chunk_for, num_blocks, quantized_bytes, rotation_key
from .rotate import unrotate_tile

_ZEROPOINT = tl.constexpr(ZEROPOINT)  # compiled kernels may read only constexpr globals
_MINMAX4 = tl.constexpr(MINMAX4)

# Output dtypes as the kernel's OUT constexpr names them.
_OUT_CODE = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}


@triton.jit
def _load_f32_le(ptr):
    """The float32 held in 4 little-endian bytes at ptr."""
    bits = tl.load(ptr).to(tl.uint32)
    bits = bits | (tl.load(ptr + 1).to(tl.uint32) << 8)
    bits = bits | (tl.load(ptr + 2).to(tl.uint32) << 16)
    bits = bits | (tl.load(ptr + 3).to(tl.uint32) << 24)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _to_out_bits(y, OUT: tl.constexpr):
    """The bits of float32 y converted, round to nearest even, to output dtype OUT (see _OUT_CODE)."""
    if OUT == 0:
        return y.to(tl.float16).to(tl.int16, bitcast=True)
    elif OUT == 1:
        bits = y.to(tl.uint32, bitcast=True)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        return rounded.to(tl.uint16).to(tl.int16, bitcast=True)
    elif OUT == 2:
        return y.to(tl.int32, bitcast=True)
    else:
        return y.to(tl.float64).to(tl.int64, bitcast=True)


@triton.jit
def _decode(codes_ptr, offs, mask, p0, p1, KIND: tl.constexpr):
    """The float32 values of the tile of elements offs of a block whose codes start at codes_ptr."""
    if KIND == _MINMAX4:
        byte = tl.load(codes_ptr + (offs >> 1), mask=mask, other=0)
        code = ((byte >> ((offs & 1) * 4).to(tl.uint8)) & 0x0F).to(tl.float32)
    else:
        code = tl.load(codes_ptr + offs, mask=mask, other=0).to(tl.float32)
    if KIND == _ZEROPOINT:
        y = (code - p1) * p0
    else:
        y = p0 + code * p1
    return y


@triton.jit
def dequantize_kernel(q_ptr, out_ptr, n, B, divide_by, KIND: tl.constexpr, OUT: tl.constexpr,
                      NAN: tl.constexpr, DIVIDE: tl.constexpr, CHUNK: tl.constexpr):
    """Decodes block `program_id(0)` of q into out, without rotation (arguments: see _dequantize_block)."""
    _dequantize_block(q_ptr, out_ptr, n, B, divide_by, 0, KIND, OUT, NAN, DIVIDE, CHUNK, False, 0)


@triton.jit(do_not_specialize=["key"])  # key == 1 must not turn into a constexpr
def dequantize_rotated_kernel(q_ptr, out_ptr, n, B, divide_by, key, KIND: tl.constexpr, OUT: tl.constexpr,
                              NAN: tl.constexpr, DIVIDE: tl.constexpr, CHUNK: tl.constexpr, LOG2B: tl.constexpr):
    """Decodes block `program_id(0)` of q and rotates it back into out (arguments: see _dequantize_block)."""
    _dequantize_block(q_ptr, out_ptr, n, B, divide_by, key, KIND, OUT, NAN, DIVIDE, CHUNK, True, LOG2B)


@triton.jit
def _dequantize_block(q_ptr, out_ptr, n, B, divide_by, key, KIND: tl.constexpr, OUT: tl.constexpr,
                      NAN: tl.constexpr, DIVIDE: tl.constexpr, CHUNK: tl.constexpr, ROTATE: tl.constexpr,
                      LOG2B: tl.constexpr):
    """Decodes block `program_id(0)` of q into out.

    Args:
        q_ptr: the quantized array, format.quantized_bytes(n, B, KIND) uint8 bytes.
        out_ptr: the n outputs as an integer view of their bits (int16 for float16 and bfloat16, int32 for
            float32, int64 for float64).
        n: number of elements.
        B: elements per block (a multiple of 64, at most 65536).
        divide_by: float32 world size to divide each decoded value by; used only when DIVIDE.
        key: with ROTATE, the int32 bits of seed ^ 0x9E3779B9 (format.rotation_key).
        KIND: 1 = minmax, 2 = zeropoint, 3 = minmax4.
        OUT: output dtype: 0 float16, 1 bfloat16, 2 float32, 3 float64.
        NAN: the output dtype's quiet NaN bits, written over every element of a poisoned block.
        DIVIDE: divide by divide_by (an `avg`).
        CHUNK: power-of-two tile width; blocks wider than it are walked in several tiles.
        ROTATE: rotate each block back after decoding it; then B == CHUNK == 2**LOG2B, so the loop below runs
            once, over the whole block.
        LOG2B: log2(B), with ROTATE.
    """
    block = tl.program_id(0).to(tl.int64)
    first = block * B
    nb = tl.minimum(n - first, B)
    if KIND == _MINMAX4:
        base = q_ptr + block * (B // 2 + 8)
    else:
        base = q_ptr + block * (B + 8)
    p0 = _load_f32_le(base)
    p1 = _load_f32_le(base + 4)
    poisoned = (p0 != p0) | (p1 != p1)
    # Keep NaN out of the arithmetic: the poisoned block's elements are overwritten with NAN below.
    p0 = tl.where(poisoned, 0.0, p0)
    p1 = tl.where(poisoned, 0.0, p1)
    lanes = tl.arange(0, CHUNK)
    for start in range(0, nb, CHUNK):
        offs = start + lanes
        mask = offs < nb
        y = _decode(base + 8, offs, mask, p0, p1, KIND)
        if ROTATE:
            y = unrotate_tile(y, lanes, nb, block, key, CHUNK, LOG2B)
        if DIVIDE:
            y = tl.math.div_rn(y, divide_by)
        bits = tl.where(poisoned, NAN, _to_out_bits(y, OUT))
        tl.store(out_ptr + first + offs, bits, mask=mask)


def dequantize(q: torch.Tensor, n: int, kind: int, block: int, out_dtype: torch.dtype, divide_by: int = 1,
               out: torch.Tensor | None = None, rotate_seed: int | None = None) -> torch.Tensor:
    """Decodes a quantized array of n elements into out_dtype: rotated back first when rotate_seed is not None,
    then divided by divide_by when it is not 1.

    Args:
        q: the uint8 tensor quantize() made (or the ring's result bytes), on a CUDA device (or on the CPU under
            TRITON_INTERPRET=1).
        n: number of elements it holds.
        kind: 1 = minmax, 2 = zeropoint, 3 = minmax4.
        block: elements per block, a multiple of 64 in [64, 65536].
        out_dtype: float16, bfloat16, float32 or float64.
        divide_by: a positive world size for `avg` (1: no division).
        out: a contiguous tensor of n elements of out_dtype on q's device to write into (any shape).
        rotate_seed: None, or the seed the blocks were rotated with (quantize's rotate_seed): each decoded block
            is rotated back; needs a power-of-two block of at most 4096.

    Returns:
        out when given, else a new 1-D tensor of n elements of out_dtype on q's device.

    Raises:
        ValueError: an unknown kind, a bad block size or rotation, q of the wrong length, a bad divide_by or a
            bad out, a CPU tensor for compiled kernels.
        TypeError: q is not a uint8 tensor or out_dtype is not a supported floating dtype.
    """
    check_kind(kind)
    check_block(block)
    check_rotation(block, rotate_seed)
    if not isinstance(q, torch.Tensor) or q.dtype != torch.uint8:
        raise TypeError("dequantize takes the quantized array as a uint8 tensor")
    check_device(q, dequantize_kernel)
    if out_dtype not in FLOAT_DTYPES:
        raise TypeError(f"dequantize writes float16, bfloat16, float32 or float64, not {out_dtype}")
    size = quantized_bytes(n, block, kind)
    if q.numel() != size:
        raise ValueError(f"{n} elements in blocks of {block} take {size} bytes, not {q.numel()}")
    if not isinstance(divide_by, int) or not 1 <= divide_by < 2**24:
        raise ValueError(f"divide_by must be an int in [1, 2**24) (exact in float32), not {divide_by!r}")
    if out is None:
        out = torch.empty(n, dtype=out_dtype, device=q.device)
    elif out.dtype != out_dtype or out.numel() != n or not out.is_contiguous() or out.device != q.device:
        raise ValueError(f"out must be a contiguous {out_dtype} tensor of {n} elements on {q.device}")
    if n == 0:
        return out
    grid = (num_blocks(n, block),)
    args = (q.contiguous(), out.view(BITS_DTYPE[out_dtype]).view(-1), n, block, float(divide_by))
    consts = dict(KIND=kind, OUT=_OUT_CODE[out_dtype], NAN=NAN_BITS[out_dtype], DIVIDE=divide_by != 1,
                  enable_fp_fusion=False)
    if rotate_seed is None:
        dequantize_kernel[grid](*args, CHUNK=chunk_for(block), **consts)
    else:
        dequantize_rotated_kernel[grid](*args, rotation_key(rotate_seed), CHUNK=block,
                                        LOG2B=block.bit_length() - 1, **consts)
    return out
