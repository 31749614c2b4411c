"""The ``pccl-arrays`` command: ``pccl-arrays master --listen HOST:PORT`` runs a master until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .master import Master


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pccl-arrays", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("master", help="run a master until interrupted")
    m.add_argument("--listen", default="0.0.0.0:48148", help="host:port to listen on (port 0: the OS chooses)")
    m.add_argument("--peer-timeout", type=float, default=10.0, help="seconds of silence before a peer is evicted")
    m.add_argument("--handshake-timeout", type=float, default=5.0, help="seconds for a new connection to say HELLO")
    args = parser.parse_args(argv)

    master = Master(args.listen, peer_timeout=args.peer_timeout, handshake_timeout=args.handshake_timeout).start()
    print(f"pccl-arrays master listening on {master.address}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    master.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
