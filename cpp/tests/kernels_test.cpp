// The kernels (kernels/quant.hpp, reduce.hpp, hash.hpp) against golden bytes of the NumPy references.
//
// How this works. kernels_golden.hpp holds, in hex, what tests/helpers/quant_reference.py (the executable form
// of docs/quantization.md) and NumPy/ml_dtypes produce for fixed inputs; cpp/tests/kernels_golden.py wrote it
// and says how. The quantization inputs are formulas computed here exactly as the script computes them (an
// integer hash scaled by powers of two, so no rounding can differ); the half-precision reduction inputs are in
// the header. Quantize, dequantize and the ring hops (nearest and seeded stochastic rounding, all four float
// dtypes, poisoned blocks, signed zeros, a short last block) must give those bytes exactly. Integer and
// float32/float64 reductions are checked against arithmetic written out here; the conversions against IEEE
// bit patterns; the content hash against the values pinned by docs/shared_state.md and tests/test_state_sync.py.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/hash.hpp"
#include "kernels/quant.hpp"
#include "kernels/reduce.hpp"
#include "tests/check.hpp"
#include "tests/kernels_golden.hpp"

using namespace pccl;
using pccl::check::show;
namespace golden = kernels_golden;
using Bytes = std::vector<uint8_t>;

namespace {

constexpr size_t kN = 328, kBlock = 64, kSmall = 100;  // as in kernels_golden.py

Bytes hex(const char* text) {
    Bytes out;
    for (size_t i = 0; text[i] && text[i + 1]; i += 2) out.push_back(uint8_t(std::stoul(std::string(text + i, 2), nullptr, 16)));
    return out;
}

template <class T> Bytes bytes_of(const std::vector<T>& v) {
    Bytes b(v.size() * sizeof(T));
    std::memcpy(b.data(), v.data(), b.size());
    return b;
}

template <class T> std::vector<T> as(const Bytes& b) {
    std::vector<T> v(b.size() / sizeof(T));
    std::memcpy(v.data(), b.data(), v.size() * sizeof(T));
    return v;
}

// Byte-exact equality; on a difference, the first differing offset and the values there.
void check_bytes(const Bytes& got, const Bytes& want, const char* what) {
    CHECK_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size() && i < want.size(); i++) {
        if (got[i] == want[i]) continue;
        FAIL(std::string(what) + ": first difference at byte " + std::to_string(i) + " of " + std::to_string(want.size()) +
             ": " + std::to_string(got[i]) + ", the reference has " + std::to_string(want[i]));
        return;
    }
}

uint32_t mix(uint32_t i, uint32_t salt) {  // kernels_golden.py's mix()
    uint32_t h = i * 0x9E3779B1u + salt * 0x7F4A7C15u + 0x632BE5ABu;
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}
float unit(uint32_t i, uint32_t salt, int shift) {
    return float(int32_t(mix(i, salt) >> 8) - (1 << 23)) * std::ldexp(1.0f, -(20 + shift));
}

std::vector<float> f32_input() {
    std::vector<float> x(kN);
    for (uint32_t i = 0; i < kN; i++) x[i] = unit(i, 1, 0);
    for (size_t i = 64; i < 128; i++)
        if (i % 16 == 5) x[i] *= 1024;
    for (size_t i = 128; i < 192; i++) x[i] = 3.25f;
    for (size_t i = 192; i < 256; i++) x[i] = std::fabs(x[i]) + 1;
    x[261] = std::numeric_limits<float>::infinity();
    x[300] = std::numeric_limits<float>::quiet_NaN();
    for (size_t i = 320; i < 328; i++) x[i] = 0.0f;
    x[322] = x[325] = -0.0f;
    return x;
}
std::vector<float> f32_second_input() {
    std::vector<float> y(kN);
    for (uint32_t i = 0; i < kN; i++) y[i] = unit(i, 2, 1);
    return y;
}
std::vector<uint16_t> f16_input() {  // exact values: the conversion does not round
    std::vector<uint16_t> x(kSmall);
    for (uint32_t i = 0; i < kSmall; i++) x[i] = float_to_half(float(int32_t(mix(i, 3) >> 21) - 1024) / 64);
    return x;
}
std::vector<uint16_t> bf16_input() {
    std::vector<uint16_t> x(kSmall);
    for (uint32_t i = 0; i < kSmall; i++) x[i] = float_to_bf16(float(int32_t(mix(i, 4) >> 24) - 128) / 16);
    return x;
}
std::vector<double> f64_input() {
    std::vector<double> x(kSmall);
    for (uint32_t i = 0; i < kSmall; i++) x[i] = double(int64_t(mix(i, 5)) - (int64_t(1) << 31)) * std::ldexp(1.0, -28);
    return x;
}

QuantConfig config(QuantKind kind, Rounding rounding = Rounding::kNearest, uint32_t seed = 0, bool rotate = false) {
    QuantConfig q;
    q.kind = kind;
    q.block = kBlock;
    q.rounding = rounding;
    q.seed = seed;
    q.rotate = rotate;
    return q;
}

Bytes quantized(const void* x, DType t, size_t n, const QuantConfig& q) {
    Bytes out(quantized_bytes(n, q));
    quantize(x, t, n, q, out.data());
    return out;
}
Bytes quantized(const void* x, DType t, size_t n, QuantKind kind) { return quantized(x, t, n, config(kind)); }

template <class T> Bytes dequantized(const Bytes& q, size_t n, const QuantConfig& cfg, DType t, uint32_t divide_by) {
    std::vector<T> out(n);
    dequantize(q.data(), n, cfg, t, out.data(), divide_by);
    return bytes_of(out);
}
template <class T> Bytes dequantized(const Bytes& q, size_t n, QuantKind kind, DType t, uint32_t divide_by) {
    return dequantized<T>(q, n, config(kind), t, divide_by);
}

float f32_bits(uint32_t b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}
uint32_t bits_of(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ quantization

TEST(layout_sizes) {
    CHECK_EQ(quant_blocks(kN, kBlock), size_t(6));
    CHECK_EQ(quantized_bytes(kN, config(QuantKind::kMinMax)), size_t(kN + 6 * 8));
    CHECK_EQ(quantized_bytes(1, QuantConfig{QuantKind::kMinMax, 1024}), size_t(9));
    CHECK_EQ(quantized_bytes(0, QuantConfig{QuantKind::kMinMax, 1024}), size_t(0));
    // minmax4: two codes per byte, a short block of odd length rounds up
    CHECK_EQ(quantized_bytes(kN, config(QuantKind::kMinMax4)), size_t(kN / 2 + 6 * 8));
    CHECK_EQ(quantized_bytes(65, config(QuantKind::kMinMax4)), size_t(32 + 1 + 2 * 8));
    CHECK_EQ(quant_block_bytes(config(QuantKind::kMinMax4), 7), size_t(8 + 4));
}

TEST(four_bit_and_rotated_blocks_match_the_reference) {
    const auto x = f32_input();
    const Bytes q4 = quantized(x.data(), DType::kFloat32, kN, QuantKind::kMinMax4);
    check_bytes(q4, hex(golden::kQuantMinMax4F32), "minmax4");
    check_bytes(dequantized<float>(q4, kN, QuantKind::kMinMax4, DType::kFloat32, 1), hex(golden::kDequantMinMax4ToF32),
                "minmax4 to float32");
    const QuantConfig rot = config(QuantKind::kMinMax4, Rounding::kNearest, 9, true);
    const Bytes qr = quantized(x.data(), DType::kFloat32, kN, rot);
    check_bytes(qr, hex(golden::kQuantMinMax4RotatedF32), "minmax4 rotated");
    check_bytes(dequantized<float>(qr, kN, rot, DType::kFloat32, 3), hex(golden::kDequantMinMax4RotatedToF32Div3),
                "minmax4 rotated back, divided by 3");
    // 100 elements: a whole block, then segments of 32 and 4
    const auto h = f16_input();
    const QuantConfig rot8 = config(QuantKind::kMinMax, Rounding::kNearest, 3, true);
    const Bytes qh = quantized(h.data(), DType::kFloat16, kSmall, rot8);
    check_bytes(qh, hex(golden::kQuantMinMaxRotatedF16), "minmax rotated float16");
    check_bytes(dequantized<uint16_t>(qh, kSmall, rot8, DType::kFloat16, 1), hex(golden::kDequantMinMaxRotatedToF16),
                "minmax rotated back to float16");
    // the exact hop rotates our own values before adding them
    Bytes acc = qr;
    reduce_hop_exact(acc.data(), f32_second_input().data(), DType::kFloat32, 0, quant_blocks(kN, kBlock), kN,
                     config(QuantKind::kMinMax4, Rounding::kStochastic, 9, true), 4, 1);
    check_bytes(acc, hex(golden::kHopExactMinMax4RotatedStochastic), "reduce_hop_exact minmax4 rotated stochastic");
}

TEST(float32_quantizes_to_the_reference_bytes) {
    const auto x = f32_input();
    check_bytes(quantized(x.data(), DType::kFloat32, kN, QuantKind::kMinMax), hex(golden::kQuantMinMaxF32), "minmax");
    check_bytes(quantized(x.data(), DType::kFloat32, kN, QuantKind::kZeroPoint), hex(golden::kQuantZeroPointF32),
                "zeropoint");
}

TEST(a_block_with_inf_or_nan_is_poisoned_and_a_constant_block_has_scale_zero) {
    const auto x = f32_input();
    const Bytes q = quantized(x.data(), DType::kFloat32, kN, QuantKind::kMinMax);
    const size_t stride = quant_block_bytes(config(QuantKind::kMinMax), kBlock);
    float p[2];
    std::memcpy(p, q.data() + 4 * stride, 8);  // block 4 holds Inf and NaN
    CHECK_EQ(bits_of(p[0]), 0x7FC00000u);
    CHECK_EQ(bits_of(p[1]), 0x7FC00000u);
    std::memcpy(p, q.data() + 2 * stride, 8);  // block 2: 3.25 everywhere
    CHECK_EQ(p[0], 3.25f);
    CHECK_EQ(p[1], 0.0f);
    std::memcpy(p, q.data() + 5 * stride, 8);  // block 5 (8 elements): zeros, two of them -0: lo is -0
    CHECK_EQ(bits_of(p[0]), 0x80000000u);
}

TEST(float32_dequantizes_to_the_reference) {
    const Bytes mm = hex(golden::kQuantMinMaxF32), zp = hex(golden::kQuantZeroPointF32);
    check_bytes(dequantized<float>(mm, kN, QuantKind::kMinMax, DType::kFloat32, 1), hex(golden::kDequantMinMaxToF32),
                "minmax to float32");
    check_bytes(dequantized<uint16_t>(zp, kN, QuantKind::kZeroPoint, DType::kFloat16, 3),
                hex(golden::kDequantZeroPointToF16Div3), "zeropoint to float16, divided by 3");
}

TEST(float16_bfloat16_and_float64_match_the_reference) {
    const auto h = f16_input();
    const Bytes qh = quantized(h.data(), DType::kFloat16, kSmall, QuantKind::kMinMax);
    check_bytes(qh, hex(golden::kQuantMinMaxF16), "quantize float16");
    check_bytes(dequantized<uint16_t>(qh, kSmall, QuantKind::kMinMax, DType::kFloat16, 1),
                hex(golden::kDequantMinMaxF16ToF16), "dequantize to float16");
    const auto b = bf16_input();
    const Bytes qb = quantized(b.data(), DType::kBFloat16, kSmall, QuantKind::kZeroPoint);
    check_bytes(qb, hex(golden::kQuantZeroPointBF16), "quantize bfloat16");
    check_bytes(dequantized<uint16_t>(qb, kSmall, QuantKind::kZeroPoint, DType::kBFloat16, 1),
                hex(golden::kDequantZeroPointBF16ToBF16), "dequantize to bfloat16");
    const auto d = f64_input();
    const Bytes qd = quantized(d.data(), DType::kFloat64, kSmall, QuantKind::kMinMax);
    check_bytes(qd, hex(golden::kQuantMinMaxF64), "quantize float64");
    check_bytes(dequantized<double>(qd, kSmall, QuantKind::kMinMax, DType::kFloat64, 2),
                hex(golden::kDequantMinMaxF64ToF64Div2), "dequantize to float64, divided by 2");
}

TEST(ring_hops_match_the_reference_with_nearest_and_stochastic_rounding) {
    const auto x = f32_input(), y = f32_second_input();
    const size_t blocks = quant_blocks(kN, kBlock);
    // Q(D(acc) + D(own)), stochastic: the seed, the low 32 bits of the op id and the step pick the offsets.
    Bytes acc = quantized(x.data(), DType::kFloat32, kN, QuantKind::kMinMax);
    const Bytes own = quantized(y.data(), DType::kFloat32, kN, QuantKind::kMinMax);
    reduce_hop(acc.data(), own.data(), 0, blocks, kN, config(QuantKind::kMinMax, Rounding::kStochastic, 7),
               (uint64_t(1) << 32) + 5, 2);
    check_bytes(acc, hex(golden::kHopMinMaxStochastic), "reduce_hop minmax stochastic");
    // Q(D(acc) + own), zero point, nearest and stochastic.
    for (auto [rounding, seed, op, step, want] :
         {std::tuple{Rounding::kNearest, 0u, uint64_t(0), 0u, golden::kHopExactZeroPoint},
          std::tuple{Rounding::kStochastic, 11u, uint64_t(3), 1u, golden::kHopExactZeroPointStochastic}}) {
        Bytes a = quantized(x.data(), DType::kFloat32, kN, QuantKind::kZeroPoint);
        reduce_hop_exact(a.data(), y.data(), DType::kFloat32, 0, blocks, kN, config(QuantKind::kZeroPoint, rounding, seed),
                         op, step);
        check_bytes(a, hex(want), "reduce_hop_exact zeropoint");
    }
}

TEST(a_hop_over_a_chunk_equals_the_same_blocks_of_the_whole_hop) {
    // Stochastic offsets depend on the global block index, not on the chunk's first block.
    const auto x = f32_input(), y = f32_second_input();
    const size_t stride = quant_block_bytes(config(QuantKind::kMinMax), kBlock), first = 2, count = 3;
    const Bytes whole = hex(golden::kHopMinMaxStochastic);
    Bytes acc = quantized(x.data(), DType::kFloat32, kN, QuantKind::kMinMax);
    const Bytes own = quantized(y.data(), DType::kFloat32, kN, QuantKind::kMinMax);
    Bytes chunk(acc.begin() + long(first * stride), acc.begin() + long((first + count) * stride));
    reduce_hop(chunk.data(), own.data() + first * stride, first, count, kN,
               config(QuantKind::kMinMax, Rounding::kStochastic, 7), (uint64_t(1) << 32) + 5, 2);
    check_bytes(chunk, Bytes(whole.begin() + long(first * stride), whole.begin() + long((first + count) * stride)),
                "blocks 2..4 of the hop");
    // The same with the exact hop: own_x points at the chunk's first element.
    Bytes zp = quantized(x.data(), DType::kFloat32, kN, QuantKind::kZeroPoint);
    Bytes zchunk(zp.begin() + long(first * stride), zp.begin() + long((first + count) * stride));
    reduce_hop_exact(zchunk.data(), y.data() + first * kBlock, DType::kFloat32, first, count, kN,
                     config(QuantKind::kZeroPoint, Rounding::kStochastic, 11), 3, 1);
    const Bytes zwhole = hex(golden::kHopExactZeroPointStochastic);
    check_bytes(zchunk, Bytes(zwhole.begin() + long(first * stride), zwhole.begin() + long((first + count) * stride)),
                "blocks 2..4 of the exact hop");
}

TEST(float32_input_at_an_unaligned_address_quantizes_the_same) {
    const auto x = f32_input();
    std::vector<uint8_t> shifted(kN * 4 + 1);
    std::memcpy(shifted.data() + 1, x.data(), kN * 4);
    check_bytes(quantized(shifted.data() + 1, DType::kFloat32, kN, QuantKind::kMinMax), hex(golden::kQuantMinMaxF32),
                "unaligned minmax");
}

TEST(bad_quantization_configs_and_dtypes_are_refused) {
    const float x[64] = {};
    uint8_t out[128];
    QuantConfig q = config(QuantKind::kMinMax);
    q.block = 100;
    CHECK_THROWS_KIND(quantize(x, DType::kFloat32, 64, q, out), kInvalidArgument);
    q.block = 32;
    CHECK_THROWS_KIND(quantize(x, DType::kFloat32, 64, q, out), kInvalidArgument);
    CHECK_THROWS_KIND(quantize(x, DType::kFloat32, 64, config(QuantKind::kNone), out), kInvalidArgument);
    CHECK_THROWS_KIND(quantize(x, DType::kFloat32, 64, config(QuantKind(4)), out), kInvalidArgument);
    q = config(QuantKind::kMinMax4, Rounding::kNearest, 0, true);
    q.block = 192;  // rotation needs a power of two
    CHECK_THROWS_KIND(quantize(x, DType::kFloat32, 64, q, out), kInvalidArgument);
    q.block = 8192;  // of at most 4096
    CHECK_THROWS_KIND(quantize(x, DType::kFloat32, 64, q, out), kInvalidArgument);
    CHECK_THROWS_KIND(quantize(x, DType::kFloat32, 64, config(QuantKind::kMinMax, Rounding(2)), out), kInvalidArgument);
    CHECK_THROWS_KIND(quantize(x, DType::kInt32, 64, config(QuantKind::kMinMax), out), kInvalidArgument);
    CHECK_THROWS_KIND(dequantize(out, 64, config(QuantKind::kMinMax), DType::kUInt8, out, 1), kInvalidArgument);
}

// ------------------------------------------------------------------------------------------------ reductions

TEST(integers_wrap_like_numpy) {
    std::vector<int8_t> a{127, -128, 100, -3, 5}, b{1, -1, 100, 7, -9};
    reduce_into(DType::kInt8, ReduceOp::kSum, a.data(), b.data(), a.size());
    CHECK_EQ(a, (std::vector<int8_t>{-128, 127, -56, 4, -4}));
    std::vector<uint8_t> u{200, 0, 255}, v{100, 1, 255};
    reduce_into(DType::kUInt8, ReduceOp::kSum, u.data(), v.data(), u.size());
    CHECK_EQ(u, (std::vector<uint8_t>{44, 1, 254}));
    std::vector<int32_t> p{65536, -7, 46341}, q{65536, 3, 46341};
    reduce_into(DType::kInt32, ReduceOp::kProd, p.data(), q.data(), p.size());
    CHECK_EQ(p, (std::vector<int32_t>{0, -21, -2147479015}));  // 2^32 wraps to 0; 46341^2 = 2^31 + 4633
    std::vector<uint64_t> m{~uint64_t(0), 3}, n{2, 5};
    reduce_into(DType::kUInt64, ReduceOp::kProd, m.data(), n.data(), m.size());
    CHECK_EQ(m, (std::vector<uint64_t>{~uint64_t(0) - 1, 15}));
    std::vector<int64_t> lo{INT64_MIN, 4, -9}, hi{INT64_MAX, -4, -9};
    std::vector<int64_t> mx = lo, mn = lo;
    reduce_into(DType::kInt64, ReduceOp::kMax, mx.data(), hi.data(), mx.size());
    reduce_into(DType::kInt64, ReduceOp::kMin, mn.data(), hi.data(), mn.size());
    CHECK_EQ(mx, (std::vector<int64_t>{INT64_MAX, 4, -9}));
    CHECK_EQ(mn, (std::vector<int64_t>{INT64_MIN, -4, -9}));
    std::vector<int16_t> s{-30000, 2}, t{-30000, 3};
    reduce_into(DType::kInt16, ReduceOp::kAvg, s.data(), t.data(), s.size());  // AVG reduces as SUM
    CHECK_EQ(s, (std::vector<int16_t>{5536, 5}));
    std::vector<uint16_t> us{0, 9}, ut{1, 8};
    reduce_into(DType::kUInt16, ReduceOp::kMin, us.data(), ut.data(), us.size());
    CHECK_EQ(us, (std::vector<uint16_t>{0, 8}));
    std::vector<uint32_t> ua{4000000000u, 1}, ub{500000000u, 2};
    reduce_into(DType::kUInt32, ReduceOp::kSum, ua.data(), ub.data(), ua.size());
    CHECK_EQ(ua, (std::vector<uint32_t>{205032704u, 3}));
}

TEST(float32_and_float64_ops_over_a_length_that_is_not_a_vector_multiple) {
    const size_t n = 37;
    std::vector<float> a(n), b(n);
    std::vector<double> c(n), d(n);
    for (uint32_t i = 0; i < n; i++) {
        a[i] = unit(i, 8, 0);
        b[i] = unit(i, 9, 0);
        c[i] = double(unit(i, 10, 0)) / 3;
        d[i] = double(unit(i, 11, 0)) / 7;
    }
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kProd, ReduceOp::kMax, ReduceOp::kMin}) {
        auto fa = a;
        auto dc = c;
        reduce_into(DType::kFloat32, op, fa.data(), b.data(), n);
        reduce_into(DType::kFloat64, op, dc.data(), d.data(), n);
        for (size_t i = 0; i < n; i++) {
            const float wf = op == ReduceOp::kProd ? a[i] * b[i] : op == ReduceOp::kMax ? std::max(a[i], b[i])
                             : op == ReduceOp::kMin                ? std::min(a[i], b[i])
                                                                   : a[i] + b[i];
            const double wd = op == ReduceOp::kProd ? c[i] * d[i] : op == ReduceOp::kMax ? std::max(c[i], d[i])
                              : op == ReduceOp::kMin                ? std::min(c[i], d[i])
                                                                    : c[i] + d[i];
            if (fa[i] != wf || dc[i] != wd) {
                FAIL(std::string(op_name(op)) + " at element " + std::to_string(i) + ": float32 " + show(fa[i]) +
                     " (want " + show(wf) + "), float64 " + show(dc[i]) + " (want " + show(wd) + ")");
                break;
            }
        }
    }
    std::vector<float> avg{3.0f, 1.0f, -0.0f};
    finalize_avg(DType::kFloat32, avg.data(), avg.size(), 3);
    CHECK_EQ(avg, (std::vector<float>{1.0f, 1.0f / 3.0f, 0.0f}));
    CHECK(std::signbit(avg[2]));
}

TEST(max_and_min_propagate_nan_from_either_side) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (ReduceOp op : {ReduceOp::kMax, ReduceOp::kMin}) {
        std::vector<float> a{nan, 1.0f, nan, nan}, b{1.0f, nan, nan, 0.0f};
        reduce_into(DType::kFloat32, op, a.data(), b.data(), a.size());
        for (float v : a) CHECK(std::isnan(v));
        std::vector<double> c{std::nan(""), 2.0}, d{-1.0, std::nan("")};
        reduce_into(DType::kFloat64, op, c.data(), d.data(), c.size());
        CHECK(std::isnan(c[0]) && std::isnan(c[1]));
    }
}

TEST(half_precision_reductions_match_numpy_bit_for_bit) {
    struct Case {
        DType t;
        const char *a, *b, *sum, *prod, *max, *min, *avg3;
        float (*to_float)(uint16_t);
    };
    namespace g = golden;
    for (const Case& c : {Case{DType::kFloat16, g::kReduceF16_a, g::kReduceF16_b, g::kReduceF16_sum, g::kReduceF16_prod,
                               g::kReduceF16_max, g::kReduceF16_min, g::kReduceF16_avg3, half_to_float},
                          Case{DType::kBFloat16, g::kReduceBF16_a, g::kReduceBF16_b, g::kReduceBF16_sum,
                               g::kReduceBF16_prod, g::kReduceBF16_max, g::kReduceBF16_min, g::kReduceBF16_avg3,
                               bf16_to_float}}) {
        const auto a = as<uint16_t>(hex(c.a)), b = as<uint16_t>(hex(c.b));
        for (auto [op, want_hex] : {std::pair{ReduceOp::kSum, c.sum}, std::pair{ReduceOp::kProd, c.prod},
                                    std::pair{ReduceOp::kMax, c.max}, std::pair{ReduceOp::kMin, c.min},
                                    std::pair{ReduceOp::kAvg, c.avg3}}) {
            auto got = a;
            reduce_into(c.t, op, got.data(), b.data(), got.size());
            if (op == ReduceOp::kAvg) finalize_avg(c.t, got.data(), got.size(), 3);
            const auto want = as<uint16_t>(hex(want_hex));
            CHECK_EQ(got.size(), want.size());
            for (size_t i = 0; i < got.size() && i < want.size(); i++) {
                // NaN payloads may differ (as in tests/test_allreduce_kernels.py); everything else bit for bit.
                const bool nan_both = std::isnan(c.to_float(got[i])) && std::isnan(c.to_float(want[i]));
                if (got[i] == want[i] || nan_both) continue;
                FAIL(std::string(dtype_name(c.t)) + " " + op_name(op) + " at element " + std::to_string(i) + ": bits " +
                     std::to_string(got[i]) + ", NumPy has " + std::to_string(want[i]));
                break;
            }
        }
    }
}

TEST(avg_of_halves_is_the_correctly_rounded_quotient) {
    // finalize_avg divides in float32 and rounds once to the half type, which for a half dividend is the correctly
    // rounded quotient (float32 has more than twice a half's precision plus two bits), as NumPy computes it:
    // here the quotient is taken in float64 and rounded to float32 first, exact for the same reason. Every one of
    // the 2^16 patterns of each type, for three world sizes.
    for (uint32_t world : {3u, 5u, 7u}) {
        std::vector<uint16_t> h(0x10000), b(0x10000);
        for (uint32_t i = 0; i < 0x10000; i++) h[i] = b[i] = uint16_t(i);
        finalize_avg(DType::kFloat16, h.data(), h.size(), world);
        finalize_avg(DType::kBFloat16, b.data(), b.size(), world);
        size_t wrong = 0;
        for (uint32_t i = 0; i < 0x10000; i++) {
            const float hx = half_to_float(uint16_t(i)), bx = bf16_to_float(uint16_t(i));
            if (std::isnan(hx) || std::isnan(bx)) continue;
            wrong += h[i] != float_to_half(float(double(hx) / world)) ? 1 : 0;
            wrong += b[i] != float_to_bf16(float(double(bx) / world)) ? 1 : 0;
        }
        CHECK_EQ(wrong, size_t(0));
    }
}

TEST(half_conversions_round_to_nearest_even) {
    CHECK_EQ(float_to_half(1.0f), 0x3C00);
    CHECK_EQ(float_to_half(-2.0f), 0xC000);
    CHECK_EQ(float_to_half(65504.0f), 0x7BFF);
    CHECK_EQ(float_to_half(65519.0f), 0x7BFF);  // below the midpoint to 65536
    CHECK_EQ(float_to_half(65520.0f), 0x7C00);  // the midpoint rounds (to even) to infinity
    CHECK_EQ(float_to_half(std::ldexp(1.0f, -24)), 0x0001);  // the smallest subnormal
    CHECK_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);  // half of it: a tie, to even (zero)
    CHECK_EQ(float_to_half(std::ldexp(3.0f, -25)), 0x0002);  // 1.5 of it: a tie, to even (2)
    CHECK_EQ(float_to_half(-0.0f), 0x8000);
    CHECK_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3C00);       // tie, to even
    CHECK_EQ(float_to_half(1.0f + std::ldexp(3.0f, -11)), 0x3C02);       // tie, to even
    CHECK_EQ(float_to_half(std::numeric_limits<float>::infinity()), 0x7C00);
    CHECK((float_to_half(std::numeric_limits<float>::quiet_NaN()) & 0x7FFF) > 0x7C00);
    CHECK_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));
    CHECK_EQ(half_to_float(0x7BFF), 65504.0f);
    CHECK_EQ(half_to_float(0x3555), f32_bits(0x3EAAA000));  // 0.333251953125
    CHECK(std::isinf(half_to_float(0xFC00)) && half_to_float(0xFC00) < 0);
    for (uint32_t h = 0; h < 0x10000; h++) {  // every non-NaN half survives half -> float -> half
        if ((h & 0x7C00) == 0x7C00 && (h & 0x3FF)) continue;
        if (float_to_half(half_to_float(uint16_t(h))) != h) {
            CHECK_EQ(float_to_half(half_to_float(uint16_t(h))), h);
            break;
        }
    }
    CHECK_EQ(float_to_bf16(1.0f), 0x3F80);
    CHECK_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);  // tie, to even
    CHECK_EQ(float_to_bf16(1.0f + std::ldexp(3.0f, -8)), 0x3F82);  // tie, to even
    CHECK_EQ(float_to_bf16(f32_bits(0x7F7FFFFF)), 0x7F80);         // float32's max rounds to infinity
    CHECK_EQ(float_to_bf16(-0.0f), 0x8000);
    CHECK((float_to_bf16(std::numeric_limits<float>::quiet_NaN()) & 0x7FFF) > 0x7F80);
    CHECK((float_to_bf16(f32_bits(0x7F800001)) & 0x7FFF) > 0x7F80);  // a NaN whose payload sits in the low bits
    CHECK_EQ(bf16_to_float(0xC0A0), -5.0f);
}

TEST(bad_reductions_are_refused) {
    int32_t a[2] = {1, 2}, b[2] = {3, 4};
    CHECK_THROWS_KIND(reduce_into(DType::kInt32, ReduceOp(5), a, b, 2), kInvalidArgument);
    CHECK_THROWS_KIND(reduce_into(DType(12), ReduceOp::kSum, a, b, 2), kInvalidArgument);
    CHECK_THROWS_KIND(finalize_avg(DType::kInt32, a, 2, 2), kInvalidArgument);
    CHECK_EQ(a[0], 1);
}

// ------------------------------------------------------------------------------------------------ content hash

TEST(content_hash_matches_the_pinned_values) {
    // tests/test_state_sync.py's PINNED: the prefixes of 0, 1, 2, ... as uint8 (docs/shared_state.md quotes two).
    uint8_t data[1000];
    for (size_t i = 0; i < 1000; i++) data[i] = uint8_t(i);
    const size_t lengths[] = {0, 1, 7, 8, 31, 32, 33, 1000};
    const uint64_t pinned[] = {11306980954581204356ull, 17920085742350687448ull, 1216911243180200771ull,
                               12351479161264066984ull, 11491467379641043436ull, 10426401127002079115ull,
                               8512196039387417462ull,  11294559943867999565ull};
    for (size_t k = 0; k < 8; k++) CHECK_EQ(content_hash(data, lengths[k]), pinned[k]);
}

TEST(content_hash_sees_every_bit_and_the_length_but_not_the_address) {
    std::vector<uint8_t> x(300);
    for (uint32_t i = 0; i < x.size(); i++) x[i] = uint8_t(mix(i, 12));
    const uint64_t base = content_hash(x.data(), x.size());
    size_t unchanged = 0;
    for (size_t bit = 0; bit < x.size() * 8; bit++) {
        x[bit / 8] ^= uint8_t(1 << (bit % 8));
        unchanged += content_hash(x.data(), x.size()) == base ? 1 : 0;
        x[bit / 8] ^= uint8_t(1 << (bit % 8));
    }
    CHECK_EQ(unchanged, size_t(0));
    std::vector<uint8_t> shifted(x.size() + 3);
    std::memcpy(shifted.data() + 3, x.data(), x.size());
    CHECK_EQ(content_hash(shifted.data() + 3, x.size()), base);
    const uint8_t zeros[16] = {};
    CHECK(content_hash(zeros, 8) != content_hash(zeros, 9));
    CHECK(content_hash(zeros, 0) != content_hash(zeros, 1));
}
