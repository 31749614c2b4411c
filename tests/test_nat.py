"""Peers behind NAT on loopback (docs/nat.md): peers with no data port at all (``listen=None``), which is what a
peer behind NAT amounts to once the master's probe has failed. Every case runs everywhere; the same cases with
real address translation are tests/test_nat_netns.py, and the churn with kills is tests/test_nat_churn.py.

Peers run as threads of this process here: what is checked is who dials whom, the ring, the relays and the
bytes, not process deaths. Each case asserts exact results on every peer and what the master and each peer say
about reachability and relays."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import pccl_arrays as pa
from pccl_arrays import _core_testing
from pccl_arrays.errors import InvalidArgumentError, NetworkError, PeerLostError

N = 1 << 16


def _contribution(index: int, step: int, n: int = N) -> np.ndarray:
    """Small integers (exact in float64 sums), different for every peer and step."""
    return ((np.arange(n, dtype=np.int64) * (index + 3) + step * 7) % 23 - 11).astype(np.float64)


def run_group(master, kinds: list, body, **comm_kw) -> tuple:
    """Peers as threads: kinds[i] is "in" (a data port the master reaches) or "out" (listen=None). Each joins,
    waits for all, and returns body(comm, i); exceptions are re-raised here. Returns the results and the master's
    stats read once every body has returned, before anyone leaves."""
    results: list = [None] * len(kinds)
    errors: list = []
    stats: dict = {}
    done = threading.Barrier(len(kinds), action=lambda: stats.update(master.stats()), timeout=60)

    def peer(i: int) -> None:
        kw = dict(connections=2, connect_timeout=5.0, data_timeout=10.0, **comm_kw)
        if kinds[i] == "out":
            kw["listen"] = None
        try:
            with pa.Communicator(master.address, **kw) as comm:
                comm.wait_for_peers(len(kinds), timeout=30)
                try:
                    results[i] = body(comm, i)
                finally:
                    done.wait()
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=peer, args=(i,), daemon=True) for i in range(len(kinds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a peer hung"
    if errors:
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), errors[0])
    return results, stats


def exact_all_reduces(comm, i, steps=3) -> dict:
    """All-reduces whose sum every peer can check: each peer's contribution is a function of (peer index, step),
    and the indices of the group are all-gathered first."""
    indices = comm.all_gather(np.array([i], np.int64)).reshape(-1).tolist()
    for step in range(steps):
        got = comm.all_reduce(_contribution(i, step))
        want = sum(_contribution(k, step) for k in indices)
        assert np.array_equal(got, want), f"peer {i} step {step}: wrong sum"
    ring = comm.ring()
    return {"id": comm.peer_id, "inbound": comm.inbound, "ring": ring, "relay": comm.relay_stats()}


def inbound_by_id(results) -> dict:
    return {r["id"]: r["inbound"] for r in results}


def neighbours_behind_nat(ring, inbound) -> int:
    n = len(ring)
    pairs = {tuple(sorted((ring[k], ring[(k + 1) % n]))) for k in range(n)} if n > 1 else set()
    return sum(1 for a, b in pairs if not inbound[a] and not inbound[b])


@pytest.mark.timeout(120)
def test_peers_without_a_data_port_all_reduce_exactly_between_reachable_ones(master):
    results, stats = run_group(master, ["in", "out", "in", "out"], exact_all_reduces)
    inbound = inbound_by_id(results)
    assert sorted(inbound.values()) == [False, False, True, True]
    for r in results:
        assert r["ring"] == results[0]["ring"]
        assert neighbours_behind_nat(r["ring"], inbound) == 0, r["ring"]  # kept apart: nothing to relay
    assert stats["outbound_only"] == 2 and stats["relayed_edges"] == 0
    # The all_gather moved bytes between every pair, the two peers behind NAT too: through a reachable peer.
    relayed = [r["relay"]["relayed_connections"] for r in results if not r["inbound"]]
    assert all(n > 0 for n in relayed) and all(r["relay"]["via_master"] == 0 for r in results)
    assert sum(r["relay"]["relay_pipes"] for r in results if r["inbound"]) > 0
    assert stats["master_relay_pipes"] == 0


@pytest.mark.timeout(120)
def test_more_than_half_behind_nat_relays_through_the_reachable_peer(master):
    results, stats = run_group(master, ["in", "out", "out", "out"], exact_all_reduces)
    inbound = inbound_by_id(results)
    ring = results[0]["ring"]
    assert neighbours_behind_nat(ring, inbound) == 2  # the fewest possible with 3 of 4 behind NAT
    assert stats["relayed_edges"] == 2 and stats["outbound_only"] == 3
    reachable = next(r for r in results if r["inbound"])
    assert reachable["relay"]["relay_pipes"] > 0 and reachable["relay"]["relay_bytes"] > 3 * N * 8
    assert stats["master_relay_pipes"] == 0


@pytest.mark.timeout(120)
def test_two_peers_behind_nat_alone_use_the_masters_relay(master):
    results, stats = run_group(master, ["out", "out"], exact_all_reduces)
    assert [r["inbound"] for r in results] == [False, False]
    assert all(r["relay"]["via_master"] > 0 for r in results)
    assert stats["master_relay_pipes"] > 0 and stats["master_relay_bytes"] > 3 * N * 8
    assert stats["relayed_edges"] == 1


@pytest.mark.timeout(120)
def test_state_reaches_a_newcomer_behind_nat_from_a_holder_behind_nat(master):
    """The holder and the first newcomer both have no data port: the state moves through the master's relay.
    Then a reachable peer joins and gets it too (by a call), and optimize_topology() probes every ordered pair
    but the two between the peers behind NAT."""
    expected = np.arange(N, dtype=np.float32) * 0.5
    first_synced = threading.Event()
    out: dict = {}

    def peer(name: str) -> None:
        kw = {} if name == "in" else {"listen": None}
        with pa.Communicator(master.address, connect_timeout=5.0, **kw) as comm:
            holder = name == "holder"
            state = pa.SharedState({"w": expected.copy() if holder else np.zeros(N, np.float32)},
                                   revision=7 if holder else 0)
            if holder:
                comm.sync_shared_state(state)  # alone: its state becomes the group's
                comm.wait_for_peers(2, timeout=30)
            if name != "in":
                info = comm.sync_shared_state(state)  # the newcomer behind NAT receives it
                first_synced.set()
                comm.wait_for_peers(3, timeout=30)
            info = comm.sync_shared_state(state) if name == "in" or holder else info  # the reachable one's turn
            if name == "out":
                comm.sync_shared_state(state)
            out[name] = (info, state["w"].copy(), state.revision, comm.optimize_topology())

    threads = [threading.Thread(target=peer, args=(name,), daemon=True) for name in ("holder", "out", "in")]
    threads[0].start()
    threads[1].start()
    assert first_synced.wait(60)
    threads[2].start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and set(out) == {"holder", "out", "in"}, out.keys()
    for name in ("out", "in"):
        info, w, revision, _ = out[name]
        assert revision == 7 and np.array_equal(w, expected), name
        assert info.bytes_received == N * 4, name
    assert master.stats()["master_relay_pipes"] > 0  # the first transfer went through the master's relay
    # Six ordered pairs among three peers; the two between the peers behind NAT are not probed.
    assert master.stats()["links_probed"] == 4


@pytest.mark.timeout(60)
def test_with_require_inbound_a_peer_without_a_data_port_is_refused():
    with pa.Master("127.0.0.1:0", rejoin_window=0.0, require_inbound=True) as m:
        with pa.Communicator(m.address, connect_timeout=5.0) as reachable:
            comm = pa.Communicator(m.address, listen=None, connect_timeout=5.0)
            with pytest.raises(NetworkError, match="no data port.*require_inbound|require_inbound.*no data port"):
                comm.connect(timeout=10)
            assert reachable.inbound and m.stats()["peers_accepted"] == 1


def test_arguments_of_peers_without_a_data_port_are_checked():
    with pytest.raises(InvalidArgumentError, match="advertise"):
        pa.Communicator("127.0.0.1:1", listen=None, advertise="10.0.0.1")
    with pytest.raises(InvalidArgumentError, match="inbound"):
        pa.Communicator("127.0.0.1:1", inbound="no")
    with pytest.raises(InvalidArgumentError, match="listen"):
        pa.Communicator("127.0.0.1:1", listen="")
    with pytest.raises(InvalidArgumentError, match="require_inbound"):
        pa.Master("127.0.0.1:0", require_inbound=1)


@pytest.mark.timeout(60)
def test_inbound_false_means_no_data_port(master):
    with pa.Communicator(master.address, inbound=False, connect_timeout=5.0) as comm:
        assert comm.data_port == 0 and comm.inbound is False
        assert master.stats()["outbound_only"] == 1


# ------------------------------------------------------------------------------------------------ security


def _through_a_relay_with_a_secret(tap: dict, encrypt: bool, value: float = 1234.5) -> tuple:
    """Two peers behind NAT and one reachable peer (the relay between them) in a run with a secret; the relay's
    test tap records and/or flips bytes of what it carries. Returns (results, bytes the tap kept, master stats)."""
    secret = b"nat test secret"
    with pa.Master("127.0.0.1:0", rejoin_window=0.0, secret=secret, encrypt=encrypt) as m:
        _core_testing.relay_tap(**tap)
        try:
            def body(comm, i):
                x = np.full(N, value, np.float32)
                retries = 0
                while True:
                    try:
                        got = comm.all_reduce(x)
                        break
                    except PeerLostError as e:  # a forged piece: the operation fails everywhere, retry
                        retries += 1
                        last = str(e)
                assert np.array_equal(got, np.full(N, 3 * value, np.float32))
                return {"retries": retries, "error": last if retries else "", "relay": comm.relay_stats()}
            results, stats = run_group(m, ["in", "out", "out"], body, secret=secret)
            return results, _core_testing.relay_recorded(), stats
        finally:
            _core_testing.relay_tap()


@pytest.mark.timeout(120)
def test_a_relay_of_an_encrypted_run_carries_sealed_bytes_only():
    pattern = np.full(64, 1234.5, np.float32).tobytes()
    results, kept, stats = _through_a_relay_with_a_secret({"record": 1 << 20}, encrypt=True)
    assert stats["relayed_edges"] == 1 and len(kept) > N * 4  # the relay carried a whole contribution
    assert pattern not in kept  # it never saw a float of the data in the clear
    # The same run without encryption (integrity only) shows what the check above would have found.
    results, kept, stats = _through_a_relay_with_a_secret({"record": 1 << 20}, encrypt=False)
    assert pattern in kept


@pytest.mark.timeout(120)
def test_a_byte_changed_by_the_relay_is_caught_and_the_retry_is_exact():
    """A relay that changes one byte of a data piece (after the handshake and the sealed PEER_HELLO) makes the
    operation fail on every peer with a retryable PeerLostError naming the failed check; the retry is exact."""
    results, kept, stats = _through_a_relay_with_a_secret({"flip_at": 4096}, encrypt=False)
    assert all(r["retries"] == 1 for r in results), results
    assert any("integrity" in r["error"] or "forged" in r["error"] for r in results), results


# ------------------------------------------------------------------------------------- kills mid-operation


def check_kill_mid_operation(peers, victim, world, t_kill_file) -> list:
    """The victim SIGKILLed itself once 8 MiB of an all-reduce had moved (scenarios.fail_mid_op): every survivor
    got a retryable PeerLostError within 2 s, kept its input, and the retry on the smaller ring was exact."""
    import signal

    assert peers[victim].proc.returncode == -signal.SIGKILL
    t_kill = float(t_kill_file.read_text())
    survivors = [p.result() for p in peers if p.rank != victim]
    for res in survivors:
        assert res["error"] == "PeerLostError" and res["retryable"], res
        assert res["t_error"] - t_kill < 2.0, res
        assert res["input_intact"] and res["retry_world"] == world - 1 and res["retry_exact"], res
    return survivors


@pytest.mark.timeout(90)
@pytest.mark.parametrize("victim", [1, 0], ids=["a peer behind NAT", "the relaying peer"])
def test_a_kill_mid_operation_behind_nat_gives_peer_lost_and_an_exact_retry(master, tmp_path, victim):
    """Three peers, 1 and 2 without a data port: their ring edge goes through peer 0's relay. Killed mid-operation:
    peer 1 (behind NAT; the retry runs between 0 and 2, by a call), or peer 0 (the relay: the retry between the
    two behind NAT goes through the master's relay)."""
    from procs import spawn, wait_all

    world = 3
    peers = [spawn(master.address, "fail_mid_op", r, world, tmp_path, n=4 << 20, victim=victim, how="kill",
                   behind_nat=[1, 2]) for r in range(world)]
    wait_all(peers, 60)
    check_kill_mid_operation(peers, victim, world, tmp_path / "stamp")
    stats = master.stats()
    assert stats["ops_aborted"] >= 1
    assert (stats["master_relay_pipes"] > 0) == (victim == 0)  # with the relay gone, the master's took over
