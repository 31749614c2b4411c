"""Entry point of one peer process in multi-process tests (see procs.py); results in pccl_arrays.testing's format."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from pccl_arrays.testing import die_with_parent, run_target, write_result

import collective_scenarios
import contract_scenarios
import jax_scenarios
import monitoring_scenarios
import restart_scenarios
import scenarios
import security_scenarios
import state_scenarios
import topology_scenarios
import torch_scenarios


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("--master", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--args", default="{}")
    a = ap.parse_args()
    if not die_with_parent():
        return 1  # the test died before we could ask to die with it
    ctx = scenarios.Context(a.master, a.rank, a.world, Path(a.out), json.loads(a.args))
    module = next(m for m in (state_scenarios, collective_scenarios, contract_scenarios, restart_scenarios, jax_scenarios, monitoring_scenarios, security_scenarios, topology_scenarios, torch_scenarios, scenarios) if hasattr(m, a.scenario))
    result, status = run_target(getattr(module, a.scenario), ctx)  # a failure is read from the result file
    if ctx.arrays:
        np.savez(ctx.out / f"rank{a.rank}.npz", **ctx.arrays)
    write_result(ctx.out / f"rank{a.rank}.json", dict(result, finished_at=time.time()))
    return status


if __name__ == "__main__":
    sys.exit(main())
