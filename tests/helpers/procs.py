"""Runs real peer processes for multi-process tests.

A test starts a master (in this process, or as a `pccl-arrays master` subprocess when it must be killed), then
peers with :func:`spawn`: each peer is `python tests/helpers/peer_main.py SCENARIO ...`, which connects to the master,
waits until the group has the expected size, runs one function of tests/helpers/scenarios.py and writes what it saw to
``OUT/rank{R}.json`` (+ ``.npz`` for arrays). Peers print ``EVENT name`` lines that a test can wait for, so
nothing depends on sleeping "long enough".
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from pccl_arrays.testing import read_result, spawn_child

HERE = Path(__file__).resolve().parent


class Peer:
    def __init__(self, proc: subprocess.Popen, rank: int, out: Path):
        self.proc = proc
        self.rank = rank
        self.out = out
        self.events: list[str] = []
        self._buf = b""

    def wait_event(self, name: str, timeout: float) -> str:
        """Blocks until the peer prints ``EVENT name...``; returns the whole line."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.events:
                if line.split()[0] == name:
                    self.events.remove(line)
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"peer {self.rank} did not report {name} within {timeout} s; saw {self.events}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk and self.proc.poll() is not None:
                    raise RuntimeError(f"peer {self.rank} exited ({self.proc.returncode}) before {name}: {self.stderr()}")
                self._buf += chunk
                *lines, self._buf = self._buf.split(b"\n")
                for raw in lines:
                    text = raw.decode(errors="replace").strip()
                    if text.startswith("EVENT "):
                        self.events.append(text[6:])

    def stderr(self) -> str:
        path = self.out / f"rank{self.rank}.stderr"
        return path.read_text() if path.exists() else ""

    def result(self) -> dict:
        result = read_result(self.out / f"rank{self.rank}.json")
        if result is None:
            raise AssertionError(f"peer {self.rank} wrote no result (exit {self.proc.returncode}): {self.stderr()[-3000:]}")
        return result

    def arrays(self) -> dict:
        with np.load(self.out / f"rank{self.rank}.npz") as z:
            return {k: z[k] for k in z.files}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def spawn(master: str, scenario: str, rank: int, world: int, out: Path, prefix: Sequence[str] = (), **args) -> Peer:
    """Starts one peer process running ``scenarios.<scenario>`` (``prefix``: put before its command line, e.g.
    ``ip netns exec NS`` to start it in a network namespace)."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [*prefix, sys.executable, str(HERE / "peer_main.py"), scenario, "--master", master, "--rank", str(rank),
           "--world", str(world), "--out", str(out), "--args", json.dumps(args)]
    stderr = open(out / f"rank{rank}.stderr", "wb")
    proc = spawn_child(cmd, stdout=subprocess.PIPE, stderr=stderr)
    stderr.close()
    return Peer(proc, rank, out)


def wait_all(peers: list[Peer], timeout: float) -> None:
    """Waits for every peer to exit; kills them all and fails if one is still running at the deadline."""
    deadline = time.monotonic() + timeout
    for p in peers:
        try:
            p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for q in peers:
                q.kill()
            raise AssertionError(f"peer {p.rank} still running after {timeout} s (hang?): {p.stderr()[-3000:]}")


def start_master_process(tmp: Path, peer_timeout: float = 10.0, listen: str = "127.0.0.1:0", log: str = "master.log",
                         bind_retry_s: float = 0.0) -> tuple[subprocess.Popen, str]:
    """Runs ``pccl-arrays master`` as a subprocess (for tests that kill the master); returns (proc, address).

    ``listen`` may name the address of a master that was just killed (a restart on the same address): when the
    port is still in use, the start is retried for up to ``bind_retry_s`` seconds. Its stderr goes to ``tmp/log``.
    """
    deadline = time.monotonic() + bind_retry_s
    while True:
        with open(tmp / log, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", "import sys; from pccl_arrays.cli import main; sys.exit(main())", "master",
                 "--listen", listen, "--peer-timeout", str(peer_timeout)],
                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=HERE)  # cwd: not the source tree
        line = proc.stdout.readline().decode()
        if "listening on" in line:
            return proc, line.split("listening on ", 1)[1].split()[0]
        proc.kill()
        proc.wait()
        why = (tmp / log).read_text()
        if "in use" not in why or time.monotonic() > deadline:
            raise RuntimeError(f"master did not start: {line!r} {why}")
        time.sleep(0.05)
