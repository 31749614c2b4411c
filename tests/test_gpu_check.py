"""scripts/gpu_check.sh on a machine without a CUDA device: --dry-run lists every check and passes; a real run
fails at once (exit 2) instead of skipping, since a GPU check that passes without a GPU would prove nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, cwd="/")


@pytest.mark.timeout(150)
def test_dry_run_lists_every_check():
    p = run("--dry-run")
    assert p.returncode == 0, p.stdout + p.stderr
    for name in ("arrays", "trees", "shared_state", "quantized", "parity", "speed", "gpu_quant_wan"):
        assert f"  {name} " in p.stdout
    assert "gpu_quant_wan.py present: True" in p.stdout


@pytest.mark.timeout(150)
def test_without_a_gpu_it_fails_loudly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: run scripts/gpu_check.sh itself")
    p = run()
    assert p.returncode == 2 and "no CUDA device" in p.stdout, p.stdout + p.stderr
