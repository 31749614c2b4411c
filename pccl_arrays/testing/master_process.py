"""A master run as a child process (``pccl-arrays master``), so that the churn harness can SIGKILL it and start
it again on the same address (docs/master.md: the run outlives its master).

How this works. :class:`MasterProcess` runs ``python -c "...cli.main()" master --listen ADDR --peer-timeout S``
with ``PCCL_ARRAYS_LOG=info`` in the harness's folder (not a source tree, so that it imports the same
pccl_arrays as the peers), its output in ``OUT/master{K}.log`` for its K-th incarnation, and reads the address
from its "listening on ADDR" line. The first start picks a free port below the kernel's ephemeral range, so
that no peer's data port or outgoing connection takes the master's port while it is down (a peer that dials a
closed port in the ephemeral range can even connect to itself); a restart binds the same address, retrying
while the port is still in use. The lines of every incarnation stay readable (:meth:`log_lines`).
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from .processes import spawn_child

_MAIN = "import sys; from pccl_arrays.cli import main; sys.exit(main())"


def free_port_below_ephemeral(host: str = "127.0.0.1", rng: Optional[random.Random] = None) -> int:
    """A port that binds now, below the ephemeral range (/proc/sys/net/ipv4/ip_local_port_range); 0 if none
    is found (the OS then chooses)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    rng = rng or random.Random()
    for _ in range(50):
        port = rng.randrange(max(1024, low // 2), low)
        with socket.socket() as s:
            try:
                s.bind((host, port))
                return port
            except OSError:
                continue
    return 0


class MasterProcess:
    """A ``pccl-arrays master`` child that can be killed and started again on the same address.

    Args:
        out: the folder for its logs (and its working directory).
        peer_timeout, handshake_timeout: the master's options.
        host: the address to listen on.
        prefix: put before its command line, e.g. ``["ip", "netns", "exec", NS]`` to run it in a network namespace
            (testing/netns.py).
    """

    def __init__(self, out: os.PathLike, peer_timeout: float = 2.0, handshake_timeout: float = 5.0,
                 host: str = "127.0.0.1", prefix: Sequence[str] = ()):
        self.out, self.host, self.prefix = Path(out), host, list(prefix)
        self.peer_timeout, self.handshake_timeout = peer_timeout, handshake_timeout
        self.proc: Optional[subprocess.Popen] = None
        self.address: Optional[str] = None
        self.incarnations = 0
        self.binds_retried = 0  # starts that found the port still in use

    def start(self, bind_retry_s: float = 10.0) -> str:
        """Starts it: on a fresh port the first time, on the same address after that (retrying for up to
        ``bind_retry_s`` while that port is in use). Returns the address once it listens."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the master is already running")
        deadline = time.monotonic() + bind_retry_s
        while True:
            listen = self.address or f"{self.host}:{free_port_below_ephemeral(self.host)}"
            log = self.out / f"master{self.incarnations}.log"
            with open(log, "wb") as err:
                env = dict(os.environ, PCCL_ARRAYS_LOG=os.environ.get("PCCL_ARRAYS_LOG_MASTER", "info"))
                proc = spawn_child([*self.prefix, sys.executable, "-c", _MAIN, "master", "--listen", listen, "--peer-timeout",
                                    str(self.peer_timeout), "--handshake-timeout", str(self.handshake_timeout)],
                                   stdout=subprocess.PIPE, stderr=err, env=env, cwd=self.out)
            line = proc.stdout.readline().decode(errors="replace")
            if "listening on" in line:
                self.proc, self.address = proc, line.split("listening on ", 1)[1].split()[0]
                self.incarnations += 1
                with open(log, "ab") as f:  # keep its stdout line with its log
                    f.write(line.encode())
                return self.address
            proc.kill()
            proc.wait()
            proc.stdout.close()
            why = log.read_text(errors="replace")
            in_use = "in use" in why
            if self.address is None and in_use:  # a fresh port was taken in between: draw another
                continue
            if not in_use or time.monotonic() > deadline:
                raise RuntimeError(f"the master did not start on {listen}: {why[-2000:]}")
            self.binds_retried += 1
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILLs it and waits for it."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc.stdout.close()

    @property
    def pid(self) -> Optional[int]:
        """The pid of the running incarnation (None while it is down)."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def log_lines(self) -> list[list[str]]:
        """The log lines of each incarnation, in order."""
        return [(self.out / f"master{k}.log").read_text(errors="replace").splitlines()
                for k in range(self.incarnations)]
