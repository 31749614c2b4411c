#!/usr/bin/env bash
# The GPU check: every CUDA path of pccl_arrays, one table, a few minutes (scripts/gpu_check.py says what).
#   bash scripts/gpu_check.sh            # on a machine with a CUDA device; exit 1 if any path is broken
#   bash scripts/gpu_check.sh --dry-run  # anywhere: list the checks and what is installed
# Uses .venv when there is one (bash scripts/setup.sh), else the python on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec timeout 480 "$PY" scripts/gpu_check.py "$@"
