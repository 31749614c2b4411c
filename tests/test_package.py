"""What a user meets before the first all-reduce: the version, the CLI's one-line argument errors, the warning
of a master listening beyond loopback, and the import error of a source checkout that was never built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import pccl_arrays

REPO = Path(__file__).resolve().parent.parent


def cli(*args, timeout=30):
    return subprocess.run([sys.executable, "-m", "pccl_arrays.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd="/")


def test_one_version_everywhere():
    source = (REPO / "pccl_arrays" / "_version.py").read_text()
    assert f'__version__ = "{pccl_arrays.__version__}"' in source
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"pccl-arrays {pccl_arrays.__version__}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args,words", [
    (("master", "--listen", "nohost"), "not of the form host:port"),
    (("wan-relay", "--target", "bad"), "target must be 'host:port'"),
    (("wan-relay", "--target", "127.0.0.1:9", "--listen", "127.0.0.1:99999"), "listen must be 'host:port'"),
])
def test_cli_argument_errors_are_one_line(args, words):
    out = cli(*args)
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and words in out.stderr.splitlines()[-1], out.stderr


@pytest.mark.timeout(60)
def test_cli_port_in_use_is_one_line():
    with pccl_arrays.Master("127.0.0.1:0") as m:
        out = cli("master", "--listen", m.address)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "cannot listen" in out.stderr, out.stderr


@pytest.mark.timeout(60)
def test_cli_master_warns_when_it_listens_beyond_loopback():
    proc = subprocess.Popen([sys.executable, "-m", "pccl_arrays.cli", "master", "--listen", "0.0.0.0:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        assert "listening on" in proc.stdout.readline()
        assert "warning" in proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.timeout(60)
def test_importing_an_unbuilt_source_checkout_says_what_to_do():
    out = subprocess.run([sys.executable, "-c", "import pccl_arrays"], capture_output=True, text=True, cwd=REPO,
                         timeout=30)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "not built" in last and "pip install ." in last, out.stderr
