"""Prometheus metrics of a master and of a peer (docs/monitoring.md has every metric, its type and meaning).

How this works. The core keeps the counters (the master's in MasterState, copied out under its lock by
``Master.status()``); nothing is counted twice or kept in Python for the master. At each scrape the exporter
turns one copy into metric families (``prometheus_client``'s types) and ``prometheus_client`` writes the text
exposition format. A peer's metrics are counted here, in Python, as its collectives return or raise: the
committed ones with their latency and bytes, the failed ones by error class (each retryable one is a retry of
the step), plus the bytes of its pooled data connections per neighbour, read from the core at the scrape.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .errors import PCCLError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
P = "pccl_arrays_"


def _histogram(name: str, doc: str, h: dict, labels: dict | None = None) -> HistogramMetricFamily:
    """The core's histogram (per-bucket counts, the last above every bound) as a cumulative Prometheus one."""
    fam = HistogramMetricFamily(name, doc, labels=list(labels or {}))
    buckets, total = [], 0
    for bound, count in zip(list(h["bounds"]) + [float("inf")], h["counts"]):
        total += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
    fam.add_metric(list((labels or {}).values()), buckets, h["sum"])
    return fam


def ring_bottlenecks(status: dict) -> dict:
    """{group: the smallest measured bandwidth (bytes/s) over its ring's edges}, for groups of 2+ peers whose
    every ring edge was measured by optimize_topology()."""
    bw = {(l["from"], l["to"]): l["bandwidth"] for l in status["links"]}
    out = {}
    for group, g in status["groups"].items():
        ring = list(g["ring"])
        if len(ring) < 2:
            continue
        edges = [bw.get((a, b)) for a, b in zip(ring, ring[1:] + ring[:1])]
        if all(e is not None for e in edges):
            out[group] = min(edges)
    return out


def master_families(status: dict, http: dict | None = None) -> list:
    """Every metric of a master, from one ``Master.status()`` copy (and its HTTP server's counts)."""
    s = status["stats"]
    fams = []

    def counter(name, doc, value, labels: dict | None = None):
        f = CounterMetricFamily(P + name, doc, labels=list(labels or {}))
        f.add_metric(list((labels or {}).values()), value)
        fams.append(f)

    def gauge(name, doc, value):
        f = GaugeMetricFamily(P + name, doc)
        f.add_metric([], value)
        fams.append(f)

    peers = GaugeMetricFamily(P + "peers", "Peers connected to the master, by group and state (accepted: in "
                              "the group's ring; pending: waiting for admission; held: returning after a master "
                              "restart, waiting for a majority of their group)", labels=["group", "state"])
    counts: dict = {}
    for p in status["peers"]:
        counts[(str(p["group"]), p["state"])] = counts.get((str(p["group"]), p["state"]), 0) + 1
    for group in status["groups"]:
        counts.setdefault((str(group), "accepted"), 0)
    for (group, state), n in sorted(counts.items()):
        peers.add_metric([group, state], n)
    fams.append(peers)
    gauge("peers_outbound_only", "Admitted peers no other peer can dial (behind NAT)", s["outbound_only"])
    counter("admissions", "Newcomers admitted into a group", status["admissions"])
    counter("leaves", "Peers that left with close()", status["leaves"])
    counter("evictions", "Peers evicted after peer_timeout of silence", s["evictions"])
    counter("takeovers", "Groups this master took over from an earlier master's returning peers", s["takeovers"])
    counter("operations_started", "Collectives that started running (OP_GO sent)", status["ops_started"])
    counter("operations_committed", "Collectives committed on every member", s["ops_committed"])
    for kind, by_cause, doc in (("aborted", status["aborted_by_cause"], "Collectives aborted while running, by "
                                 "cause (peer_lost, timeout, interrupted, ...)"),
                                ("rejected", status["rejected_by_cause"], "Collectives refused before running, by "
                                 "cause (mismatch, too_few_peers, timeout, ...)")):
        f = CounterMetricFamily(P + f"operations_{kind}", doc, labels=["cause"])
        for cause, n in sorted(by_cause.items()):
            f.add_metric([cause], n)
        fams.append(f)
    fams.append(_histogram(P + "operation_duration_seconds", "Collectives that ran: seconds from OP_GO to the "
                           "commit or abort", status["op_seconds"]))
    fams.append(_histogram(P + "operation_bytes", "Collectives that ran: the array's bytes (elements x dtype "
                           "size)", status["op_bytes"]))
    counter("syncs_committed", "Shared-state syncs committed", s["syncs_committed"])
    counter("syncs_aborted", "Shared-state syncs aborted or refused for the whole group", s["syncs_aborted"])
    rev = GaugeMetricFamily(P + "shared_state_revision", "The group's last committed shared-state revision",
                            labels=["group"])
    sync_bytes = CounterMetricFamily(P + "sync_bytes", "State bytes the group's committed syncs moved",
                                     labels=["group"])
    for group, g in sorted(status["groups"].items()):
        rev.add_metric([str(group)], g["revision"])
        sync_bytes.add_metric([str(group)], g["sync_bytes"])
    fams += [rev, sync_bytes]
    counter("topology_updates", "Completed update_topology() votes", s["topology_updates"])
    counter("topology_optimizations", "Completed optimize_topology() calls", s["optimizations"])
    counter("links_probed", "Link bandwidth probes run by optimize_topology()", s["links_probed"])
    gauge("links_known", "Ordered peer pairs with a bandwidth measurement", s["links_known"])
    bottleneck = GaugeMetricFamily(P + "ring_bottleneck_bytes_per_second", "The slowest measured link of the "
                                   "group's current ring (only when every ring edge was measured)", labels=["group"])
    for group, b in sorted(ring_bottlenecks(status).items()):
        bottleneck.add_metric([str(group)], b)
    fams.append(bottleneck)
    gauge("relayed_edges", "Ring edges between two outbound-only peers (each through a relay)", s["relayed_edges"])
    counter("master_relay_bytes", "Bytes the master's own relay carried", s["master_relay_bytes"])
    counter("master_cpu_seconds", "CPU time of the master's event loop thread", s["cpu_seconds"])
    gauge("master_uptime_seconds", "Seconds since this master started", status["uptime_s"])
    gauge("master_connections", "TCP connections the master holds (peers, and connections not yet greeted)",
          status["connections"])
    counter("authentication_failures", "Handshakes that failed: a connection without the run's secret or with "
            "another one", status["auth_failures"])
    counter("dropped_connections", "Connections dropped (garbage, handshake timeout, crowding)",
            s["dropped_connections"])
    if http is not None:
        counter("http_requests", "Requests to this HTTP server", http["requests"])
        counter("http_bad_requests", "Requests answered with an error status (4xx, 5xx)", http["bad_requests"])
    return fams


class _Families:
    def __init__(self, collect: Callable[[], Iterable]):
        self.collect = collect


def exposition(families: Callable[[], Iterable]) -> bytes:
    """The text exposition of what ``families()`` returns."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


class PeerMetrics:
    """What a peer counts of its own collectives (Communicator(metrics=...)). Thread-safe: async collectives
    finish on pool threads."""

    _SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

    def __init__(self):
        self._lock = threading.Lock()
        self.committed = 0
        self.bytes_sent = self.bytes_received = 0
        self.failed: dict[str, int] = {}
        self._counts = [0] * (len(self._SECONDS) + 1)
        self._sum = 0.0

    def committed_one(self, info) -> None:
        with self._lock:
            self.committed += 1
            self.bytes_sent += info.bytes_sent
            self.bytes_received += info.bytes_received
            i = next((k for k, b in enumerate(self._SECONDS) if info.seconds <= b), len(self._SECONDS))
            self._counts[i] += 1
            self._sum += info.seconds

    def failed_one(self, error: BaseException) -> None:
        with self._lock:
            name = type(error).__name__
            self.failed[name] = self.failed.get(name, 0) + 1

    def families(self, comm) -> list:
        with self._lock:
            committed, sent, received = self.committed, self.bytes_sent, self.bytes_received
            failed, counts, total = dict(self.failed), list(self._counts), self._sum
        fams = []
        f = CounterMetricFamily(P + "peer_operations_committed", "This peer's collectives that committed")
        f.add_metric([], committed)
        fams.append(f)
        f = CounterMetricFamily(P + "peer_operations_failed", "This peer's collectives that raised, by error class "
                                "(each PeerLostError or TooFewPeersError is a retry of the step)", labels=["error"])
        for name, n in sorted(failed.items()):
            f.add_metric([name], n)
        fams.append(f)
        fams.append(_histogram(P + "peer_operation_duration_seconds", "This peer's committed collectives: seconds "
                               "from the start announcement to the commit",
                               {"bounds": self._SECONDS, "counts": counts, "sum": total}))
        for direction, value in (("sent", sent), ("received", received)):
            f = CounterMetricFamily(P + f"peer_data_bytes_{direction}", f"Bytes this peer's committed collectives "
                                    f"{direction} on data connections (frame headers included)")
            f.add_metric([], value)
            fams.append(f)
        links = GaugeMetricFamily(P + "peer_link_bytes", "Bytes moved on this peer's pooled data connections, by "
                                  "neighbour and direction (the pool's connections now: it starts again when they "
                                  "are replaced)", labels=["peer", "direction"])
        per: dict = {}
        try:
            conns = [] if comm is None else comm.connection_stats()
        except PCCLError:  # not connected yet, or closed
            conns = []
        for c in conns:
            key = (str(c["peer"]), c["direction"])
            per[key] = per.get(key, 0) + c["bytes"]
        for (peer, direction), n in sorted(per.items()):
            links.add_metric([peer, direction], n)
        fams.append(links)
        return fams

