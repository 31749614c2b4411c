"""Small helpers for the benchmarks: free ports and groups of worker processes that report one JSON result.

A worker is ``python <script> _worker ...``; it prints exactly one line ``RESULT {json}`` on stdout when it is
done (anything else it prints is ignored) and writes its diagnostics to stderr. :func:`run_group` starts the
workers together, waits for all of them with one deadline, and kills the whole group if one hangs or fails,
so a benchmark never waits forever on a stuck peer.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

EXTRA_PATHS: list[str] = []  # put in front of the workers' PYTHONPATH (e.g. where pccl_arrays was found)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_env(extra: Optional[dict] = None) -> dict:
    """The environment for a worker: this interpreter's, with EXTRA_PATHS in front of PYTHONPATH."""
    env = dict(os.environ)
    paths = EXTRA_PATHS + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.update(extra or {})
    return env


class WorkerError(RuntimeError):
    pass


class Group:
    """Worker processes started together; :meth:`wait` collects their ``RESULT`` lines."""

    def __init__(self, argvs: list[list[str]], env: Optional[dict] = None):
        self._logs = []
        self.procs: list[subprocess.Popen] = []
        try:
            for argv in argvs:
                log = tempfile.TemporaryFile()
                self._logs.append(log)
                self.procs.append(subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, stderr=log,
                                                   stdin=subprocess.DEVNULL, env=child_env(env)))
        except BaseException:
            self.kill()
            raise

    def stderr(self, i: int) -> str:
        log = self._logs[i]
        log.seek(0)
        return log.read().decode(errors="replace")

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def wait(self, timeout: float) -> list[dict]:
        """Results of all workers in order. Raises WorkerError (after killing the group) on a hang or failure."""
        deadline = time.monotonic() + timeout
        results: list[Optional[dict]] = [None] * len(self.procs)
        try:
            pending = set(range(len(self.procs)))
            while pending:
                for i in sorted(pending):
                    p = self.procs[i]
                    if p.poll() is None:
                        continue
                    out = p.stdout.read().decode(errors="replace")
                    pending.discard(i)
                    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
                    if p.returncode != 0 or line is None:
                        raise WorkerError(f"worker {i} exited with {p.returncode} without a result; "
                                          f"stderr tail:\n{self.stderr(i)[-2500:]}")
                    results[i] = json.loads(line[len("RESULT "):])
                if pending and time.monotonic() > deadline:
                    tails = "\n".join(f"--- worker {i} stderr tail:\n{self.stderr(i)[-1500:]}" for i in sorted(pending))
                    raise WorkerError(f"workers {sorted(pending)} still running after {timeout:.0f} s (hang?)\n{tails}")
                if pending:
                    time.sleep(0.05)
        finally:
            self.kill()
            for log in self._logs:
                log.close()
        return results  # type: ignore[return-value]


def run_group(argvs: list[list[str]], timeout: float, env: Optional[dict] = None) -> list[dict]:
    """Starts one worker per argv (arguments after the interpreter) and returns their results in order."""
    return Group(argvs, env).wait(timeout)


def report(result: dict) -> None:
    """Worker side: prints the one ``RESULT`` line the parent reads."""
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
