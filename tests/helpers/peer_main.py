"""Entry point of one peer process in multi-process tests (see procs.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

import contract_scenarios
import scenarios
import state_scenarios


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("scenario")
    ap.add_argument("--master", required=True)
    ap.add_argument("--rank", type=int, required=True)
    ap.add_argument("--world", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--args", default="{}")
    a = ap.parse_args()
    ctx = scenarios.Context(a.master, a.rank, a.world, Path(a.out), json.loads(a.args))
    try:
        module = next(m for m in (state_scenarios, contract_scenarios, scenarios) if hasattr(m, a.scenario))
        result = getattr(module, a.scenario)(ctx)
        status = 0
    except BaseException as e:  # the test reads the failure from the result file
        result = {"error": type(e).__name__, "message": str(e), "traceback": traceback.format_exc()}
        status = 1
    if ctx.arrays:
        np.savez(ctx.out / f"rank{a.rank}.npz", **ctx.arrays)
    result = dict(result or {})
    result["finished_at"] = time.time()
    tmp = ctx.out / f"rank{a.rank}.json.tmp"
    tmp.write_text(json.dumps(result))
    tmp.rename(ctx.out / f"rank{a.rank}.json")
    return status


if __name__ == "__main__":
    sys.exit(main())
