"""The exception hierarchy of pccl_arrays (docs/errors.md is the one-page policy).

Every error the library raises on purpose is a :class:`PCCLError`. Those whose ``retryable`` attribute is true
mean "the group changed under this operation": call ``update_topology()`` if you want newcomers, then retry the
same call on the smaller ring. Invalid arguments are also ``ValueError`` / ``TypeError`` so that ordinary
Python code catches them the ordinary way.
"""

from __future__ import annotations


class PCCLError(Exception):
    """Base class of every pccl_arrays error."""

    retryable = False


class PeerLostError(PCCLError):
    """A peer died, stalled past a deadline, left, or its connection broke during the operation.

    Retryable: the caller's buffers are unchanged; retry on the smaller ring.
    """

    retryable = True


class TooFewPeersError(PCCLError):
    """The operation needs more peers than the group has."""

    retryable = True


class MasterUnreachableError(PCCLError):
    """The master stopped answering (killed, stalled or unreachable); this communicator is unusable."""


class PeerEvictedError(PCCLError):
    """The master evicted this peer (it was silent past the master's peer_timeout, e.g. stopped).

    The communicator is unusable; create a new one to join again as a new peer.
    """


class ProtocolError(PCCLError):
    """A malformed or unexpected frame."""


class OperationMismatchError(PCCLError):
    """Peers of a group started different operations (count, dtype, op, quantization) or collectives.

    Nobody's buffer was changed.
    """


class CommunicatorStateError(PCCLError):
    """A call made in the wrong state (before connect(), after close(), ...)."""


class NetworkError(PCCLError):
    """A local socket failure not attributable to a peer (bind, listen)."""


class PCCLTimeoutError(PCCLError, TimeoutError):
    """A wait bounded by the caller ran out."""


class SharedStateError(PCCLError):
    """A shared-state sync refused this peer: its names, dtypes or shapes differ from the group's, its
    revision ran ahead of the group's by more than one, it is send-only but does not hold the group's state, or
    no peer offers state. The state was not changed (docs/shared_state.md)."""


class AuthenticationError(PCCLError):
    """The run's secret is missing on one side or differs between this peer and the master (or another peer):
    the connection was refused. Not retryable: fix the configuration (docs/security.md). The message says which
    side lacks what; it never contains the secret."""


class InvalidArgumentError(PCCLError, ValueError):
    """An argument is invalid."""


class UnsupportedDTypeError(PCCLError, TypeError):
    """The array's dtype cannot be reduced (or not with this op)."""


_BY_KIND = {
    "invalid_argument": InvalidArgumentError,
    "peer_lost": PeerLostError,
    "too_few_peers": TooFewPeersError,
    "master_unreachable": MasterUnreachableError,
    "protocol": ProtocolError,
    "mismatch": OperationMismatchError,
    "evicted": PeerEvictedError,
    "state": CommunicatorStateError,
    "network": NetworkError,
    "timeout": PCCLTimeoutError,
    "shared_state": SharedStateError,
    "authentication": AuthenticationError,
}


# Kept in step with the core's table (_core.CODES["error_kind"]) by tests/test_protocol_wire.py.


def error_class(kind: str) -> type[PCCLError]:
    """The exception class for an error kind of the C++ core (used by the bindings)."""
    return _BY_KIND.get(kind, PCCLError)


__all__ = [name for name, value in globals().items() if isinstance(value, type) and issubclass(value, PCCLError)]
__all__ += ["error_class"]
