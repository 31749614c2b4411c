"""Error feedback for quantized all-reduces of outer gradients (docs/quantization.md, "Error feedback").

How this works. An :class:`ErrorFeedback` holds one residual: what quantizing this peer's last contribution
lost. ``comm.all_reduce(g, "avg", quantization=q, feedback=ef)`` sends ``y = g + residual`` instead of ``g`` and,
once the operation has committed, keeps ``residual = y - D(Q(y))`` on the elements the operation quantized:
this peer's own contribution quantized and decoded locally with the operation's format (rotation included),
which is the compression error the next step adds back (the error-feedback accumulator of 1-bit SGD, EF21,
SparseLoCo). Elements the core added exactly (a host array's own chunk in the direct all-reduce; all but the
chunk it sends first in the ring) lost nothing and keep 0 (:class:`Residual`). A failed operation leaves the
residual as it was, so a retry sends the same bytes.

The residual is the user's state, like an optimizer's: it lives in the array's own framework, dtype and device,
is never shared with other peers, and is saved with :meth:`state_dict` / restored with
:meth:`load_state_dict` (or kept in a ``SharedState`` entry when the user wishes).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core, arrays
from .dtypes import FLOAT_DTYPES, dtype_code
from .errors import InvalidArgumentError
from .quantization import KINDS, Quantization


class ErrorFeedback:
    """One array's quantization residual, added back at the next quantized all-reduce.

    Use one per array (or per tree leaf) that is all-reduced with ``feedback=``; the first call sets the shape,
    dtype and framework, and later calls must match them.
    """

    def __init__(self):
        self.residual: Any = None  # None until the first operation commits

    def compensate(self, g: Any) -> Any:
        """``g`` plus the residual (a new array of g's framework); ``g`` itself before the first operation."""
        if self.residual is None:
            return g
        self._check_like(g)
        return g + self.residual

    def update(self, y: Any, quantization: Any, info: Any = None) -> None:
        """Keeps what the operation lost of ``y`` (the compensated contribution that was sent): ``quantization``
        as the all-reduce took it (a kind name or a :class:`~pccl_arrays.Quantization`), ``info`` its
        AllReduceInfo (``handle.info`` of an async one), which says which chunks a host array had quantized
        (without it, every element counts as quantized: exact for device arrays and a peer alone). ``y`` must
        be what was sent, not an array an in-place result overwrote."""
        q = Quantization.of(quantization)
        if q is None:
            raise InvalidArgumentError("ErrorFeedback.update needs the operation's quantization")
        self.residual = residual_of(y, q, info)

    def state_dict(self) -> dict:
        """``{"residual": a NumPy copy or None}``, for the user's checkpoint (bfloat16 as ml_dtypes' type)."""
        if self.residual is None:
            return {"residual": None}
        fw = arrays.framework_of(self.residual)
        host = arrays.stage_to_host(self.residual, fw) if fw != "numpy" else self.residual
        if fw == "torch":
            import torch

            t = host.detach().cpu().contiguous()
            if t.dtype == torch.bfloat16:
                import ml_dtypes

                return {"residual": t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()}
            return {"residual": t.numpy().copy()}
        return {"residual": np.array(host, copy=True)}

    def load_state_dict(self, state: dict, like: Optional[Any] = None) -> None:
        """Restores a residual saved by :meth:`state_dict`: as NumPy, or converted to ``like``'s framework,
        dtype and device (pass the array that will be all-reduced)."""
        r = state.get("residual") if isinstance(state, dict) else None
        if r is None:
            self.residual = None
            return
        r = np.asarray(r)
        if like is None:
            self.residual = r
            return
        if tuple(r.shape) != tuple(like.shape):
            raise InvalidArgumentError(f"the saved residual has shape {tuple(r.shape)}, the array {tuple(like.shape)}")
        self.residual = _like(r, like)

    def _check_like(self, g: Any) -> None:
        r = self.residual
        if tuple(r.shape) != tuple(g.shape) or arrays.dtype_name_of(r) != arrays.dtype_name_of(g):
            raise InvalidArgumentError(
                f"this ErrorFeedback holds the residual of a {arrays.dtype_name_of(r)} array of shape "
                f"{tuple(r.shape)}, not {arrays.dtype_name_of(g)} {tuple(g.shape)}: use one ErrorFeedback per array")
        if arrays.framework_of(r) != arrays.framework_of(g):
            self.residual = _like(np.asarray(self.state_dict()["residual"]), g)


def all_reduce(comm: Any, x: Any, op: str, out: Any, feedback: ErrorFeedback, quant: Optional[Quantization],
               **kwargs) -> Any:
    """``comm.all_reduce(x + residual, ...)``, then the residual of what was sent, kept only if it committed."""
    if not isinstance(feedback, ErrorFeedback):
        raise InvalidArgumentError(f"feedback must be a pccl_arrays.ErrorFeedback, not {type(feedback).__name__}")
    if quant is None:
        raise InvalidArgumentError("feedback= keeps what quantization loses: it needs quantization=")
    y = feedback.compensate(x)
    pending = Residual(y, quant)  # now: an in-place operation overwrites y
    result = comm.all_reduce(y, op, out, quantization=quant, **kwargs)
    feedback.residual = pending.result(comm.last_info)  # this thread's call: the one just made
    return result


def residual_of(y: Any, q: Quantization, info: Any = None) -> Any:
    """What the all-reduce ``info`` describes lost of this peer's contribution ``y`` (see :class:`Residual`)."""
    return Residual(y, q).result(info)


class Residual:
    """``y - D(Q(y))`` in y's framework, dtype and device (0 where not finite), computed when made, and restricted
    by :meth:`result` to the elements the operation quantized.

    On the device path every element of a contribution is quantized (the Triton kernels run before the
    operation). On the host path the core quantizes only what it sends: with the direct all-reduce every chunk
    but the one this peer owns (chunk ``info.rank``, where it adds its exact input), with the ring only that
    chunk (the rest it adds exactly at its hops); the residual is 0 elsewhere. Alone (world 1) everything is
    quantized."""

    def __init__(self, y: Any, q: Quantization):
        self.q, self.like = q, y
        self.fw, self.name = arrays.framework_of(y), arrays.dtype_name_of(y)
        if self.name not in FLOAT_DTYPES:
            raise InvalidArgumentError(f"error feedback is for floating arrays, not {self.name}")
        self.on_device = arrays.device_of(y, self.fw)[0] not in arrays.HOST_DEVICES
        self.device_path = q.on_device_path(self.on_device)
        if self.device_path:
            self.value = _device_residual(y, self.fw, q)
            return
        src, _host, self.host_fw, _ = arrays.compact_host_view(y, self.fw)
        self.count = src.count
        self.buf = arrays.new_host_buffer(src.shape, self.name)
        _core.quantization_residual(input_ptr=src.ptr, output_ptr=arrays.buffer_view(self.buf, self.name).ptr,
                                    count=src.count, dtype=dtype_code(self.name), qkind=KINDS[q.kind], qblock=q.block,
                                    qseed=q.seed, qrotate=q.rotate)

    def result(self, info: Any = None) -> Any:
        """The residual as the operation ``info`` (an AllReduceInfo; None: every element quantized) left it."""
        if self.device_path:
            return self.value
        if info is not None and info.world_size > 1:
            lo, hi = owned_elements(self.count, self.q.block, info.world_size, info.rank)
            flat = arrays.wrap(self.buf, self.name, "numpy").reshape(-1)  # the same memory (bfloat16: as uint16)
            if self.q.reduce == "direct":
                flat[lo:hi] = 0
            else:
                flat[:lo] = 0
                flat[hi:] = 0
        host = arrays.wrap(self.buf, self.name, self.fw if not self.on_device else self.host_fw, like=self.like)
        return host if not self.on_device else _like(np.asarray(host), self.like)


def owned_elements(n: int, block: int, world: int, rank: int) -> tuple[int, int]:
    """[first, last) elements of chunk ``rank`` of an n-element quantized array: whole blocks, split as the core
    splits them (RingPlan::region: the first n_blocks % world chunks hold one block more)."""
    blocks = -(-n // block)
    base, rem = divmod(blocks, world)
    first = rank * base + min(rank, rem)
    count = base + (1 if rank < rem else 0)
    return min(n, first * block), min(n, (first + count) * block)


def _device_residual(y: Any, fw: str, q: Quantization) -> Any:
    from .quantization import as_device_tensor, from_device_tensor, kernels

    import torch

    k = kernels()
    yt = as_device_tensor(y, fw).contiguous().reshape(-1)
    back = k.dequantize(k.quantize(yt, KINDS[q.kind], q.block, rotate_seed=q.rotate_seed), yt.numel(),
                        KINDS[q.kind], q.block, yt.dtype, rotate_seed=q.rotate_seed)
    r = yt - back
    r = torch.where(torch.isfinite(r), r, torch.zeros_like(r)).reshape(tuple(y.shape))
    return from_device_tensor(r, fw)


def _like(r: np.ndarray, like: Any) -> Any:
    """NumPy r as an array of like's framework, dtype and device."""
    fw = arrays.framework_of(like)
    if fw == "numpy":
        return r.astype(like.dtype, copy=False)
    if fw == "torch":
        import torch

        if arrays.dtype_name_of(like) == "bfloat16":
            t = torch.from_numpy(np.ascontiguousarray(r).view(np.int16)).view(torch.bfloat16)
        else:
            t = torch.from_numpy(np.ascontiguousarray(r))
        return t.to(device=like.device, dtype=like.dtype)
    if fw == "jax":
        import jax

        return jax.device_put(jax.numpy.asarray(r, dtype=like.dtype), next(iter(like.devices())))
    if fw == "cupy":
        import cupy

        return cupy.asarray(r).astype(like.dtype)
    raise InvalidArgumentError(f"no error feedback for {fw} arrays")
