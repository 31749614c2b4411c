"""A multi-region internet on one machine: every ordered pair of peers gets the one-way delay and bandwidth of
its regions' link, and every peer an access-link cap (docs/topology.md).

How this works. Peer p of a network gets its own loopback address, ``127.0.0.(10 + p)``: it listens there
(``Communicator(listen=f"{net.host(p)}:0")``), and the core dials other peers from the address it listens on,
so every connection carries its sender's identity as its source address. Each peer's data port sits behind
its own relay (``net.relay(p)``, a :class:`pccl_arrays.wan.Relay` whose route depends on the source), which the
peer advertises. For a connection from peer i to peer j, the relay in front of j delays what flows toward j by
the one-way delay of region(i) → region(j) and paces it through two buckets: one per source peer (the pair's
bandwidth, shared by all connections from i to j) and j's access link (shared by everything j receives); what
flows back gets the reverse delay and the j → i pair's bandwidth. A source it does not know (the master's
reachability probe, a test's client) is passed through undelayed.

The layout is a small JSON document (or the same dict)::

    {"regions": {"eu": 2, "us": 2, "asia": 2},      # peers per region, numbered in this order
     "inside": {"delay_ms": 1, "mbps": 400},        # any two peers of one region
     "access_mbps": 400,                            # each peer's download cap (optional)
     "links": [{"from": "eu", "to": "us", "delay_ms": 40, "mbps": 50},
               {"from": "us", "to": "eu", "delay_ms": 40, "mbps": 30}, ...]}   # a missing reverse: the same

Speeds are the emulated ones (scaled down, as pccl_arrays.wan's profiles are). Bandwidths are per ordered pair
of peers: k connections from i to j share one pair's bandwidth.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Union

from .errors import InvalidArgumentError
from .wan import Profile, Relay, _Bucket

BASE = 10  # peer p listens on 127.0.0.(BASE + p)


@dataclasses.dataclass(frozen=True)
class Link:
    delay_s: float
    Bps: Optional[float]  # None: no cap


class Regions:
    """A parsed layout: peers, their regions, and the link of every ordered pair of regions."""

    def __init__(self, spec: Union[dict, str, Path]):
        if not isinstance(spec, dict):
            spec = json.loads(Path(spec).read_text())
        try:
            counts = dict(spec["regions"])
            inside = spec.get("inside", {})
            self.inside = Link(float(inside.get("delay_ms", 0)) / 1e3, _bps(inside.get("mbps")))
            self.access_Bps = _bps(spec.get("access_mbps"))
            self.links: dict[tuple[str, str], Link] = {}
            for link in spec.get("links", []):
                pair = (link["from"], link["to"])
                for name in pair:
                    if name not in counts:
                        raise InvalidArgumentError(f"link {pair} names an unknown region {name!r}")
                self.links[pair] = Link(float(link["delay_ms"]) / 1e3, _bps(link.get("mbps")))
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidArgumentError(f"a regions layout needs 'regions' and well-formed 'links': {e}") from None
        for (a, b), link in list(self.links.items()):
            self.links.setdefault((b, a), link)
        self.region_of: list[str] = [name for name, count in counts.items() for _ in range(int(count))]
        if not 1 <= len(self.region_of) <= 240:
            raise InvalidArgumentError(f"a regions layout holds 1 to 240 peers, not {len(self.region_of)}")
        for a in counts:
            for b in counts:
                if a != b and (a, b) not in self.links:
                    raise InvalidArgumentError(f"no link between regions {a!r} and {b!r}")

    @property
    def peers(self) -> int:
        return len(self.region_of)

    def host(self, p: int) -> str:
        """The loopback address peer p listens on and dials from."""
        return f"127.0.0.{BASE + p}"

    def peer_of(self, host: str) -> Optional[int]:
        try:
            a, b, c, d = (int(x) for x in host.split("."))
        except ValueError:
            return None
        p = d - BASE
        return p if (a, b, c) == (127, 0, 0) and 0 <= p < self.peers else None

    def link(self, i: int, j: int) -> Link:
        """The emulated path from peer i to peer j."""
        ri, rj = self.region_of[i], self.region_of[j]
        return self.inside if ri == rj else self.links[(ri, rj)]

    def matrix(self) -> tuple[list[list[float]], list[list[float]]]:
        """(bandwidth B/s, one-way delay s) of every ordered pair, with the access caps applied: what an ideal
        measurement would find (inf where nothing caps)."""
        n = self.peers
        bw = [[0.0] * n for _ in range(n)]
        lat = [[0.0] * n for _ in range(n)]
        for i in range(n):
            for j in range(n):
                if i != j:
                    link = self.link(i, j)
                    caps = [c for c in (link.Bps, self.access_Bps) if c]
                    bw[i][j] = min(caps) if caps else float("inf")
                    lat[i][j] = link.delay_s
        return bw, lat

    def relay(self, p: int) -> "RegionRelay":
        """The relay in front of peer p's data port (not started; give it the port with set_target)."""
        return RegionRelay(self, p)


class RegionRelay(Relay):
    """The relay in front of one peer: routes each connection by its source peer (see the module docstring)."""

    def __init__(self, regions: Regions, peer: int):
        super().__init__(None, Profile("regions", 0.0, None, None), listen=f"{regions.host(peer)}:0")
        self.regions, self.peer = regions, peer
        self._access = _Bucket(regions.access_Bps)
        self._pairs: dict[tuple[int, int], _Bucket] = {}
        self.sources: set[int] = set()  # the peers seen connecting (by source address)

    def _pair(self, i: int, j: int) -> _Bucket:
        if (i, j) not in self._pairs:
            self._pairs[(i, j)] = _Bucket(self.regions.link(i, j).Bps)
        return self._pairs[(i, j)]

    def _route(self, source: str):
        i, j = self.regions.peer_of(source), self.peer
        if i is None or i == j:
            return (0.0, []), (0.0, [])
        self.sources.add(i)
        there, back = self.regions.link(i, j), self.regions.link(j, i)
        return (there.delay_s, [self._pair(i, j), self._access]), (back.delay_s, [self._pair(j, i)])


def _bps(mbps) -> Optional[float]:
    if mbps is None or float(mbps) == 0:
        return None
    if float(mbps) < 0:
        raise InvalidArgumentError(f"a bandwidth must be positive, not {mbps}")
    return float(mbps) * 1e6 / 8
