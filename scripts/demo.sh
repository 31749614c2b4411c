#!/usr/bin/env bash
# Sets up .venv, builds pccl_arrays and runs the demo: a local master and 3 peer processes all-reducing arrays.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
