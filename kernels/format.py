"""The quantized format's constants and the argument checks both launchers share (docs/quantization.md).

A quantized array of `n` elements in blocks of `B` is `ceil(n / B)` blocks laid end to end. Each block holds
p0 and p1 (float32, little-endian) and then its codes: one uint8 per element for minmax and zeropoint, or two
per byte for minmax4 (element 2i in the low nibble of code byte i, element 2i + 1 in its high nibble). Block
`k` starts at byte `k * (8 + B)`, or `k * (8 + B / 2)` for minmax4 (B is a multiple of 64, so even).
"""

from __future__ import annotations

import torch

MINMAX = 1
ZEROPOINT = 2
MINMAX4 = 3
KINDS = (MINMAX, ZEROPOINT, MINMAX4)
HEADER_BYTES = 8

# The widest tile one loop iteration of a kernel handles. Blocks up to this size are one iteration; larger
# blocks (up to 65536) loop, so registers stay bounded whatever the block size.
MAX_CHUNK = 4096

# The rotation (docs/quantization.md, "Rotation") transforms a whole block in registers: the block must be a
# power of two that fits one tile.
MAX_ROTATE_BLOCK = MAX_CHUNK
ROTATE_KEY = 0x9E3779B9  # xor-ed into the seed: keeps the rotation's signs apart from stochastic rounding's draws

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
        raise ValueError(f"quantization kind must be 1 (minmax), 2 (zeropoint) or 3 (minmax4), not {kind!r}")


def check_block(block: int) -> None:
    if not isinstance(block, int) or not 64 <= block <= 65536 or block % 64:
        raise ValueError(f"quantization block must be a multiple of 64 in [64, 65536], not {block!r}")


def check_rotation(block: int, rotate_seed) -> None:
    """Rotation (rotate_seed not None) needs a power-of-two block of at most MAX_ROTATE_BLOCK and a 32-bit seed."""
    if rotate_seed is None:
        return
    if isinstance(rotate_seed, bool) or not isinstance(rotate_seed, int) or not 0 <= rotate_seed < 2**32:
        raise ValueError(f"rotate_seed must be None or an int in [0, 2**32), not {rotate_seed!r}")
    if block & (block - 1) or block > MAX_ROTATE_BLOCK:
        raise ValueError(f"rotation needs a power-of-two block of at most {MAX_ROTATE_BLOCK}, not {block!r}")


def check_device(t: torch.Tensor, kernel) -> None:
    """Compiled kernels take CUDA tensors only; interpreted ones (TRITON_INTERPRET=1 at import) take any."""
    from triton.runtime.interpreter import InterpretedFunction

    if not t.is_cuda and not isinstance(kernel, InterpretedFunction):
        raise ValueError(f"the Triton kernels take CUDA tensors, not a tensor on {t.device} (to run them on the "
                         "CPU, set TRITON_INTERPRET=1 before importing them)")


def rotation_key(rotate_seed: int) -> int:
    """seed ^ ROTATE_KEY, the value the kernels hash the signs with, as the int32 of the same bits."""
    key = (rotate_seed ^ ROTATE_KEY) & 0xFFFFFFFF
    return key - (1 << 32) if key >= 1 << 31 else key


def num_blocks(n: int, block: int) -> int:
    return (n + block - 1) // block


def code_bytes(nb: int, kind: int = MINMAX) -> int:
    """Bytes of nb codes: one per code, or two codes per byte for minmax4."""
    return (nb + 1) // 2 if kind == MINMAX4 else nb


def block_bytes(block: int, kind: int = MINMAX) -> int:
    """Bytes of one full block, the stride between blocks: its header and its codes."""
    return HEADER_BYTES + code_bytes(block, kind)


def quantized_bytes(n: int, block: int, kind: int = MINMAX) -> int:
    full, last = divmod(n, block)
    return num_blocks(n, block) * HEADER_BYTES + full * code_bytes(block, kind) + code_bytes(last, kind)


def chunk_for(block: int) -> int:
    """The power-of-two tile for a block: the block rounded up to a power of two, at most MAX_CHUNK."""
    return min(1 << (block - 1).bit_length(), MAX_CHUNK)
