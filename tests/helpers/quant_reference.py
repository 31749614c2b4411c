"""NumPy reference of the quantized all-reduce format (docs/quantization.md), written for clarity, not speed.

The C++ host kernels (cpp/kernels/quant.cpp) and the Triton kernels (kernels/) must produce exactly these bytes and
floats. Everything here is float32 arithmetic on np.float32 scalars and arrays: NumPy rounds each float32
operation correctly (round to nearest, ties to even) and never fuses a multiply and an add, which is the
arithmetic the spec prescribes.

Where the spec leaves a choice open, this reference makes it (and the kernels follow):

- The sign of a zero lo or hi: -0 orders below +0 (IEEE 754-2019 minimum/maximum), so a block whose smallest
  element is zero has lo = -0 exactly when it holds a -0, whatever the order of its elements. It only shows in
  minmax's p0 bytes.
- A poisoned block stores the positive quiet NaN (0x7FC00000) as p0 and p1, and decodes to the output dtype's
  positive quiet NaN (float16 0x7E00, bfloat16 0x7FC0, float32 0x7FC00000, float64 0x7FF8000000000000).
- Stochastic rounding replaces rne() in the element codes only; zeropoint's zero is always rne (it belongs to
  the block, not to an element, and any integer zero keeps the rounding unbiased).
- The seed, op id, step and block index enter the hash as their low 32 bits.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

MINMAX = 1
ZEROPOINT = 2
MINMAX4 = 3
KINDS = (MINMAX, ZEROPOINT, MINMAX4)
HEADER_BYTES = 8
MAX_ROTATE_BLOCK = 4096
ROTATE_KEY = 0x9E3779B9  # keeps the rotation's signs apart from the stochastic rounding's draws of the same seed

F32 = np.float32
RNE_MAGIC = F32(12582912.0)  # 1.5 * 2**23
NAN = np.array(0x7FC00000, np.uint32).view(F32)[()]  # the positive quiet NaN
INPUT_DTYPES = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32), np.dtype(np.float64))


# ---- the spec's small functions -------------------------------------------------------------------------------

def rne(v):
    """Rounds float32 v (|v| < 2**22) to the nearest integer, ties to even: (v + 1.5 * 2**23) - 1.5 * 2**23."""
    return (v + RNE_MAGIC) - RNE_MAGIC


def levels(kind):
    """The largest code: 255 for the 8-bit kinds, 15 for minmax4."""
    return 15 if kind == MINMAX4 else 255


def clamp(v, top=255):
    return np.minimum(np.maximum(v, F32(0)), F32(top))


def fmix32(h):
    """MurmurHash3's finalizer on uint32 arrays (multiplication wraps mod 2**32)."""
    h = np.array(h, dtype=np.uint32, ndmin=1)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def uniform(seed, op_id, step, block_index, nb):
    """The stochastic rounding offsets u in [0, 1) of the nb elements of one block, as float32."""
    low32 = lambda v: np.uint32(int(v) & 0xFFFFFFFF)  # noqa: E731
    h = fmix32(np.arange(nb, dtype=np.uint32))
    h = fmix32(low32(block_index) ^ h)
    h = fmix32(low32(step) ^ h)
    h = fmix32(low32(op_id) ^ h)
    h = fmix32(low32(seed) ^ h)
    return (h >> np.uint32(8)).astype(F32) * F32(2.0**-24)


# ---- layout -----------------------------------------------------------------------------------------------------

def num_blocks(n, block):
    return -(-n // block)


def code_bytes(nb, kind):
    """Bytes of nb codes: one per code, or two codes per byte for minmax4."""
    return (nb + 1) // 2 if kind == MINMAX4 else nb


def quantized_bytes(n, block, kind=MINMAX):
    full, last = divmod(n, block)
    return num_blocks(n, block) * HEADER_BYTES + full * code_bytes(block, kind) + code_bytes(last, kind)


def blocks(n, block, kind=MINMAX):
    """(k, first element, element count, first byte) of each block of an n-element array."""
    for k in range(num_blocks(n, block)):
        first = k * block
        yield k, first, min(block, n - first), k * (HEADER_BYTES + code_bytes(block, kind))


def check_args(kind, block, rotate=False):
    if kind not in KINDS:
        raise ValueError(f"kind must be 1 (minmax), 2 (zeropoint) or 3 (minmax4), not {kind!r}")
    if not 64 <= block <= 65536 or block % 64:
        raise ValueError(f"block must be a multiple of 64 in [64, 65536], not {block!r}")
    if rotate and (block & (block - 1) or block > MAX_ROTATE_BLOCK):
        raise ValueError(f"rotation needs a power-of-two block of at most {MAX_ROTATE_BLOCK}, not {block!r}")


def pack(codes, kind):
    """The code bytes of one block: as they are, or for minmax4 element 2i in the low nibble of byte i and
    element 2i + 1 in its high nibble (a last odd element leaves the high nibble 0)."""
    codes = codes.astype(np.uint8)
    if kind != MINMAX4:
        return codes
    padded = np.zeros(2 * code_bytes(codes.size, kind), np.uint8)
    padded[:codes.size] = codes
    return padded[0::2] | (padded[1::2] << np.uint8(4))


def unpack(raw, nb, kind):
    """The nb codes of one block from its code bytes, as float32."""
    if kind != MINMAX4:
        return raw[:nb].astype(F32)
    both = np.empty(2 * raw.size, np.uint8)
    both[0::2] = raw & np.uint8(0x0F)
    both[1::2] = raw >> np.uint8(4)
    return both[:nb].astype(F32)


# ---- rotation ---------------------------------------------------------------------------------------------------

def rotation_signs(seed, block_index, nb):
    """True where the rotation negates an element j of block k: bit 31 of fmix32(c ^ fmix32(j)), with the block's
    key c = fmix32(seed ^ KEY ^ fmix32(k))."""
    low32 = lambda v: np.uint32(int(v) & 0xFFFFFFFF)  # noqa: E731
    c = fmix32(low32(seed) ^ np.uint32(ROTATE_KEY) ^ fmix32(low32(block_index))[0])[0]
    h = fmix32(c ^ fmix32(np.arange(nb, dtype=np.uint32)))
    return (h >> np.uint32(31)) == 1


def butterflies(v):
    """The fast Walsh-Hadamard transform of each power-of-two segment of v, in place, and each element's
    segment size as a power of two (m). Stage t (h = 2**t, t = 0, 1, ...) replaces the pair (v[j], v[j + h]),
    for j with bit t clear, by (v[j] + v[j + h], v[j] - v[j + h]) when j // (2h) < len(v) // (2h): a block of
    nb elements is its binary decomposition into segments, largest first, and a pair is only formed inside one."""
    nb = v.size
    m = np.zeros(nb, np.int32)
    h = 1
    while 2 * h <= nb:
        groups = nb // (2 * h)
        pairs = v[:groups * 2 * h].reshape(groups, 2, h)
        a, b = pairs[:, 0, :].copy(), pairs[:, 1, :].copy()
        with np.errstate(over="ignore", invalid="ignore"):
            pairs[:, 0, :] = a + b
            pairs[:, 1, :] = a - b
        m[:groups * 2 * h] += 1
        h *= 2
    return m


def rotate(values, block, seed, first_block=0):
    """The randomized Hadamard rotation of each block: signs, butterflies, then times 2**-floor(m/2)."""
    v = np.asarray(values, F32).reshape(-1).copy()
    for k, first, nb, _ in blocks(v.size, block):
        seg = v[first:first + nb]
        seg[rotation_signs(seed, first_block + k, nb)] *= F32(-1)
        m = butterflies(seg)
        seg *= np.ldexp(F32(1), -(m // 2)).astype(F32)
    return v


def stages_of(nb):
    """m(j): how many butterfly stages touch element j of a block of nb elements (log2 of its segment)."""
    j = np.arange(nb)
    m = np.zeros(nb, np.int32)
    h = 1
    while 2 * h <= nb:
        m += (j // (2 * h) < nb // (2 * h)).astype(np.int32)
        h *= 2
    return m


def unrotate(values, block, seed, first_block=0):
    """The inverse: times 2**-ceil(m/2) first (so the butterflies never grow a value past what the forward
    rotation's did), butterflies, then the same signs. Exact but for the float32 roundings."""
    v = np.asarray(values, F32).reshape(-1).copy()
    for k, first, nb, _ in blocks(v.size, block):
        seg = v[first:first + nb]
        seg *= np.ldexp(F32(1), -((stages_of(nb) + 1) // 2)).astype(F32)
        butterflies(seg)
        seg[rotation_signs(seed, first_block + k, nb)] *= F32(-1)
    return v


# ---- quantize ---------------------------------------------------------------------------------------------------

def to_float32(x):
    """The elements of x (C order) as float32: exact for float16/bfloat16/float32, nearest for float64."""
    x = np.asarray(x)
    if x.dtype not in INPUT_DTYPES:
        raise TypeError(f"cannot quantize {x.dtype}")
    with np.errstate(over="ignore"):  # float64 beyond float32's range rounds to +-inf (and poisons its block)
        return x.reshape(-1).astype(F32)


def smallest(v):
    """min(v), with -0 below +0."""
    m = v.min()
    if m == 0:
        return F32(-0.0) if np.any(np.signbit(v[v == 0])) else F32(0.0)
    return m


def largest(v):
    """max(v), with +0 above -0."""
    m = v.max()
    if m == 0:
        return F32(0.0) if not np.all(np.signbit(v[v == 0])) else F32(-0.0)
    return m


def quantize_block(v, kind, round_code=rne):
    """(p0, p1, codes) of one block of float32 values v; round_code rounds the codes (rne, or stochastic)."""
    top = levels(kind)
    poisoned = (F32(NAN), F32(NAN), np.zeros(v.size, np.uint8))
    if not np.all(np.isfinite(v)):
        return poisoned
    if kind != ZEROPOINT:
        lo, hi = smallest(v), largest(v)
    else:  # the range always holds 0
        with_zero = np.append(v, F32(0.0))
        lo, hi = smallest(with_zero), largest(with_zero)
    with np.errstate(over="ignore"):
        span = hi - lo
    if np.isinf(span):
        return poisoned
    scale = span / F32(top)

    if kind != ZEROPOINT:
        if scale == 0:
            codes = np.zeros(v.size, F32)
        else:
            codes = clamp(round_code((v - lo) / scale), top)
        return lo, scale, codes.astype(np.uint8)

    if scale == 0:
        zero = F32(0)
        codes = np.full(v.size, zero, F32)
    else:
        zero = clamp(rne(-lo / scale))
        codes = clamp(round_code(v / scale) + zero)
    return scale, zero, codes.astype(np.uint8)


def quantize_float32(values, kind, block, rounding="nearest", seed=0, op_id=0, step=0, first_block=0):
    """Quantizes a float32 vector; with rounding="stochastic" the codes are floor(v + u) (see uniform)."""
    check_args(kind, block)
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', not {rounding!r}")
    values = np.asarray(values, F32).reshape(-1)
    out = np.zeros(quantized_bytes(values.size, block, kind), np.uint8)
    for k, first, nb, pos in blocks(values.size, block, kind):
        round_code = rne
        if rounding == "stochastic":
            u = uniform(seed, op_id, step, first_block + k, nb)
            round_code = lambda v, u=u: np.floor(v + u)  # noqa: E731
        p0, p1, codes = quantize_block(values[first:first + nb], kind, round_code)
        out[pos:pos + HEADER_BYTES] = np.array([p0, p1], dtype="<f4").view(np.uint8)
        out[pos + HEADER_BYTES:pos + HEADER_BYTES + code_bytes(nb, kind)] = pack(codes, kind)
    return out


def quantize(x, kind, block, rotate_seed=None):
    """The quantized bytes of x (float16, bfloat16, float32 or float64, read in C order), rounding to nearest;
    rotated first when rotate_seed is not None."""
    check_args(kind, block, rotate_seed is not None)
    v = to_float32(x)
    if rotate_seed is not None:
        v = rotate(v, block, rotate_seed)
    return quantize_float32(v, kind, block)


# ---- dequantize -------------------------------------------------------------------------------------------------

def decode_float32(q, n, kind, block):
    """(x', poisoned): the decoded float32 values, and which elements belong to a poisoned block."""
    check_args(kind, block)
    q = np.frombuffer(bytes(q), np.uint8) if isinstance(q, (bytes, bytearray)) else np.asarray(q, np.uint8)
    size = quantized_bytes(n, block, kind)
    if q.size != size:
        raise ValueError(f"{n} elements in blocks of {block} take {size} bytes, not {q.size}")
    out = np.empty(n, F32)
    poisoned = np.zeros(n, bool)
    for _, first, nb, pos in blocks(n, block, kind):
        p0, p1 = np.frombuffer(q[pos:pos + HEADER_BYTES].tobytes(), "<f4").astype(F32)
        code = unpack(q[pos + HEADER_BYTES:pos + HEADER_BYTES + code_bytes(nb, kind)], nb, kind)
        if np.isnan(p0) or np.isnan(p1):
            out[first:first + nb] = NAN
            poisoned[first:first + nb] = True
        elif kind != ZEROPOINT:
            out[first:first + nb] = p0 + code * p1  # lo + code * scale: the product rounds, then the sum
        else:
            out[first:first + nb] = (code - p1) * p0  # (code - zero) * scale
    return out, poisoned


def dequantize(q, n, kind, block, out_dtype, divide_by=1, rotate_seed=None):
    """Decodes in float32, undoes the rotation when rotate_seed is not None (a poisoned block stays NaN), divides
    by divide_by in float32 when it is not 1, converts to out_dtype (RNE)."""
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in INPUT_DTYPES:
        raise TypeError(f"cannot dequantize to {out_dtype}")
    check_args(kind, block, rotate_seed is not None)
    y, poisoned = decode_float32(q, n, kind, block)
    if rotate_seed is not None:
        y = unrotate(np.where(poisoned, F32(0), y), block, rotate_seed)
    if divide_by != 1:
        y = y / F32(divide_by)
    with np.errstate(over="ignore"):  # float16 overflows to +-inf
        out = y.astype(out_dtype)
    out[poisoned] = np.nan  # the dtype's positive quiet NaN, whatever NaN the arithmetic carried
    return out


# ---- one hop of the ring ----------------------------------------------------------------------------------------

def reduce_hop_exact(recv_q, own_x, n, kind, block, rounding="nearest", seed=0, op_id=0, step=0, first_block=0,
                     rotate_seed=None):
    """Q(D(recv) + float32(own_x)): the host path's hop, adding its own unquantized values (rotated first when
    rotate_seed is not None; own_x starts at block first_block)."""
    received, _ = decode_float32(recv_q, n, kind, block)
    own = to_float32(own_x)
    if rotate_seed is not None:
        own = rotate(own, block, rotate_seed, first_block)
    with np.errstate(over="ignore", invalid="ignore"):
        total = received + own
    return quantize_float32(total, kind, block, rounding, seed, op_id, step, first_block).tobytes()


def reduce_hop(recv_q, own_q, n, kind, block, rounding="nearest", seed=0, op_id=0, step=0, first_block=0):
    """Q(D(recv) + D(own)) over a chunk of whole blocks of n elements whose first block is first_block."""
    received, _ = decode_float32(recv_q, n, kind, block)
    own, _ = decode_float32(own_q, n, kind, block)
    with np.errstate(over="ignore", invalid="ignore"):  # a sum that overflows (or inf - inf) poisons its block
        total = received + own
    return quantize_float32(total, kind, block, rounding, seed, op_id, step, first_block).tobytes()


# ---- the owner's sum of the direct all-reduce -----------------------------------------------------------------------

def reduce_owner(received, n, kind, block, own_q=None, own_x=None, rounding="nearest", seed=0, op_id=0, first_block=0,
                 rotate_seed=None):
    """Q(own + D(received[0]) + D(received[1]) + ...), added in that order, quantized once (stochastic draws with
    step 0). own is R(float32(own_x)) (rotated when rotate_seed is not None) or D(own_q)."""
    if own_x is not None:
        total = to_float32(own_x)
        if rotate_seed is not None:
            total = rotate(total, block, rotate_seed, first_block)
    else:
        total, _ = decode_float32(own_q, n, kind, block)
    for q in received:
        other, _ = decode_float32(q, n, kind, block)
        with np.errstate(over="ignore", invalid="ignore"):
            total = total + other
    return quantize_float32(total, kind, block, rounding, seed, op_id, 0, first_block).tobytes()
