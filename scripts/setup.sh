#!/usr/bin/env bash
# Creates .venv (Python 3.11 preferred), installs what the project needs and builds pccl_arrays into it.
# Run by scripts/demo.sh and scripts/test.sh; safe to run again (it only adds what is missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The core links OpenSSL's libcrypto (authenticated runs): its headers come from libssl-dev on Debian/Ubuntu.
if [ ! -f /usr/include/openssl/evp.h ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get install -y -q libssl-dev >/dev/null || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q libssl-dev >/dev/null; }
fi
# The NAT network tests (tests/test_netns.py, pccl_arrays/testing/netns.py) need iptables; they skip without it.
if ! command -v iptables >/dev/null && ! [ -x /usr/sbin/iptables ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"  # never waits for a password: the tests need root anyway
  { $SUDO apt-get install -y -q iptables >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q iptables >/dev/null 2>&1; }; } ||
    echo "setup.sh: could not install iptables; the network-namespace tests will be skipped" >&2
fi
# The browser tests (tests/test_status_page.py, tests/test_browser_driver.py) drive Debian's headless chromium
# (about 40 s and 130 packages the first time); they skip without it.
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"  # never waits for a password
  { $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; }; } ||
    echo "setup.sh: could not install chromium; the browser tests will be skipped" >&2
fi
if [ ! -x .venv/bin/python ]; then
  PY=${PYTHON:-}
  if [ -z "$PY" ]; then
    for c in python3.11 python3; do if command -v "$c" >/dev/null; then PY=$c; break; fi; done
  fi
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# Pinned where generated output depends on the version (the stubs test compares with a committed copy).
"${PIP[@]}" numpy optree ml_dtypes pytest pytest-timeout hypothesis scikit-build-core pybind11==3.1.0 pybind11-stubgen==3.0.0 ninja cmake
# The array frameworks the demo and the tests use, and Triton for the quantization kernels (on CPU they run in
# its interpreter, TRITON_INTERPRET=1). torch 2.13.0 is a CPU build (on Python 3.11 pip finds it
# on this kind of machine's disk); a plain 'torch' would fetch GBs of CUDA libraries.
"${PIP[@]}" torch==2.13.0 "jax[cpu]" triton
# optax: the JAX DiLoCo example's optimizers (examples/jax_diloco; its test is part of the suite).
"${PIP[@]}" optax
for extra in "$@"; do "${PIP[@]}" "$extra"; done
"${PIP[@]}" --no-build-isolation .
