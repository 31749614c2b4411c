"""The reduction kernels against NumPy, element by element and bit for bit.

Integers wrap like NumPy's; float32/float64 equal NumPy's elementwise result exactly; float16 and bfloat16 equal
NumPy's result of widening to float32, combining and rounding back (nearest even), including subnormals,
overflow to infinity, NaN propagation of max/min (np.maximum / np.minimum) and signed zeros. AVG reduces as SUM
and finalize_avg divides by the world size afterwards. Every float16 bit pattern goes through the kernels once,
and every float16 against every power of two pins the float32 -> float16 rounding (ties, subnormals, overflow).
"""

from __future__ import annotations

import zlib

import ml_dtypes
import numpy as np
import pytest

from pccl_arrays import _core_testing
from pccl_arrays.dtypes import DTYPE_CODES, OP_CODES
from pccl_arrays.errors import InvalidArgumentError

pytestmark = pytest.mark.timeout(60)

BF16 = np.dtype(ml_dtypes.bfloat16)
INT_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]
HALF_DTYPES = ["float16", "bfloat16"]
FLOAT_DTYPES = HALF_DTYPES + ["float32", "float64"]
ALL_DTYPES = INT_DTYPES + FLOAT_DTYPES
OPS = ["sum", "avg", "prod", "max", "min"]
BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def np_dtype(name: str) -> np.dtype:
    return BF16 if name == "bfloat16" else np.dtype(name)


def reduce_into(acc: np.ndarray, local: np.ndarray, name: str, op: str) -> np.ndarray:
    """acc = op(acc, local) by the core, in place (acc is returned for convenience)."""
    assert acc.flags.c_contiguous and local.flags.c_contiguous and acc.dtype == local.dtype == np_dtype(name)
    _core_testing.reduce_into(acc.ctypes.data, local.ctypes.data, acc.size, DTYPE_CODES[name], OP_CODES[op])
    return acc


def finalize_avg(buf: np.ndarray, name: str, world: int) -> np.ndarray:
    _core_testing.finalize_avg(buf.ctypes.data, buf.size, DTYPE_CODES[name], world)
    return buf


def np_combine(a: np.ndarray, b: np.ndarray, op: str) -> np.ndarray:
    """NumPy's elementwise result in the arrays' own type (integers wrap)."""
    with np.errstate(all="ignore"):
        match op:
            case "sum" | "avg":
                return a + b
            case "prod":
                return a * b
            case "max":
                return np.maximum(a, b)
            case "min":
                return np.minimum(a, b)
    raise AssertionError(op)


def reference(a: np.ndarray, b: np.ndarray, name: str, op: str) -> np.ndarray:
    if name in HALF_DTYPES:  # computed in float32, rounded once to the type
        with np.errstate(all="ignore"):  # NaN and overflowing casts are part of the data
            return np_combine(a.astype(np.float32), b.astype(np.float32), op).astype(np_dtype(name))
    return np_combine(a, b, op)


def reference_avg(summed: np.ndarray, name: str, world: int) -> np.ndarray:
    with np.errstate(all="ignore"):
        if name in HALF_DTYPES:
            return (summed.astype(np.float32) / np.float32(world)).astype(np_dtype(name))
        return summed / summed.dtype.type(world)


def assert_bits_equal(got: np.ndarray, want: np.ndarray, context: str = "") -> None:
    """Bitwise equality; for floats every NaN must be a NaN where NumPy has one (NaN payloads may differ)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    g = got.view(BITS.get(got.itemsize, np.uint8))
    w = want.view(BITS.get(want.itemsize, np.uint8))
    if got.dtype.kind in "iu":
        bad = np.flatnonzero(g != w)
    else:
        with np.errstate(all="ignore"):
            gnan = np.isnan(got.astype(np.float64))
            wnan = np.isnan(want.astype(np.float64))
        bad = np.flatnonzero((gnan != wnan) | (~wnan & (g != w)))
    if bad.size:
        i = bad[:8]
        raise AssertionError(
            f"{context}: {bad.size} of {got.size} elements differ; first at {i.tolist()}: got bits "
            f"{[hex(int(x)) for x in g[i]]} ({got[i]}), want {[hex(int(x)) for x in w[i]]} ({want[i]})")


# -------------------------------------------------------------------------------------------- test data


def special_floats(name: str) -> np.ndarray:
    """Zeros of both signs, infinities, NaN, the extremes and subnormals of the type, and ordinary values."""
    dt = np_dtype(name)
    fi = ml_dtypes.finfo(dt) if name == "bfloat16" else np.finfo(dt)
    tiny, sub, big = fi.smallest_normal, fi.smallest_subnormal, fi.max
    vals = [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 0.5, 3.0, -2.5]
    vals += [float(tiny), -float(tiny), float(sub), -float(sub), float(sub) * 3, float(tiny) / 2]
    vals += [float(big), -float(big), float(big) / 2, float(big) * 0.75, float(fi.eps), 1.0 + float(fi.eps)]
    return np.array(vals, dtype=np.float64).astype(dt)


def random_floats(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    dt = np_dtype(name)
    if name in HALF_DTYPES:
        return rng.integers(0, 2**16, n, dtype=np.uint16).view(dt)  # every class of value, NaNs included
    parts = [
        rng.standard_normal(n // 2).astype(dt),
        rng.integers(0, 2 ** (8 * dt.itemsize), n - n // 2, dtype=BITS[dt.itemsize]).view(dt),
    ]
    return np.concatenate(parts)


def random_ints(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(name)
    info = np.iinfo(dt)
    out = rng.integers(info.min, info.max, n, dtype=dt, endpoint=True)
    edges = np.array([info.min, info.max, 0, 1, info.max // 2 + 1] + ([-1] if info.min < 0 else []), dtype=dt)
    out[: edges.size] = edges
    return out


def operand_pairs(name: str, rng: np.random.Generator, n: int = 4099) -> tuple[np.ndarray, np.ndarray]:
    """Two arrays: every pair of special values, then random values (an odd length tests the loop tails)."""
    if name in INT_DTYPES:
        a, b = random_ints(name, n, rng), random_ints(name, n, rng)
        edges = a[:6].copy()
        ea, eb = np.meshgrid(edges, edges)  # every pair of edge values
        return np.concatenate([ea.ravel(), a]), np.concatenate([eb.ravel(), b])
    s = special_floats(name)
    sa, sb = np.meshgrid(s, s)
    return np.concatenate([sa.ravel(), random_floats(name, n, rng)]), np.concatenate([sb.ravel(), random_floats(name, n, rng)])


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("name", ALL_DTYPES)
def test_reduce_matches_numpy(name, op):
    rng = np.random.default_rng(zlib.crc32(f"{name} {op}".encode()))
    a, b = operand_pairs(name, rng)
    b_before = b.copy()
    want = reference(a, b, name, op)
    got = reduce_into(a.copy(), b, name, op)
    assert_bits_equal(got, want, f"{name} {op}")
    assert_bits_equal(b, b_before, "local is read only")


@pytest.mark.parametrize("name", INT_DTYPES)
def test_integer_wraparound_and_extremes(name):
    dt = np.dtype(name)
    info = np.iinfo(dt)
    a = np.array([info.max, info.min, info.max, info.min], dtype=dt)
    b = np.array([1, info.max if info.min == 0 else -1, info.max, info.min], dtype=dt)
    with np.errstate(all="ignore"):
        assert_bits_equal(reduce_into(a.copy(), b, name, "sum"), a + b, "sum wraps")
        assert_bits_equal(reduce_into(a.copy(), b, name, "prod"), a * b, "prod wraps")
    assert reduce_into(a.copy(), b, name, "sum")[0] == info.min  # max + 1 wraps to min


@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_signed_zeros_and_nan_propagation(name):
    dt = np_dtype(name)
    pz, nz, nan, one = (np.array([v], dtype=np.float64).astype(dt) for v in (0.0, -0.0, np.nan, 1.0))
    def run(x, y, op):
        return reduce_into(x.copy(), y, name, op)
    # max/min return NaN when either side is NaN, in either order, like np.maximum / np.minimum.
    for op in ("max", "min"):
        for x, y in ((nan, one), (one, nan), (nan, nan), (nan, pz)):
            assert np.isnan(run(x, y, op).astype(np.float64)).all(), (op, x, y)
    # Sums: +0 + -0 = +0, -0 + -0 = -0.
    assert not np.signbit(run(pz, nz, "sum").astype(np.float64))[0]
    assert np.signbit(run(nz, nz, "sum").astype(np.float64))[0]
    assert np.signbit(run(nz, one, "prod").astype(np.float64))[0]
    assert not np.signbit(run(nz, nz, "prod").astype(np.float64))[0]
    # Equal zeros: the result is what np.maximum / np.minimum give (the second operand), bit for bit.
    for op in ("max", "min"):
        for x, y in ((pz, nz), (nz, pz)):
            assert_bits_equal(run(x, y, op), reference(x, y, name, op), f"{op}({x[0]}, {y[0]})")


@pytest.mark.parametrize("name", HALF_DTYPES)
def test_half_overflow_and_subnormal_rounding(name):
    dt = np_dtype(name)
    fi = ml_dtypes.finfo(dt) if name == "bfloat16" else np.finfo(dt)
    big = np.full(4, fi.max, dtype=dt)
    assert np.isposinf(reduce_into(big.copy(), big, name, "sum").astype(np.float32)).all()
    assert np.isposinf(reduce_into(big.copy(), big, name, "prod").astype(np.float32)).all()
    sub = np.full(4, fi.smallest_subnormal, dtype=dt)
    assert_bits_equal(reduce_into(sub.copy(), sub, name, "sum"), reference(sub, sub, name, "sum"), "subnormal sum")
    # Half of the smallest subnormal is a tie between 0 and it: nearest even rounds to zero.
    half = np.full(4, 0.5, dtype=dt)
    assert (reduce_into(sub.copy(), half, name, "prod").view(np.uint16) == 0).all()


@pytest.mark.parametrize("world", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("name", FLOAT_DTYPES)
def test_avg_is_sum_then_finalize(name, world):
    rng = np.random.default_rng(world)
    inputs = [random_floats(name, 2051, rng) for _ in range(min(world, 4))]
    acc = inputs[0].copy()
    want = inputs[0].copy()
    for x in inputs[1:]:
        reduce_into(acc, x, name, "avg")
        want = reference(want, x, name, "sum")
    assert_bits_equal(acc, want, "avg reduces as sum")
    assert_bits_equal(finalize_avg(acc, name, world), reference_avg(want, name, world), f"{name} / {world}")


@pytest.mark.parametrize("name", INT_DTYPES)
def test_integer_avg_reduces_as_sum_and_refuses_to_finalize(name):
    rng = np.random.default_rng(3)
    a, b = random_ints(name, 100, rng), random_ints(name, 100, rng)
    assert_bits_equal(reduce_into(a.copy(), b, name, "avg"), reference(a, b, name, "sum"), "int avg = sum")
    with pytest.raises(InvalidArgumentError):
        finalize_avg(a.copy(), name, 2)


@pytest.mark.parametrize("op", ["sum", "prod", "max", "min"])
@pytest.mark.parametrize("name", ALL_DTYPES)
def test_chained_reduction_like_a_ring(name, op):
    """Four contributions folded into one accumulator in ring order, as the owner of a chunk does."""
    rng = np.random.default_rng(11)
    make = random_ints if name in INT_DTYPES else random_floats
    xs = [make(name, 1000, rng) for _ in range(4)]
    acc, want = xs[0].copy(), xs[0].copy()
    for x in xs[1:]:
        reduce_into(acc, x, name, op)
        want = reference(want, x, name, op)
    assert_bits_equal(acc, want, f"{name} {op} chained")


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 15, 16, 17, 31, 33, 63, 65, 1023])
def test_lengths_and_tails_touch_only_n_elements(n):
    for name in ("int8", "float16", "float32", "float64"):
        dt = np_dtype(name)
        rng = np.random.default_rng(n)
        a = (rng.standard_normal(n + 8) * 10).astype(dt)
        b = (rng.standard_normal(n + 8) * 10).astype(dt)
        got = a.copy()
        _core_testing.reduce_into(got.ctypes.data, b.ctypes.data, n, DTYPE_CODES[name], OP_CODES["sum"])
        assert_bits_equal(got[:n], reference(a[:n], b[:n], name, "sum"), f"{name} n={n}")
        assert_bits_equal(got[n:], a[n:], "past n untouched")


# --------------------------------------------------------------------------- exhaustive half conversions


@pytest.mark.parametrize("name", HALF_DTYPES)
def test_every_bit_pattern_round_trips(name):
    """All 65536 patterns: x + (-0) and x / 1 are x exactly in float32, so these pin half -> float -> half."""
    dt = np_dtype(name)
    x = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(dt)
    nan = np.isnan(x.astype(np.float32))
    for what, got in (
        ("sum with -0", reduce_into(x.copy(), np.full_like(x, -0.0), name, "sum")),
        ("max with itself", reduce_into(x.copy(), x.copy(), name, "max")),
        ("finalize_avg world 1", finalize_avg(x.copy(), name, 1)),
    ):
        assert_bits_equal(got, x, f"{name} {what}")  # identity on every non-NaN pattern
        assert np.isnan(got[nan].astype(np.float32)).all()
        assert (np.signbit(got[nan].astype(np.float32)) == np.signbit(x[nan].astype(np.float32))).all(), what
    # And against NumPy's own widening and rounding for sums with +0 (-0 + +0 is +0).
    assert_bits_equal(reduce_into(x.copy(), np.zeros_like(x), name, "sum"),
                      reference(x, np.zeros_like(x), name, "sum"), f"{name} sum with +0")


@pytest.mark.parametrize("name", HALF_DTYPES)
def test_finalize_avg_of_every_bit_pattern(name):
    """x / world in float32, rounded once: not x * (1 / world), which rounds twice."""
    x = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np_dtype(name))
    for world in (2, 3, 5, 6, 7, 10, 13, 1000, 65535):
        assert_bits_equal(finalize_avg(x.copy(), name, world), reference_avg(x, name, world), f"{name} / {world}")


@pytest.mark.timeout(120)
def test_float16_against_every_power_of_two():
    """Every float16 plus and times ±2^k for k in -24..15: exact float32 sums and products that land on ties,
    near ties, the subnormal boundary and the overflow threshold, all rounded by the core's float -> half."""
    x = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    powers = np.array([s * 2.0**k for k in range(-24, 16) for s in (1.0, -1.0)], dtype=np.float16)
    a = np.repeat(x, powers.size)
    b = np.tile(powers, x.size)
    for op in ("sum", "prod"):
        assert_bits_equal(reduce_into(a.copy(), b, "float16", op), reference(a, b, "float16", op), f"float16 {op}")


@pytest.mark.timeout(120)
def test_bfloat16_against_many_powers_of_two():
    x = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(BF16)
    powers = np.array([s * 2.0**k for k in range(-133, 128, 7) for s in (1.0, -1.0)], dtype=np.float32).astype(BF16)
    a = np.repeat(x, powers.size)
    b = np.tile(powers, x.size)
    for op in ("sum", "prod"):
        assert_bits_equal(reduce_into(a.copy(), b, "bfloat16", op), reference(a, b, "bfloat16", op), f"bfloat16 {op}")


@pytest.mark.parametrize("name", HALF_DTYPES)
def test_random_pairs_of_every_class(name):
    rng = np.random.default_rng(5)
    a, b = random_floats(name, 1 << 20, rng), random_floats(name, 1 << 20, rng)
    for op in ("sum", "prod", "max", "min"):
        assert_bits_equal(reduce_into(a.copy(), b, name, op), reference(a, b, name, op), f"{name} {op}")


# ------------------------------------------------------------------------------------------ bad arguments


def test_unknown_codes_are_refused():
    """An unknown dtype or op code must not silently leave the accumulator as it was."""
    a = np.ones(4, dtype=np.float32)
    b = np.ones(4, dtype=np.float32)
    with pytest.raises(InvalidArgumentError):
        _core_testing.reduce_into(a.ctypes.data, b.ctypes.data, 4, 12, OP_CODES["sum"])
    with pytest.raises(InvalidArgumentError):
        _core_testing.reduce_into(a.ctypes.data, b.ctypes.data, 4, DTYPE_CODES["float32"], 5)
    with pytest.raises(InvalidArgumentError):
        _core_testing.finalize_avg(a.ctypes.data, 4, 12, 2)
