"""A user-space WAN emulator: a TCP relay that gives every connection through it a one-way delay, a
per-connection bandwidth cap (what one window-limited TCP flow gets over a long path) and a link cap shared by
all its connections. It needs no privileges (tc's netem is absent here) and runs as a thread of any process,
or as ``pccl-arrays wan-relay``.

How this works. The relay listens on one address and forwards each accepted connection to its target. Each
direction of a connection is a pipe: a reader takes up to 64 KiB from the source socket and stamps the chunk
with the time its last byte leaves the emulated link,

    connection free = max(now, connection free) + n / c,   link free = max(now, link free) + n / L,
    depart = max(connection free, link free),

(the link's bucket is shared by every connection of that direction, so k flows get min(k c, L) together) and
with its arrival, depart + one-way delay. A
writer delivers the chunks in order at their arrival times. Bytes held per pipe are bounded by the
bandwidth-delay product plus 256 KiB, so a slow receiver pushes back on the sender as TCP would. Peers reach a
relayed peer through ``Communicator(advertise=relay.address)``; the relay forwards to the peer's data port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from typing import Optional

from .errors import InvalidArgumentError, NetworkError

CHUNK = 64 * 1024


@dataclasses.dataclass(frozen=True)
class Profile:
    """A path: round-trip time, per-connection cap and shared link cap (bytes per second; None: no cap)."""

    name: str
    rtt_s: float
    conn_Bps: Optional[float]
    link_Bps: Optional[float]

    @property
    def one_way_s(self) -> float:
        return self.rtt_s / 2

    def describe(self) -> str:
        def rate(v):
            return "none" if v is None else f"{v * 8 / 1e6:.0f} Mbit/s"
        return f"{self.name}: RTT {self.rtt_s * 1e3:.0f} ms, per connection {rate(self.conn_Bps)}, link {rate(self.link_Bps)}"


# Scaled down so that this 2-core machine is never the bottleneck (docs/benchmarks.md shows it is not): a real
# continental path gives one TCP flow of a 4 MiB window about 1.6 Gbit/s at 20 ms; here the same shape (a link
# worth 8 flows on the continent, 16 across the Atlantic, where each flow gets less) runs at about 1/50 scale.
PROFILES = {
    "continent": Profile("continent", 0.020, 4e6, 32e6),  # 32 / 256 Mbit/s
    "transatlantic": Profile("transatlantic", 0.090, 1e6, 16e6),  # 8 / 128 Mbit/s
    "lan": Profile("lan", 0.0004, None, None),
}


def profile_of(p) -> Profile:
    if isinstance(p, Profile):
        return p
    try:
        return PROFILES[p]
    except KeyError:
        raise InvalidArgumentError(f"unknown profile {p!r}; known: {', '.join(PROFILES)}") from None


def _host_port(text: str, what: str) -> tuple[str, int]:
    """``host:port`` as a (host, port) pair; anything else is an InvalidArgumentError naming the argument."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgumentError(f"{what} must be 'host:port', not {text!r}")
    return host, int(port)


class _Bucket:
    """When the emulated wire is next free, for one connection or one shared link (one direction)."""

    def __init__(self, rate: Optional[float]):
        self.rate, self.free = rate, 0.0


class Relay:
    """Listens on ``listen`` and forwards every connection to ``target`` through the emulated path.

    ``target`` may be set later (:meth:`set_target`): connections accepted before wait for it. Use as a context
    manager or call :meth:`start` / :meth:`stop`; :attr:`address` is where to connect (``host:port``).
    """

    def __init__(self, target: Optional[str] = None, profile="continent", listen: str = "127.0.0.1:0"):
        self.profile = profile_of(profile)
        _host_port(listen, "listen")
        self._listen = listen
        self._target: Optional[tuple[str, int]] = None
        self._target_set = threading.Event()
        if target:
            self.set_target(target)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._server = None
        self.address = ""
        self._links = {"forward": _Bucket(self.profile.link_Bps), "backward": _Bucket(self.profile.link_Bps)}
        self.bytes = {"forward": 0, "backward": 0}  # delivered, toward the target and back
        self.connections = 0

    def set_target(self, target: str) -> None:
        self._target = _host_port(target, "target")
        self._target_set.set()

    def follow(self, comm, host: str = "127.0.0.1") -> None:
        """Forwards to ``comm``'s data port on ``host`` as soon as its ``connect()`` has bound it (call before
        ``connect()``, which waits for the master's probe of the advertised address, i.e. of this relay)."""
        def point():
            while comm.data_port == 0:
                time.sleep(0.001)
            self.set_target(f"{host}:{comm.data_port}")
        threading.Thread(target=point, daemon=True, name="wan-relay-follow").start()

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> "Relay":
        ready = threading.Event()
        failure: list[BaseException] = []

        def run():
            self._loop = asyncio.new_event_loop()
            try:
                host, port = self._listen.rsplit(":", 1)
                self._server = self._loop.run_until_complete(
                    asyncio.start_server(self._handle, host, int(port), limit=4 * CHUNK))
                sock = self._server.sockets[0].getsockname()
                self.address = f"{host}:{sock[1]}"
            except OSError as e:  # surfaced by start()
                failure.append(NetworkError(f"the WAN relay cannot listen on {self._listen}: {e}"))
                ready.set()
                return
            except BaseException as e:  # surfaced by start()
                failure.append(e)
                ready.set()
                return
            ready.set()
            self._loop.run_forever()
            self._loop.close()

        self._thread = threading.Thread(target=run, name="wan-relay", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        self._loop = None

    def __enter__(self) -> "Relay":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- forwarding ---------------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while not self._target_set.is_set():
                await asyncio.sleep(0.005)
            host, port = self._target
            t_reader, t_writer = await asyncio.open_connection(host, port, limit=4 * CHUNK)
        except (OSError, asyncio.CancelledError):
            writer.close()
            return
        for w in (writer, t_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        source = (writer.get_extra_info("peername") or ("?", 0))[0]
        forward, backward = self._route(source)
        await asyncio.gather(self._pipe(reader, t_writer, "forward", *forward),
                             self._pipe(t_reader, writer, "backward", *backward), return_exceptions=True)

    def _route(self, source: str) -> tuple[tuple[float, list], tuple[float, list]]:
        """(one-way delay, buckets the bytes must pass) toward the target and back, for a connection from
        ``source`` (an IP address). Here: the profile's, whoever connects (wan_regions routes by source)."""
        p = self.profile
        return ((p.one_way_s, [_Bucket(p.conn_Bps), self._links["forward"]]),
                (p.one_way_s, [_Bucket(p.conn_Bps), self._links["backward"]]))

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str, one_way_s: float,
                    buckets: list) -> None:
        loop = asyncio.get_running_loop()
        rate = min([b.rate for b in buckets if b.rate] + [float("inf")])
        bound = (rate * one_way_s if rate != float("inf") else 0) + 4 * CHUNK
        queue: asyncio.Queue = asyncio.Queue()
        held = 0
        space = asyncio.Event()
        space.set()

        async def deliver():
            nonlocal held
            try:
                while True:
                    item = await queue.get()
                    if item is None:
                        break
                    at, data = item
                    wait = at - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    dst.write(data)
                    await dst.drain()
                    self.bytes[direction] += len(data)
                    held -= len(data)
                    if held <= bound:
                        space.set()
            except (OSError, ConnectionError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:
                    pass

        writer_task = asyncio.ensure_future(deliver())
        try:
            while True:
                await space.wait()
                data = await src.read(CHUNK)
                if not data:
                    break
                now, n = loop.time(), len(data)
                depart = now
                for bucket in buckets:  # the chunk must pass every one; a link's bucket serves all its connections
                    if bucket.rate:
                        bucket.free = max(now, bucket.free) + n / bucket.rate
                        depart = max(depart, bucket.free)
                held += len(data)
                if held > bound:
                    space.clear()
                queue.put_nowait((depart + one_way_s, data))
        except (OSError, ConnectionError):
            pass
        finally:
            queue.put_nowait(None)
            await writer_task


def measure_rtt(address: str, samples: int = 5) -> float:
    """Median round trip (s) of one byte through a relay whose target echoes (see tests/test_wan.py)."""
    host, port = address.rsplit(":", 1)
    rtts = []
    with socket.create_connection((host, int(port))) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(samples):
            t0 = time.perf_counter()
            s.sendall(b"x")
            if not s.recv(1):
                raise ConnectionError("echo closed")
            rtts.append(time.perf_counter() - t0)
    rtts.sort()
    return rtts[len(rtts) // 2]
