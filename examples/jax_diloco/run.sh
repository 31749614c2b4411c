#!/usr/bin/env bash
# Sets up .venv (as the project's README does) plus matplotlib, then runs the whole comparison: one worker,
# 4 sync-DiLoCo peers, 4 async peers, 4 sync peers with each --outer-quant compression (8, 4, 4+rotate,
# 4+rotate+ef). Writes results/summary.json and results/loss_curves.png next to this file. Arguments go to
# compare.py (--rounds, --inner-steps, --out, --outer-quant-only, --repeats).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
bash scripts/setup.sh matplotlib
exec .venv/bin/python examples/jax_diloco/compare.py "$@"
