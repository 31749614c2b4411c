"""The master's HTTP side (docs/monitoring.md): ``/metrics``, ``/status.json`` and the status page at ``/``.

How this works. Each request takes one copy of the master's state (``Master.status()``: bounded work under the
core's lock) and formats it on the HTTP thread: Prometheus text (metrics.py), JSON, or the static page
(status_page.html), whose script polls ``/status.json`` every second and redraws from it. Nothing here holds a
secret: the status has ids, addresses, counters and error messages, never key material, and no route changes
anything.
"""

from __future__ import annotations

import json
import time
import weakref
from importlib import resources
from typing import Optional

from . import metrics
from ._version import __version__
from .http_server import HttpServer

# The page runs its own inline script and fetches /status.json from the same origin; nothing else loads.
_PAGE_HEADERS = (b"Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
                 b"style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; "
                 b"form-action 'none'; frame-ancestors 'none'\r\nReferrer-Policy: no-referrer\r\n")
_page: Optional[bytes] = None


def page() -> bytes:
    global _page
    if _page is None:
        _page = resources.files(__package__).joinpath("status_page.html").read_bytes()
    return _page


def master_document(master, http_counts: Optional[dict] = None) -> dict:
    """``/status.json``: Master.status() plus who the master is and each group's ring bottleneck."""
    status = master.status()
    status["master"] = {"address": master.address, "epoch": master.epoch, "version": __version__,
                        "authenticated": master.authenticated, "encrypted": master.encrypted,
                        "time": time.time(), "http": dict(http_counts or {})}
    status["ring_bottleneck"] = {str(g): b for g, b in metrics.ring_bottlenecks(status).items()}
    status["groups"] = {str(g): v for g, v in status["groups"].items()}
    return status


def serve_master(master, listen: str) -> HttpServer:
    """The master's HTTP side. It holds the Master weakly (a dropped one is freed as without HTTP; its finalizer
    stops this server)."""
    ref, holder = weakref.ref(master), {}

    def counts() -> dict:
        return holder["server"].counts

    def live():
        m = ref()
        if m is None:
            raise RuntimeError("the master is gone")  # a 500, for the moment until the server stops
        return m

    routes = {
        "/metrics": lambda: (metrics.CONTENT_TYPE,
                             metrics.exposition(lambda: metrics.master_families(live().status(), counts()))),
        "/status.json": lambda: ("application/json", json.dumps(master_document(live(), counts())).encode()),
        "/": lambda: ("text/html; charset=utf-8", page(), _PAGE_HEADERS),
    }
    holder["server"] = server = HttpServer(listen, routes, what="http")
    weakref.finalize(master, server.stop)
    return server


def serve_peer(comm, peer_metrics, listen: str) -> HttpServer:
    """A peer's ``/metrics`` (Communicator(metrics=...)). It holds the communicator weakly: a dropped one is
    freed as without metrics (its finalizer stops this server)."""
    ref = weakref.ref(comm)
    return HttpServer(listen, {"/metrics": lambda: (metrics.CONTENT_TYPE, metrics.exposition(
        lambda: peer_metrics.families(ref())))}, what="metrics")
