"""The core's log lines reach Python's logging (logger "pccl_arrays"); PCCL_ARRAYS_LOG is case-insensitive and
an unknown value is reported, not silently turned into "off"."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import logging, sys, time
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.levelname, record.getMessage()))
    logging.getLogger("pccl_arrays").addHandler(Keep())
    import pccl_arrays as pa
    import pccl_arrays._core_testing
    pa._core_testing.log_for_tests(int(sys.argv[1]), "a line from the core")
    deadline = time.monotonic() + 5
    while not any("from the core" in m for _, m in records) and time.monotonic() < deadline:
        time.sleep(0.01)
    for level, message in records:
        print(level, message)
""")


def run(env_value, level: int) -> list[str]:
    env = dict(os.environ)
    env.pop("PCCL_ARRAYS_LOG", None)
    if env_value is not None:
        env["PCCL_ARRAYS_LOG"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(level)], env=env, capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.timeout(120)
def test_core_lines_go_through_python_logging_at_their_level():
    assert run(None, 2) == ["WARNING a line from the core"]
    assert run(None, 1) == []  # default level: warn
    assert run("DEBUG", 0) == ["DEBUG a line from the core"]  # any case
    assert run("Info", 1) == ["INFO a line from the core"]
    assert run("off", 3) == []


@pytest.mark.timeout(60)
def test_an_unknown_level_is_reported_and_warn_is_kept():
    lines = run("verbose", 2)
    assert lines[0].startswith("WARNING PCCL_ARRAYS_LOG='verbose' is not one of"), lines
    assert lines[1] == "WARNING a line from the core"
