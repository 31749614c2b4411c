"""The master's and a peer's metrics, and /status.json (docs/monitoring.md): a run of real peer processes whose
every event the counters must show, read back with the Prometheus client library's own parser; the HTTP side's
contract (read-only, addresses, the CLI). Abuse of the HTTP side is tests/test_monitoring_abuse.py, the page in
a browser tests/test_status_page.py."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import pccl_arrays as pa
from pccl_arrays.errors import InvalidArgumentError
from procs import spawn, wait_all

pytestmark = pytest.mark.timeout(120)


def get(address: str, path: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def scrape(address: str) -> dict:
    """{(name, frozenset(labels.items())): value} of every sample of /metrics, parsed by prometheus_client."""
    status, body, headers = get(address, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4"), (status, headers)
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    key = (name, frozenset((k, str(v)) for k, v in labels.items()))
    assert key in samples, f"{name}{labels} not exported; have {sorted(n for n, _ in samples)}"
    return samples[key]


def test_metrics_count_a_run_with_ops_a_join_a_sync_and_a_kill(tmp_path):
    """Three peer processes all-reduce 3 times; a fourth joins; the four sync a state it receives (4000 bytes); it
    is SIGKILLed during an all-reduce, which the three retry. /metrics, parsed by prometheus_client, counts
    exactly that; /status.json agrees with Master.stats(); rank 0's own /metrics counts its side."""
    ops, big, state_n = 3, 4 << 20, 1000
    with pa.Master("127.0.0.1:0", peer_timeout=2.0, handshake_timeout=2.0, rejoin_window=0.0,
                   http="127.0.0.1:0") as master:
        args = dict(ops=ops, big=big, state_n=state_n)
        peers = [spawn(master.address, "monitored", r, 4, tmp_path, **args) for r in range(3)]
        try:
            peer_metrics = peers[0].wait_event("metrics", 60).split()[1]
            for p in peers:
                p.wait_event("ops_done", 60)
            before_join = scrape(master.http_address)
            peers.append(spawn(master.address, "monitored", 3, 4, tmp_path, **args))
            for p in peers[:3]:
                p.wait_event("done", 60)
            samples = scrape(master.http_address)
            stats = master.stats()
            doc = json.loads(get(master.http_address, "/status.json")[1])
            mine = scrape(peer_metrics)
            (tmp_path / "release").write_text("")
            wait_all(peers, 60)
        finally:
            for p in peers:
                p.kill()
    results = [p.result() for p in peers[:3]]
    assert all(r["lost"] and r["retry_world"] == 3 and r["retry_exact"] for r in results), results
    assert results[1]["revision"] == 1

    assert value(before_join, "pccl_arrays_operations_committed_total") == ops
    assert value(before_join, "pccl_arrays_peers", group=0, state="accepted") == 3
    # ops + the all-reduce that opens every connection of the ring of four + the retry; the killed one aborted
    committed = ops + 2
    assert value(samples, "pccl_arrays_operations_committed_total") == committed == stats["ops_committed"]
    assert value(samples, "pccl_arrays_operations_started_total") == committed + 1
    assert value(samples, "pccl_arrays_operations_aborted_total", cause="peer_lost") == 1
    assert not [k for k in samples if k[0] == "pccl_arrays_operations_rejected_total"]
    assert value(samples, "pccl_arrays_peers", group=0, state="accepted") == 3
    assert value(samples, "pccl_arrays_admissions_total") == 4
    assert value(samples, "pccl_arrays_leaves_total") == 0
    assert value(samples, "pccl_arrays_evictions_total") == 0
    assert value(samples, "pccl_arrays_syncs_committed_total") == 1
    assert value(samples, "pccl_arrays_shared_state_revision", group=0) == 1
    assert value(samples, "pccl_arrays_sync_bytes_total", group=0) == state_n * 4
    assert value(samples, "pccl_arrays_operation_duration_seconds_count") == committed + 1
    assert value(samples, "pccl_arrays_operation_duration_seconds_bucket", le="+Inf") == committed + 1
    assert value(samples, "pccl_arrays_operation_bytes_sum") == (ops * 4096 + 8 + 2 * big) * 4
    assert value(samples, "pccl_arrays_master_connections") == 3
    assert value(samples, "pccl_arrays_authentication_failures_total") == 0
    assert value(samples, "pccl_arrays_master_cpu_seconds_total") > 0

    # /status.json holds Master.stats() and the same counts (nothing ran between the three reads)
    assert doc["stats"]["ops_committed"] == stats["ops_committed"] and doc["stats"]["evictions"] == stats["evictions"]
    assert {k: v for k, v in doc["stats"].items() if k != "cpu_seconds"} == \
           {k: v for k, v in stats.items() if k != "cpu_seconds"}
    assert doc["aborted_by_cause"] == {"peer_lost": 1}
    group = doc["groups"]["0"]
    assert len(group["ring"]) == 3 and group["revision"] == 1 and group["sync_bytes"] == state_n * 4
    assert sorted(p["id"] for p in doc["peers"]) == sorted(group["ring"])
    assert all(p["state"] == "accepted" and p["heartbeat_age_s"] < 2.0 for p in doc["peers"])
    recent = doc["recent"]  # newest first: the retry, the aborted one, ...
    assert [r["outcome"] for r in recent[:2]] == ["committed", "aborted"] and recent[1]["cause"] == "peer_lost"
    assert recent[0]["bytes"] == big * 4 and recent[0]["world"] == 3
    assert any(r["what"] == "sync_shared_state" and r["bytes"] == state_n * 4 for r in recent)

    # rank 0's own metrics: its committed collectives and the one that raised
    assert value(mine, "pccl_arrays_peer_operations_committed_total") == committed
    assert value(mine, "pccl_arrays_peer_operations_failed_total", error="PeerLostError") == 1
    assert value(mine, "pccl_arrays_peer_operation_duration_seconds_count") == committed
    assert value(mine, "pccl_arrays_peer_data_bytes_sent_total") > 2 * big  # the retry alone moves ~2 x 2/3 x big x 4


def test_the_http_side_is_read_only_and_says_nothing_of_the_secret():
    secret = "s3cret-" + "ab" * 20
    with pa.Master("127.0.0.1:0", secret=secret, encrypt=True, http="127.0.0.1:0") as master:
        with pa.Communicator(master.address, secret=secret) as comm:
            comm.all_reduce(np.ones(4, dtype=np.float32))
            for path in ("/", "/metrics", "/status.json", "/status.json?x=1"):
                status, body, _ = get(master.http_address, path)
                assert status == 200, path
                assert secret.encode() not in body and b"ab" * 20 not in body, path
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                req = urllib.request.Request(f"http://{master.http_address}/status.json", data=b"{}", method=method)
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(req, timeout=10)
                assert e.value.code == 405 and e.value.headers["Allow"] == "GET, HEAD"
            assert get(master.http_address, "/nope")[0] == 404
            doc = json.loads(get(master.http_address, "/status.json")[1])
            assert doc["master"]["encrypted"] and doc["stats"]["ops_committed"] == 1
            page_headers = get(master.http_address, "/")[2]
            assert "default-src 'none'" in page_headers["Content-Security-Policy"]
            with pytest.raises(pa.AuthenticationError):  # a stranger, counted
                pa.Communicator(master.address, secret="not-the-secret-" + "cd" * 16, connect_timeout=5).connect()
            samples = scrape(master.http_address)
            assert value(samples, "pccl_arrays_authentication_failures_total") == 1
            assert value(samples, "pccl_arrays_peers", group=0, state="accepted") == 1


def test_http_addresses_are_checked_and_the_server_stops_with_the_master():
    for bad in ("nonsense", "127.0.0.1:99999", "", 3.5):
        with pytest.raises(InvalidArgumentError):
            pa.Master(http=bad)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        m = pa.Master(http=f"127.0.0.1:{taken.getsockname()[1]}")
        with pytest.raises(InvalidArgumentError, match="cannot listen"):
            m.start()
        assert not m.running  # the master does not run half-started
    m = pa.Master().start()
    assert m.http_address is None  # off by default
    m.stop()
    with pa.Master(http="127.0.0.1:0") as m:
        address = m.http_address
        assert address.startswith("127.0.0.1:")
    assert m.http_address is None
    with pytest.raises(OSError):
        socket.create_connection(tuple(address.rsplit(":", 1)[0:1]) + (int(address.rsplit(":", 1)[1]),), timeout=2)


def test_the_cli_serves_the_status_page_with_http(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from pccl_arrays.cli import main; sys.exit(main())",
                             "master", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)  # not the tree
    try:
        line = proc.stdout.readline()
        assert line.startswith("pccl-arrays master status page on http://"), line
        address = line.split("http://")[1].strip().rstrip("/")
        assert "listening on" in proc.stdout.readline()
        status, body, _ = get(address, "/")
        assert status == 200 and b"<title>pccl_arrays master</title>" in body
        assert get(address, "/metrics")[0] == 200
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0, proc.stderr.read()


def test_a_peer_counts_its_own_collectives_and_retries():
    """Two peers as threads, one with metrics=: committed collectives, a failure by error class, and bytes per
    neighbour; the server stops with close()."""
    with pa.Master(peer_timeout=2.0, rejoin_window=0.0) as master:
        a = pa.Communicator(master.address, metrics="127.0.0.1:0")
        b = pa.Communicator(master.address)
        def both(fn):
            out = {}
            ts = [threading.Thread(target=lambda c=c: out.__setitem__(c, fn(c))) for c in (a, b)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(30)
            assert len(out) == 2, "a peer's call failed"
            return out

        both(lambda c: c.connect().wait_for_peers(2, timeout=30))
        both(lambda c: c.all_reduce(np.ones(1000, dtype=np.float32)))
        both(lambda c: c.broadcast(np.ones(10, dtype=np.float32), root=0))
        with pytest.raises(pa.errors.PCCLTimeoutError):
            a.all_reduce(np.ones(4, dtype=np.float32), timeout=0.3)  # b never calls
        samples = scrape(a.metrics_address)
        address = a.metrics_address
        assert value(samples, "pccl_arrays_peer_operations_committed_total") == 2
        assert value(samples, "pccl_arrays_peer_operations_failed_total", error="PCCLTimeoutError") == 1
        assert value(samples, "pccl_arrays_peer_link_bytes", peer=b.peer_id, direction="send") > 4000
        a.close()
        b.close()
    assert a.metrics_address is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=2)


def test_the_docs_list_every_metric_with_its_type():
    """docs/monitoring.md's tables name every metric a master and a peer export, with its type, and no other."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "monitoring.md").read_text()
    documented = {}
    for first, second, kind in re.findall(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \| (counter|gauge|histogram) \|", text,
                                          re.M):
        for name in filter(None, (first, second)):
            documented["pccl_arrays_" + (name.removesuffix("_total") if kind == "counter" else name)] = kind
    exported = {}
    with pa.Master(http="127.0.0.1:0") as master:
        with pa.Communicator(master.address, metrics="127.0.0.1:0") as comm:
            for address in (master.http_address, comm.metrics_address):
                for fam in text_string_to_metric_families(get(address, "/metrics")[1].decode()):
                    exported[fam.name] = fam.type
    assert documented == exported


def _dropped_frees_and_closes(owner: list, address: str) -> None:
    """Drops the only reference to owner[0] with the cycle collector off: it must be freed at once, and the HTTP
    port at `address` (which answered just before) must close."""
    import gc
    import weakref

    assert get(address, "/metrics")[0] == 200
    ref = weakref.ref(owner[0])
    gc.disable()
    try:
        owner.clear()
        assert ref() is None
    finally:
        gc.enable()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", int(address.rsplit(":", 1)[1])), timeout=2)


def test_a_dropped_master_or_communicator_is_freed_and_its_http_server_stops():
    """The HTTP servers hold their master or communicator weakly: dropped without stop() or close(), each is freed
    at once (no cycle collector needed) and its port closes, as without HTTP."""
    owner = [pa.Master(http="127.0.0.1:0").start()]
    _dropped_frees_and_closes(owner, owner[0].http_address)
    with pa.Master(rejoin_window=0.0) as master:
        owner = [pa.Communicator(master.address, metrics="127.0.0.1:0").connect()]
        _dropped_frees_and_closes(owner, owner[0].metrics_address)
