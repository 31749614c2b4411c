"""Element types and reduction ops, with the codes the core and the wire use (docs/protocol.md)."""

from __future__ import annotations

from . import _core
from .errors import InvalidArgumentError, UnsupportedDTypeError

# dtype name -> core code (the core's table). bfloat16 is ml_dtypes' NumPy dtype, recognised by name without
# importing ml_dtypes.
DTYPE_CODES: dict = dict(_core.CODES["dtype"])
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})

OP_CODES: dict = dict(_core.CODES["op"])


def dtype_code(name: str) -> int:
    """The core's code for a dtype name; UnsupportedDTypeError (a TypeError) names what is not supported."""
    try:
        return DTYPE_CODES[name]
    except KeyError:
        supported = ", ".join(DTYPE_CODES)
        raise UnsupportedDTypeError(f"dtype {name} cannot be all-reduced; supported: {supported}") from None


def op_code(op: str, dtype_name: str) -> int:
    """The core's code for a reduction op, checked against the dtype (avg needs a floating dtype)."""
    if not isinstance(op, str) or op.lower() not in OP_CODES:
        raise InvalidArgumentError(f"op must be one of {', '.join(OP_CODES)}, not {op!r}")
    op = op.lower()
    if op == "avg" and dtype_name not in FLOAT_DTYPES:
        raise UnsupportedDTypeError(f"avg is defined for floating dtypes only, not {dtype_name}; use sum")
    return OP_CODES[op]
