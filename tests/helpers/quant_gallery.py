"""Quantization test data: a gallery of block patterns (ties, zeros, subnormals, NaN, infinities, ranges that
overflow, ...) mixed into one array, and readers of the quantized layout. Used by the reference's tests
(test_quant_reference.py) and the Triton kernels' (test_quant_triton.py)."""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np

import quant_reference as ref

BF16 = np.dtype(ml_dtypes.bfloat16)
NP_DTYPES = (np.dtype(np.float16), BF16, np.dtype(np.float32), np.dtype(np.float64))
UINT_OF_SIZE = {2: np.uint16, 4: np.uint32, 8: np.uint64}


# ---- a gallery of blocks ----------------------------------------------------------------------------------

def _tiny_of(dtype):
    """A few units of the dtype's smallest subnormal, as float32 sees it (float64's vanish, so float32's)."""
    return 2.0 ** {2: -24, 4: -149, 8: -149}[dtype.itemsize] if dtype != BF16 else 2.0**-133


PATTERNS = {
    "normal_outliers": lambda rng, nb, dt: rng.standard_normal(nb) * np.where(rng.random(nb) < 0.03, 1e3, 1.0),
    "constant": lambda rng, nb, dt: np.full(nb, rng.standard_normal() * 10),
    "signed_zeros": lambda rng, nb, dt: np.where(rng.random(nb) < 0.5, -0.0, 0.0),
    "tiny": lambda rng, nb, dt: rng.standard_normal(nb) * 1e-30,
    "subnormal": lambda rng, nb, dt: rng.integers(-4096, 4097, nb) * _tiny_of(dt),
    "huge": lambda rng, nb, dt: rng.standard_normal(nb) * 1e30,
    "range_overflows": lambda rng, nb, dt: rng.choice([-3e38, 3e38, 1.0], nb),
    "dtype_max": lambda rng, nb, dt: rng.choice([-1, 1], nb) * rng.uniform(0.25, 1, nb) * float(_finfo(dt).max),
    "positive": lambda rng, nb, dt: 100 + rng.standard_normal(nb),
    "negative": lambda rng, nb, dt: -100 + rng.standard_normal(nb),
    "offset_narrow": lambda rng, nb, dt: 1e4 + 1e-3 * rng.standard_normal(nb),
    "ties": lambda rng, nb, dt: _ties(rng, nb),
    "nonnegative_zeros": lambda rng, nb, dt: _nonnegative_with_zeros(rng, nb),
    "sparse": lambda rng, nb, dt: rng.standard_normal(nb) * 5 * (rng.random(nb) < 0.1),
    "nan": lambda rng, nb, dt: _poke(rng, rng.standard_normal(nb), np.nan),
    "inf": lambda rng, nb, dt: _poke(rng, rng.standard_normal(nb), np.inf),
    "neg_inf": lambda rng, nb, dt: _poke(rng, rng.standard_normal(nb), -np.inf),
}


def _finfo(dtype):
    return ml_dtypes.finfo(dtype) if dtype == BF16 else np.finfo(dtype)


def _ties(rng, nb):
    """Half-integers between an exact 0 and 255: scale is 1 and every code is a tie (both kinds)."""
    v = rng.integers(0, 255, nb) + 0.5
    v[0], v[-1] = 0.0, 255.0
    return v


def _nonnegative_with_zeros(rng, nb):
    """Values >= 0, a third of them zeros of either sign: lo is a zero whose sign the format must settle."""
    v = np.abs(rng.standard_normal(nb))
    zero = rng.random(nb) < 0.3
    v[zero] = np.where(rng.random(zero.sum()) < 0.5, -0.0, 0.0)
    return v


def _poke(rng, v, value):
    v[rng.integers(v.size)] = value
    return v


FINITE_PATTERNS = [p for p in PATTERNS if p not in ("nan", "inf", "neg_inf", "range_overflows", "dtype_max")]


def gallery(n, block, dtype, seed, names=tuple(PATTERNS)):
    """n elements of dtype; block k follows pattern k + seed (cyclically) of names."""
    rng = np.random.default_rng(seed)
    values = np.empty(n, np.float64)
    for k, first, nb, _ in ref.blocks(n, block):
        values[first:first + nb] = PATTERNS[names[(k + seed) % len(names)]](rng, nb, dtype)
    with np.errstate(over="ignore"):
        return values.astype(dtype)


def bits(a):
    """The raw bits of a float array, so NaN, -0 and the rest compare exactly."""
    return np.ascontiguousarray(a).view(UINT_OF_SIZE[a.dtype.itemsize])


def header(q, block, k):
    """(p0, p1) of block k as float32."""
    pos = k * (block + 8)
    return struct.unpack("<ff", bytes(q[pos:pos + 8]))
