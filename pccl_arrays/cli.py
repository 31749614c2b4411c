"""The ``pccl-arrays`` command.

    pccl-arrays --version
    pccl-arrays master --listen HOST:PORT [--secret-file PATH [--encrypt]] [--http HOST:PORT]
                                                          runs a master until interrupted
    pccl-arrays new-secret                                prints a fresh random secret for a run
    pccl-arrays wan-relay --target HOST:PORT [--profile continent] [--listen HOST:PORT]
                                                          runs a WAN-emulating relay until interrupted
                                                          (pccl_arrays.wan; point a peer's advertise at it)
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ._version import __version__
from .errors import InvalidArgumentError, PCCLError
from .master import Master
from .secret import new_secret

_LOOPBACK = ("127.", "localhost", "::1", "[::1]")


def _on_signal() -> threading.Event:
    """An event that SIGINT or SIGTERM sets. Installed before the "listening on" line, which scripts wait for
    and may answer with SIGTERM at once: a signal in between would kill the process unhandled."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    return done


def main(argv=None) -> int:
    from . import wan

    parser = argparse.ArgumentParser(prog="pccl-arrays", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pccl-arrays {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("master", help="run a master until interrupted")
    m.add_argument("--listen", default="0.0.0.0:48148", help="host:port to listen on (port 0: the OS chooses)")
    m.add_argument("--peer-timeout", type=float, default=10.0, help="seconds of silence before a peer is evicted")
    m.add_argument("--handshake-timeout", type=float, default=5.0, help="seconds for a new connection to say HELLO")
    m.add_argument("--rejoin-window", type=float, default=1.5,
                   help="seconds after the start during which a group nobody is in admits no newcomer, so that a "
                        "restarted master takes its returning peers first (docs/master.md)")
    m.add_argument("--require-inbound", action="store_true",
                   help="refuse peers whose data port the master cannot dial, instead of admitting them as peers "
                        "that dial all their connections (docs/nat.md)")
    m.add_argument("--secret-file", help="file holding the run's secret (default: the PCCL_ARRAYS_SECRET environment "
                                         "variable, if set); peers need the same secret")
    m.add_argument("--encrypt", action="store_true", help="encrypt every frame of the run (needs a secret)")
    m.add_argument("--http", metavar="HOST:PORT",
                   help="serve /metrics (Prometheus), /status.json and a status page at / on this address, "
                        "read-only (e.g. 127.0.0.1:9100; docs/monitoring.md). Default: no HTTP")
    sub.add_parser("new-secret", help="print a fresh random secret (64 hex digits) for a run")
    r = sub.add_parser("wan-relay", help="forward connections to a target through an emulated WAN path")
    r.add_argument("--target", required=True, help="host:port to forward to (a peer's data port)")
    r.add_argument("--listen", default="127.0.0.1:0", help="host:port to listen on (port 0: the OS chooses)")
    r.add_argument("--profile", default="continent", choices=sorted(wan.PROFILES))
    r.add_argument("--rtt-ms", type=float, help="override the profile's round-trip time")
    r.add_argument("--conn-mbps", type=float, help="override the per-connection cap (Mbit/s; 0: none)")
    r.add_argument("--link-mbps", type=float, help="override the shared link cap (Mbit/s; 0: none)")
    args = parser.parse_args(argv)
    try:
        return _run(args, wan)
    except PCCLError as e:  # a bad address, a port in use, a bad target: one line, as argparse says it
        parser.error(f"{args.command}: {e}")


def _read_secret(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            secret = f.read().strip()
    except OSError as e:
        raise InvalidArgumentError(f"cannot read the secret file {path}: {e.strerror}") from None
    if not secret:
        raise InvalidArgumentError(f"the secret file {path} is empty")
    return secret


def _run(args, wan) -> int:
    if args.command == "new-secret":
        print(new_secret())
        return 0
    if args.command == "master":
        secret = _read_secret(args.secret_file) if args.secret_file else None
        master = Master(args.listen, peer_timeout=args.peer_timeout, handshake_timeout=args.handshake_timeout,
                        secret=secret, encrypt=args.encrypt, rejoin_window=args.rejoin_window,
                        require_inbound=args.require_inbound, http=args.http).start()
        mode = "encrypted" if master.encrypted else "authenticated" if master.authenticated else "no secret"
        if not master.authenticated and not master.address.startswith(_LOOPBACK):  # before the line scripts wait for
            print(f"pccl-arrays: warning: the master listens on {master.address}, beyond this machine, without a "
                  "secret; anyone who can reach that port can join the run (give it --secret-file, see "
                  "docs/security.md)", file=sys.stderr, flush=True)
        stop = _on_signal()
        if master.http_address is not None:
            if not master.http_address.startswith(_LOOPBACK):
                print(f"pccl-arrays: note: the status page and metrics are served on {master.http_address} to "
                      "anyone who can reach it (read-only; docs/security.md)", file=sys.stderr, flush=True)
            print(f"pccl-arrays master status page on http://{master.http_address}/", flush=True)
        print(f"pccl-arrays master listening on {master.address} ({mode})", flush=True)
        stop.wait()
        master.stop()
        return 0
    p = wan.PROFILES[args.profile]

    def rate(mbps, default):
        return default if mbps is None else (mbps * 1e6 / 8 or None)

    profile = wan.Profile(p.name, p.rtt_s if args.rtt_ms is None else args.rtt_ms / 1e3,
                          rate(args.conn_mbps, p.conn_Bps), rate(args.link_mbps, p.link_Bps))
    relay = wan.Relay(args.target, profile, listen=args.listen).start()
    stop = _on_signal()
    print(f"pccl-arrays wan-relay listening on {relay.address} -> {args.target} ({profile.describe()})", flush=True)
    stop.wait()
    relay.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
