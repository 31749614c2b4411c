"""Authenticated runs (docs/security.md): parties without the run's secret are refused quickly and no group
notices; every frame's integrity is checked, so a changed byte aborts the operation on every peer with a
retryable error and the retry is exact; with encryption, a recorded stream holds no plaintext; the master's
encryption policy cannot be stripped in flight. Peers are real processes; the attackers run in this one."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

import pccl_arrays as pa
from mitm import Mitm
from procs import spawn, wait_all

SECRET = "a test secret, not a good one"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def secure_master():
    with pa.Master("127.0.0.1:0", peer_timeout=3.0, handshake_timeout=2.0, secret=SECRET) as m:
        yield m


def _run_until_stopped(tmp_path, peers, master) -> list[dict]:
    (tmp_path / "STOP").touch()
    wait_all(peers, 60)
    results = [p.result() for p in peers]
    for res in results:
        assert "error" not in res, res.get("traceback")
    return results


def _closed_within(sock: socket.socket, seconds: float) -> float:
    """Reads until the other side closes; returns how long that took (fails past `seconds`)."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except socket.timeout:
        pytest.fail(f"the connection was still open after {seconds} s")
    return time.monotonic() - t0


def test_outsiders_are_refused_fast_and_the_group_does_not_notice(secure_master, tmp_path):
    peers = [spawn(secure_master.address, "secure_loop", r, 2, tmp_path, secret=SECRET, n=4096) for r in range(2)]
    for p in peers:
        p.wait_event("first_round", 60)
    accepted = secure_master.stats()["peers_accepted"]

    # No secret, and a wrong one: AuthenticationError at connect(), saying what is missing.
    for secret, words in ((None, "has none"), ("another secret", "secrets differ")):
        t0 = time.monotonic()
        with pytest.raises(pa.AuthenticationError, match=words):
            pa.Communicator(secure_master.address, secret=secret, connect_timeout=5).connect(timeout=5)
        assert time.monotonic() - t0 < 2.0

    # A recorded handshake, replayed: the master's fresh challenge makes the old proof worthless.
    with pa.Master("127.0.0.1:0", secret=SECRET) as other:
        recorder = Mitm(target=other.address).start()
        with pa.Communicator(recorder.address, secret=SECRET) as c:
            c.all_reduce(np.ones(4))
        recorder.stop()
    replay = recorder.recorded()
    assert len(replay) > 100
    with socket.create_connection(tuple(secure_master.address.rsplit(":", 1))) as s:
        s.sendall(replay)
        assert _closed_within(s, 2.0) < 2.0

    assert secure_master.stats()["peers_accepted"] == accepted
    results = _run_until_stopped(tmp_path, peers, secure_master)
    assert all(r["exact"] and r["failures"] == [] and r["rounds"] == results[0]["rounds"] for r in results), results


def test_a_raw_connection_to_a_data_port_is_dropped_without_disturbing_the_operation(secure_master, tmp_path):
    peers = [spawn(secure_master.address, "secure_loop", r, 2, tmp_path, secret=SECRET, n=1 << 18) for r in range(2)]
    port = int(peers[0].wait_event("data_port", 60).split()[1])
    peers[0].wait_event("first_round", 60)
    hello = struct_peer_hello(to=1)
    for payload in (hello, b"GET / HTTP/1.1\r\n\r\n", b""):
        with socket.create_connection(("127.0.0.1", port)) as s:
            if payload:
                s.sendall(payload)
            else:
                s.shutdown(socket.SHUT_WR)
            assert _closed_within(s, 3.0) < 3.0
    results = _run_until_stopped(tmp_path, peers, secure_master)
    assert all(r["exact"] and r["failures"] == [] for r in results), results


def struct_peer_hello(to: int) -> bytes:
    """A well-formed, unauthenticated PEER_HELLO frame (what a peer of a run without a secret sends)."""
    import struct

    return struct.pack("<IHHII", 0x52414350, pa._core.PROTOCOL_VERSION, 32, 24, 0) + struct.pack("<QQII", 9, to, 0, 0)


@pytest.mark.parametrize("flip_at", [170, 200_000])  # in the first data frame's header (after the
# handshake, 97 bytes, and the sealed PEER_HELLO, 56), and in a payload
def test_a_flipped_byte_aborts_on_every_peer_and_the_retry_is_exact(secure_master, tmp_path, flip_at):
    peers = [spawn(secure_master.address, "secure_loop", r, 2, tmp_path, secret=SECRET, n=1 << 18, rounds=3,
                   relay=(r == 1), flip_at=flip_at, connections=1) for r in range(2)]
    wait_all(peers, 90)
    results = [p.result() for p in peers]
    for res in results:
        assert "error" not in res, res.get("traceback")
        assert res["rounds"] == 3 and res["exact"], res  # the retries were exact, and no wrong sum was returned
        assert len(res["failures"]) == 1 and res["failures"][0]["error"] == "PeerLostError", res
    assert results[1]["relay_flipped"], "the relay never flipped a byte: the test did not test anything"
    assert any("integrity" in r["failures"][0]["message"] for r in results), results


@pytest.mark.parametrize("encrypt", [False, True])
def test_a_recorded_stream_holds_plaintext_only_without_encryption(tmp_path, encrypt):
    with pa.Master("127.0.0.1:0", peer_timeout=3.0, secret=SECRET, encrypt=encrypt) as m:
        peers = [spawn(m.address, "secure_loop", r, 2, tmp_path, secret=SECRET, n=1 << 16, rounds=2, relay=(r == 1),
                       record=True, known=True) for r in range(2)]
        wait_all(peers, 60)
    for p in peers:
        assert "error" not in p.result(), p.result().get("traceback")
    recorded = (tmp_path / "relay1.bin").read_bytes()
    assert len(recorded) > 2 * (1 << 16)  # rank 0's half of the array crossed the relay
    assert (b"KNOWN-PLAINTEXT!" * 4 in recorded) == (not encrypt)


def test_the_encryption_policy_cannot_be_stripped_in_flight():
    """A relay that clears the encrypt flag of the master's challenge: the peer refuses the master."""
    with pa.Master("127.0.0.1:0", secret=SECRET, encrypt=True) as m:
        relay = Mitm(target=m.address, flip_backward_at=16 + 32).start()  # header, nonce, then the flag
        with pytest.raises(pa.AuthenticationError, match="does not prove"):
            pa.Communicator(relay.address, secret=SECRET, connect_timeout=5).connect(timeout=5)
        relay.stop()
        assert relay.flipped == [("backward", 0)]


def test_secret_from_the_environment_and_never_in_messages(monkeypatch):
    monkeypatch.setenv("PCCL_ARRAYS_SECRET", SECRET)
    with pa.Master("127.0.0.1:0") as m, pa.Communicator(m.address) as c:
        assert m.authenticated and not m.encrypted and SECRET not in repr(m)
        assert c.all_reduce(np.arange(3.0))[2] == 2.0
    monkeypatch.delenv("PCCL_ARRAYS_SECRET")
    with pa.Master("127.0.0.1:0", secret=SECRET) as m:
        with pytest.raises(pa.AuthenticationError) as e:
            pa.Communicator(m.address, secret="wrong " + SECRET).connect(timeout=5)
        assert SECRET not in str(e.value)
    with pytest.raises(pa.errors.InvalidArgumentError, match="needs a secret"):
        pa.Master(encrypt=True)
    with pytest.raises(pa.errors.InvalidArgumentError, match="empty"):
        pa.Communicator("127.0.0.1:1", secret=b"")


def test_a_run_with_a_secret_rides_out_a_master_restart_and_no_stranger_can_claim_a_peer(tmp_path, monkeypatch):
    """docs/master.md: returning peers prove the secret again to the restarted master (the README loop, verbatim,
    goes on with one state per revision), and a party without it cannot claim a returning peer's id and revision:
    it is refused before its HELLO is read, and the run does not notice."""
    import json

    from pccl_arrays import _core_testing
    from procs import start_master_process

    monkeypatch.setenv("PCCL_ARRAYS_SECRET", SECRET)  # the master subprocess and the peers read it
    proc, address = start_master_process(tmp_path, peer_timeout=3.0)
    peers = [spawn(address, "readme_loop", r, 1, tmp_path, steps=120, compute_s=0.03) for r in range(3)]
    try:
        for p in peers:
            p.wait_event("started", 60)
        steps = tmp_path / "rank0.steps"
        deadline = time.monotonic() + 60
        while not (steps.exists() and steps.read_text().count('"sync"') >= 10):  # the run is going
            assert time.monotonic() < deadline, "the peers did not start stepping"
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        proc, _ = start_master_process(tmp_path, peer_timeout=3.0, listen=address, log="master2.log", bind_retry_s=5)
        host, port = address.rsplit(":", 1)
        stranger = socket.create_connection((host, int(port)), timeout=5)
        claim = {"peer_id": 1, "epoch": 1, "ring": [1, 2, 3], "revision": 10**6, "synced": 1, "committed": [],
                 "in_doubt": [], "doubt_sync": 0, "doubt_revision": 0}
        stranger.sendall(_core_testing.encode_frame("hello", {"group": 0, "connections": 1, "host": "127.0.0.1",
                                                             "port": 1, "back": claim}))
        reply = b""
        stranger.settimeout(5)
        try:
            while chunk := stranger.recv(4096):
                reply += chunk
        except ConnectionResetError:
            pass
        assert _core_testing.decode_frame(reply)[0] == "auth_refused", reply
        wait_all(peers, 90)
    finally:
        proc.kill()
        proc.wait()
    hashes: dict = {}
    for p in peers:
        res = p.result()
        assert p.proc.returncode == 0 and res.get("done"), (p.rank, res, p.stderr()[-3000:])
        for line in (tmp_path / f"rank{p.rank}.steps").read_text().splitlines():
            rec = json.loads(line)
            if "sync" in rec:
                hashes.setdefault(rec["sync"], set()).add(rec["hash"])
    assert max(hashes) >= 119 and all(len(h) == 1 for h in hashes.values()), hashes
