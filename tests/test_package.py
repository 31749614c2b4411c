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
    (("master", "--secret-file", "/nonexistent/secret"), "cannot read the secret file"),
    (("master", "--listen", "127.0.0.1:0", "--encrypt"), "needs a secret"),
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
def test_cli_master_warns_when_it_listens_beyond_loopback_without_a_secret(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(cli("new-secret").stdout)
    assert len(secret_file.read_text().strip()) == 64
    for extra, mode, warns in (((), "no secret", True), (("--secret-file", str(secret_file)), "authenticated", False),
                               (("--secret-file", str(secret_file), "--encrypt"), "encrypted", False)):
        proc = subprocess.Popen([sys.executable, "-m", "pccl_arrays.cli", "master", "--listen", "0.0.0.0:0", *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            line = proc.stdout.readline()
            assert "listening on" in line and f"({mode})" in line, line
        finally:
            proc.terminate()
            proc.wait(10)
        err = proc.stderr.read()
        assert ("warning" in err and "without a secret" in err) == warns, err
        assert secret_file.read_text().strip() not in line + err


@pytest.mark.timeout(60)
def test_importing_an_unbuilt_source_checkout_says_what_to_do():
    out = subprocess.run([sys.executable, "-c", "import pccl_arrays"], capture_output=True, text=True, cwd=REPO,
                         timeout=30)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode == 1 and "not built" in last and "pip install ." in last, out.stderr


@pytest.mark.timeout(900)
def test_the_sdist_builds_a_wheel_that_installs_and_runs_in_a_clean_venv(tmp_path):
    """What `pip install <sdist>` does, step by step: an sdist from the tree, a wheel built from the unpacked sdist
    (so nothing outside it is needed), the wheel's contents, and a fresh venv that installs it, all-reduces, and
    runs the README demo."""
    import tarfile
    import zipfile

    def run(*cmd, cwd=None):
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=800)
        assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]} {out.stderr[-4000:]}"
        return out

    dist = tmp_path / "dist"
    run(sys.executable, "-c", f"from scikit_build_core.build import build_sdist; build_sdist({str(dist)!r})", cwd=REPO)
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as t:
        names = t.getnames()
    for needed in ("CMakeLists.txt", "LICENSE", "pyproject.toml", "cpp/python/bindings.cpp", "kernels/quantize.py",
                   "pccl_arrays/_version.py"):
        assert any(n.endswith("/" + needed) for n in names), needed
    assert not any("/.venv/" in n or "/build/" in n for n in names)
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(sdist), "-w", str(dist))
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        files = z.namelist()
    assert any(f.startswith("pccl_arrays/_core") and f.endswith(".so") for f in files)
    assert "pccl_arrays/kernels/quantize.py" in files and any(f.endswith(".dist-info/licenses/LICENSE") for f in files)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    py = str(venv / "bin" / "python")
    run(py, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{wheel}[bf16]")
    smoke = ("import numpy as np, pccl_arrays as pa\n"
             "with pa.Master() as m, pa.Communicator(m.address) as c:\n"
             "    assert c.all_reduce(np.arange(4.0))[3] == 3.0\n"
             "print(pa.__version__)")
    assert run(py, "-c", smoke, cwd="/").stdout.strip() == pccl_arrays.__version__
    # The README demo, from the installed wheel alone (NumPy peers: the frameworks are the user's own installs).
    demo = run(py, str(REPO / "examples" / "demo.py"), "--peers", "2", "--frameworks", "numpy", cwd="/").stdout
    assert "results bitwise identical on all peers: True" in demo, demo
