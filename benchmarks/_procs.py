"""Groups of benchmark worker processes, through pccl_arrays.testing's ProcessGroup (the one way this project
runs child processes): a worker is ``python <script> _worker ...`` and hands in one result with :func:`report`;
:func:`run_group` starts the workers together, waits for all of them with one deadline, and kills the whole
group if one hangs or fails, so a benchmark never waits forever on a stuck peer."""

from __future__ import annotations

import os
import socket
from typing import Optional

EXTRA_PATHS: list[str] = []  # put in front of the workers' PYTHONPATH (e.g. where pccl_arrays was found)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (bind to port 0, read it back, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def child_env(extra: Optional[dict] = None) -> dict:
    """The variables a worker gets on top of this environment: EXTRA_PATHS in front of PYTHONPATH, and ``extra``."""
    paths = EXTRA_PATHS + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), **(extra or {})}


def group(argvs: list[list[str]], env: Optional[dict] = None):
    """Starts one worker per argv (arguments after the interpreter); a pccl_arrays.testing.ProcessGroup."""
    from pccl_arrays.testing import ProcessGroup

    return ProcessGroup(argvs, child_env(env))


def run_group(argvs: list[list[str]], timeout: float, env: Optional[dict] = None) -> list[dict]:
    """Starts one worker per argv and returns their results in order (WorkerError on a hang or a failure)."""
    return group(argvs, env).wait(timeout)


def report(result: dict) -> None:
    """Worker side: hands in the one result the parent reads."""
    from pccl_arrays.testing import report

    report(result)
