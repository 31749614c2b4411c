#include "kernels/quant.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "base/error.hpp"
#include "kernels/reduce.hpp"

namespace pccl {

// The hot loops are compiled three times, for AVX-512 (x86-64-v4), for AVX2 and for the baseline, and the
// loader picks one per machine (GCC target_clones). All do the same IEEE operations in the same order, without
// fused multiply-add (-ffp-contract=off), so they produce the same bytes. (CMakeLists.txt tunes this file for
// a recent core rather than GCC's generic tuning: quantize runs 5.1 -> 6.8 GB/s on one core here.)
// Not under ThreadSanitizer: GCC instruments the clones' resolvers, which the loader runs before the sanitizer's
// runtime is up, so an executable linked to an instrumented core would crash before main().
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define PCCL_SIMD __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define PCCL_SIMD
#endif

namespace {

constexpr float kRneMagic = 12582912.0f;  // 1.5 * 2^23: (v + m) - m rounds 0 <= v < 2^22 to nearest even

// Without -ffast-math the compiler may not fold (v + m) - m, so both roundings happen as the spec says.
inline float rne(float v) { return (v + kRneMagic) - kRneMagic; }
inline float clamp255(float v) { return std::min(std::max(v, 0.0f), 255.0f); }

inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}
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

PCCL_SIMD void encode_block(const float* v, size_t nb, QuantKind kind, const Stochastic& sr, uint8_t* dst) {
    float lo, hi;
    const bool finite = block_range(v, nb, &lo, &hi);
    uint8_t* codes = dst + kQuantHeader;
    if (kind == QuantKind::kZeroPoint) {  // the range holds +0: IEEE minimum / maximum with +0
        lo = lo < 0.0f || (lo == 0.0f && std::signbit(lo)) ? lo : 0.0f;
        hi = hi > 0.0f ? hi : 0.0f;
    }
    const float range = hi - lo;
    if (!finite || !(std::fabs(range) <= std::numeric_limits<float>::max())) {
        store_f32(dst, std::numeric_limits<float>::quiet_NaN());
        store_f32(dst + 4, std::numeric_limits<float>::quiet_NaN());
        std::memset(codes, 0, nb);
        return;
    }
    const float scale = range / 255.0f;
    auto stochastic = [&](float x, size_t i) {
        return std::floor(x + uniform(sr.seed, sr.op, sr.step, sr.block, uint32_t(i)));
    };
    if (kind == QuantKind::kMinMax) {
        store_f32(dst, lo);
        store_f32(dst + 4, scale);
        if (scale == 0.0f) {
            std::memset(codes, 0, nb);
            return;
        }
        if (sr.on) {
            for (size_t i = 0; i < nb; i++) codes[i] = uint8_t(clamp255(stochastic((v[i] - lo) / scale, i)));
        } else {  // the hot loop: branch-free so it vectorises
            for (size_t i = 0; i < nb; i++) codes[i] = uint8_t(int32_t(clamp255(rne((v[i] - lo) / scale))));
        }
        return;
    }
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
    } else {
        for (size_t i = 0; i < nb; i++) out[i] = (float(codes[i]) - p1) * p0;
    }
}

PCCL_SIMD void add_into(float* a, const float* b, size_t n) {
    for (size_t i = 0; i < n; i++) a[i] = a[i] + b[i];
}

// Throws for a dtype the kernels do not take, before any clone runs (an exception thrown inside a target_clones
// function terminates the process under ThreadSanitizer: scripts/sanitize.sh found it).
void check_float(DType t, const char* what) {
    if (t != DType::kFloat32 && t != DType::kFloat64 && t != DType::kFloat16 && t != DType::kBFloat16)
        throw CoreError(ErrorKind::kInvalidArgument, std::string(what) + dtype_name(t));
}

size_t block_len(size_t k, size_t n, uint32_t block) { return std::min<size_t>(block, n - k * block); }

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
    if (q.kind != QuantKind::kMinMax && q.kind != QuantKind::kZeroPoint)
        throw CoreError(ErrorKind::kInvalidArgument, "unknown quantization kind " + std::to_string(int(q.kind)));
    if (q.block < 64 || q.block > 65536 || q.block % 64)
        throw CoreError(ErrorKind::kInvalidArgument, "quantization block must be a multiple of 64 in [64, 65536]");
    if (q.rounding != Rounding::kNearest && q.rounding != Rounding::kStochastic)
        throw CoreError(ErrorKind::kInvalidArgument, "unknown rounding mode");
}

size_t quant_blocks(size_t n, uint32_t block) { return (n + block - 1) / block; }
size_t quantized_bytes(size_t n, uint32_t block) { return quant_blocks(n, block) * kQuantHeader + n; }

void quantize_blocks(const void* x, DType dtype, size_t first_block, size_t n_blocks, size_t n, const QuantConfig& q,
                     uint8_t* out) {
    check_float(dtype, "cannot quantize ");
    BlockScratch scratch(q.block);
    float* const vals = scratch.data();
    const size_t esize = dtype_size(dtype);
    const auto* src = static_cast<const uint8_t*>(x);
    for (size_t b = 0; b < n_blocks; b++) {
        const size_t k = first_block + b;
        const size_t nb = block_len(k, n, q.block);
        const uint8_t* xk = src + k * q.block * esize;
        const float* v = reinterpret_cast<const float*>(xk);  // float32 is used where it lies
        if (dtype != DType::kFloat32 || reinterpret_cast<uintptr_t>(xk) % alignof(float)) {
            to_float(xk, dtype, nb, vals);
            v = vals;
        }
        encode_block(v, nb, q.kind, Stochastic{}, out + b * (q.block + kQuantHeader));
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
    for (size_t b = 0; b < n_blocks; b++) {
        const size_t k = first_block + b;
        const size_t nb = block_len(k, n, q.block);
        decode_block(qbytes + b * (q.block + kQuantHeader), nb, q.kind, vals);
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

void reduce_hop(uint8_t* acc, const uint8_t* own, size_t first_block, size_t n_blocks, size_t n, const QuantConfig& q,
                uint64_t op_id, uint32_t step) {
    BlockScratch sum_scratch(q.block), other_scratch(q.block);
    float* const sum = sum_scratch.data();
    float* const other = other_scratch.data();
    const size_t stride = q.block + kQuantHeader;
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
    const size_t stride = q.block + kQuantHeader;
    const size_t esize = dtype_size(dtype);
    const auto* own = static_cast<const uint8_t*>(own_x);
    for (size_t b = 0; b < n_blocks; b++) {
        const size_t k = first_block + b;
        const size_t nb = block_len(k, n, q.block);
        decode_block(acc + b * stride, nb, q.kind, sum);
        const uint8_t* xk = own + b * q.block * esize;
        const float* v = reinterpret_cast<const float*>(xk);  // float32 is added where it lies
        if (dtype != DType::kFloat32 || reinterpret_cast<uintptr_t>(xk) % alignof(float)) {
            to_float(xk, dtype, nb, other);
            v = other;
        }
        add_into(sum, v, nb);
        Stochastic sr{q.rounding == Rounding::kStochastic, q.seed, uint32_t(op_id), step, uint32_t(k)};
        encode_block(sum, nb, q.kind, sr, acc + b * stride);
    }
}

}  // namespace pccl
