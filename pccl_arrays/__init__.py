"""pccl_arrays: fault-tolerant collective communication over the internet for any Python array framework.

Start a :class:`Master`, connect a :class:`Communicator` per peer, and all-reduce arrays. Errors are typed
(:mod:`pccl_arrays.errors`); a :class:`~pccl_arrays.errors.PeerLostError` means "retry on the smaller ring".
"""

from ._version import __version__

try:
    from . import _core  # noqa: F401  (the C++ extension)
except ImportError as e:  # a source checkout that was never built, or a build for another Python
    _why = "it is not built here" if "cannot import name" in str(e) else f"it does not load: {e}"
    raise ImportError(
        f"pccl_arrays' C++ extension (pccl_arrays._core) is missing: {_why}. Install the package "
        "(`pip install .` builds it with CMake and a C++20 compiler) or run `bash scripts/setup.sh`, and import "
        "pccl_arrays from outside the source tree.") from None

from . import errors, log  # noqa: E402
from .communicator import AllReduceInfo, Communicator  # noqa: E402
from .errors import (
    AuthenticationError,
    MasterUnreachableError,
    OperationMismatchError,
    PCCLError,
    PeerEvictedError,
    PeerLostError,
    ProtocolError,
    SharedStateError,
    TooFewPeersError,
)
from .master import Master
from .feedback import ErrorFeedback
from .quantization import Quantization
from .shared_state import SharedState, SyncInfo

log.start()

__all__ = [
    "AllReduceInfo", "Communicator", "ErrorFeedback", "Master", "Quantization", "errors", "PCCLError", "PeerLostError", "TooFewPeersError",
    "MasterUnreachableError", "PeerEvictedError", "ProtocolError", "OperationMismatchError", "SharedState", "SyncInfo",
    "SharedStateError", "AuthenticationError",
]
