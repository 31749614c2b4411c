"""The wire decoder under fuzzing (hypothesis, derandomized): messages generated from the schema round-trip, and
the C++ encoder's bytes equal those of the Python encoder made from the same declarations (helpers/wire_schema);
random bytes, random and structured payloads behind valid headers, arbitrary string bytes and mutated
valid frames decode or raise ProtocolError — nothing else."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pccl_arrays import _core_testing
from pccl_arrays.errors import ProtocolError
from test_protocol_wire import TYPE_CODES, frame_of, header, wstr
from wire_schema import MESSAGES, message_strategy, payload

FUZZ = settings(max_examples=400, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

u8 = st.integers(0, 2**8 - 1)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
assert set(MESSAGES) == set(TYPE_CODES)

messages = st.sampled_from(sorted(MESSAGES)).flatmap(lambda t: st.tuples(st.just(t), message_strategy(t)))


def decode_or_protocol_error(frame: bytes):
    """Decoding may succeed or raise ProtocolError; anything else (another exception, a crash) fails the test."""
    try:
        return _core_testing.decode_frame(frame)
    except ProtocolError:
        return None


@FUZZ
@given(messages)
def test_fuzz_round_trip(message):
    type_name, fields = message
    frame = _core_testing.encode_frame(type_name, fields)
    assert frame == header(TYPE_CODES[type_name], len(frame) - 16) + payload(type_name, fields)
    assert _core_testing.decode_frame(frame) == (type_name, fields)


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_random_bytes(raw):
    decode_or_protocol_error(raw)


@FUZZ
@given(st.sampled_from(sorted(TYPE_CODES)), st.binary(max_size=200))
def test_fuzz_random_payload_behind_a_valid_header(type_name, payload):
    decode_or_protocol_error(frame_of(type_name, payload))


# Payloads assembled from the wire's own building blocks (fixed-width integers, length-prefixed byte strings,
# element counts), which reach deeper into each decoder than uniformly random bytes do.
tokens = st.one_of(
    u8.map(lambda v: struct.pack("<B", v)),
    u16.map(lambda v: struct.pack("<H", v)),
    u32.map(lambda v: struct.pack("<I", v)),
    u64.map(lambda v: struct.pack("<Q", v)),
    st.binary(max_size=12).map(wstr),
    st.integers(0, 4).map(lambda n: struct.pack("<I", n)),
)


@FUZZ
@given(st.sampled_from(sorted(TYPE_CODES)), st.lists(tokens, max_size=12))
def test_fuzz_structured_payload_behind_a_valid_header(type_name, parts):
    decode_or_protocol_error(frame_of(type_name, b"".join(parts)))


@FUZZ
@given(st.sampled_from(sorted(MESSAGES)).flatmap(
    lambda t: st.tuples(st.just(t), message_strategy(t, raw_strings=True))))
def test_fuzz_well_formed_layouts_with_arbitrary_string_bytes(message):
    # Every field where the layout puts it, but strings are whatever bytes a hostile peer sends.
    type_name, fields = message
    decode_or_protocol_error(frame_of(type_name, payload(type_name, fields)))


@st.composite
def mutated_frames(draw):
    type_name, fields = draw(messages)
    frame = bytearray(_core_testing.encode_frame(type_name, fields))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        at = draw(st.integers(0, max(len(frame) - 1, 0)))
        if kind == "flip" and frame:
            frame[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and frame:
            frame[at] = draw(u8)
        elif kind == "truncate":
            del frame[at:]
        elif kind == "extend":
            frame += draw(st.binary(min_size=1, max_size=16))
        elif kind == "insert":
            frame[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del frame[at:at + draw(st.integers(1, 8))]
    if len(frame) >= 16 and draw(st.booleans()):
        # Keep the length field consistent with the bytes, so the mutation reaches the payload decoder.
        frame[8:12] = struct.pack("<I", len(frame) - 16)
    return bytes(frame)


@FUZZ
@given(mutated_frames())
def test_fuzz_mutated_valid_frames(frame):
    decode_or_protocol_error(frame)


