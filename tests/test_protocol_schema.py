"""One declaration per message (cpp/wire/messages.hpp): docs/protocol.md's tables are that declaration, the dict
form of every message has exactly the declared fields, and the name table, the type codes and the header's
length limits all come from the one message table. (The native test cpp/tests/wire_schema_test.cpp adds a field
to a scratch message and shows encode, decode and the field list follow from that one line.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pccl_arrays import _core_testing
from pccl_arrays.errors import ProtocolError

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
SCHEMA = _core_testing.schema()
STRUCTS = SCHEMA["structs"]


def field_text(name: str) -> str:
    return ", ".join(f"{f} {t}" + (f" (≤ {limit})" if limit is not None else "") for f, t, limit in STRUCTS[name]) or "—"


def doc_text() -> str:
    if not DOC.is_file():
        pytest.skip("docs/ is not beside the tests")
    return DOC.read_text()


def test_the_message_tables_are_the_declarations():
    rows = re.findall(r"^\| (\d+) \| ([A-Z_]+) \| ([^|]+?) \| ([^|]+?) \|", doc_text(), re.M)
    documented = {int(code): (name, direction, payload) for code, name, direction, payload in rows}
    declared = {m["code"]: (m["name"].upper(), m["direction"], field_text(m["payload"])) for m in SCHEMA["messages"]}
    assert documented == declared


def test_the_record_table_is_the_declarations():
    rows = dict(re.findall(r"^\| ([A-Z][A-Za-z]+) \| ([^|]+?) \|$", doc_text(), re.M))
    nested = {t.split()[-1] for fields in STRUCTS.values() for _, t, _ in fields} & set(STRUCTS)
    assert set(rows) == nested  # every record a message uses, and nothing else
    for name in nested:
        assert rows[name] == field_text(name), name


def test_every_type_code_has_one_name_and_one_payload():
    codes = [m["code"] for m in SCHEMA["messages"]]
    names = [m["name"] for m in SCHEMA["messages"]]
    assert len(set(codes)) == len(codes) and len(set(names)) == len(names)
    for m in SCHEMA["messages"]:
        assert m["payload"] in STRUCTS
        frame = _core_testing.encode_frame(m["name"], {})  # the name table is the encoder's
        assert int.from_bytes(frame[6:8], "little") == m["code"]
        assert _core_testing.decode_frame(frame)[0] == m["name"]  # ... and the decoder's


@pytest.mark.parametrize("message", SCHEMA["messages"], ids=lambda m: m["name"])
def test_dicts_have_exactly_the_declared_fields(message):
    fields = _core_testing.decode_frame(_core_testing.encode_frame(message["name"], {}))[1]
    declared = [f for f, _, _ in STRUCTS[message["payload"]]]
    assert list(fields) == declared + (["payload"] if message["name"] == "data" else [])


@pytest.mark.parametrize("message", SCHEMA["messages"], ids=lambda m: m["name"])
def test_the_header_limit_is_the_declared_one(message):
    limit = message["max_payload"]
    header = (0x52414350).to_bytes(4, "little") + _core_testing.PROTOCOL_VERSION.to_bytes(2, "little")
    header += message["code"].to_bytes(2, "little")
    with pytest.raises(ProtocolError, match="does not match"):  # at the limit: only the bytes are missing
        _core_testing.decode_frame(header + limit.to_bytes(4, "little") + bytes(4))
    with pytest.raises(ProtocolError, match="over the limit"):
        _core_testing.decode_frame(header + (limit + 1).to_bytes(4, "little") + bytes(4))


def test_declared_value_bounds_are_enforced():
    bounded = [(s, f, limit) for s, fields in STRUCTS.items() for f, t, limit in fields
               if limit is not None and not t.startswith("list of ")]
    assert ("SyncStart", "strategy", 2) in bounded and ("AuthChallenge", "encrypt", 1) in bounded
    assert _core_testing.decode_frame(_core_testing.encode_frame("auth_challenge", {"encrypt": 1}))[1]["encrypt"] == 1
    with pytest.raises(ProtocolError, match="AuthChallenge.encrypt is 2, at most 1"):
        _core_testing.decode_frame(_core_testing.encode_frame("auth_challenge", {"encrypt": 2}))
