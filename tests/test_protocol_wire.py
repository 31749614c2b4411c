"""The wire format: every message round-trips through the dict converter (cpp/python/schema_dicts.hpp, made from
the one declaration of each message in cpp/wire/messages.hpp), the bytes of the header and of one sample of
every message are pinned (tests/golden/wire_frames.json: a layout change is a protocol change), and the decoder
answers anything malformed with ProtocolError — never a crash, a hang, a huge allocation or another exception
(test_protocol_fuzz.py does the same under fuzzing; test_protocol_schema.py holds docs/protocol.md to the
declarations)."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pccl_arrays import _core, _core_testing
from pccl_arrays.errors import InvalidArgumentError, PCCLError, ProtocolError

MAGIC = 0x52414350
VERSION = 8
HEADER = struct.Struct("<IHHII")  # magic, version, type, length, reserved
MAX_CONTROL = 1 << 20
MAX_DATA = (64 << 20) + 24  # one piece plus the data header
MAX_STRING = 4096
MAX_PEERS = 65536

GOLDEN = Path(__file__).parent / "golden" / "wire_frames.json"
# Type codes from the schema; the golden frames and docs/protocol.md (test_protocol_schema.py) pin them.
TYPE_CODES = {m["name"]: m["code"] for m in _core_testing.schema()["messages"]}
MAX_STATE = 16 << 20  # SYNC_START / SYNC_PLAN
EMPTY_TYPES = {"heartbeat", "leave"}

RING = [{"id": 7, "host": "10.0.0.7", "port": 4000, "inbound": 0},
        {"id": 2**64 - 1, "host": "hôte-ü", "port": 65535, "inbound": 0}]

# One message of every type with every field set to something other than its default.
SAMPLES = {
    "hello": {"group": 3, "connections": 8, "host": "192.168.1.20", "port": 29500,
              "back": {"peer_id": 7, "epoch": 1796570000000, "ring": [7, 9, 4], "revision": 41, "synced": 1,
                       "committed": [117740004761338001, 117740004761338003], "in_doubt": [117740004761338005],
                       "doubt_sync": 0, "doubt_revision": 0}, "standby": 1},
    "welcome": {"peer_id": 0x0102030405060708, "epoch": 1796570000000, "relay_port": 40123},
    "heartbeat": {},
    "heartbeat_ack": {"pending": 4},
    "topo_request": {"seq": 12, "timeout_ms": 30000, "min_world": 2},
    "topo_result": {"seq": 12, "world_size": 5, "pending": 1, "ring": RING, "kind": 10, "reason": "timed out"},
    "op_start": {"tag": 99, "desc": {"count": 2**40 + 3, "dtype": 9, "op": 1, "collective": 3, "root": 2**62 + 9,
                                      "quant": 2, "qblock": 1024,
                                      "qround": 1, "qseed": 7, "qrotate": 1, "qreduce": 1, "shape": [2**20, 2**20 + 3], "structure": 2**63 + 5,
                                      "structure_text": "{'a': float32[3]}"},
                 "timeout_ms": 1800000, "min_world": 3},
    "op_go": {"tag": 99, "op_id": 17, "stripes": 4, "ring": RING, "slot": 3, "ring_epoch": 5},
    "op_reject": {"tag": 99, "kind": 6, "reason": "peers started different operations"},
    "op_done": {"op_id": 17, "ok": 0, "kind": 2, "reason": "peer 3 lost"},
    "op_commit": {"op_id": 17},
    "op_abort": {"op_id": 17, "kind": 2, "reason": "peer 3 (1.2.3.4:5) lost"},
    "pending_request": {"seq": 3, "timeout_ms": 0, "min_world": 0},
    "pending_reply": {"pending": 2},
    "leave": {},
    "kicked": {"reason": "silent for more than 10 s", "elsewhere": 0},
    "sync_start": {"revision": 2**40 + 1, "strategy": 2, "timeout_ms": 5000, "min_world": 2, "entries": [
        {"name": "layer.0.weight", "dtype": 10, "shape": [4096, 1024], "nbytes": 2**24, "hash": 2**64 - 2, "tolerate": 0},
        {"name": "rng", "dtype": 7, "shape": [], "nbytes": 8, "hash": 5, "tolerate": 1}]},
    "sync_plan": {"sync_id": 9, "ok": 1, "kind": 0, "reason": "", "revision": 12, "commit_now": 0, "fetch": [3, 1],
                  "expect": [2**63, 7],
                  "sends": [{"to": RING[0], "fetch": [0, 2], "begin": 10, "end": 2**40, "stripes": 4}],
                  "recvs": [{"from": 5, "begin": 0, "end": 10, "stripes": 2}]},
    "opt_start": {"seq": 4, "timeout_ms": 6000, "min_world": 2},
    "opt_plan": {"opt_id": 21, "seq": 4, "probe_ms": 700, "rounds": [{"send_to": RING[0], "recv_from": 9},
                                                                      {"send_to": {"id": 0, "host": "", "port": 0, "inbound": 1},
                                                                       "recv_from": 0}]},
    "opt_report": {"opt_id": 21, "links": [{"from": 9, "to": 7, "bandwidth": 12_500_000, "rtt_us": 40_000}]},
    "peer_hello": {"from": 3, "to": 4, "index": 2, "slot": 5, "mode": 3},
    "data": {"op_id": 17, "step": 3, "stripe": 1, "offset": 2**33, "payload": b"\x00\x01\xfe\xff" * 5},
    "auth_hello": {"context": 2, "nonce": bytes(range(32))},
    "auth_challenge": {"nonce": bytes(range(100, 132)), "encrypt": 1, "mac": bytes(range(200, 232))},
    "auth_proof": {"mac": bytes(range(1, 33))},
    "auth_refused": {"reason": "this master requires the run's secret"},
}
assert set(SAMPLES) == set(TYPE_CODES)


def header(type_code: int, length: int, magic: int = MAGIC, version: int = VERSION, reserved: int = 0) -> bytes:
    return HEADER.pack(magic, version, type_code, length, reserved)


def frame_of(type_name: str, payload: bytes) -> bytes:
    """A frame with a valid header around an arbitrary payload (so the payload decoder is what gets tested)."""
    return header(TYPE_CODES[type_name], len(payload)) + payload


def wstr(s: bytes | str) -> bytes:
    """A wire string: u16 byte count, then the bytes (str is encoded as UTF-8, bytes go as they are)."""
    if isinstance(s, str):
        s = s.encode()
    return struct.pack("<H", len(s)) + s


def assert_protocol_error(frame: bytes, match: str | None = None) -> None:
    with pytest.raises(ProtocolError, match=match):
        _core_testing.decode_frame(frame)


# --------------------------------------------------------------------------------------------- round trips


def test_protocol_version_is_exported():
    assert _core.PROTOCOL_VERSION == VERSION
    assert issubclass(ProtocolError, PCCLError)


def test_the_code_table_is_the_documented_protocol():
    # The package reads every code from _core.CODES; these are the values docs/protocol.md pins.
    codes = _core.CODES
    assert codes["dtype"] == {"int8": 0, "uint8": 1, "int16": 2, "uint16": 3, "int32": 4, "uint32": 5, "int64": 6,
                              "uint64": 7, "float16": 8, "bfloat16": 9, "float32": 10, "float64": 11}
    assert codes["op"] == {"sum": 0, "avg": 1, "prod": 2, "max": 3, "min": 4}
    assert codes["quant_kind"] == {"none": 0, "minmax": 1, "zeropoint": 2, "minmax4": 3}
    assert codes["rounding"] == {"nearest": 0, "stochastic": 1}
    assert codes["sync_strategy"] == {"enforce_popular": 0, "receive_only": 1, "send_only": 2}
    assert list(codes["error_kind"].values()) == list(range(1, 14))
    from pccl_arrays.errors import error_class

    for name in codes["error_kind"]:  # every kind the core raises has its own class (interrupted: KeyboardInterrupt)
        assert name == "interrupted" or error_class(name) is not PCCLError, name


@pytest.mark.parametrize("type_name", sorted(SAMPLES))
def test_every_message_round_trips(type_name):
    fields = SAMPLES[type_name]
    frame = _core_testing.encode_frame(type_name, fields)
    assert _core_testing.decode_frame(frame) == (type_name, fields)


def golden_frames() -> dict:
    """The bytes of every sample as protocol version 6 lays them out, checked once against a layout written by
    hand, field by field; regenerate only together with a protocol version bump (PCCL_REGEN_GOLDEN=1)."""
    import json
    import os

    if os.environ.get("PCCL_REGEN_GOLDEN"):
        frames = {name: _core_testing.encode_frame(name, f).hex() for name, f in sorted(SAMPLES.items())}
        GOLDEN.write_text(json.dumps({"version": VERSION, "frames": frames}, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert golden["version"] == VERSION, "a new protocol version: regenerate the golden frames"
    return {name: bytes.fromhex(h) for name, h in golden["frames"].items()}


@pytest.mark.parametrize("type_name", sorted(SAMPLES))
def test_every_message_has_the_pinned_bytes(type_name):
    frame = golden_frames()[type_name]
    assert _core_testing.encode_frame(type_name, SAMPLES[type_name]) == frame
    # And the decoder reads the pinned bytes, not only the encoder's own output.
    assert _core_testing.decode_frame(frame) == (type_name, SAMPLES[type_name])


def test_golden_frames_cover_every_message():
    assert set(golden_frames()) == set(TYPE_CODES) == set(SAMPLES)


def test_header_layout_byte_by_byte():
    frame = _core_testing.encode_frame("welcome", {"peer_id": 0x0102030405060708, "epoch": 0x1112131415161718,
                                                   "relay_port": 0x2122})
    assert len(frame) == 16 + 18
    assert frame[0:4] == bytes([0x50, 0x43, 0x41, 0x52]) == b"PCAR"  # magic 0x52414350, little-endian
    assert frame[4:6] == bytes([0x08, 0x00])  # protocol version 8
    assert frame[6:8] == bytes([0x02, 0x00])  # type 2 = welcome
    assert frame[8:12] == bytes([0x12, 0x00, 0x00, 0x00])  # payload length 18
    assert frame[12:16] == bytes([0x00, 0x00, 0x00, 0x00])  # reserved, zero
    assert frame[16:24] == bytes([0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01])  # u64 little-endian
    assert frame[24:32] == bytes([0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11])
    assert frame[32:34] == bytes([0x22, 0x21])  # u16 little-endian


def test_missing_fields_take_their_declared_defaults():
    assert _core_testing.decode_frame(_core_testing.encode_frame("hello", {})) == (
        "hello", {"group": 0, "connections": 1, "host": "", "port": 0,
                  "back": {"peer_id": 0, "epoch": 0, "ring": [], "revision": 0, "synced": 0, "committed": [],
                           "in_doubt": [], "doubt_sync": 0, "doubt_revision": 0}, "standby": 0})
    assert _core_testing.decode_frame(_core_testing.encode_frame("op_done", {})) == (
        "op_done", {"op_id": 0, "ok": 0, "kind": 0, "reason": ""})
    assert _core_testing.decode_frame(_core_testing.encode_frame("sync_plan", {}))[1]["ok"] == 1
    assert _core_testing.decode_frame(_core_testing.encode_frame("op_go", {}))[1]["stripes"] == 1
    assert _core_testing.decode_frame(_core_testing.encode_frame("data", {}))[1]["payload"] == b""


def test_extreme_values_round_trip():
    ring = [{"id": 2**64 - 1, "host": "x" * MAX_STRING, "port": 65535, "inbound": 1},
            {"id": 0, "host": "", "port": 0, "inbound": 0}]
    cases = {
        "hello": {"group": 2**32 - 1, "connections": 2**32 - 1, "host": "h" * MAX_STRING, "port": 65535,
                  "back": {"peer_id": 2**64 - 1, "epoch": 2**64 - 1, "ring": [2**64 - 1] * 3, "revision": 2**64 - 1,
                           "synced": 1, "committed": [2**64 - 1] * 1024, "in_doubt": [0] * 1024,
                           "doubt_sync": 2**64 - 1, "doubt_revision": 2**64 - 1}, "standby": 1},
        "topo_result": {"seq": 2**64 - 1, "world_size": 2**32 - 1, "pending": 2**32 - 1, "ring": ring, "kind": 255,
                        "reason": "r" * MAX_STRING},
        "op_start": {"tag": 2**64 - 1, "desc": {"count": 2**64 - 1, "dtype": 255, "op": 255, "collective": 4,
                                                 "root": 2**64 - 1, "quant": 255,
                                                 "qblock": 2**32 - 1, "qround": 255, "qseed": 2**32 - 1,
                                                 "qrotate": 1, "qreduce": 1, "shape": [2**64 - 1] * 32, "structure": 2**64 - 1,
                                                 "structure_text": "s" * MAX_STRING},
                     "timeout_ms": 2**32 - 1, "min_world": 2**32 - 1},
        "op_go": {"tag": 0, "op_id": 2**64 - 1, "stripes": 2**32 - 1, "ring": [], "slot": 2**32 - 1,
                  "ring_epoch": 2**64 - 1},
        "kicked": {"reason": "é" * (MAX_STRING // 2), "elsewhere": 1},  # 4096 bytes of UTF-8
        "data": {"op_id": 2**64 - 1, "step": 2**32 - 1, "stripe": 2**32 - 1, "offset": 2**64 - 1, "payload": b""},
    }
    for type_name, fields in cases.items():
        assert _core_testing.decode_frame(_core_testing.encode_frame(type_name, fields)) == (type_name, fields)


def test_control_frame_exactly_at_the_length_limit_decodes():
    # 20 bytes of fixed fields, then 255 peers with 4096-byte hosts and one with a 745-byte host (each peer
    # 15 bytes besides its host), then the error kind and an empty reason (3 bytes): 1 MiB exactly.
    ring = [{"id": i, "host": "a" * MAX_STRING, "port": i, "inbound": i % 2} for i in range(255)]
    ring.append({"id": 255, "host": "b" * 745, "port": 255, "inbound": 1})
    fields = {"seq": 1, "world_size": 256, "pending": 0, "ring": ring, "kind": 0, "reason": ""}
    frame = _core_testing.encode_frame("topo_result", fields)
    assert len(frame) == 16 + MAX_CONTROL
    assert _core_testing.decode_frame(frame) == ("topo_result", fields)


def test_encoder_refuses_strings_longer_than_the_wire_allows():
    with pytest.raises(InvalidArgumentError):
        _core_testing.encode_frame("kicked", {"reason": "x" * (MAX_STRING + 1)})
    with pytest.raises(InvalidArgumentError):
        _core_testing.encode_frame("hello", {"host": "é" * (MAX_STRING // 2 + 1)})  # 4098 bytes
    with pytest.raises(ValueError):
        _core_testing.encode_frame("no_such_message", {})
    with pytest.raises(ValueError, match="'grup' is not a field of Hello"):
        _core_testing.encode_frame("hello", {"grup": 3})
    with pytest.raises(ValueError, match="'cnt' is not a field of OpDesc"):
        _core_testing.encode_frame("op_start", {"desc": {"cnt": 3}})


# --------------------------------------------------------------------------------------- malformed headers


@pytest.mark.parametrize("index", range(4))
def test_bad_magic(index):
    frame = bytearray(_core_testing.encode_frame("heartbeat", {}))
    frame[index] ^= 0x01
    assert_protocol_error(bytes(frame), "magic")


@pytest.mark.parametrize("version", [0, 1, 2, 3, 4, 5, 6, 7, 9, 0x0100, 0xFFFF])
def test_wrong_protocol_version(version):
    assert_protocol_error(header(TYPE_CODES["heartbeat"], 0, version=version), "version")


@pytest.mark.parametrize("code", [0, 22, 31, 34, 39, 44, 0x0100, 0xFFFF])
def test_unknown_type(code):
    assert_protocol_error(header(code, 0), "unknown message type")


@pytest.mark.parametrize("byte", range(12, 16))
def test_reserved_bits_set(byte):
    frame = bytearray(_core_testing.encode_frame("heartbeat", {}))
    frame[byte] = 0x80
    assert_protocol_error(bytes(frame), "reserved")


@pytest.mark.parametrize("length", [MAX_CONTROL + 1, 2**31, 2**32 - 1])
@pytest.mark.parametrize("type_name", ["hello", "topo_result", "kicked", "heartbeat"])
def test_control_length_over_the_limit(type_name, length):
    # Only the header is present: a decoder that trusted the length would allocate or wait for 2 GiB.
    assert_protocol_error(header(TYPE_CODES[type_name], length), "over the limit")


@pytest.mark.parametrize("length", [MAX_DATA + 1, 2**31, 2**32 - 1])
def test_data_length_over_the_limit(length):
    assert_protocol_error(header(TYPE_CODES["data"], length), "over the limit")


def test_length_limits_are_exact():
    # At the limit the header is accepted and only the missing bytes are wrong; one past it the header is refused.
    assert_protocol_error(header(TYPE_CODES["kicked"], MAX_CONTROL), "does not match")
    assert_protocol_error(header(TYPE_CODES["kicked"], MAX_CONTROL + 1), "over the limit")
    assert_protocol_error(header(TYPE_CODES["data"], MAX_DATA), "does not match")
    assert_protocol_error(header(TYPE_CODES["data"], MAX_DATA + 1), "over the limit")


@pytest.mark.parametrize("size", range(16))
def test_shorter_than_a_header(size):
    assert_protocol_error(_core_testing.encode_frame("heartbeat", {})[:size])


# -------------------------------------------------------------------------------------- malformed payloads


@pytest.mark.parametrize("type_name", sorted(set(SAMPLES) - EMPTY_TYPES))
def test_truncated_payloads(type_name):
    payload = _core_testing.encode_frame(type_name, SAMPLES[type_name])[16:]
    for cut in range(len(payload)):
        if type_name == "data" and cut >= 24:
            continue  # a shorter piece is still a valid data frame
        # The header is consistent with the bytes: the payload itself is short.
        assert_protocol_error(frame_of(type_name, payload[:cut]))
        # The header promises more than arrives.
        assert_protocol_error(header(TYPE_CODES[type_name], len(payload)) + payload[:cut], "does not match")


@pytest.mark.parametrize("type_name", sorted(set(SAMPLES) - {"data"}))
def test_trailing_bytes(type_name):
    payload = _core_testing.encode_frame(type_name, SAMPLES[type_name])[16:]
    for extra in (b"\x00", b"\xff" * 7):
        assert_protocol_error(frame_of(type_name, payload + extra))
    # Bytes past the length the header gives.
    assert_protocol_error(_core_testing.encode_frame(type_name, SAMPLES[type_name]) + b"\x00", "does not match")


def test_trailing_bytes_of_a_data_frame_are_its_piece():
    frame = frame_of("data", struct.pack("<QIIQ", 1, 2, 3, 4) + b"piece")
    assert _core_testing.decode_frame(frame) == ("data", {"op_id": 1, "step": 2, "stripe": 3, "offset": 4, "payload": b"piece"})
    assert_protocol_error(frame + b"x", "does not match")  # but the header's length still rules


def test_data_frame_shorter_than_its_header():
    for cut in range(24):
        assert_protocol_error(frame_of("data", bytes(cut)))


def test_string_length_beyond_the_bytes_present():
    assert_protocol_error(frame_of("kicked", struct.pack("<H", 10) + b"abc"), "ends early")
    assert_protocol_error(frame_of("kicked", struct.pack("<H", 0xFFFF)), "ends early|string length")
    hello = struct.pack("<II", 0, 1) + struct.pack("<H", 200) + b"host" + struct.pack("<H", 1)
    assert_protocol_error(frame_of("hello", hello))


def test_string_length_over_the_wire_limit():
    assert_protocol_error(frame_of("kicked", struct.pack("<H", MAX_STRING + 1) + b"x" * (MAX_STRING + 1)), "string length")
    assert _core_testing.decode_frame(frame_of("kicked", wstr(b"x" * MAX_STRING) + b"\x01")) == (
        "kicked", {"reason": "x" * MAX_STRING, "elsewhere": 1})


def test_invalid_utf8_string_is_a_protocol_error():
    # Strings on the wire are bytes from an untrusted peer; the decoder must not leak a UnicodeDecodeError.
    for bad in (b"\xff", b"\xc3", b"ok\xed\xa0\x80", b"\x80abc"):
        assert_protocol_error(frame_of("kicked", wstr(bad)))
        assert_protocol_error(frame_of("hello", struct.pack("<II", 0, 1) + wstr(bad) + struct.pack("<H", 1)))


@pytest.mark.parametrize("type_name", ["topo_result", "op_go"])
def test_ring_counts_beyond_the_bytes_present(type_name):
    fixed = struct.pack("<QII", 1, 2, 0) if type_name == "topo_result" else struct.pack("<QQI", 1, 2, 1)
    one_peer = struct.pack("<Q", 5) + wstr(b"h") + struct.pack("<H", 6)
    assert_protocol_error(frame_of(type_name, fixed + struct.pack("<I", 2) + one_peer))
    for count in (100, MAX_PEERS, MAX_PEERS + 1, 2**31, 2**32 - 1):
        assert_protocol_error(frame_of(type_name, fixed + struct.pack("<I", count) + one_peer), "element count|ends early")
    # More peers than a ring may have, even with bytes to back the count.
    many = fixed + struct.pack("<I", MAX_PEERS + 1) + bytes(12 * (MAX_PEERS + 1))
    assert_protocol_error(frame_of(type_name, many), "element count")


@pytest.mark.parametrize("type_name", sorted(EMPTY_TYPES))
def test_empty_messages_carry_no_payload(type_name):
    assert _core_testing.decode_frame(frame_of(type_name, b"")) == (type_name, {})
    assert_protocol_error(frame_of(type_name, b"\x00"))


@pytest.mark.timeout(60)
def test_hostile_inputs_under_a_memory_limit():
    """Decoding hostile frames in a process whose address space is capped: a decoder that sized an allocation
    from a count or length field before checking it would die with MemoryError (or worse) here."""
    script = textwrap.dedent(
        """
        import resource, struct, sys
        from pccl_arrays import _core, _core_testing
        from pccl_arrays.errors import ProtocolError
        cap = 1 << 30
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
        H = struct.Struct("<IHHII")
        def h(t, n):
            return H.pack(0x52414350, _core.PROTOCOL_VERSION, t, n, 0)
        cases = [h(6, 2**32 - 1), h(33, 2**32 - 1), h(16, 2**31)]
        for t, fixed in ((6, struct.pack("<QII", 0, 0, 0)), (8, struct.pack("<QQI", 0, 0, 1))):
            for count in (2**32 - 1, 2**31, 2**20, 65536):
                p = fixed + struct.pack("<I", count) + bytes(64)
                cases.append(h(t, len(p)) + p)
        for p in (struct.pack("<H", 0xFFFF), struct.pack("<H", 0xFFFF) + bytes(100)):
            cases.append(h(16, len(p)) + p)
        for _ in range(20):
            for c in cases:
                try:
                    _core_testing.decode_frame(c)
                except ProtocolError:
                    pass
                else:
                    sys.exit("decoded a hostile frame: " + c[:32].hex())
        # The same frames on a sealed connection (a run with a secret): refused before anything is sized
        # from them, and a frame whose tag is missing or wrong is never yielded.
        for encrypt in (False, True):
            for c in cases:
                pipe = _core_testing.SealedPipe(b"secret", encrypt)
                try:
                    frames = pipe.open(c + bytes(16))
                except ProtocolError:
                    continue
                if frames:
                    sys.exit("a sealed reader yielded a forged frame: " + c[:32].hex())
        print("ok")
        """
    )
    import pccl_arrays

    # The pccl_arrays this test imported (installed, or a developer's in-tree build), from a neutral cwd.
    home = Path(pccl_arrays.__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50,
                       env={"PYTHONPATH": str(home), "PATH": "/usr/bin:/bin"}, cwd=Path(__file__).parent)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr


def test_state_frames_have_their_own_length_limit():
    # Entry lists of large models exceed the 1 MiB control limit; they get 16 MiB and not a byte more.
    for name in ("sync_start", "sync_plan"):
        assert_protocol_error(header(TYPE_CODES[name], MAX_STATE), "does not match")
        assert_protocol_error(header(TYPE_CODES[name], MAX_STATE + 1), "over the limit")
    entries = [{"name": f"layer.{i}.weight" + "x" * 100, "dtype": 10, "shape": [1024, 1024], "nbytes": 4 << 20,
                "hash": i, "tolerate": 0} for i in range(20000)]
    frame = _core_testing.encode_frame("sync_start", {"revision": 1, "strategy": 0, "entries": entries})
    assert MAX_CONTROL < len(frame) < MAX_STATE
    assert _core_testing.decode_frame(frame)[1]["entries"] == entries


@pytest.mark.parametrize("fields,needle", [
    ({"strategy": 3}, "SyncStart.strategy is 3, at most 2"),
    ({"entries": [{"name": "x", "tolerate": 2}]}, "StateEntry.tolerate is 2, at most 1"),
])
def test_bad_sync_start_fields_are_protocol_errors(fields, needle):
    assert_protocol_error(_core_testing.encode_frame("sync_start", fields), needle)


def test_bad_sync_plans_are_protocol_errors():
    assert_protocol_error(_core_testing.encode_frame("sync_plan", {"fetch": [1, 2], "expect": [5]}), "a hash for every")
    assert_protocol_error(_core_testing.encode_frame("sync_plan", {"recvs": [{"from": 1, "begin": 5, "end": 4}]}), "sync range")
    assert_protocol_error(_core_testing.encode_frame("sync_plan", {"recvs": [{"from": 1, "stripes": 0}]}), "sync range")
    dims = struct.pack("<QBIII", 0, 0, 0, 0, 1) + wstr("x") + struct.pack("<BI", 10, 33)  # more dimensions than allowed
    assert_protocol_error(frame_of("sync_start", dims + bytes(33 * 8 + 17)), "element count")
