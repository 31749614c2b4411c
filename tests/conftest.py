import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))  # procs, scenarios, data, references

# Without a GPU, Triton kernels can only run in its interpreter, which must be chosen before any kernel is
# decorated (peer processes inherit this too).
if not any(Path("/dev").glob("nvidia[0-9]*")):
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pccl_arrays as pa  # noqa: E402


@pytest.fixture
def master():
    """A master in this process on a port the OS picks, with short liveness deadlines for tests. No
    rejoin_window: nothing restarts it, so its first peer need not wait for returning ones (the restart tests,
    tests/test_master_restart.py, run `pccl-arrays master` with the default)."""
    with pa.Master("127.0.0.1:0", peer_timeout=2.0, handshake_timeout=2.0, rejoin_window=0.0) as m:
        yield m


def _framework_gate(module: str) -> pytest.MarkDecorator:
    """Skip when `module` is missing, except in CI, where a missing framework is a setup bug and fails."""
    import importlib.util

    present = importlib.util.find_spec(module) is not None
    if present or not os.environ.get("CI"):
        return pytest.mark.skipif(not present, reason=f"{module} is not installed")
    return pytest.mark.usefixtures("_fail_missing_" + module)


needs_torch = _framework_gate("torch")
needs_jax = _framework_gate("jax")


def _cuda_for_cupy() -> tuple[bool, str]:
    import importlib.util

    if importlib.util.find_spec("cupy") is None:
        return False, "cupy is not installed (optional: pip install .[cupy])"
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return True, ""
    except Exception as e:  # no driver, no device
        return False, f"CuPy has no CUDA device here: {type(e).__name__}"
    return False, "CuPy has no CUDA device here"


_cupy_ok, _cupy_why = _cuda_for_cupy()
needs_cupy = pytest.mark.skipif(not _cupy_ok, reason=_cupy_why)


@pytest.fixture
def _fail_missing_triton():
    pytest.fail("triton is not usable but CI must run the Triton kernel tests (scripts/setup.sh installs it)")


@pytest.fixture
def _fail_missing_torch():
    pytest.fail("torch is not installed but CI must run the torch tests (scripts/setup.sh installs it)")


@pytest.fixture
def _fail_missing_jax():
    pytest.fail("jax is not installed but CI must run the JAX tests (scripts/setup.sh installs it)")
