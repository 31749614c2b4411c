"""The runnable examples of docs/torch_and_jax.md, taken from the page and run as they are written (only the
master's address and the torch loop's step count are substituted): what the docs show is what works."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import needs_jax, needs_torch

PAGE = Path(__file__).resolve().parent.parent / "docs" / "torch_and_jax.md"


def _blocks(after_heading: str, lang: str) -> list[str]:
    """The fenced code blocks of one language that follow a heading, up to the next heading of its level."""
    text = PAGE.read_text()
    start = text.index(after_heading)
    level = after_heading.split()[0]
    end = text.find("\n" + level + " ", start + 1)
    section = text[start:end if end > 0 else None]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


@needs_jax
@pytest.mark.timeout(120)
def test_the_jax_jit_example_runs_and_both_peers_end_with_the_same_weights(tmp_path):
    script = tmp_path / "jit_example.py"
    script.write_text(_blocks("### A runnable example", "python")[0])
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    # the two peers print to one pipe: their lines may interleave, so read the reports, not the lines
    reports = re.findall(r"rank (\d): w = (\[[^\]]*\]), loss [\d.]+, ring of (\d+)", out.stdout)
    assert sorted(r[0] for r in reports) == ["0", "1"], out.stdout
    assert len({r[1] for r in reports}) == 1 and {r[2] for r in reports} == {"2"}, reports  # the same bits


@needs_torch
@pytest.mark.timeout(120)
def test_the_ddp_loop_runs_on_three_processes(master, tmp_path):
    code = _blocks("### A fault-tolerant DDP loop", "python")[0]
    assert "127.0.0.1:48148" in code and "while step < 2000" in code
    script = tmp_path / "train.py"
    script.write_text(code.replace("127.0.0.1:48148", master.address).replace("while step < 2000", "while step < 200"))
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "3"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(3)]
    outs = [p.communicate(timeout=100) for p in procs]
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-3000:]
    assert "step 200, loss" in outs[0][0] and "world 3" in outs[0][0], outs[0][0]  # rank 0 prints
