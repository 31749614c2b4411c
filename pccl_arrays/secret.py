"""The run's secret (docs/security.md): what ``Master(secret=...)`` and ``Communicator(secret=...)`` accept.

A secret is bytes, or a str (its UTF-8 bytes). Not given (None), the ``PCCL_ARRAYS_SECRET`` environment variable
is used when it is set and not empty. The core derives a key from it at once and keeps only the key; this module
never logs it, and nothing here puts it in a message or a ``repr``. Use a long random secret (``new_secret()``,
or ``pccl-arrays new-secret``): anyone who can reach a port can test guesses against the handshake offline.
"""

from __future__ import annotations

import os
import secrets
from typing import Optional, Union

from .errors import InvalidArgumentError

ENV = "PCCL_ARRAYS_SECRET"
Secret = Union[str, bytes, bytearray, None]


def resolve(secret: Secret) -> Optional[bytes]:
    """The secret's bytes (from the environment when None), or None for a run without one."""
    if secret is None:
        secret = os.environ.get(ENV) or None
        if secret is None:
            return None
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, (bytes, bytearray)):
        raise InvalidArgumentError(f"a secret is bytes or str, not {type(secret).__name__}")
    if not secret:
        raise InvalidArgumentError("the secret is empty")
    return bytes(secret)


def new_secret() -> str:
    """A fresh random secret: 32 random bytes as 64 hex digits."""
    return secrets.token_hex(32)
