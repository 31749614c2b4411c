"""The DLPack front end: what the core sees of a torch, JAX, CuPy or NumPy array, and how results go back.

How an array crosses into the core (``host_view``), in order:

1. Host memory is viewed zero-copy through DLPack. We ask for a versioned capsule first
   (``__dlpack__(max_version=(1, 0))``): NumPy and torch export one, and it carries NumPy's read-only flag.
2. A producer that does not take ``max_version`` (TypeError) is asked again with no arguments for a legacy
   capsule. JAX 0.10 returns a legacy capsule either way.
3. NumPy arrays of ml_dtypes' bfloat16 cannot leave through DLPack, so they are exported as their raw 16-bit
   words (``view(uint16)``) and tagged bfloat16: still zero-copy.
4. An array on a CUDA device is staged: copied to host by its own framework (which synchronises with the
   array's stream), reduced, and copied back to the same device.

A strided (non-compact) view is reduced through a compact copy and written back, never reduced in place wrong.
Frameworks are recognised by the module of the array's type, so importing pccl_arrays imports none of them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from . import _core
from .dtypes import dtype_code
from .errors import InvalidArgumentError

DL_CPU, DL_CUDA, DL_CUDA_HOST, DL_CUDA_MANAGED = 1, 2, 3, 13
HOST_DEVICES = (DL_CPU, DL_CUDA_HOST)


def framework_of(x: Any) -> str:
    """'numpy', 'torch', 'jax' or 'cupy', from the module of x's type (nothing is imported)."""
    mod = type(x).__module__.split(".", 1)[0]
    if mod == "numpy" and isinstance(x, np.ndarray):
        return "numpy"
    if mod == "torch":
        return "torch"
    if mod in ("jax", "jaxlib"):
        if "Tracer" in type(x).__name__:
            raise InvalidArgumentError("all_reduce got a JAX tracer: call it outside jax.jit / grad / vmap")
        return "jax"
    if mod == "cupy":
        return "cupy"
    raise InvalidArgumentError(
        f"all_reduce takes torch tensors, JAX arrays, CuPy arrays or NumPy arrays, not {type(x).__module__}."
        f"{type(x).__name__}")


def dtype_name_of(x: Any) -> str:
    """The dtype's name in our vocabulary ('float32', 'bfloat16', ...), whatever the framework."""
    return str(x.dtype).replace("torch.", "")


def _capsule(obj: Any):
    try:
        return obj.__dlpack__(max_version=(1, 0))
    except TypeError:  # a producer from before DLPack 1.0 keyword arguments
        return obj.__dlpack__()


@dataclass
class HostView:
    """Host memory the core may read (and write, when ``writable``), kept alive by ``owner``."""

    ptr: int
    count: int
    dtype_name: str
    code: int
    shape: tuple
    compact: bool
    readonly: bool
    owner: Any  # the DLView (it calls the producer's deleter when dropped) and anything else to keep alive

    @property
    def nbytes(self) -> int:
        return self.count * np.dtype(_NP_STORAGE[self.dtype_name]).itemsize


# NumPy dtypes with the same width, for handling raw bytes of any supported dtype.
_NP_STORAGE = {
    "int8": "int8", "uint8": "uint8", "int16": "int16", "uint16": "uint16", "int32": "int32", "uint32": "uint32",
    "int64": "int64", "uint64": "uint64", "float16": "float16", "bfloat16": "uint16", "float32": "float32",
    "float64": "float64",
}


def device_of(x: Any, framework: str) -> tuple[int, int]:
    if framework == "numpy":
        return (DL_CPU, 0)
    return tuple(int(v) for v in x.__dlpack_device__())


def host_view(x: Any, framework: str) -> HostView:
    """Zero-copy view of a host array (see the module docstring for the chain)."""
    name = dtype_name_of(x)
    code = dtype_code(name)  # UnsupportedDTypeError names the dtype
    obj = x
    if framework == "numpy" and name == "bfloat16":
        obj = x.view(np.uint16)
    elif framework == "torch" and x.requires_grad:
        obj = x.detach()  # same storage; DLPack refuses tensors that require grad
    view = _core.DLView.from_capsule(_capsule(obj))
    if view.device[0] not in HOST_DEVICES:
        raise InvalidArgumentError(f"internal: host_view of a device array ({view.device})")
    readonly = view.readonly or (framework == "numpy" and not x.flags.writeable)
    return HostView(view.data, view.size, name, code, tuple(view.shape), view.compact, readonly, (view, obj))


def compact_host_view(x: Any, framework: str) -> tuple[HostView, Any, str, bool]:
    """A compact host view of any supported array, staging device arrays and compacting strided ones.

    Returns (view, the host object it views, that object's framework, whether x is on a device)."""
    on_device = device_of(x, framework)[0] not in HOST_DEVICES
    # The host side of x: x itself, or a staged copy made by x's framework (torch stays torch).
    host_fw = framework if (framework in ("numpy", "torch") or not on_device) else "numpy"
    host = stage_to_host(x, framework) if on_device else x
    view = host_view(host, host_fw)
    if not view.compact:  # strided: reduce a compact copy, never the strided bytes as if they were compact
        host = host.contiguous() if host_fw == "torch" else np.ascontiguousarray(host).reshape(host.shape)
        view = host_view(host, host_fw)
    return view, host, host_fw, on_device


def new_host_buffer(shape: tuple, name: str, pool: Any = None) -> _core.HostBuffer:
    """A core-owned, 64-byte aligned host buffer that any framework imports through DLPack without a copy;
    from ``pool`` (a ``_core.BufferPool``) when given, whose pages may still hold an earlier result."""
    return _core.HostBuffer(list(shape), dtype_code(name), pool)


def buffer_view(buf: _core.HostBuffer, name: str) -> HostView:
    return HostView(buf.data, int(np.prod(buf.shape, dtype=np.int64)), name, dtype_code(name), tuple(buf.shape),
                    True, False, buf)


def wrap(buf: _core.HostBuffer, name: str, framework: str, like: Any = None) -> Any:
    """The contents of a host buffer as an array of ``framework`` (zero-copy where the framework allows),
    placed on ``like``'s device when that is not the host."""
    if framework == "numpy" or framework == "cupy":
        if name == "bfloat16":
            import ml_dtypes  # NumPy's bfloat16; the caller already holds such arrays

            host = np.from_dlpack(_as_uint16(buf)).view(ml_dtypes.bfloat16)
        else:
            host = np.from_dlpack(buf)
        if framework == "cupy":
            cupy = sys.modules["cupy"]
            with cupy.cuda.Device(like.device.id):
                return cupy.asarray(host)
        return host
    if framework == "torch":
        torch = sys.modules["torch"]
        t = torch.from_dlpack(buf)
        if like is not None and like.device.type != "cpu":
            t = t.to(like.device)
        return t
    if framework == "jax":
        jax = sys.modules["jax"]
        arr = jax.dlpack.from_dlpack(buf)
        if like is not None:
            devices = like.devices()
            if len(devices) == 1 and next(iter(devices)) not in arr.devices():
                arr = jax.device_put(arr, next(iter(devices)))
        return arr
    raise InvalidArgumentError(f"unknown framework {framework}")


def deliver(buf: Optional[_core.HostBuffer], target: Any, name: str, fw: str, host_fw: str, like: Any) -> Any:
    """A committed result in the caller's terms: ``buf`` as a new array of ``fw`` (no target), or ``target``
    after ``buf`` was written into it (a strided or device target; None: the core wrote the target itself)."""
    if target is None:
        return wrap(buf, name, fw, like=like)
    if buf is not None:
        copy_back(target, wrap(buf, name, host_fw if fw != "cupy" else "numpy"), fw)
    return target


def _as_uint16(buf: _core.HostBuffer) -> _core.HostBuffer:
    """The same bytes re-exported as uint16 words (NumPy cannot import bfloat16 through DLPack)."""
    alias = _core.HostBuffer.alias(buf, dtype_code("uint16"))
    return alias


def stage_to_host(x: Any, framework: str) -> Any:
    """A host copy of a device array, made by its own framework (which orders it after the array's stream)."""
    if framework == "torch":
        return x.detach().to("cpu")
    if framework == "cupy":
        return x.get()  # synchronises with the current stream
    if framework == "jax":
        return np.asarray(sys.modules["jax"].device_get(x))
    raise InvalidArgumentError(f"cannot stage a {framework} array")


def copy_back(dst: Any, src: Any, framework: str) -> None:
    """Writes ``src`` (host or same framework) into the mutable array ``dst``, element by element."""
    if framework == "numpy":
        dst[...] = src
    elif framework == "torch":
        torch = sys.modules["torch"]
        dst.detach().copy_(src if isinstance(src, torch.Tensor) else torch.from_dlpack(src))
    elif framework == "cupy":
        dst[...] = sys.modules["cupy"].asarray(src)
    else:
        raise InvalidArgumentError(f"{framework} arrays are immutable")


def host_extent(x: Any, framework: str) -> tuple[int, int]:
    """[first byte, last byte + 1) of the memory x's elements occupy (for overlap checks)."""
    if framework == "torch":
        start = x.data_ptr()
        span = sum((d - 1) * abs(st) for d, st in zip(x.shape, x.stride()) if d > 0) + 1 if x.numel() else 0
        return start, start + span * x.element_size()
    if framework == "cupy":
        start = int(x.data.ptr)
        return start, start + int(x.nbytes)
    raise InvalidArgumentError(f"no extent for {framework}")
