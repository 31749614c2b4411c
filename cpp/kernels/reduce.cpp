#include "kernels/reduce.hpp"

#include <cmath>
#include <cstring>
#include <type_traits>

#include "base/error.hpp"

namespace pccl {

size_t dtype_size(DType t) {
    switch (t) {
        case DType::kInt8: case DType::kUInt8: return 1;
        case DType::kInt16: case DType::kUInt16: case DType::kFloat16: case DType::kBFloat16: return 2;
        case DType::kInt32: case DType::kUInt32: case DType::kFloat32: return 4;
        case DType::kInt64: case DType::kUInt64: case DType::kFloat64: return 8;
    }
    throw CoreError(ErrorKind::kInvalidArgument, "unknown dtype code " + std::to_string(int(t)));
}

bool dtype_is_float(DType t) {
    return t == DType::kFloat16 || t == DType::kBFloat16 || t == DType::kFloat32 || t == DType::kFloat64;
}

const char* dtype_name(DType t) {
    static const char* names[] = {"int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                  "float16", "bfloat16", "float32", "float64"};
    return uint8_t(t) < kDTypeCount ? names[uint8_t(t)] : "unknown";
}

const char* op_name(ReduceOp op) {
    static const char* names[] = {"sum", "avg", "prod", "max", "min"};
    return uint8_t(op) < kReduceOpCount ? names[uint8_t(op)] : "unknown";
}

const char* op_kind_name(OpKind k) {
    static const char* names[] = {"all_reduce", "broadcast", "all_gather", "reduce_scatter", "barrier"};
    return uint8_t(k) < kOpKindCount ? names[uint8_t(k)] : "unknown";
}

float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (mant << 13);  // inf / nan (payload kept)
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {  // subnormal half: normalise
        int e = -1;
        do { e++; mant <<= 1; } while ((mant & 0x400) == 0);
        bits = sign | uint32_t(112 - e) << 23 | ((mant & 0x3ff) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t float_to_half(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000);
    const uint32_t ax = x & 0x7fffffff;
    if (ax >= 0x7f800000) return uint16_t(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    if (ax >= 0x477ff000) return uint16_t(sign | 0x7c00);  // rounds to >= 65520: overflow to inf
    if (ax < 0x38800000) {  // result is subnormal or zero: let float addition round (nearest even)
        float a;
        std::memcpy(&a, &ax, 4);
        float r = a + 0.5f;  // 0.5 = 2^-1: the ulp of halves' subnormals (2^-24) lands in the low bits
        uint32_t rb;
        std::memcpy(&rb, &r, 4);
        return uint16_t(sign | (rb - 0x3f000000));
    }
    const uint32_t mant_odd = (ax >> 13) & 1;
    const uint32_t rounded = ax + 0xc8000fff + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
    return uint16_t(sign | (rounded >> 13));
}

float bf16_to_float(uint16_t b) {
    uint32_t bits = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

uint16_t float_to_bf16(float f) {
    uint32_t x;
    std::memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return uint16_t((x >> 16) | 0x40);  // quiet NaN
    x += 0x7fff + ((x >> 16) & 1);
    return uint16_t(x >> 16);
}

namespace {

template <class T> inline T combine(ReduceOp op, T a, T b) {
    if constexpr (std::is_integral_v<T>) {
        using U = std::make_unsigned_t<T>;
        switch (op) {
            case ReduceOp::kSum: case ReduceOp::kAvg: return T(U(a) + U(b));  // wraps, no UB
            case ReduceOp::kProd: return T(U(a) * U(b));
            case ReduceOp::kMax: return a > b ? a : b;
            case ReduceOp::kMin: return a < b ? a : b;
        }
    } else {
        switch (op) {
            case ReduceOp::kSum: case ReduceOp::kAvg: return a + b;
            case ReduceOp::kProd: return a * b;
            case ReduceOp::kMax: return std::isnan(a) ? a : (std::isnan(b) ? b : (a > b ? a : b));
            case ReduceOp::kMin: return std::isnan(a) ? a : (std::isnan(b) ? b : (a < b ? a : b));
        }
    }
    return a;
}

// One loop per operator so the compiler vectorises the common ones.
template <class T> void reduce_typed(ReduceOp op, T* acc, const T* local, size_t n) {
    switch (op) {
        case ReduceOp::kSum: case ReduceOp::kAvg:
            for (size_t i = 0; i < n; i++) acc[i] = combine(ReduceOp::kSum, acc[i], local[i]);
            return;
        case ReduceOp::kProd:
            for (size_t i = 0; i < n; i++) acc[i] = combine(ReduceOp::kProd, acc[i], local[i]);
            return;
        case ReduceOp::kMax:
            for (size_t i = 0; i < n; i++) acc[i] = combine(ReduceOp::kMax, acc[i], local[i]);
            return;
        case ReduceOp::kMin:
            for (size_t i = 0; i < n; i++) acc[i] = combine(ReduceOp::kMin, acc[i], local[i]);
            return;
    }
    throw CoreError(ErrorKind::kInvalidArgument, "unknown reduce op code " + std::to_string(int(op)));
}

template <float (*ToF)(uint16_t), uint16_t (*FromF)(float)>
void reduce_half(ReduceOp op, uint16_t* acc, const uint16_t* local, size_t n) {
    for (size_t i = 0; i < n; i++) acc[i] = FromF(combine(op, ToF(acc[i]), ToF(local[i])));
}

}  // namespace

void reduce_into(DType t, ReduceOp op, void* acc, const void* local, size_t n) {
    if (uint8_t(op) >= kReduceOpCount)
        throw CoreError(ErrorKind::kInvalidArgument, "unknown reduce op code " + std::to_string(int(op)));
    switch (t) {
        case DType::kInt8: return reduce_typed(op, static_cast<int8_t*>(acc), static_cast<const int8_t*>(local), n);
        case DType::kUInt8: return reduce_typed(op, static_cast<uint8_t*>(acc), static_cast<const uint8_t*>(local), n);
        case DType::kInt16: return reduce_typed(op, static_cast<int16_t*>(acc), static_cast<const int16_t*>(local), n);
        case DType::kUInt16: return reduce_typed(op, static_cast<uint16_t*>(acc), static_cast<const uint16_t*>(local), n);
        case DType::kInt32: return reduce_typed(op, static_cast<int32_t*>(acc), static_cast<const int32_t*>(local), n);
        case DType::kUInt32: return reduce_typed(op, static_cast<uint32_t*>(acc), static_cast<const uint32_t*>(local), n);
        case DType::kInt64: return reduce_typed(op, static_cast<int64_t*>(acc), static_cast<const int64_t*>(local), n);
        case DType::kUInt64: return reduce_typed(op, static_cast<uint64_t*>(acc), static_cast<const uint64_t*>(local), n);
        case DType::kFloat32: return reduce_typed(op, static_cast<float*>(acc), static_cast<const float*>(local), n);
        case DType::kFloat64: return reduce_typed(op, static_cast<double*>(acc), static_cast<const double*>(local), n);
        case DType::kFloat16:
            return reduce_half<half_to_float, float_to_half>(op, static_cast<uint16_t*>(acc),
                                                             static_cast<const uint16_t*>(local), n);
        case DType::kBFloat16:
            return reduce_half<bf16_to_float, float_to_bf16>(op, static_cast<uint16_t*>(acc),
                                                             static_cast<const uint16_t*>(local), n);
    }
    throw CoreError(ErrorKind::kInvalidArgument, "unknown dtype code " + std::to_string(int(t)));
}

void finalize_avg(DType t, void* buf, size_t n, uint32_t world) {
    switch (t) {
        case DType::kFloat32: {
            auto* p = static_cast<float*>(buf);
            const float w = float(world);
            for (size_t i = 0; i < n; i++) p[i] = p[i] / w;
            return;
        }
        case DType::kFloat64: {
            auto* p = static_cast<double*>(buf);
            const double w = double(world);
            for (size_t i = 0; i < n; i++) p[i] = p[i] / w;
            return;
        }
        case DType::kFloat16: {
            auto* p = static_cast<uint16_t*>(buf);
            for (size_t i = 0; i < n; i++) p[i] = float_to_half(half_to_float(p[i]) / float(world));
            return;
        }
        case DType::kBFloat16: {
            auto* p = static_cast<uint16_t*>(buf);
            for (size_t i = 0; i < n; i++) p[i] = float_to_bf16(bf16_to_float(p[i]) / float(world));
            return;
        }
        default:
            throw CoreError(ErrorKind::kInvalidArgument, std::string("avg is not defined for ") + dtype_name(t));
    }
}

}  // namespace pccl
