"""Two extension modules: pccl_arrays._core holds only what the package calls at run time; the seams that tests
and benchmarks use (the master's state machine, frames as dicts, raw kernels, the solver...) are in
pccl_arrays._core_testing, which the package never imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pccl_arrays
from pccl_arrays import _core, _core_testing

RUNTIME = {"BufferPool", "CODES", "Communicator", "DEFAULTS", "DLView", "HostBuffer", "MasterServer", "OpInfo",
           "PROTOCOL_VERSION", "content_hash", "log_attach_drain", "log_level", "log_take", "memcpy",
           "quantization_residual"}  # error feedback (feedback.py)


def test_the_runtime_module_exports_no_test_seam():
    assert {n for n in dir(_core) if not n.startswith("_")} == RUNTIME
    seams = {n for n in dir(_core_testing) if not n.startswith("_")} - {"PROTOCOL_VERSION"}
    assert seams and not seams & RUNTIME


def test_the_package_never_imports_the_test_module():
    code = "import sys, pccl_arrays, pccl_arrays.testing; print('pccl_arrays._core_testing' in sys.modules)"
    home = Path(pccl_arrays.__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(home), "PATH": "/usr/bin:/bin"}, cwd="/")
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr


def test_bindings_take_keywords_with_the_cores_defaults():
    comm = _core.Communicator(master="127.0.0.1:1")  # everything else: the core's CommConfig defaults
    assert comm.peer_id == 0 and not comm.connected
    for name in ("connections", "data_timeout", "piece_bytes", "op_timeout"):
        assert name in _core.DEFAULTS
    try:
        _core.Communicator("127.0.0.1:1")
    except TypeError:
        pass
    else:
        raise AssertionError("positional arguments must be refused")
