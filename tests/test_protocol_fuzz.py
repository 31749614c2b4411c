"""The wire decoder under fuzzing (hypothesis, derandomized): generated messages round-trip with the documented
layout; random bytes, random and structured payloads behind valid headers, arbitrary string bytes and mutated
valid frames decode or raise ProtocolError — nothing else."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pccl_arrays import _core
from pccl_arrays.errors import ProtocolError
from test_protocol_wire import TYPE_CODES, expected_payload, frame_of, header, wstr

FUZZ = settings(max_examples=400, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

u8 = st.integers(0, 2**8 - 1)
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
text = st.text(max_size=40)
peer = st.fixed_dictionaries({"id": u64, "host": text, "port": u16})
ring = st.lists(peer, max_size=5)

FIELDS = {
    "hello": {"group": u32, "connections": u32, "host": text, "port": u16},
    "welcome": {"peer_id": u64},
    "heartbeat": {},
    "heartbeat_ack": {"pending": u32},
    "topo_request": {"seq": u64, "timeout_ms": u32, "min_world": u32},
    "topo_result": {"seq": u64, "world_size": u32, "pending": u32, "ring": ring, "kind": u8, "reason": text},
    "op_start": {"tag": u64, "count": u64, "dtype": u8, "op": u8, "quant": u8, "qblock": u32, "qround": u8,
                 "qseed": u32, "shape": st.lists(u64, max_size=32), "structure": u64, "structure_text": text,
                 "timeout_ms": u32, "min_world": u32},
    "op_go": {"tag": u64, "op_id": u64, "stripes": u32, "ring": ring, "slot": u32, "ring_epoch": u64},
    "op_reject": {"tag": u64, "kind": u8, "reason": text},
    "op_done": {"op_id": u64, "ok": u8, "kind": u8, "reason": text},
    "op_commit": {"op_id": u64},
    "op_abort": {"op_id": u64, "kind": u8, "reason": text},
    "pending_request": {"seq": u64, "timeout_ms": u32, "min_world": u32},
    "pending_reply": {"pending": u32},
    "leave": {},
    "kicked": {"reason": text},
    "sync_start": {"revision": u64, "strategy": st.integers(0, 2), "timeout_ms": u32, "min_world": u32,
                   "entries": st.lists(st.fixed_dictionaries(
        {"name": text, "dtype": u8, "shape": st.lists(u64, max_size=4), "nbytes": u64, "hash": u64,
         "tolerate": st.integers(0, 1)}), max_size=4)},
    "sync_plan": st.lists(st.tuples(u32, u64), max_size=4).flatmap(lambda fetch: st.fixed_dictionaries({
        "sync_id": u64, "ok": u8, "kind": u8, "reason": text, "revision": u64, "commit_now": u8,
        "fetch": st.just([f for f, _ in fetch]), "expect": st.just([h for _, h in fetch]),
        "sends": st.lists(st.tuples(peer, st.lists(u32, max_size=3), u64, u64, st.integers(1, 2**32 - 1)).map(
            lambda t: {"to": t[0], "fetch": t[1], "begin": min(t[2], t[3]), "end": max(t[2], t[3]), "stripes": t[4]}),
            max_size=3),
        "recvs": st.lists(st.tuples(u64, u64, u64, st.integers(1, 2**32 - 1)).map(
            lambda t: {"from": t[0], "begin": min(t[1], t[2]), "end": max(t[1], t[2]), "stripes": t[3]}),
            max_size=3)})),
    "opt_start": {"seq": u64, "timeout_ms": u32, "min_world": u32},
    "opt_plan": {"opt_id": u64, "seq": u64, "probe_ms": u32,
                 "rounds": st.lists(st.fixed_dictionaries({"send_to": peer, "recv_from": u64}), max_size=4)},
    "opt_report": {"opt_id": u64, "links": st.lists(st.fixed_dictionaries(
        {"from": u64, "to": u64, "bandwidth": u64, "rtt_us": u32}), max_size=4)},
    "peer_hello": {"from": u64, "to": u64, "index": u32, "slot": u32},
    "data": {"op_id": u64, "step": u32, "stripe": u32, "offset": u64, "payload": st.binary(max_size=64)},
    "auth_hello": {"context": u8, "nonce": st.binary(min_size=32, max_size=32)},
    "auth_challenge": {"nonce": st.binary(min_size=32, max_size=32), "encrypt": st.integers(0, 1),
                       "mac": st.binary(min_size=32, max_size=32)},
    "auth_proof": {"mac": st.binary(min_size=32, max_size=32)},
    "auth_refused": {"reason": text},
}
assert set(FIELDS) == set(TYPE_CODES)

messages = st.sampled_from(sorted(FIELDS)).flatmap(
    lambda t: st.tuples(st.just(t), FIELDS[t] if isinstance(FIELDS[t], st.SearchStrategy)
                        else st.fixed_dictionaries(FIELDS[t])))


def decode_or_protocol_error(frame: bytes):
    """Decoding may succeed or raise ProtocolError; anything else (another exception, a crash) fails the test."""
    try:
        return _core.decode_frame(frame)
    except ProtocolError:
        return None


@FUZZ
@given(messages)
def test_fuzz_round_trip(message):
    type_name, fields = message
    frame = _core.encode_frame(type_name, fields)
    assert frame == header(TYPE_CODES[type_name], len(frame) - 16) + expected_payload(type_name, fields)
    assert _core.decode_frame(frame) == (type_name, fields)


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


RAW_FIELDS = {
    t: {k: (st.binary(max_size=12) if v is text else
            st.lists(st.fixed_dictionaries({"id": u64, "host": st.binary(max_size=12), "port": u16}), max_size=3)
            if v is ring else v)
        for k, v in fields.items()}
    for t, fields in FIELDS.items() if not isinstance(fields, st.SearchStrategy)  # sync_plan: no strings inside lists
}


@FUZZ
@given(st.sampled_from(sorted(RAW_FIELDS)).flatmap(
    lambda t: st.tuples(st.just(t), st.fixed_dictionaries(RAW_FIELDS[t]))))
def test_fuzz_well_formed_layouts_with_arbitrary_string_bytes(message):
    # Every field where the layout puts it, but strings are whatever bytes a hostile peer sends.
    type_name, fields = message
    decode_or_protocol_error(frame_of(type_name, expected_payload(type_name, fields)))


@st.composite
def mutated_frames(draw):
    type_name, fields = draw(messages)
    frame = bytearray(_core.encode_frame(type_name, fields))
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


