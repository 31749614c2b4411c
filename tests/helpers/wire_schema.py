"""The message schema (cpp/wire/messages.hpp, read through _core_testing.schema()) as Python: a payload encoder
and hypothesis strategies for every message, both derived from the declarations instead of restating each
message's fields. The encoder is written independently of the C++ one (struct.pack per field type), so the
fuzz tests compare two implementations of one declaration; it takes bytes for strings, so a test can place
bytes no UTF-8 encoder would produce where a string goes."""

from __future__ import annotations

import struct

from hypothesis import strategies as st

from pccl_arrays import _core_testing

SCHEMA = _core_testing.schema()
STRUCTS = SCHEMA["structs"]
MESSAGES = {m["name"]: m for m in SCHEMA["messages"]}
INTS = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q"}


def encode(type_text: str, value) -> bytes:
    """One field's bytes, by its schema type."""
    if type_text in INTS:
        return struct.pack(INTS[type_text], value)
    if type_text == "str":
        raw = value.encode() if isinstance(value, str) else value
        return struct.pack("<H", len(raw)) + raw
    if type_text == "bytes32":
        assert len(value) == 32
        return bytes(value)
    if type_text.startswith("list of "):
        element = type_text[len("list of "):]
        return struct.pack("<I", len(value)) + b"".join(encode(element, v) for v in value)
    return b"".join(encode(t, value[name]) for name, t, _ in STRUCTS[type_text])


def payload(type_name: str, fields: dict) -> bytes:
    """The payload of a message given with every field (DATA: its header's fields, then "payload" bytes)."""
    body = encode(MESSAGES[type_name]["payload"], fields)
    return body + fields["payload"] if type_name == "data" else body


# Rules between fields that a decoder enforces (cpp/wire/wire.cpp's check overloads): generated values obey them.
def _sync_range(d):
    lo, hi = sorted((d["begin"], d["end"]))
    return {**d, "begin": lo, "end": hi, "stripes": max(1, d["stripes"])}


def _sync_plan(d):
    n = min(len(d["fetch"]), len(d["expect"]))
    return {**d, "fetch": d["fetch"][:n], "expect": d["expect"][:n]}


FIXUPS = {"SyncSend": _sync_range, "SyncRecv": _sync_range, "SyncPlan": _sync_plan}


def strategy(type_text: str, limit=None, raw_strings: bool = False) -> st.SearchStrategy:
    """Values of a schema type within its declared limit (lists kept short)."""
    if type_text in INTS:
        top = 2 ** (8 * struct.calcsize(INTS[type_text])) - 1
        return st.integers(0, top if limit is None else min(limit, top))
    if type_text == "str":
        return st.binary(max_size=12) if raw_strings else st.text(max_size=40)
    if type_text == "bytes32":
        return st.binary(min_size=32, max_size=32)
    if type_text.startswith("list of "):
        return st.lists(strategy(type_text[len("list of "):], None, raw_strings), max_size=4)
    fields = st.fixed_dictionaries({name: strategy(t, lim, raw_strings) for name, t, lim in STRUCTS[type_text]})
    return fields.map(FIXUPS[type_text]) if type_text in FIXUPS else fields


def message_strategy(type_name: str, raw_strings: bool = False) -> st.SearchStrategy:
    s = strategy(MESSAGES[type_name]["payload"], None, raw_strings)
    if type_name == "data":
        s = st.tuples(s, st.binary(max_size=64)).map(lambda t: {**t[0], "payload": t[1]})
    return s
