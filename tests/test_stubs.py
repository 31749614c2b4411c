"""The committed type stubs of the C++ modules (the runtime _core and the test module _core_testing) match what pybind11-stubgen generates from the built module.

Regenerate after changing cpp/python/:  PCCL_REGEN_STUBS=1 pytest tests/test_stubs.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pccl_arrays

PACKAGE = Path(__file__).resolve().parent.parent / "pccl_arrays"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("module", ["_core", "_core_testing"])
def test_stubs_match_the_built_module(tmp_path, module):
    committed = PACKAGE / f"{module}.pyi"
    stubgen = shutil.which("pybind11-stubgen") or str(Path(sys.executable).parent / "pybind11-stubgen")
    if not Path(stubgen).exists():
        pytest.skip("pybind11-stubgen is not installed (scripts/setup.sh installs it)")
    env = dict(os.environ, PYTHONPATH=str(Path(pccl_arrays.__file__).parent.parent))
    subprocess.run([stubgen, f"pccl_arrays.{module}", "-o", str(tmp_path)], check=True, env=env, capture_output=True)
    generated = (tmp_path / "pccl_arrays" / f"{module}.pyi").read_text()
    if os.environ.get("PCCL_REGEN_STUBS"):
        committed.write_text(generated)
    assert committed.read_text() == generated, "stubs are stale: run PCCL_REGEN_STUBS=1 pytest tests/test_stubs.py"
