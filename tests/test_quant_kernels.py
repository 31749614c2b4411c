"""The C++ quantization kernels produce exactly the bytes and floats of the NumPy reference of
docs/quantization.md (tests/helpers/quant_reference.py), which the Triton kernels are held to as well."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import quant_reference as ref
from pccl_arrays import _core_testing
from pccl_arrays.dtypes import dtype_code

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


def make(rng: np.random.Generator, n: int, dtype, flavour: str) -> np.ndarray:
    x = rng.standard_normal(n)
    if flavour == "outliers":
        x[rng.integers(0, n, max(1, n // 100))] *= 1e4
    elif flavour == "constant":
        x[:] = 3.25
    elif flavour == "tiny":
        x *= 1e-30 if np.dtype(dtype).itemsize >= 4 else 1e-6
    elif flavour == "huge":
        x *= 1e30 if np.dtype(dtype).itemsize >= 4 and dtype is not np.float16 else 1e3
    elif flavour == "zeros":
        x[:] = 0.0
        x[rng.integers(0, n, max(1, n // 7))] = -0.0
    elif flavour == "nonfinite":
        x[rng.integers(0, n, 3)] = rng.choice([np.nan, np.inf, -np.inf], 3)
    elif flavour == "positive":
        x = np.abs(x) + 1
    with np.errstate(over="ignore"):
        return x.astype(dtype)


def c_quantize(x: np.ndarray, kind: int, block: int, rotate_seed=None) -> np.ndarray:
    name = "bfloat16" if x.dtype == ml_dtypes.bfloat16 else x.dtype.name
    out = np.empty(_core_testing.quantized_bytes(x.size, block, kind), np.uint8)
    _core_testing.quantize(x.ctypes.data, dtype_code(name), x.size, kind, block, out.ctypes.data,
                           rotate=rotate_seed is not None, seed=rotate_seed or 0)
    return out


def c_dequantize(q: np.ndarray, n: int, kind: int, block: int, dtype, divide_by: int, rotate_seed=None) -> np.ndarray:
    out = np.empty(n, dtype)
    name = "bfloat16" if out.dtype == ml_dtypes.bfloat16 else out.dtype.name
    _core_testing.dequantize(q.ctypes.data, n, kind, block, dtype_code(name), out.ctypes.data, divide_by,
                             rotate=rotate_seed is not None, seed=rotate_seed or 0)
    return out


CASES = [(n, block, flavour) for n, block in [(1, 64), (63, 64), (1000, 256), (4097, 1024), (65535, 4096)]
         for flavour in ["normal", "outliers", "constant", "tiny", "huge", "zeros", "nonfinite", "positive"]]


@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT, ref.MINMAX4])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_quantize_and_dequantize_match_the_reference_bit_for_bit(kind, dtype):
    rng = np.random.default_rng([kind, np.dtype(dtype).itemsize])
    for n, block, flavour in CASES:
        x = make(rng, n, dtype, flavour)
        q = c_quantize(x, kind, block)
        expected = ref.quantize(x, kind, block)
        assert q.tobytes() == expected.tobytes(), (n, block, flavour)
        for out_dtype in DTYPES:
            for divide_by in (1, 3):
                got = c_dequantize(q, n, kind, block, out_dtype, divide_by)
                want = ref.dequantize(q, n, kind, block, out_dtype, divide_by)
                assert got.view(np.uint8).tobytes() == want.view(np.uint8).tobytes(), (n, block, flavour, out_dtype)


ROTATED_CASES = [(n, block, flavour) for n, block in [(1, 64), (63, 64), (1000, 256), (4097, 1024), (9999, 4096)]
                 for flavour in ["normal", "outliers", "constant", "huge", "zeros", "nonfinite"]]


@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT, ref.MINMAX4])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_rotated_quantize_and_dequantize_match_the_reference_bit_for_bit(kind, dtype):
    """With rotation: odd lengths whose last block is several power-of-two segments, poisoned blocks (NaN, never
    rotated back), blocks whose rotated values overflow; every output dtype, with and without a division."""
    rng = np.random.default_rng([kind, np.dtype(dtype).itemsize, 1])
    for n, block, flavour in ROTATED_CASES:
        x = make(rng, n, dtype, flavour)
        seed = int(rng.integers(0, 2**32))
        q = c_quantize(x, kind, block, rotate_seed=seed)
        assert q.tobytes() == ref.quantize(x, kind, block, rotate_seed=seed).tobytes(), (n, block, flavour)
        for out_dtype in DTYPES:
            for divide_by in (1, 3):
                got = c_dequantize(q, n, kind, block, out_dtype, divide_by, rotate_seed=seed)
                want = ref.dequantize(q, n, kind, block, out_dtype, divide_by, rotate_seed=seed)
                assert got.view(np.uint8).tobytes() == want.view(np.uint8).tobytes(), (n, block, flavour, out_dtype)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT, ref.MINMAX4])
def test_ring_hop_matches_the_reference(kind, rounding):
    rng = np.random.default_rng([kind, len(rounding)])
    block = 256
    for n_chunk, first_block, flavour in [(256 * 5, 0, "normal"), (256 * 3 + 77, 4, "outliers"),
                                          (100, 9, "constant"), (256 * 2, 2, "nonfinite")]:
        recv = ref.quantize(make(rng, n_chunk, np.float32, flavour), kind, block)
        own = ref.quantize(make(rng, n_chunk, np.float32, "normal"), kind, block)
        acc = recv.copy()  # (whether these bytes were rotated makes no difference to a hop)
        n_total = first_block * block + n_chunk  # the chunk ends the array, so its last block may be short
        n_blocks = ref.num_blocks(n_chunk, block)
        _core_testing.reduce_hop(acc.ctypes.data, own.ctypes.data, first_block, n_blocks, n_total, kind, block,
                         1 if rounding == "stochastic" else 0, 1234, 2**40 + 7, 3)
        want = ref.reduce_hop(recv, own, n_chunk, kind, block, rounding, seed=1234, op_id=2**40 + 7, step=3,
                              first_block=first_block)
        assert acc.tobytes() == want, (n_chunk, first_block, flavour)


@pytest.mark.parametrize("rotate", [False, True], ids=["plain", "rotated"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_exact_ring_hop_matches_the_reference(dtype, rounding, rotate):
    """The host path's hop; with rotation our own values are rotated (by their global block index) first."""
    rng = np.random.default_rng([np.dtype(dtype).itemsize, len(rounding), rotate])
    block = 256
    for kind in (ref.MINMAX, ref.ZEROPOINT, ref.MINMAX4):
        for n_chunk, first_block, flavour in [(256 * 4, 0, "normal"), (256 * 2 + 5, 3, "outliers"),
                                              (256, 1, "nonfinite"), (40, 6, "tiny")]:
            recv = ref.quantize(make(rng, n_chunk, np.float32, "normal"), kind, block)
            own = make(rng, n_chunk, dtype, flavour)
            acc = recv.copy()
            name = "bfloat16" if own.dtype == ml_dtypes.bfloat16 else own.dtype.name
            _core_testing.reduce_hop_exact(acc.ctypes.data, own.ctypes.data, dtype_code(name), first_block,
                                   ref.num_blocks(n_chunk, block), first_block * block + n_chunk, kind, block,
                                   1 if rounding == "stochastic" else 0, 99, 5, 1, rotate=rotate)
            want = ref.reduce_hop_exact(recv, own, n_chunk, kind, block, rounding, seed=99, op_id=5, step=1,
                                        first_block=first_block, rotate_seed=99 if rotate else None)
            assert acc.tobytes() == want, (kind, n_chunk, flavour)


def test_unknown_settings_are_refused():
    x = np.zeros(10, np.float32)
    out = np.empty(_core_testing.quantized_bytes(10, 1024), np.uint8)
    with pytest.raises(ValueError):
        _core_testing.quantize(x.ctypes.data, dtype_code("float32"), 10, 4, 1024, out.ctypes.data)
    for block in (192, 8192):  # rotation: a power of two, at most 4096
        with pytest.raises(ValueError, match="power-of-two block"):
            _core_testing.quantize(x.ctypes.data, dtype_code("float32"), 10, 3, block, out.ctypes.data, rotate=True)
    with pytest.raises(ValueError):
        _core_testing.quantize(x.ctypes.data, dtype_code("float32"), 10, 1, 100, out.ctypes.data)
    with pytest.raises(ValueError):
        _core_testing.quantize(x.ctypes.data, dtype_code("int32"), 10, 1, 1024, out.ctypes.data)


@pytest.mark.parametrize("rotate", [False, True], ids=["plain", "rotated"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("kind", [ref.MINMAX, ref.ZEROPOINT, ref.MINMAX4])
def test_owner_sum_matches_the_reference(kind, rounding, rotate):
    """The direct all-reduce's owner sum over a chunk of whole blocks: its own contribution exact (the host
    path, rotated with the blocks' global indices) or quantized (the device path), plus every sender's decoded
    blocks in order, quantized once."""
    rng = np.random.default_rng([kind, len(rounding), rotate])
    block = 256
    seed = 77 if rotate else 0
    for n_chunk, first_block, senders, flavour in [(256 * 4, 0, 3, "normal"), (256 * 2 + 5, 3, 1, "outliers"),
                                                   (256, 1, 2, "nonfinite"), (40, 6, 4, "tiny")]:
        own = make(rng, n_chunk, np.float32, flavour)
        received = [ref.quantize_float32(make(rng, n_chunk, np.float32, "normal"), kind, block) for _ in range(senders)]
        own_q = ref.quantize_float32(own, kind, block)
        n_total, n_blocks = first_block * block + n_chunk, ref.num_blocks(n_chunk, block)
        for exact in (True, False):
            out = np.zeros_like(own_q)
            _core_testing.reduce_owner(out.ctypes.data, [q.ctypes.data for q in received],
                                       0 if exact else own_q.ctypes.data, own.ctypes.data if exact else 0,
                                       dtype_code("float32"), first_block, n_blocks, n_total, kind, block,
                                       1 if rounding == "stochastic" else 0, seed, 2**33 + 9, rotate=rotate)
            want = ref.reduce_owner(received, n_chunk, kind, block, own_x=own if exact else None,
                                    own_q=None if exact else own_q, rounding=rounding, seed=seed, op_id=2**33 + 9,
                                    first_block=first_block, rotate_seed=seed if rotate and exact else None)
            assert out.tobytes() == want, (n_chunk, first_block, flavour, exact)
