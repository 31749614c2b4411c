"""pccl_arrays: fault-tolerant collective communication over the internet for any Python array framework.

Start a :class:`Master`, connect a :class:`Communicator` per peer, and all-reduce arrays. Errors are typed
(:mod:`pccl_arrays.errors`); a :class:`~pccl_arrays.errors.PeerLostError` means "retry on the smaller ring".
"""

from . import errors, log
from .communicator import AllReduceInfo, Communicator
from .errors import (
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
from .quantization import Quantization
from .shared_state import SharedState, SyncInfo

__version__ = "0.1.0"

log.start()

__all__ = [
    "AllReduceInfo", "Communicator", "Master", "Quantization", "errors", "PCCLError", "PeerLostError", "TooFewPeersError",
    "MasterUnreachableError", "PeerEvictedError", "ProtocolError", "OperationMismatchError", "SharedState", "SyncInfo",
    "SharedStateError",
]
