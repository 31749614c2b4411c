import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import pccl_arrays as pa  # noqa: E402


@pytest.fixture
def master():
    """A master in this process on a port the OS picks, with short liveness deadlines for tests."""
    with pa.Master("127.0.0.1:0", peer_timeout=2.0, handshake_timeout=2.0) as m:
        yield m
