"""Arguments every collective checks the same way: tags, timeouts, the shape the peers agree on, and where a
result may be written (``out``)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import arrays
from .errors import InvalidArgumentError


def call_args(shape, timeout: Optional[float]) -> dict:
    """What every collective hands the core besides its buffers: the shape the peers must agree on, and how
    long to wait for them to start."""
    if len(shape) > 32:
        raise InvalidArgumentError(f"arrays of at most 32 dimensions, not {len(shape)}")
    return {"shape": [int(d) for d in shape], "timeout": timeout_arg(timeout)}


def check_tag(tag: Any) -> int:
    if isinstance(tag, bool) or not isinstance(tag, int) or not 0 <= tag < 2**64:
        raise InvalidArgumentError(f"tag must be an int in [0, 2**64), not {tag!r}")
    return tag


def seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise InvalidArgumentError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def timeout_arg(timeout: Optional[float]) -> float:
    """A call's ``timeout`` for the core: -1 means the communicator's op_timeout."""
    return -1.0 if timeout is None else seconds(timeout, "timeout")


def target_of(x: Any, out: Any, fw: str, shape: Optional[tuple] = None, in_place: bool = True) -> Any:
    """Where the result goes: None (a new array), x itself (in place, where the collective allows it) or a
    checked ``out`` of ``shape`` (default: x's) and x's dtype, framework and device."""
    if out is x:
        if not in_place:
            raise InvalidArgumentError("this collective cannot write its result over its input: pass another out")
        if fw == "jax":
            raise InvalidArgumentError("JAX arrays are immutable: use the returned array (out=None)")
    elif out is not None:
        check_out(x, out, fw, tuple(x.shape) if shape is None else shape)
    if out is not None and fw == "numpy" and not out.flags.writeable:
        raise InvalidArgumentError("the output array is read-only; pass out=None for a new array")
    return out


def check_out(x: Any, out: Any, fw: str, shape: tuple) -> None:
    if arrays.framework_of(out) != fw or fw == "jax":
        raise InvalidArgumentError(f"out must be a mutable {fw} array like x (or x itself)")
    if tuple(out.shape) != tuple(shape) or out.dtype != x.dtype:
        raise InvalidArgumentError(f"out must have shape {tuple(shape)} and x's dtype {x.dtype}, not "
                                   f"{tuple(out.shape)} {out.dtype}")
    if arrays.device_of(out, fw) != arrays.device_of(x, fw):
        raise InvalidArgumentError("out must be on the same device as x")
    if fw == "numpy":
        overlap = np.shares_memory(out, x)
    else:
        a, b = arrays.host_extent(x, fw), arrays.host_extent(out, fw)
        overlap = a[0] < b[1] and b[0] < a[1]
    if overlap:
        raise InvalidArgumentError("out overlaps x without being x; pass out=x for in place")
