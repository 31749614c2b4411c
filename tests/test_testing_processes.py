"""pccl_arrays.testing's shared pieces: the progress/result format, worker groups, and children that die with
their parent (what the tests' peers, the benchmarks' workers and the DiLoCo launcher rely on). Children run
in tmp_path, so that they import the installed package, not the unbuilt source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from pccl_arrays.testing import (ProcessGroup, ProgressLog, WorkerError, read_progress, read_result, run_target,
                                 spawn_child, write_result)

pytestmark = pytest.mark.timeout(60)

REPORT = "import sys; from pccl_arrays.testing import report; report({'argv': sys.argv[1:]})"


def test_progress_lines_survive_and_a_cut_last_line_is_not_read(tmp_path):
    log = ProgressLog(tmp_path / "p.progress")
    log.write(kind="step", step=1)
    log.write(kind="step", step=2)
    log.close()
    with open(tmp_path / "p.progress", "a") as f:
        f.write('{"kind": "step", "st')  # a writer killed mid-line
    lines = read_progress(tmp_path / "p.progress")
    assert [p["step"] for p in lines] == [1, 2] and all(isinstance(p["t"], float) for p in lines)
    assert read_progress(tmp_path / "missing.progress") == []


def test_result_files_are_whole_or_absent_and_failures_are_recorded(tmp_path):
    assert read_result(tmp_path / "r.json") is None
    write_result(tmp_path / "r.json", {"a": 1})
    assert read_result(tmp_path / "r.json") == {"a": 1} and not (tmp_path / "r.json.tmp").exists()
    assert run_target(lambda x: {"x": x}, 3) == ({"x": 3}, 0)

    def fails():
        raise KeyboardInterrupt("stop")

    result, status = run_target(fails)
    assert status == 1 and result["error"] == "KeyboardInterrupt" and "fails" in result["traceback"]


def test_group_collects_results_in_order(tmp_path):
    results = ProcessGroup([["-c", REPORT, str(i)] for i in range(3)], cwd=tmp_path).wait(30)
    assert results == [{"argv": [str(i)]} for i in range(3)]


def test_group_fails_loudly_on_a_worker_without_a_result(tmp_path):
    with pytest.raises(WorkerError, match=r"worker 1 exited with 3 without a result(.|\n)*went wrong"):
        ProcessGroup([["-c", REPORT], ["-c", "import sys; print('went wrong'); sys.exit(3)"]], cwd=tmp_path).wait(30)


def test_group_kills_a_hung_worker_at_its_deadline(tmp_path):
    group = ProcessGroup([["-c", REPORT], ["-c", "import time; print('stuck', flush=True); time.sleep(600)"]],
                         cwd=tmp_path)
    t0 = time.monotonic()
    with pytest.raises(WorkerError, match=r"workers \[1\] still running after 1 s(.|\n)*stuck"):
        group.wait(1.0)
    assert time.monotonic() - t0 < 5
    assert all(p.poll() is not None for p in group.procs)


def test_a_child_dies_with_its_parent(tmp_path):
    """A middle process spawns a grandchild that asks to die with it, then exits: the grandchild goes too."""
    middle = f"""
import sys
from pccl_arrays.testing import spawn_child
child = spawn_child([sys.executable, "-c", {GRANDCHILD!r}], stdout=sys.stdout)
print(child.pid, flush=True)
sys.stdin.read()  # until the test closes our stdin
"""
    proc = subprocess.Popen([sys.executable, "-c", middle], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    lines = [proc.stdout.readline(), proc.stdout.readline()]
    pid = int(next(line for line in lines if not line.startswith("armed")))
    assert any(line.startswith("armed") for line in lines)
    os.kill(pid, 0)  # alive while its parent is
    proc.stdin.close()
    proc.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    os.kill(pid, 9)
    pytest.fail("the grandchild outlived its parent by 10 s")


GRANDCHILD = """
import time
from pccl_arrays.testing import die_with_parent
assert die_with_parent()
print("armed", flush=True)
time.sleep(60)
"""


def test_report_without_a_group_prints_json(tmp_path):
    run = subprocess.run([sys.executable, "-c", REPORT, "x"], capture_output=True, text=True, timeout=30, cwd=tmp_path,
                         env={k: v for k, v in os.environ.items() if k != "PCCL_ARRAYS_RESULT_FILE"})
    assert json.loads(run.stdout) == {"argv": ["x"]}
