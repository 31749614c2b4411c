"""Triton kernels of the quantized all-reduce (docs/quantization.md): quantize and dequantize device arrays.

`quantize(x, kind, block, rotate_seed=None)` and `dequantize(q, n, kind, block, out_dtype, divide_by=1, out=None,
rotate_seed=None)` handle the three kinds (1 minmax, 2 zeropoint, 3 minmax4: 4-bit codes, two per byte) and the
optional randomized Hadamard rotation of each block (rotate_seed: the quantization's seed, an int in
[0, 2**32); None: no rotation). `format.quantized_bytes(n, block, kind)` is the size of the quantized array.

They produce the same bytes and floats as the C++ host kernels (cpp/kernels/quant.cpp) and the NumPy reference
(tests/helpers/quant_reference.py). Without a GPU they run under Triton's interpreter, which must be switched on
(TRITON_INTERPRET=1) before this package is imported: `@triton.jit` picks compiled or interpreted kernels
when it decorates them, at import.

`available()` says whether the kernels can run here; importing this package never fails when triton is
missing, so callers can ask.
"""

from __future__ import annotations

try:
    import torch
    import triton  # noqa: F401

    from .dequantize import dequantize
    from .quantize import quantize, quantize_kernel

    _import_error = None
except ImportError as e:  # triton (or torch) is not installed
    _import_error = e

    def quantize(*args, **kwargs):
        raise ImportError(f"the Triton kernels need torch and triton: {_import_error}")

    def dequantize(*args, **kwargs):
        raise ImportError(f"the Triton kernels need torch and triton: {_import_error}")


def interpreted() -> bool:
    """Whether the kernels were built for Triton's interpreter (TRITON_INTERPRET=1 at import)."""
    if _import_error is not None:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(quantize_kernel, InterpretedFunction)


def available() -> bool:
    """True when triton imports and the kernels can run: a CUDA device exists, or they run interpreted."""
    if _import_error is not None:
        return False
    return interpreted() or torch.cuda.is_available()


__all__ = ["available", "dequantize", "interpreted", "quantize"]
