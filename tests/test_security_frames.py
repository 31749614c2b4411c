"""Sealed frames (cpp/crypto/crypto.hpp, cpp/transport/handshake.hpp), fuzzed: what one end of an authenticated connection
seals, the other opens unchanged; a changed bit anywhere is refused, never yielded as another frame; random
bytes never pass; with encryption no payload byte pattern survives on the wire. The handshake's own frames
are in the wire fuzz (test_protocol_fuzz.py); a live master with a secret is fuzzed at the end."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pccl_arrays as pa
from pccl_arrays import _core_testing
from pccl_arrays.errors import ProtocolError
from test_protocol_fuzz import messages

pytestmark = pytest.mark.timeout(120)


def _sealed_stream(pipe, msgs) -> tuple[bytes, list]:
    frames = [_core_testing.encode_frame(t, f) for t, f in msgs]
    return b"".join(pipe.seal(f) for f in frames), [_core_testing.decode_frame(f) for f in frames]


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, min_size=1, max_size=4), st.booleans())
def test_what_is_sealed_opens_unchanged(msgs, encrypt):
    sender = _core_testing.SealedPipe(b"secret", encrypt)
    stream, want = _sealed_stream(sender, msgs)
    assert sender.open(stream) == want  # the pipe's own two ends: client seals, server opens


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, min_size=1, max_size=3), st.booleans(), st.data())
def test_a_flipped_bit_is_refused_and_never_yields_another_frame(msgs, encrypt, data):
    pipe = _core_testing.SealedPipe(b"secret", encrypt)
    stream, want = _sealed_stream(pipe, msgs)
    at = data.draw(st.integers(0, len(stream) - 1))
    bit = data.draw(st.integers(0, 7))
    forged = bytearray(stream)
    forged[at] ^= 1 << bit
    try:
        got = pipe.open(bytes(forged))
    except ProtocolError:
        return
    # Without an error, only frames before the change came out (a longer length field just waits for more).
    assert got == want[: len(got)] and len(got) < len(want)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.booleans())
def test_random_bytes_never_pass(raw, encrypt):
    pipe = _core_testing.SealedPipe(b"secret", encrypt)
    try:
        assert pipe.open(raw) == []
    except ProtocolError:
        pass


def test_encrypted_payloads_do_not_show_on_the_wire():
    marker = "KNOWN-PLAINTEXT-" * 8
    for encrypt in (False, True):
        pipe = _core_testing.SealedPipe(b"secret", encrypt)
        sealed = pipe.seal(_core_testing.encode_frame("kicked", {"reason": marker, "elsewhere": 0}))
        assert (marker.encode() in sealed) == (not encrypt)
        assert pipe.open(sealed) == [("kicked", {"reason": marker, "elsewhere": 0})]


def test_a_frame_replayed_on_the_same_connection_is_refused():
    pipe = _core_testing.SealedPipe(b"secret", False)
    frame = pipe.seal(_core_testing.encode_frame("heartbeat", {}))
    assert pipe.open(frame) == [("heartbeat", {})]
    with pytest.raises(ProtocolError, match="integrity"):
        pipe.open(frame)  # the receiver's counter moved on


@pytest.fixture(scope="module")
def fuzzed_master():
    with pa.Master("127.0.0.1:0", handshake_timeout=1.0, secret=b"the secret") as m:
        yield m


def _hello() -> bytes:
    return _core_testing.encode_frame("auth_hello", {"context": 1, "nonce": bytes(32)})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=200),
                 st.tuples(st.binary(min_size=1, max_size=100), st.integers(0, 300)).map(
                     lambda t: _hello()[: t[1]] + t[0])))
def test_a_master_with_a_secret_drops_whatever_does_not_prove_it(fuzzed_master, raw):
    host, port = fuzzed_master.address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(raw)
        s.settimeout(3.0)
        t0 = time.monotonic()
        try:
            while s.recv(4096):
                pass
        except ConnectionResetError:
            pass
        assert time.monotonic() - t0 < 3.0  # closed by the master within its handshake_timeout (+ slack)
    assert fuzzed_master.stats()["peers_accepted"] == 0


def test_the_fuzzed_master_still_serves(fuzzed_master):
    with pa.Communicator(fuzzed_master.address, secret=b"the secret") as c:
        assert c.all_reduce(np.arange(4.0))[3] == 3.0
