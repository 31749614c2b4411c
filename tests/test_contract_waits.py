"""Every wait is bounded or interruptible: a peer that never calls costs the others their timeout (+ < 1 s),
Ctrl-C raises KeyboardInterrupt within a second wherever a call blocks, close() never waits on operations in
flight, and first contact retries a master that is not up yet."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import pccl_arrays as pa
from pccl_arrays import errors
from procs import spawn, wait_all


@pytest.mark.timeout(90)
def test_a_peer_that_never_calls_costs_the_others_their_timeout(master, tmp_path):
    peers = [spawn(master.address, "never_calls", r, 2, tmp_path, timeout=1.5) for r in range(2)]
    idle_id = peers[1].wait_event("idle", 60).split()[1]
    wait_all([peers[0]], 30)
    (tmp_path / "release").write_text("")
    wait_all(peers, 30)
    res = peers[0].result()
    for what in ("all_reduce", "sync"):
        r = res[what]
        assert r["error"] == "PCCLTimeoutError" and r["is_timeout_error"], r
        assert 1.5 <= r["seconds"] < 1.5 + 1.0, r
        assert "did not" in r["message"] and f"peer {idle_id} (" in r["message"], r  # names the peer that never came


def _interrupt_when(peer, event):
    peer.wait_event(event, 60)
    time.sleep(0.3)  # let it block in the call (the test measures from the signal, not from this pause)
    t = time.monotonic()
    os.kill(peer.proc.pid, signal.SIGINT)
    return t


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", ["start", "wait"])
def test_ctrl_c_while_waiting_for_the_others_leaves_the_job_and_exits(master, tmp_path, where):
    peers = [spawn(master.address, "interrupted", r, 2, tmp_path, where=where, n=1024) for r in range(2)]
    peers[1].wait_event("idle", 60)
    t_signal = _interrupt_when(peers[0], "waiting")
    wait_all([peers[0]], 20)  # and the process exits normally: nothing hangs at interpreter exit
    res = peers[0].result()
    assert peers[0].proc.returncode == 0, peers[0].stderr()[-2000:]
    assert res["error"] == "KeyboardInterrupt", res
    assert res["t_interrupt"] - t_signal < 1.0, res
    assert res["after"]["error"] == "CommunicatorStateError" and "left the job" in res["after"]["message"], res
    (tmp_path / "release").write_text("")
    wait_all(peers, 30)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("where", ["topology", "connect"])
def test_ctrl_c_in_update_topology_and_connect(master, tmp_path, where):
    peers = [spawn(master.address, "interrupted_membership", 0, 2, tmp_path, where=where)]
    if where == "connect":  # rank 1 comes once rank 0 is in, so it waits for rank 0's vote
        peers[0].wait_event("idle", 60)
        peers.append(spawn(master.address, "interrupted_membership", 1, 2, tmp_path, where=where))
    t_signal = _interrupt_when(peers[-1], "waiting")
    wait_all([peers[-1]], 20)
    res = peers[-1].result()
    assert peers[-1].proc.returncode == 0, peers[-1].stderr()[-2000:]
    assert res["error"] == "KeyboardInterrupt" and res["t_interrupt"] - t_signal < 1.0, res
    assert res["after"]["error"] == "CommunicatorStateError", res
    (tmp_path / "release").write_text("")
    wait_all(peers, 30)


@pytest.mark.timeout(90)
def test_ctrl_c_while_data_moves_aborts_the_operation_everywhere_and_both_go_on(master, tmp_path):
    peers = [spawn(master.address, "interrupted", r, 2, tmp_path, where="data", n=1 << 24) for r in range(2)]
    wait_all(peers, 60)
    me, other = peers[0].result(), peers[1].result()
    assert me["error"] == "KeyboardInterrupt", me
    assert me["t_interrupt"] - me["t_signal"] < 1.0, me
    assert other["error"] == "PeerLostError" and other["retryable"] and "interrupted" in other["message"], other
    for res in (me, other):  # the communicator stays usable on both sides
        assert res["after"] == {"result": 3.0, "world": 2}, res


@pytest.mark.timeout(60)
def test_close_returns_at_once_with_an_operation_in_flight(master):
    a, b = pa.Communicator(master.address).connect(), pa.Communicator(master.address)
    joining = threading.Thread(target=b.connect, kwargs={"timeout": 20})
    joining.start()
    while a.total_world_size < 2:
        if a.are_peers_pending():
            a.update_topology()
        else:
            time.sleep(0.005)
    joining.join()
    handle = a.all_reduce_async(np.ones(4))  # b never calls
    with pytest.raises(errors.PCCLTimeoutError, match="still running"):
        handle.wait(0.2)
    t0 = time.monotonic()
    a.close()
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(errors.CommunicatorStateError):
        handle.wait(5)
    b.close()


@pytest.mark.timeout(60)
def test_connect_retries_until_the_master_is_up_and_with_connects():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # a free port for a master that starts a little later
    started = threading.Event()

    def late_master():
        time.sleep(0.5)
        m = pa.Master(f"127.0.0.1:{port}").start()
        started.set()
        holder.append(m)

    holder: list = []
    threading.Thread(target=late_master).start()
    with pa.Communicator(f"127.0.0.1:{port}", connect_timeout=10) as c:
        assert started.is_set() and c.total_world_size == 1
        assert c.all_reduce(np.ones(2))[0] == 1.0
    holder[0].stop()
    t0 = time.monotonic()
    with pytest.raises(errors.MasterUnreachableError, match="retries"):
        pa.Communicator("127.0.0.1:1", connect_timeout=1.0).connect()
    assert time.monotonic() - t0 < 2.5


def test_every_deliberate_error_is_a_pccl_error():
    with pytest.raises(errors.InvalidArgumentError):
        pa.Master("127.0.0.1:0", peer_timeout=0)
    with pytest.raises(errors.InvalidArgumentError):
        pa.Communicator("127.0.0.1:5", op_timeout=-1)
    with pytest.raises(errors.InvalidArgumentError):
        pa.Communicator("127.0.0.1:5", min_world_size=0)
    from pccl_arrays import wan

    for bad in ({"profile": "moon"}, {"listen": "nowhere"}, {"target": "host-without-port"}):
        with pytest.raises(errors.InvalidArgumentError):
            wan.Relay(**bad)
    with wan.Relay("127.0.0.1:9") as relay:  # a port in use: the second relay cannot listen there
        with pytest.raises(errors.NetworkError, match="cannot listen"):
            wan.Relay("127.0.0.1:9", listen=relay.address).start()
