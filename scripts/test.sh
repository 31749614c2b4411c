#!/usr/bin/env bash
# Sets up .venv, builds pccl_arrays and runs the whole test suite (what CI runs): the native tests of the core
# first (cpp/tests/, built without Python into build/native and run by ctest; docs/testing.md, "Native tests"),
# then pytest. Either failing fails the script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# Incremental after the first run; the generator is chosen only when build/native is new.
generator=()
[ -f build/native/CMakeCache.txt ] || generator=(-G Ninja -DCMAKE_MAKE_PROGRAM="$PWD/.venv/bin/ninja")
.venv/bin/cmake -S . -B build/native "${generator[@]}" -DPCCL_PYTHON=OFF -DPCCL_NATIVE_TESTS=ON >/dev/null
.venv/bin/cmake --build build/native -j2
.venv/bin/ctest --test-dir build/native --output-on-failure --no-tests=error
# The venv's pytest entry point keeps the source tree off sys.path, so tests import the built package.
exec .venv/bin/pytest -q -ra "$@"
