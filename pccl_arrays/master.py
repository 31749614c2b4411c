"""The master: membership, ring order, votes, heartbeats and per-operation agreement (C++ core)."""

from __future__ import annotations

from typing import Optional

from . import _core
from . import secret as _secret
from .errors import InvalidArgumentError


class Master:
    """A master running inside this process, on its own thread.

    Args:
        listen: ``host:port`` to listen on; port 0 lets the OS choose (read it back from :attr:`address`).
        peer_timeout: seconds of silence after which a peer is evicted (a stalled or vanished peer).
        handshake_timeout: seconds a new connection has to say HELLO (and, with a secret, prove it) before it is
            dropped; also the bound on probing a newcomer's data address before it is admitted.
        secret: the run's secret (bytes or str; default: the ``PCCL_ARRAYS_SECRET`` environment variable, if
            set). With one, every connection of the run must prove it and every frame carries an integrity tag
            (docs/security.md); peers need the same secret.
        encrypt: also encrypt every frame of the run (needs a secret); peers learn it from the master.
        rejoin_window: for this many seconds after it starts, the master admits no newcomer into a group that
            has nobody in it yet, so that when it was restarted the run's returning peers come first and keep
            their ids (docs/master.md). A fresh run's first admission waits for it.
        require_inbound: refuse a newcomer whose data port the master cannot dial (NetworkError at its connect()),
            as before peers behind NAT were supported. Default False: such a peer is admitted and dials all its
            connections; two such peers reach each other through a relay (docs/nat.md).
        http: ``host:port`` (port 0: the OS chooses; read it back from :attr:`http_address`) on which to serve,
            read-only, ``/metrics`` (Prometheus), ``/status.json`` and a status page at ``/``, from a thread of
            its own (docs/monitoring.md). Default None: no HTTP. Bind it to loopback or a private address;
            docs/security.md says how to expose it.
    """

    def __init__(self, listen: str = "127.0.0.1:0", *, peer_timeout: float = _core.DEFAULTS["peer_timeout"],
                 handshake_timeout: float = _core.DEFAULTS["handshake_timeout"], secret: _secret.Secret = None,
                 encrypt: bool = False, rejoin_window: float = _core.DEFAULTS["rejoin_window"],
                 require_inbound: bool = False, http: Optional[str] = None):
        for name, value in (("peer_timeout", peer_timeout), ("handshake_timeout", handshake_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgumentError(f"{name} must be a positive number of seconds, not {value!r}")
        if isinstance(rejoin_window, bool) or not isinstance(rejoin_window, (int, float)) or not rejoin_window >= 0:
            raise InvalidArgumentError(f"rejoin_window must be a number of seconds >= 0, not {rejoin_window!r}")
        if not isinstance(require_inbound, bool):
            raise InvalidArgumentError(f"require_inbound must be True or False, not {require_inbound!r}")
        if http is not None:
            from .http_server import parse_listen

            parse_listen(http, "http")  # a bad address fails here, not at start()
        self._http_listen, self._http = http, None
        key = _secret.resolve(secret)
        if encrypt and key is None:
            raise InvalidArgumentError("encrypt=True needs a secret (secret= or PCCL_ARRAYS_SECRET)")
        self.authenticated, self.encrypted = key is not None, bool(encrypt)
        self._server = _core.MasterServer(listen=listen, peer_timeout=peer_timeout, handshake_timeout=handshake_timeout,
                                          secret=key, encrypt=bool(encrypt), rejoin_window=float(rejoin_window),
                                          require_inbound=require_inbound)

    def start(self) -> "Master":
        """Binds and starts serving (and the HTTP side, with ``http=``); returns self."""
        self._server.start()
        if self._http_listen is not None and self._http is None:
            from . import status_page

            try:
                self._http = status_page.serve_master(self, self._http_listen)
            except BaseException:
                self._server.stop()
                raise
        return self

    def stop(self) -> None:
        """Closes every connection; peers then see the master as unreachable. The HTTP side stops too."""
        if self._http is not None:
            self._http.stop()
            self._http = None
        self._server.stop()

    @property
    def address(self) -> str:
        """``host:port`` the master is bound to (the real port when started with port 0)."""
        return self._server.address

    @property
    def epoch(self) -> int:
        """This master's incarnation: its start time in milliseconds (peers never go back to an older one)."""
        return self._server.epoch

    @property
    def running(self) -> bool:
        return self._server.running

    def stats(self) -> dict:
        """Counters: peers_accepted, ops_committed/aborted/rejected, evictions, dropped_connections, recent_drops,
        syncs_committed/aborted/refused, optimizations, links_probed, links_known, takeovers (groups re-formed
        from peers an earlier master had admitted: docs/master.md), fenced, cpu_seconds (the master thread's CPU
        time); peers behind NAT (docs/nat.md): outbound_only (admitted peers nobody can dial), relayed_edges (ring
        edges between two of them, each through a relay), master_relay_pipes and master_relay_bytes (what the
        master's own relay carried)."""
        return self._server.stats()

    @property
    def http_address(self) -> Optional[str]:
        """``host:port`` of the HTTP side while it serves (``http=``), else None."""
        return None if self._http is None else self._http.address

    def status(self) -> dict:
        """A copy of what the master knows, for monitoring (docs/monitoring.md; ``/status.json`` serves it):
        ``stats`` (as :meth:`stats`), ``peers`` (id, group, address, data_address, state, activity, age_s,
        heartbeat_age_s, inbound, synced), ``groups`` (ring, revision, syncs, sync_bytes, last sync), ``recent``
        (the last 64 collectives, newest first: what, outcome, cause, reason, duration_s, ago_s, bytes, world),
        ``links``, the counters by cause and the duration and size histograms. Bounded work under the core's
        lock: safe to call every second."""
        return self._server.status()

    def links(self) -> list[dict]:
        """The link measurements optimize_topology() left (``from``, ``to`` peer ids, ``bandwidth`` in bytes/s,
        ``rtt_us``): one per ordered pair of current peers that was probed (docs/topology.md)."""
        return self._server.links()

    def __repr__(self) -> str:
        mode = "encrypted" if self.encrypted else "authenticated" if self.authenticated else "no secret"
        return f"Master({self.address!r}, {mode}, {'running' if self.running else 'stopped'})"

    def __enter__(self) -> "Master":
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
