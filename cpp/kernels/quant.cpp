#include "kernels/quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "base/error.hpp"
#include "kernels/reduce.hpp"
#include "kernels/rotate.hpp"
#include "kernels/simd.hpp"

namespace pccl {

// The hot loops are target_clones (kernels/simd.hpp). CMakeLists.txt tunes this file for a recent core rather
// than GCC's generic tuning: quantize runs 5.1 -> 6.8 GB/s on one core here.

namespace {

constexpr float kRneMagic = 12582912.0f;  // 1.5 * 2^23: (v + m) - m rounds 0 <= v < 2^22 to nearest even

// Without -ffast-math the compiler may not fold (v + m) - m, so both roundings happen as the spec says.
inline float rne(float v) { return (v + kRneMagic) - kRneMagic; }
inline float clamp_to(float v, float top) { return std::min(std::max(v, 0.0f), top); }
inline float clamp255(float v) { return clamp_to(v, 255.0f); }

inline float uniform(uint32_t seed, uint32_t op, uint32_t step, uint32_t block, uint32_t element) {
    const uint32_t h = fmix32(seed ^ fmix32(op ^ fmix32(step ^ fmix32(block ^ fmix32(element)))));
    return float(h >> 8) * (1.0f / 16777216.0f);
}

inline void store_f32(uint8_t* p, float v) { std::memcpy(p, &v, 4); }  // little-endian hosts only
inline float load_f32(const uint8_t* p) {
    float v;
    std::memcpy(&v, p, 4);
    return v;
}

// Widens n elements of a floating dtype to float32 (exact, except float64 which rounds to nearest).
PCCL_SIMD void to_float(const void* x, DType t, size_t n, float* out) {
    switch (t) {
        case DType::kFloat32: std::memcpy(out, x, n * 4); return;
        case DType::kFloat64: {
            auto* p = static_cast<const double*>(x);
            for (size_t i = 0; i < n; i++) out[i] = float(p[i]);
            return;
        }
        case DType::kFloat16: {
            auto* p = static_cast<const uint16_t*>(x);
            for (size_t i = 0; i < n; i++) out[i] = half_to_float(p[i]);
            return;
        }
        case DType::kBFloat16: {
            auto* p = static_cast<const uint16_t*>(x);
            for (size_t i = 0; i < n; i++) out[i] = bf16_to_float(p[i]);
            return;
        }
        default: return;  // the callers checked (check_float): no exception leaves a target_clones function
    }
}

PCCL_SIMD void from_float(const float* v, size_t n, DType t, void* out) {
    switch (t) {
        case DType::kFloat32: std::memcpy(out, v, n * 4); return;
        case DType::kFloat64: {
            auto* p = static_cast<double*>(out);
            for (size_t i = 0; i < n; i++) p[i] = double(v[i]);
            return;
        }
        case DType::kFloat16: {
            auto* p = static_cast<uint16_t*>(out);
            for (size_t i = 0; i < n; i++) p[i] = float_to_half(v[i]);
            return;
        }
        case DType::kBFloat16: {
            auto* p = static_cast<uint16_t*>(out);
            for (size_t i = 0; i < n; i++) p[i] = float_to_bf16(v[i]);
            return;
        }
        default: return;  // the callers checked (check_float)
    }
}

struct Stochastic {
    bool on = false;
    uint32_t seed = 0, op = 0, step = 0, block = 0;
};

// Quantizes one block of nb float32 values into dst (header + codes).
// lo, hi and whether every value is finite, in one pass. Eight independent lanes let the compiler keep the
// pass in vector registers; min and max are exact, so the lane order does not change the result.
PCCL_SIMD bool block_range(const float* v, size_t nb, float* lo_out, float* hi_out) {
    constexpr size_t L = 8;
    float lo[L], hi[L];
    uint32_t bad[L] = {};
    for (size_t k = 0; k < L; k++) lo[k] = hi[k] = v[0];
    size_t i = 0;
    for (; i + L <= nb; i += L) {
        for (size_t k = 0; k < L; k++) {
            const float x = v[i + k];
            uint32_t bits;
            std::memcpy(&bits, &x, 4);
            bad[k] |= uint32_t((bits & 0x7f800000u) == 0x7f800000u);  // exponent all ones: Inf or NaN
            lo[k] = x < lo[k] ? x : lo[k];
            hi[k] = x > hi[k] ? x : hi[k];
        }
    }
    for (; i < nb; i++) {
        uint32_t bits;
        std::memcpy(&bits, &v[i], 4);
        bad[0] |= uint32_t((bits & 0x7f800000u) == 0x7f800000u);
        lo[0] = v[i] < lo[0] ? v[i] : lo[0];
        hi[0] = v[i] > hi[0] ? v[i] : hi[0];
    }
    uint32_t any_bad = 0;
    for (size_t k = 0; k < L; k++) {
        any_bad |= bad[k];
        lo[0] = lo[k] < lo[0] ? lo[k] : lo[0];
        hi[0] = hi[k] > hi[0] ? hi[k] : hi[0];
    }
    // -0 orders below +0 (IEEE 754 minimum / maximum), so a zero lo or hi has the same sign whatever the order
    // of the elements. Rare enough to settle with a second look at the block.
    if (lo[0] == 0.0f || hi[0] == 0.0f) {
        bool neg_zero = false, pos_zero = false;
        for (size_t j = 0; j < nb; j++) {
            neg_zero |= v[j] == 0.0f && std::signbit(v[j]);
            pos_zero |= v[j] == 0.0f && !std::signbit(v[j]);
        }
        if (lo[0] == 0.0f) lo[0] = neg_zero ? -0.0f : 0.0f;
        if (hi[0] == 0.0f) hi[0] = pos_zero ? 0.0f : -0.0f;
    }
    *lo_out = lo[0];
    *hi_out = hi[0];
    return any_bad == 0;
}

// Two 4-bit codes per byte: element 2i in the low nibble of byte i, 2i + 1 in the high one (0 past the end).
PCCL_SIMD void pack_nibbles(const uint8_t* codes, size_t nb, uint8_t* dst) {
    for (size_t i = 0; i < nb / 2; i++) dst[i] = uint8_t(codes[2 * i] | (codes[2 * i + 1] << 4));
    if (nb % 2) dst[nb / 2] = codes[nb - 1];
}

// The codes of nb values of a minmax block (top code 255 or 15) into `codes`, one byte each; `first` is the
// first value's index in its block (stochastic rounding's draws are indexed by it).
PCCL_SIMD void minmax_codes(const float* v, size_t nb, float lo, float scale, float top, const Stochastic& sr,
                            size_t first, uint8_t* codes) {
    if (sr.on) {
        for (size_t i = 0; i < nb; i++) {
            const float u = uniform(sr.seed, sr.op, sr.step, sr.block, uint32_t(first + i));
            codes[i] = uint8_t(clamp_to(std::floor((v[i] - lo) / scale + u), top));
        }
    } else {  // the hot loop: branch-free so it vectorises
        for (size_t i = 0; i < nb; i++) codes[i] = uint8_t(int32_t(clamp_to(rne((v[i] - lo) / scale), top)));
    }
}

// Quantizes one block of nb float32 values into dst (header + codes).
PCCL_SIMD void encode_block(const float* v, size_t nb, QuantKind kind, const Stochastic& sr, uint8_t* dst) {
    float lo, hi;
    const bool finite = block_range(v, nb, &lo, &hi);
    uint8_t* codes = dst + kQuantHeader;
    const bool four = kind == QuantKind::kMinMax4;
    const size_t code_bytes = four ? (nb + 1) / 2 : nb;
    if (kind == QuantKind::kZeroPoint) {  // the range holds +0: IEEE minimum / maximum with +0
        lo = lo < 0.0f || (lo == 0.0f && std::signbit(lo)) ? lo : 0.0f;
        hi = hi > 0.0f ? hi : 0.0f;
    }
    const float range = hi - lo;
    if (!finite || !(std::fabs(range) <= std::numeric_limits<float>::max())) {
        store_f32(dst, std::numeric_limits<float>::quiet_NaN());
        store_f32(dst + 4, std::numeric_limits<float>::quiet_NaN());
        std::memset(codes, 0, code_bytes);
        return;
    }
    if (kind != QuantKind::kZeroPoint) {
        const float top = four ? 15.0f : 255.0f;
        const float scale = range / top;
        store_f32(dst, lo);
        store_f32(dst + 4, scale);
        if (scale == 0.0f) {
            std::memset(codes, 0, code_bytes);
        } else if (!four) {
            minmax_codes(v, nb, lo, scale, top, sr, 0, codes);
        } else {  // one code per byte first, in pieces that fit on the stack, then two per byte
            constexpr size_t kPiece = 4096;
            alignas(64) uint8_t one[kPiece];
            for (size_t at = 0; at < nb; at += kPiece) {
                const size_t len = std::min(nb - at, kPiece);
                minmax_codes(v + at, len, lo, scale, top, sr, at, one);
                pack_nibbles(one, len, codes + at / 2);
            }
        }
        return;
    }
    const float scale = range / 255.0f;
    auto stochastic = [&](float x, size_t i) {
        return std::floor(x + uniform(sr.seed, sr.op, sr.step, sr.block, uint32_t(i)));
    };
    // zero point: zero decodes exactly
    const float zero = scale == 0.0f ? 0.0f : clamp255(rne(-lo / scale));
    store_f32(dst, scale);
    store_f32(dst + 4, zero);
    if (scale == 0.0f) {
        std::memset(codes, uint8_t(zero), nb);
        return;
    }
    if (sr.on) {
        for (size_t i = 0; i < nb; i++) codes[i] = uint8_t(clamp255(stochastic(v[i] / scale, i) + zero));
    } else {
        for (size_t i = 0; i < nb; i++) codes[i] = uint8_t(int32_t(clamp255(rne(v[i] / scale) + zero)));
    }
}

// Decodes one block into nb float32 values.
PCCL_SIMD void decode_block(const uint8_t* src, size_t nb, QuantKind kind, float* out) {
    const float p0 = load_f32(src), p1 = load_f32(src + 4);
    const uint8_t* codes = src + kQuantHeader;
    if (kind == QuantKind::kMinMax) {
        for (size_t i = 0; i < nb; i++) {
            const float prod = float(codes[i]) * p1;  // two roundings, never fused
            out[i] = p0 + prod;
        }
    } else if (kind == QuantKind::kMinMax4) {
        for (size_t i = 0; i < nb / 2; i++) {
            const float low = float(codes[i] & 15) * p1, high = float(codes[i] >> 4) * p1;
            out[2 * i] = p0 + low;
            out[2 * i + 1] = p0 + high;
        }
        if (nb % 2) out[nb - 1] = p0 + float(codes[nb / 2] & 15) * p1;
    } else {
        for (size_t i = 0; i < nb; i++) out[i] = (float(codes[i]) - p1) * p0;
    }
}

PCCL_SIMD void add_into(float* a, const float* b, size_t n) {
    for (size_t i = 0; i < n; i++) a[i] = a[i] + b[i];
}

bool poisoned(const uint8_t* block) { return std::isnan(load_f32(block)) || std::isnan(load_f32(block + 4)); }

// Throws for a dtype the kernels do not take, before any clone runs (an exception thrown inside a target_clones
// function terminates the process under ThreadSanitizer: scripts/sanitize.sh found it).
void check_float(DType t, const char* what) {
    if (t != DType::kFloat32 && t != DType::kFloat64 && t != DType::kFloat16 && t != DType::kBFloat16)
        throw CoreError(ErrorKind::kInvalidArgument, std::string(what) + dtype_name(t));
}

size_t block_len(size_t k, size_t n, uint32_t block) { return std::min<size_t>(block, n - k * block); }

// The nb input elements at xk (block k) as float32, rotated when the config says so: aligned float32 is read
// where it lies (and, rotated, lands in scratch); anything else is converted into scratch first.
const float* input_floats(const uint8_t* xk, DType dtype, size_t nb, const QuantConfig& q, size_t k, float* scratch) {
    const float* v = reinterpret_cast<const float*>(xk);
    if (dtype != DType::kFloat32 || reinterpret_cast<uintptr_t>(xk) % alignof(float)) {
        to_float(xk, dtype, nb, scratch);
        v = scratch;
    }
    if (!q.rotate) return v;
    rotate_block(v, scratch, nb, q.seed, uint32_t(k));
    return scratch;
}

// Room for one block of float32 values, owned by the call that needs it: on the stack for blocks up to
// kStackFloats (the default block and every block the benchmarks try), so the hot path allocates nothing; on the
// heap, once per call, for larger ones. (A thread_local vector did this before; its destructor at thread exit
// raced, for ThreadSanitizer, with glibc's reclaim of the ended thread's TLS, which needed a suppression.)
class BlockScratch {
public:
    explicit BlockScratch(uint32_t block) {
        if (block > kStackFloats) heap_.reset(new float[block]);  // left uninitialised, as the stack array
    }
    float* data() { return heap_ ? heap_.get() : stack_; }

private:
    static constexpr size_t kStackFloats = 4096;  // 16 KiB
    alignas(64) float stack_[kStackFloats];
    std::unique_ptr<float[]> heap_;
};

}  // namespace

void check_quant_config(const QuantConfig& q) {
    if (q.kind != QuantKind::kMinMax && q.kind != QuantKind::kZeroPoint && q.kind != QuantKind::kMinMax4)
        throw CoreError(ErrorKind::kInvalidArgument, "unknown quantization kind " + std::to_string(int(q.kind)));
    if (q.block < 64 || q.block > 65536 || q.block % 64)
        throw CoreError(ErrorKind::kInvalidArgument, "quantization block must be a multiple of 64 in [64, 65536]");
    if (q.rounding != Rounding::kNearest && q.rounding != Rounding::kStochastic)
        throw CoreError(ErrorKind::kInvalidArgument, "unknown rounding mode");
    if (q.rotate && (q.block & (q.block - 1) || q.block > kMaxRotateBlock))
        throw CoreError(ErrorKind::kInvalidArgument, "rotation needs a power-of-two block of at most " +
                                                         std::to_string(kMaxRotateBlock) + ", not " +
                                                         std::to_string(q.block));
}

size_t quant_blocks(size_t n, uint32_t block) { return (n + block - 1) / block; }
size_t quant_block_bytes(const QuantConfig& q, size_t nb) {
    return kQuantHeader + (q.kind == QuantKind::kMinMax4 ? (nb + 1) / 2 : nb);
}
size_t quantized_bytes(size_t n, const QuantConfig& q) {
    const size_t full = n / q.block;
    return full * quant_block_bytes(q, q.block) + (n % q.block ? quant_block_bytes(q, n % q.block) : 0);
}

void quantize_blocks(const void* x, DType dtype, size_t first_block, size_t n_blocks, size_t n, const QuantConfig& q,
                     uint8_t* out) {
    check_float(dtype, "cannot quantize ");
    BlockScratch scratch(q.block);
    float* const vals = scratch.data();
    const size_t esize = dtype_size(dtype);
    const auto* src = static_cast<const uint8_t*>(x);
    const size_t stride = quant_block_bytes(q, q.block);
    for (size_t b = 0; b < n_blocks; b++) {
        const size_t k = first_block + b;
        const size_t nb = block_len(k, n, q.block);
        const float* v = input_floats(src + k * q.block * esize, dtype, nb, q, k, vals);
        encode_block(v, nb, q.kind, Stochastic{}, out + b * stride);
    }
}

void dequantize_blocks(const uint8_t* qbytes, size_t first_block, size_t n_blocks, size_t n, const QuantConfig& q,
                       DType dtype, void* out, uint32_t divide_by) {
    check_float(dtype, "cannot dequantize to ");
    BlockScratch scratch(q.block);
    float* const vals = scratch.data();
    const size_t esize = dtype_size(dtype);
    auto* dst = static_cast<uint8_t*>(out);
    const float w = float(divide_by);
    const size_t stride = quant_block_bytes(q, q.block);
    for (size_t b = 0; b < n_blocks; b++) {
        const size_t k = first_block + b;
        const size_t nb = block_len(k, n, q.block);
        const uint8_t* block = qbytes + b * stride;
        decode_block(block, nb, q.kind, vals);
        if (q.rotate && poisoned(block))  // NaN, never rotated back (a sign flip would make it a negative NaN)
            std::fill(vals, vals + nb, std::numeric_limits<float>::quiet_NaN());
        else if (q.rotate)
            unrotate_block(vals, nb, q.seed, uint32_t(k));
        if (divide_by > 1)
            for (size_t i = 0; i < nb; i++) vals[i] = vals[i] / w;
        from_float(vals, nb, dtype, dst + k * q.block * esize);
    }
}

void quantize(const void* x, DType dtype, size_t n, const QuantConfig& q, uint8_t* out) {
    check_quant_config(q);
    quantize_blocks(x, dtype, 0, quant_blocks(n, q.block), n, q, out);
}

void dequantize(const uint8_t* qbytes, size_t n, const QuantConfig& q, DType dtype, void* out, uint32_t divide_by) {
    check_quant_config(q);
    dequantize_blocks(qbytes, 0, quant_blocks(n, q.block), n, q, dtype, out, divide_by);
}

void reduce_owner(uint8_t* out, const uint8_t* const* received, size_t m, const uint8_t* own_q, const void* own_x,
                  DType dtype, size_t first_block, size_t n_blocks, size_t n, const QuantConfig& q, uint64_t op_id) {
    if (own_x) check_float(dtype, "cannot quantize ");
    BlockScratch sum_scratch(q.block), other_scratch(q.block);
    float* const sum = sum_scratch.data();
    float* const other = other_scratch.data();
    const size_t stride = quant_block_bytes(q, q.block);
    const size_t esize = own_x ? dtype_size(dtype) : 0;
    for (size_t b = 0; b < n_blocks; b++) {
        const size_t k = first_block + b;
        const size_t nb = block_len(k, n, q.block);
        if (own_x) {
            const float* v = input_floats(static_cast<const uint8_t*>(own_x) + b * q.block * esize, dtype, nb, q, k, sum);
            if (v != sum) std::memcpy(sum, v, nb * sizeof(float));
        } else {
            decode_block(own_q + b * stride, nb, q.kind, sum);
        }
        for (size_t i = 0; i < m; i++) {
            decode_block(received[i] + b * stride, nb, q.kind, other);
            add_into(sum, other, nb);
        }
        Stochastic sr{q.rounding == Rounding::kStochastic, q.seed, uint32_t(op_id), 0, uint32_t(k)};
        encode_block(sum, nb, q.kind, sr, out + b * stride);
    }
}

void quantization_residual(const void* x, DType dtype, size_t n, const QuantConfig& q, void* out) {
    check_quant_config(q);
    check_float(dtype, "cannot quantize ");
    BlockScratch exact_scratch(q.block), round_trip_scratch(q.block);
    float* const exact = exact_scratch.data();
    float* const back = round_trip_scratch.data();
    std::unique_ptr<uint8_t[]> bytes(new uint8_t[quant_block_bytes(q, q.block)]);
    const size_t esize = dtype_size(dtype);
    const auto* src = static_cast<const uint8_t*>(x);
    auto* dst = static_cast<uint8_t*>(out);
    for (size_t k = 0; k < quant_blocks(n, q.block); k++) {
        const size_t nb = block_len(k, n, q.block);
        to_float(src + k * q.block * esize, dtype, nb, exact);
        if (q.rotate) rotate_block(exact, back, nb, q.seed, uint32_t(k));
        encode_block(q.rotate ? back : exact, nb, q.kind, Stochastic{}, bytes.get());
        decode_block(bytes.get(), nb, q.kind, back);
        if (q.rotate && !poisoned(bytes.get())) unrotate_block(back, nb, q.seed, uint32_t(k));
        for (size_t i = 0; i < nb; i++) {
            const float r = exact[i] - back[i];
            back[i] = std::isfinite(r) ? r : 0.0f;  // a poisoned block keeps nothing
        }
        from_float(back, nb, dtype, dst + k * q.block * esize);
    }
}

void reduce_hop(uint8_t* acc, const uint8_t* own, size_t first_block, size_t n_blocks, size_t n, const QuantConfig& q,
                uint64_t op_id, uint32_t step) {
    BlockScratch sum_scratch(q.block), other_scratch(q.block);
    float* const sum = sum_scratch.data();
    float* const other = other_scratch.data();
    const size_t stride = quant_block_bytes(q, q.block);
    for (size_t b = 0; b < n_blocks; b++) {
        const size_t k = first_block + b;
        const size_t nb = block_len(k, n, q.block);
        decode_block(acc + b * stride, nb, q.kind, sum);
        decode_block(own + b * stride, nb, q.kind, other);
        for (size_t i = 0; i < nb; i++) sum[i] = sum[i] + other[i];
        Stochastic sr{q.rounding == Rounding::kStochastic, q.seed, uint32_t(op_id), step, uint32_t(k)};
        encode_block(sum, nb, q.kind, sr, acc + b * stride);
    }
}

void reduce_hop_exact(uint8_t* acc, const void* own_x, DType dtype, size_t first_block, size_t n_blocks, size_t n,
                      const QuantConfig& q, uint64_t op_id, uint32_t step) {
    check_float(dtype, "cannot quantize ");
    BlockScratch sum_scratch(q.block), other_scratch(q.block);
    float* const sum = sum_scratch.data();
    float* const other = other_scratch.data();
    const size_t stride = quant_block_bytes(q, q.block);
    const size_t esize = dtype_size(dtype);
    const auto* own = static_cast<const uint8_t*>(own_x);
    for (size_t b = 0; b < n_blocks; b++) {
        const size_t k = first_block + b;
        const size_t nb = block_len(k, n, q.block);
        decode_block(acc + b * stride, nb, q.kind, sum);
        add_into(sum, input_floats(own + b * q.block * esize, dtype, nb, q, k, other), nb);
        Stochastic sr{q.rounding == Rounding::kStochastic, q.seed, uint32_t(op_id), step, uint32_t(k)};
        encode_block(sum, nb, q.kind, sr, acc + b * stride);
    }
}

}  // namespace pccl
