"""Child processes of a multi-process run: started so that they die with this process, waited for with one
deadline, killed together when one hangs or fails.

How this works. :func:`spawn_child` starts a command with ``PCCL_ARRAYS_TESTING_PARENT`` naming this process;
a child that calls :func:`~pccl_arrays.testing.records.die_with_parent` first thing is SIGKILLed by the kernel
when this process goes, and exits at once if it is already gone. Nothing runs between fork and exec (no
``preexec_fn``): Python code there can deadlock when the parent has threads (JAX, for one).
:class:`ProcessGroup` runs workers that each hand in one result with
:func:`~pccl_arrays.testing.records.report` (to a result file in a private folder) and collects them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Optional, Union

from .records import PARENT_ENV, RESULT_ENV, read_result


def spawn_child(argv: list[str], *, stdout: Union[int, IO, None] = None, stderr: Union[int, IO, None] = None,
                env: Optional[dict] = None, cwd: Optional[os.PathLike] = None) -> subprocess.Popen:
    """Starts ``argv`` (stdin closed) with the environment ``env`` (default: this one) plus the parent marker."""
    child_env = dict(os.environ if env is None else env, **{PARENT_ENV: str(os.getpid())})
    return subprocess.Popen(argv, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=child_env, cwd=cwd)


def kill_and_reap(procs, timeout: float = 10.0) -> None:
    """SIGKILLs every process still running (stopped ones too) and waits for all of them."""
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass


class WorkerError(RuntimeError):
    """A worker of a :class:`ProcessGroup` failed, handed in no result, or was still running at the deadline."""


class ProcessGroup:
    """Worker processes started together (``python ARGV...`` each); :meth:`wait` returns their results in order.

    Args:
        argvs: the arguments after the interpreter, one list per worker.
        env: variables added to this process's environment for every worker.
        cwd: the workers' working directory (default: this one's).
    """

    def __init__(self, argvs: list[list[str]], env: Optional[dict] = None, cwd: Optional[os.PathLike] = None):
        self._dir = tempfile.TemporaryDirectory(prefix="pccl-workers-")
        self.out = Path(self._dir.name)
        self.procs: list[subprocess.Popen] = []
        try:
            for i, argv in enumerate(argvs):
                with open(self.out / f"worker{i}.log", "wb") as log:
                    worker_env = dict(os.environ, **(env or {}), **{RESULT_ENV: str(self.out / f"worker{i}.json")})
                    self.procs.append(spawn_child([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT,
                                                  env=worker_env, cwd=cwd))
        except BaseException:
            self.close()
            raise

    def log(self, i: int) -> str:
        """Worker i's output so far (stdout and stderr)."""
        path = self.out / f"worker{i}.log"
        return path.read_text(errors="replace") if path.exists() else ""

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
                    pending.discard(i)
                    results[i] = read_result(self.out / f"worker{i}.json")
                    if p.returncode != 0 or results[i] is None or "error" in results[i]:
                        raise WorkerError(f"worker {i} exited with {p.returncode} without a result; "
                                          f"output tail:\n{self.log(i)[-2500:]}")
                if pending and time.monotonic() > deadline:
                    tails = "\n".join(f"--- worker {i} output tail:\n{self.log(i)[-1500:]}" for i in sorted(pending))
                    raise WorkerError(f"workers {sorted(pending)} still running after {timeout:.0f} s (hang?)\n{tails}")
                if pending:
                    time.sleep(0.05)
        finally:
            self.close()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Kills the workers still running and removes their files."""
        kill_and_reap(self.procs)
        self._dir.cleanup()

    def __enter__(self) -> "ProcessGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
