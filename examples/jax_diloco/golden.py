"""A short deterministic single-process DiLoCo trajectory, the golden fixture that locks the numerics of the
outer step (tests/test_example_diloco.py compares against it).

    python golden.py              # print the trajectory
    python golden.py --regenerate # rewrite tests/golden/diloco_trajectory.json (after an intended change)

With one worker the average pseudo-gradient is the worker's own, so this is exactly what diloco.py computes
between its all-reduces: H AdamW steps, delta = theta - local, Nesterov outer step. The fixture also holds the
outer step applied to fixed random inputs, so a change to the outer step alone shows up on its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import diloco  # noqa: E402
import task  # noqa: E402

FIXTURE = HERE.parent.parent / "tests" / "golden" / "diloco_trajectory.json"


def outer_step_on_fixed_inputs() -> dict:
    g = np.random.default_rng(7)
    p, m, d = (jnp.asarray(g.standard_normal(8).astype(np.float32)) for _ in range(3))
    p2, m2 = diloco.outer_step({"x": p}, {"x": m}, {"x": d}, jnp.float32(0.7), jnp.float32(0.9))
    return {"params": [float(v) for v in p2["x"]], "momentum": [float(v) for v in m2["x"]]}


def trajectory(rounds: int = 4, inner_steps: int = 5, outer_lr: float = 0.7, outer_momentum: float = 0.9) -> dict:
    params = task.init_params(0)
    momentum = jax.tree_util.tree_map(jnp.zeros_like, params)
    opt, step = diloco.make_inner(3e-3, 1e-4)
    opt_state = opt.init(params)
    data = task.batches(0, 64, 0)
    ex, ey = task.eval_set()
    rows = []
    for r in range(rounds):
        local = params
        for _ in range(inner_steps):
            x, y = next(data)
            local, opt_state, _ = step(local, opt_state, x, y)
        delta = jax.tree_util.tree_map(lambda o, p: o - p, params, local)
        params, momentum = diloco.outer_step(params, momentum, delta, jnp.float32(outer_lr), jnp.float32(outer_momentum))
        flat = np.asarray(ravel_pytree(params)[0], dtype=np.float64)
        mflat = np.asarray(ravel_pytree(momentum)[0], dtype=np.float64)
        rows.append({"round": r + 1, "eval_loss": float(task.evaluate(params, ex, ey)[0]),
                     "params_sum": float(flat.sum()), "params_abs_sum": float(np.abs(flat).sum()),
                     "momentum_abs_sum": float(np.abs(mflat).sum()), "params_head": [float(v) for v in flat[:6]]})
    return {"rounds": rounds, "inner_steps": inner_steps, "outer_lr": outer_lr, "outer_momentum": outer_momentum,
            "trajectory": rows, "outer_step_fixed_inputs": outer_step_on_fixed_inputs()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--regenerate", action="store_true", help=f"rewrite {FIXTURE}")
    a = ap.parse_args(argv)
    t = trajectory()
    if a.regenerate:
        FIXTURE.parent.mkdir(parents=True, exist_ok=True)
        FIXTURE.write_text(json.dumps(t, indent=1) + "\n")
        print(f"wrote {FIXTURE}")
    else:
        print(json.dumps(t, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
