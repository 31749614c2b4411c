#!/usr/bin/env bash
# Sets up .venv, builds pccl_arrays and runs the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The venv's pytest entry point keeps the source tree off sys.path, so tests import the built package.
exec .venv/bin/pytest -q -ra "$@"
