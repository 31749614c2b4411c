"""The quantized format's constants and the argument checks both launchers share (docs/quantization.md).

A quantized array of `n` elements in blocks of `B` is `ceil(n / B)` blocks laid end to end; block `k` starts at
byte `k * (B + 8)` and holds p0 and p1 (float32, little-endian) and then one uint8 code per element.
"""

from __future__ import annotations

import torch

MINMAX = 1
ZEROPOINT = 2
KINDS = (MINMAX, ZEROPOINT)
HEADER_BYTES = 8

# The widest tile one loop iteration of a kernel handles. Blocks up to this size are one iteration; larger
# blocks (up to 65536) loop, so registers stay bounded whatever the block size.
MAX_CHUNK = 4096

# Bit patterns of the positive quiet NaN each dtype uses for a poisoned block. Kernels write these bits
# themselves rather than let NaN propagate through arithmetic, because a GPU's arithmetic returns its own
# canonical NaN (0x7FFFFFFF on NVIDIA) where a CPU keeps the operand's payload.
NAN_BITS = {
    torch.float16: 0x7E00,
    torch.bfloat16: 0x7FC0,
    torch.float32: 0x7FC00000,
    torch.float64: 0x7FF8000000000000,
}

# Integer dtypes of the same width, through which the kernels read and write raw bits.
BITS_DTYPE = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}

FLOAT_DTYPES = tuple(NAN_BITS)


def check_kind(kind: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"quantization kind must be 1 (minmax) or 2 (zeropoint), not {kind!r}")


def check_block(block: int) -> None:
    if not isinstance(block, int) or not 64 <= block <= 65536 or block % 64:
        raise ValueError(f"quantization block must be a multiple of 64 in [64, 65536], not {block!r}")


def check_device(t: torch.Tensor, kernel) -> None:
    """Compiled kernels take CUDA tensors only; interpreted ones (TRITON_INTERPRET=1 at import) take any."""
    from triton.runtime.interpreter import InterpretedFunction

    if not t.is_cuda and not isinstance(kernel, InterpretedFunction):
        raise ValueError(f"the Triton kernels take CUDA tensors, not a tensor on {t.device} (to run them on the "
                         "CPU, set TRITON_INTERPRET=1 before importing them)")


def num_blocks(n: int, block: int) -> int:
    return (n + block - 1) // block


def quantized_bytes(n: int, block: int) -> int:
    return num_blocks(n, block) * HEADER_BYTES + n


def chunk_for(block: int) -> int:
    """The power-of-two tile for a block: the block rounded up to a power of two, at most MAX_CHUNK."""
    return min(1 << (block - 1).bit_length(), MAX_CHUNK)
