"""What a child process leaves behind: progress lines while it runs and one result file when it ends.

One format for every multi-process run of this project (the churn harness, the tests' peers, the benchmarks'
workers, the DiLoCo example's peers):

- progress: ``NAME.progress``, one JSON object per line, written and flushed at once so that a line survives a
  SIGKILL right after it; readers take complete lines only (the last one may be cut);
- result: ``NAME.json``, one JSON object, written to a temporary name and renamed, so that a reader sees all of
  it or nothing. A child that failed writes ``{"error": type, "message": str, "traceback": str}``.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

PARENT_ENV = "PCCL_ARRAYS_TESTING_PARENT"  # the pid a child must die with (set by processes.spawn_child)
RESULT_ENV = "PCCL_ARRAYS_RESULT_FILE"  # where report() writes (set by processes.ProcessGroup)


class ProgressLog:
    """Appends progress lines ``{"t": monotonic seconds, **fields}`` to a file."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)
        self._file = open(self.path, "a")

    def write(self, **fields: Any) -> None:
        self._file.write(json.dumps({"t": time.monotonic(), **fields}) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_progress(path: os.PathLike) -> list[dict]:
    """The complete progress lines of a file ([] when it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line]


def write_result(path: os.PathLike, result: dict) -> None:
    """Writes a result file atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.rename(path)


def read_result(path: os.PathLike) -> Optional[dict]:
    """A result file's dict, or None when the child wrote none (killed, or still running)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else None


def run_target(fn: Callable[..., Optional[dict]], *args: Any) -> tuple[dict, int]:
    """Calls ``fn(*args)``: (its result dict, exit status 0), or (the error dict, 1) when it raised anything,
    KeyboardInterrupt and SystemExit included, so that the parent reads every failure from the result file."""
    try:
        return dict(fn(*args) or {}), 0
    except BaseException as e:
        return {"error": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}, 1


def report(result: dict) -> None:
    """A worker started by :class:`~pccl_arrays.testing.ProcessGroup` hands in its result (to the file the group
    named in the environment; printed as one JSON line when run by hand)."""
    path = os.environ.get(RESULT_ENV)
    if path:
        write_result(path, result)
    else:
        print(json.dumps(result), flush=True)


def die_with_parent() -> bool:
    """Child side, first thing: asks Linux to SIGKILL this process when the thread that spawned it exits
    (PR_SET_PDEATHSIG). False when that parent is already gone (the caller should exit); True otherwise, also
    where prctl is unavailable (the parent's context managers and atexit hooks still kill their children)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    parent = os.environ.get(PARENT_ENV)
    return not parent or os.getppid() == int(parent)
