"""Writes cpp/tests/kernels_golden.hpp: the golden outputs of kernels_test.cpp, computed by the NumPy references.

    .venv/bin/python cpp/tests/kernels_golden.py     # from the repository root; rewrites the header

The quantization goldens come from tests/helpers/quant_reference.py (the executable form of
docs/quantization.md), the half-precision reductions from NumPy and ml_dtypes computed in float32 and rounded
once, as tests/test_allreduce_kernels.py computes its reference (for +, *, / of two halves that equals the
correctly rounded result: float32 has more than twice their precision plus two bits). The inputs of the
quantization goldens are formulas that kernels_test.cpp computes too, exactly, in integer arithmetic and
float32/float64 values that need no rounding (mix() and the *_input functions below and in the test); the
inputs of the reductions are listed in the header. Run it again only when the format changes on purpose.
"""

from __future__ import annotations

import sys
from pathlib import Path

import ml_dtypes
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))
import quant_reference as ref  # noqa: E402

M = 0xFFFFFFFF
BF16 = ml_dtypes.bfloat16
N, BLOCK, N_SMALL = 328, 64, 100  # 5 whole blocks and one of 8 elements; 100 = one whole block and 36


def mix(i: int, salt: int) -> int:
    """A 32-bit integer hash (the same in kernels_test.cpp)."""
    h = (i * 0x9E3779B1 + salt * 0x7F4A7C15 + 0x632BE5AB) & M
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M
    h ^= h >> 16
    return h


def unit(i: int, salt: int, shift: int) -> float:
    """A value in [-8, 8) with 23 - shift fraction bits: exact in float32."""
    return float((mix(i, salt) >> 8) - (1 << 23)) * 2.0 ** -(20 + shift)


def f32_input() -> np.ndarray:
    """Blocks of 64: plain, outliers (x1024), constant 3.25, positive (|v| + 1), Inf and NaN (poisoned), zeros
    with two -0; the last block has 8 elements."""
    x = np.array([unit(i, 1, 0) for i in range(N)], np.float64)
    for i in range(64, 128):
        if i % 16 == 5:
            x[i] *= 1024
    x[128:192] = 3.25
    x[192:256] = np.abs(x[192:256]) + 1
    x[261], x[300] = np.inf, np.nan
    x[320:328] = 0.0
    x[322] = x[325] = -0.0
    return x.astype(np.float32)


def f32_second_input() -> np.ndarray:
    return np.array([unit(i, 2, 1) for i in range(N)], np.float32)


def f16_input() -> np.ndarray:  # 11-bit integers / 64: exact in float16
    return np.array([((mix(i, 3) >> 21) - 1024) / 64 for i in range(N_SMALL)], np.float16)


def bf16_input() -> np.ndarray:  # 8-bit integers / 16: exact in bfloat16
    return np.array([((mix(i, 4) >> 24) - 128) / 16 for i in range(N_SMALL)], BF16)


def f64_input() -> np.ndarray:  # 32-bit integers / 2^28: exact in float64, rounded on the way to float32
    return np.array([(mix(i, 5) - (1 << 31)) * 2.0 ** -28 for i in range(N_SMALL)], np.float64)


def half_pairs(dtype) -> tuple[np.ndarray, np.ndarray]:
    """Operands for the half-precision reductions: special pairs first, then plain values."""
    info = ml_dtypes.finfo(dtype)
    tiny, big, eps = float(info.smallest_subnormal), float(info.max), float(info.eps)
    special = [(0.0, -0.0), (-0.0, -0.0), (-0.0, 0.0), (np.inf, 1.0), (np.inf, -np.inf), (np.nan, 1.0),
               (1.0, np.nan), (big, big), (-big, -big), (tiny, tiny), (tiny, -tiny), (1.0, eps / 2),
               (1.0 + eps, eps / 2), (-2.0, 3.0), (0.1, 0.2), (1e-3, 1e3)]
    a = [p[0] for p in special] + [((mix(i, 6) >> 16) - 32768) / 1024 for i in range(24)]
    b = [p[1] for p in special] + [((mix(i, 7) >> 16) - 32768) / 4096 for i in range(24)]
    with np.errstate(all="ignore"):
        return np.array(a).astype(dtype), np.array(b).astype(dtype)


def half_reductions(dtype) -> dict[str, np.ndarray]:
    a, b = half_pairs(dtype)
    fa, fb = a.astype(np.float32), b.astype(np.float32)
    with np.errstate(all="ignore"):
        out = {"a": a, "b": b, "sum": (fa + fb).astype(dtype), "prod": (fa * fb).astype(dtype),
               "max": np.maximum(fa, fb).astype(dtype), "min": np.minimum(fa, fb).astype(dtype)}
        out["avg3"] = (out["sum"].astype(np.float32) / np.float32(3)).astype(dtype)
    return out


def goldens() -> dict[str, bytes]:
    mm, zp, mm4 = ref.MINMAX, ref.ZEROPOINT, ref.MINMAX4
    x, y = f32_input(), f32_second_input()
    q_mm4 = ref.quantize(x, mm4, BLOCK)
    q_rot = ref.quantize(x, mm4, BLOCK, rotate_seed=9)  # the last block (8 elements) is one segment
    q_rot_small = ref.quantize(f16_input(), mm, BLOCK, rotate_seed=3)  # 100 = 64 + 32 + 4: three segments
    q_mm = ref.quantize(x, mm, BLOCK)
    q_zp = ref.quantize(x, zp, BLOCK)
    q_f16 = ref.quantize(f16_input(), mm, BLOCK)
    q_bf16 = ref.quantize(bf16_input(), zp, BLOCK)
    q_f64 = ref.quantize(f64_input(), mm, BLOCK)
    g = {
        "kQuantMinMaxF32": q_mm,
        "kQuantZeroPointF32": q_zp,
        "kDequantMinMaxToF32": ref.dequantize(q_mm, N, mm, BLOCK, np.float32),
        "kDequantZeroPointToF16Div3": ref.dequantize(q_zp, N, zp, BLOCK, np.float16, divide_by=3),
        "kQuantMinMax4F32": q_mm4,
        "kDequantMinMax4ToF32": ref.dequantize(q_mm4, N, mm4, BLOCK, np.float32),
        "kQuantMinMax4RotatedF32": q_rot,
        "kDequantMinMax4RotatedToF32Div3": ref.dequantize(q_rot, N, mm4, BLOCK, np.float32, divide_by=3, rotate_seed=9),
        "kQuantMinMaxRotatedF16": q_rot_small,
        "kDequantMinMaxRotatedToF16": ref.dequantize(q_rot_small, N_SMALL, mm, BLOCK, np.float16, rotate_seed=3),
        "kHopExactMinMax4RotatedStochastic": ref.reduce_hop_exact(q_rot, y, N, mm4, BLOCK, "stochastic", seed=9,
                                                                  op_id=4, step=1, rotate_seed=9),
        "kQuantMinMaxF16": q_f16,
        "kDequantMinMaxF16ToF16": ref.dequantize(q_f16, N_SMALL, mm, BLOCK, np.float16),
        "kQuantZeroPointBF16": q_bf16,
        "kDequantZeroPointBF16ToBF16": ref.dequantize(q_bf16, N_SMALL, zp, BLOCK, BF16),
        "kQuantMinMaxF64": q_f64,
        "kDequantMinMaxF64ToF64Div2": ref.dequantize(q_f64, N_SMALL, mm, BLOCK, np.float64, divide_by=2),
        # hops: Q(D(Q(x)) + D(Q(y))) stochastic (seed 7, op id 2^32 + 5: its low 32 bits count, step 2), and
        # Q(D(Q(x)) + y) zero point, nearest and stochastic (seed 11, op 3, step 1)
        "kHopMinMaxStochastic": ref.reduce_hop(q_mm, ref.quantize(y, mm, BLOCK), N, mm, BLOCK, "stochastic", seed=7,
                                               op_id=(1 << 32) + 5, step=2),
        "kHopExactZeroPoint": ref.reduce_hop_exact(q_zp, y, N, zp, BLOCK),
        "kHopExactZeroPointStochastic": ref.reduce_hop_exact(q_zp, y, N, zp, BLOCK, "stochastic", seed=11, op_id=3,
                                                             step=1),
    }
    for name, dtype in (("F16", np.float16), ("BF16", BF16)):
        for key, v in half_reductions(dtype).items():
            g[f"kReduce{name}_{key}"] = v
    return {k: np.asarray(v).tobytes() if not isinstance(v, bytes) else v for k, v in g.items()}


def main() -> None:
    lines = ["// Generated by cpp/tests/kernels_golden.py from the NumPy references; do not edit (run the script).",
             "// Each golden is the little-endian bytes of an array, in hex.", "#pragma once", "",
             "namespace kernels_golden {", ""]
    for name, data in goldens().items():
        text = data.hex()
        lines.append(f"// {len(data)} bytes")
        lines.append(f"inline constexpr const char {name}[] =")
        for k in range(0, len(text), 104):
            lines.append(f'    "{text[k:k + 104]}"' + (";" if k + 104 >= len(text) else ""))
    lines += ["", "}  // namespace kernels_golden", ""]
    (Path(__file__).with_name("kernels_golden.hpp")).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
