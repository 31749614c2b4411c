"""Quantized all-reduce: the user-facing settings and the two paths an array takes (docs/quantization.md).

- Host path (CPU arrays): the core's C++ kernels quantize the array (rotated first when asked), the direct
  all-reduce (or the ring) reduces in the quantized domain, and the C++ kernels decode the committed result
  into the output.
- Device path (CUDA arrays): the Triton kernels in ``kernels/`` quantize on the device, only the compact bytes
  cross to the host, the core reduces them, and the result bytes go back to the device to be decoded there.
  CuPy and JAX device arrays reach the same kernels through a zero-copy DLPack view as a torch tensor, so the
  device path needs torch and triton installed. ``path="triton"`` sends CPU torch tensors down this same path
  (with ``TRITON_INTERPRET=1``), which is how the tests run it without a GPU.

Both paths produce the same bytes and the same decoded floats, so peers on either path agree bit for bit.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional, Union

from . import _core, arrays
from .dtypes import FLOAT_DTYPES
from .errors import InvalidArgumentError, UnsupportedDTypeError

_KIND_CODES = _core.CODES["quant_kind"]
KINDS = {"minmax": _KIND_CODES["minmax"], "uint8": _KIND_CODES["minmax"], "zeropoint": _KIND_CODES["zeropoint"],
         "minmax4": _KIND_CODES["minmax4"], "uint4": _KIND_CODES["minmax4"]}
FOUR_BIT = {"minmax4", "uint4"}
MAX_ROTATE_BLOCK = 4096
ROUNDINGS: dict = dict(_core.CODES["rounding"])
PATHS = ("auto", "host", "triton")
REDUCES = ("direct", "ring")


@dataclass(frozen=True)
class Quantization:
    """How an all-reduce quantizes (docs/quantization.md).

    Args:
        kind: ``"minmax"`` (alias ``"uint8"``), ``"zeropoint"`` (zero decodes exactly) or ``"minmax4"`` (alias
            ``"uint4"``: 4 bits, two codes per byte).
        block: elements per block, a multiple of 64 in [64, 65536]; each block carries 8 bytes of parameters.
            Default 1024, or 512 for ``"minmax4"``.
        rounding: ``"nearest"`` (round half to even) or ``"stochastic"`` for the quantization of sums (the
            direct all-reduce's owners, the ring's hops), seeded by (seed, operation id, step, block, element):
            reproducible.
        seed: the stochastic rounding seed, and the rotation's (vary it per step to vary the rotation).
        rotate: rotate each block with a randomized Hadamard transform before quantizing (and back after): a
            block's range is then set by its typical element, not its largest. Needs a power-of-two block of at
            most 4096.
        reduce: ``"direct"``: every peer sends each chunk of its contribution straight to the chunk's owner,
            which adds them in float32 and quantizes the sum once (the error does not grow with the number of
            peers); ``"ring"``: the ring re-quantizes the partial sum at every hop.
        path: ``"auto"`` (Triton for CUDA arrays, C++ for host arrays), ``"host"`` (always stage to host and use
            the C++ kernels) or ``"triton"`` (Triton kernels for torch tensors on any device; on CPU this needs
            ``TRITON_INTERPRET=1`` and is slow, for tests).
    """

    kind: str = "minmax"
    block: Optional[int] = None
    rounding: str = "nearest"
    seed: int = 0
    path: str = "auto"
    rotate: bool = False
    reduce: str = "direct"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"quantization kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.block is None:
            object.__setattr__(self, "block", 512 if self.kind in FOUR_BIT else 1024)
        if not isinstance(self.block, int) or not 64 <= self.block <= 65536 or self.block % 64:
            raise InvalidArgumentError(f"quantization block must be a multiple of 64 in [64, 65536], not {self.block!r}")
        if self.reduce not in REDUCES:
            raise InvalidArgumentError(f"reduce must be one of {', '.join(REDUCES)}, not {self.reduce!r}")
        if not isinstance(self.rotate, bool):
            raise InvalidArgumentError(f"rotate must be True or False, not {self.rotate!r}")
        if self.rotate and (self.block & (self.block - 1) or self.block > MAX_ROTATE_BLOCK):
            raise InvalidArgumentError(f"rotation needs a power-of-two block of at most {MAX_ROTATE_BLOCK}, "
                                       f"not {self.block}")
        if self.rounding not in ROUNDINGS:
            raise InvalidArgumentError(f"rounding must be 'nearest' or 'stochastic', not {self.rounding!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise InvalidArgumentError(f"seed must be an int in [0, 2**32), not {self.seed!r}")
        if self.path not in PATHS:
            raise InvalidArgumentError(f"path must be one of {', '.join(PATHS)}, not {self.path!r}")

    @classmethod
    def of(cls, q: Union[None, str, "Quantization"]) -> Optional["Quantization"]:
        if q is None or isinstance(q, Quantization):
            return q
        if isinstance(q, str):
            return cls(kind=q)
        raise InvalidArgumentError(f"quantization must be None, a kind name or a Quantization, not {q!r}")

    @property
    def core_args(self) -> dict:
        """The quantization as the core's all_reduce takes it (keyword arguments)."""
        return {"qkind": KINDS[self.kind], "qblock": self.block, "qround": ROUNDINGS[self.rounding],
                "qseed": self.seed, "qrotate": self.rotate, "qdirect": self.reduce == "direct"}

    @property
    def rotate_seed(self) -> Optional[int]:
        """The seed the kernels rotate with, or None without rotation."""
        return self.seed if self.rotate else None

    def check_for(self, dtype_name: str, op: str) -> None:
        """Quantization is for sum and avg of floating arrays."""
        if dtype_name not in FLOAT_DTYPES or op.lower() not in ("sum", "avg"):
            raise UnsupportedDTypeError(f"quantized all-reduce is for sum and avg of floating arrays, not {op} "
                                        f"of {dtype_name}")

    def on_device_path(self, array_on_device: bool) -> bool:
        """Whether an array goes through the Triton kernels (else the C++ host kernels)."""
        return self.path == "triton" or (self.path == "auto" and array_on_device)


def host_all_reduce(core: Any, src: Any, dst: Any, dcode: int, ocode: int, tag: int, quant: Quantization,
                    call: dict) -> Any:
    """The host path (both host views; ``dst`` may be ``src``: in place). The core does it all on the stripes'
    threads, overlapping the network: it quantizes what it sends of this peer's contribution as it leaves, adds
    this peer's unquantized values where it sums (the direct all-reduce's own chunk, the ring's hops: less error
    than its decoded blocks), and decodes final blocks into ``dst`` as they arrive."""
    return core.all_reduce(input_ptr=src.ptr, output_ptr=dst.ptr, count=src.count, dtype=dcode, op=ocode, tag=tag,
                           host_quantized=True, **quant.core_args, **call)


def device_all_reduce(core: Any, x: Any, fw: str, dcode: int, ocode: int, op: str, target: Any, tag: int,
                      quant: Quantization, call: dict) -> tuple[Any, Any]:
    """The device path: quantize where x lives, move only the compact bytes to the host, reduce, move the result
    bytes back and decode them on x's device. Returns (result, the core's info)."""
    import torch

    k = kernels()
    kind, block, rotate_seed = KINDS[quant.kind], quant.block, quant.rotate_seed
    xt = as_device_tensor(x, fw).contiguous().reshape(-1)
    q_in = k.quantize(xt, kind, block, rotate_seed=rotate_seed).to("cpu").contiguous()  # only these bytes cross
    q_out = torch.empty_like(q_in)
    info = core.all_reduce(input_ptr=q_in.data_ptr(), output_ptr=q_out.data_ptr(), count=xt.numel(), dtype=dcode,
                           op=ocode, tag=tag, **quant.core_args, **call)
    divide_by = info.world_size if op.lower() == "avg" else 1
    q_dev = q_out.to(xt.device)
    if target is not None and fw == "torch" and target.is_contiguous():
        k.dequantize(q_dev, xt.numel(), kind, block, xt.dtype, divide_by, out=target.detach().reshape(-1),
                     rotate_seed=rotate_seed)
        return target, info
    r = k.dequantize(q_dev, xt.numel(), kind, block, xt.dtype, divide_by, rotate_seed=rotate_seed)
    r = r.reshape(tuple(x.shape))
    result = from_device_tensor(r, fw)
    if target is not None:
        arrays.copy_back(target, result, fw)
        return target, info
    return result, info


def kernels():
    """The Triton kernels, ``pccl_arrays.kernels`` (``kernels/`` of the source tree, mapped there by the wheel)."""
    try:
        from . import kernels as k
    except ImportError as e:
        raise InvalidArgumentError(f"the Triton kernels cannot be imported: {e}") from None
    return k


def as_device_tensor(x: Any, framework: str):
    """A torch view (zero-copy, same device) of a torch, CuPy or JAX device array, for the Triton kernels."""
    if framework == "torch":
        return x.detach()
    try:
        import torch
    except ImportError:
        raise InvalidArgumentError("the quantized device path needs torch (pip install .[torch]) and triton") from None
    return torch.from_dlpack(x)


def from_device_tensor(t: Any, framework: str) -> Any:
    """The result tensor as an array of the caller's framework, on the same device, without a copy."""
    if framework == "torch":
        return t
    if framework == "cupy":
        return sys.modules["cupy"].from_dlpack(t)
    if framework == "jax":
        return sys.modules["jax"].dlpack.from_dlpack(t)
    raise InvalidArgumentError(f"no device path for {framework}")
