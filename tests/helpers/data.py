"""Deterministic test data, computed the same way by peers and by the tests that check them."""

from __future__ import annotations

import numpy as np

DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
          "float16", "bfloat16", "float32", "float64"]
OPS = ["sum", "avg", "prod", "max", "min"]
FLOATS = {"float16", "bfloat16", "float32", "float64"}


def np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def length(case: int) -> int:
    """Odd lengths that do not divide by world x connections, plus the small edge cases."""
    return [1, 2, 3, 7, 1023, 4099, 65537, 100003][case % 8]


def make(name: str, op: str, n: int, rank: int, case: int) -> np.ndarray:
    """A peer's input for one (dtype, op) case; prod uses values near 1 so floats stay finite."""
    rng = np.random.default_rng([rank, case, DTYPES.index(name), OPS.index(op)])
    if name in FLOATS:
        if op == "prod":
            vals = rng.uniform(0.5, 1.5, n)
        else:
            vals = rng.standard_normal(n) * 10
        return vals.astype(np_dtype(name))
    info = np.iinfo(name)
    return rng.integers(info.min, info.max, n, dtype=name, endpoint=True)


def reference(name: str, op: str, inputs: list[np.ndarray]) -> np.ndarray:
    """NumPy's answer: exact (wrapping) for integers, float64 for floats."""
    stack = np.stack(inputs)
    if name not in FLOATS:
        fn = {"sum": np.sum, "prod": np.prod, "max": np.max, "min": np.min}[op]
        return fn(stack, axis=0, dtype=stack.dtype) if op in ("sum", "prod") else fn(stack, axis=0)
    wide = stack.astype(np.float64)
    if op == "sum":
        return wide.sum(axis=0)
    if op == "avg":
        return wide.mean(axis=0)
    if op == "prod":
        return wide.prod(axis=0)
    return wide.max(axis=0) if op == "max" else wide.min(axis=0)


# Relative error a reduction of `world` peers may show per dtype, times the world (floating sums are rounded
# once per hop in the dtype).
RTOL = {"float16": 4e-3, "bfloat16": 3e-2, "float32": 1e-5, "float64": 1e-12}


def assert_reduced(name: str, op: str, got: np.ndarray, ref: np.ndarray, inputs: list, world: int, key) -> None:
    """``got`` (a reduction over `world` peers of ``inputs``) equals NumPy's ``ref`` exactly for integers, max and
    min, and within RTOL of the inputs' magnitudes (prod: of the result's) for floating sums, averages and
    products."""
    if name not in FLOATS or op in ("max", "min"):
        assert np.array_equal(got.astype(ref.dtype), ref), key
        return
    wide = got.astype(np.float64)
    scale = np.abs(np.stack(inputs).astype(np.float64)).sum(axis=0) + 1e-30
    if op == "prod":
        scale = np.abs(ref) + 1e-30
    if op == "avg":
        scale = scale / world
    err = (np.abs(wide - ref) / scale).max(initial=0.0)
    assert err <= RTOL[name] * world, (key, float(err))
