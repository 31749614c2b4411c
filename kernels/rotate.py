"""The randomized Hadamard rotation of a block (docs/quantization.md, "Rotation"), as Triton helpers that the
quantize and dequantize kernels call on a block held whole in one tile of registers.

How this works: lane j of a tile of CHUNK = B lanes holds element j of the block (nb <= B of them are real).

- Signs: element j of block k is multiplied by -1 when bit 31 of fmix32(c ^ fmix32(j)) is set, where
  c = fmix32(seed ^ 0x9E3779B9 ^ fmix32(k)) is the block's key (uint32 arithmetic that wraps, as in the
  reference's fmix32; the launcher passes seed ^ 0x9E3779B9 as `key`). A product, like the spec's and the
  reference's sign(j) * x[j], rather than a negation, which would differ only on NaN operands: the reference
  keeps a NaN's sign through the product where a negation flips it.
- Butterflies: stage t (h = 2^t, t = 0 .. log2(B) - 1) views the tile as [B / 2h, 2, h]: row r holds the pairs
  (j, j + h) for j = 2h * r + i, i < h. It splits each row into a (first half) and b (second half) and writes
  (a + b, a - b) where r < nb // 2h, leaving the rest alone. So a full block gets the whole Walsh-Hadamard
  transform and a short last block its binary decomposition into power-of-two segments, largest first, each
  transformed on its own; lanes past nb never pair with real ones (their rows fail the test).
- Scale: element j went through m(j) = #{t : j >> (t + 1) < nb >> (t + 1)} stages; the forward rotation
  multiplies it by 2^-floor(m / 2), the inverse by 2^-ceil(m / 2). The factor is built from its exponent bits,
  so it is exact on every backend (a library exp2 need not be).

The forward rotation is signs, butterflies, scale; the inverse is scale, butterflies, signs. Negation and the
power-of-two products are exact (bar subnormal results, which round to nearest like the reference's); each
butterfly addition rounds once, and the kernels compile with enable_fp_fusion=False like everything else here.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _fmix32(h):
    """MurmurHash3's finalizer on a uint32 tensor (the products wrap mod 2**32)."""
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    h = h ^ (h >> 16)
    return h


@triton.jit
def _negated(lanes, block, key):
    """True in the lanes the rotation negates; block is the block index, key the int32 bits of seed ^ KEY."""
    c = _fmix32(key.to(tl.uint32, bitcast=True) ^ _fmix32(block.to(tl.uint32)))  # the block's key, a scalar
    h = _fmix32(c ^ _fmix32(lanes.to(tl.uint32)))
    return (h >> 31) != 0


@triton.jit
def _butterflies(v, nb, CHUNK: tl.constexpr, LOG2B: tl.constexpr):
    """Every stage of the butterflies on the float32 tile v (see the module's docstring)."""
    for t in tl.static_range(LOG2B):  # h = 1 << t, rows = CHUNK >> (t + 1), all constexpr
        w = tl.permute(tl.reshape(v, [CHUNK >> (t + 1), 2, 1 << t]), (0, 2, 1))  # [rows, h, 2]
        a, b = tl.split(w)  # a[r, i] = v[2h r + i], b[r, i] = v[2h r + h + i]
        pair = (tl.arange(0, CHUNK >> (t + 1)) < (nb >> (t + 1)))[:, None]
        w = tl.join(tl.where(pair, a + b, a), tl.where(pair, a - b, b))
        v = tl.reshape(tl.permute(w, (0, 2, 1)), [CHUNK])
    return v


@triton.jit
def _times_pow2_of_stages(v, lanes, nb, ROUND_UP: tl.constexpr, LOG2B: tl.constexpr):
    """v * 2^-floor(m / 2) (or 2^-ceil(m / 2) when ROUND_UP), m the number of stages that touched each lane."""
    m = tl.zeros(lanes.shape, tl.int32)
    for t in tl.static_range(LOG2B):
        m += ((lanes >> (t + 1)) < (nb >> (t + 1))).to(tl.int32)
    if ROUND_UP:
        e = (m + 1) >> 1
    else:
        e = m >> 1
    return v * ((127 - e) << 23).to(tl.float32, bitcast=True)  # 2^-e, e <= 6: a normal float32


@triton.jit
def rotate_tile(x, lanes, nb, block, key, CHUNK: tl.constexpr, LOG2B: tl.constexpr):
    """The forward rotation R of a block held in tile x (float32; lanes = arange(0, CHUNK), the element index)."""
    x = x * tl.where(_negated(lanes, block, key), -1.0, 1.0)
    x = _butterflies(x, nb, CHUNK, LOG2B)
    return _times_pow2_of_stages(x, lanes, nb, False, LOG2B)


@triton.jit
def unrotate_tile(y, lanes, nb, block, key, CHUNK: tl.constexpr, LOG2B: tl.constexpr):
    """The inverse rotation R^-1 of a block of decoded values held in tile y: scaled before the butterflies, so
    they never carry a value past what the forward rotation's did."""
    y = _times_pow2_of_stages(y, lanes, nb, True, LOG2B)
    y = _butterflies(y, nb, CHUNK, LOG2B)
    return y * tl.where(_negated(lanes, block, key), -1.0, 1.0)
