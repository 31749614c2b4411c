// How this works. A block of nb values is cut into segments of its length's binary digits, largest first (a
// full block is one segment of B = 2^m). Stage t of the butterflies pairs v[j] and v[j + 2^t] (bit t of j clear)
// inside one segment: the pair exists when j / 2^(t+1) < nb / 2^(t+1). Pairs of one stage are independent and a
// pair only needs the values its two elements had after the previous stage, so any order that finishes a
// group's earlier stages first gives the same bits. That freedom is what makes it fast:
//   - the signs and stages 0..2 run on runs of 8 values held in one vector (lane shuffles pair the elements);
//   - later stages run two at a time (stage t and t+1 over groups of 2^(t+2) values: four loads, four stores),
//     and a whole block's last forward pass does the scaling too (the same multiplication, one pass fewer);
//   - the short tail of a block (fewer than 8 values after its runs, or a segment below a stage's size) takes
//     the plain loop.
// Element j of a segment of 2^m is touched by m stages; the forward rotation scales it by 2^-floor(m/2) after
// its stages and the inverse by 2^-ceil(m/2) before them, so R⁻¹(R(x)) = x up to the additions' roundings.
#pragma GCC diagnostic ignored "-Wpsabi"  // see PCCL_INLINE below
#include "kernels/rotate.hpp"

#include <cstring>

#include "kernels/simd.hpp"

namespace pccl {

namespace {

// The helpers are inlined into the target_clones entry points, so each clone compiles them for its own target
// (and no 32-byte vector crosses a call: GCC's -Wpsabi note about passing them without AVX, silenced at the
// top of this file, does not apply).
#define PCCL_INLINE inline __attribute__((always_inline))

typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef uint32_t U8 __attribute__((vector_size(32)));

// fmix32(j) for every element index: the same for every block, so computed once.
struct ElementHashes {
    alignas(32) uint32_t h[kMaxRotateBlock];
    ElementHashes() {
        for (uint32_t j = 0; j < kMaxRotateBlock; j++) h[j] = fmix32(j);
    }
};
const uint32_t* element_hashes() {
    static const ElementHashes table;  // thread-safe initialisation
    return table.h;
}

// The block's key: signs are bit 31 of fmix32(key ^ fmix32(j)).
uint32_t block_key(uint32_t seed, uint32_t block_index) { return fmix32(seed ^ kRotateKey ^ fmix32(block_index)); }

PCCL_INLINE F8 load8(const float* p) {
    F8 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
PCCL_INLINE void store8(float* p, F8 v) { std::memcpy(p, &v, sizeof v); }

// Flips the sign bit of 8 values where the hash says so.
PCCL_INLINE F8 signed8(F8 v, uint32_t key, const uint32_t* eh) {
    U8 e;
    std::memcpy(&e, eh, sizeof e);
    const U8 flip = fmix32(U8(e ^ key)) & 0x80000000u;
    return (F8)((U8)v ^ flip);
}

// Stages 0, 1, 2 inside 8 lanes: lanes with bit t clear get a + b, the others a - b, with (a, b) the pair's first
// and second element. p is the partner lane's value, so the sums are x + p (= a + b) and p - x (= a - b).
PCCL_INLINE F8 stages_012(F8 x) {
    const I8 odd1 = {0, -1, 0, -1, 0, -1, 0, -1}, odd2 = {0, 0, -1, -1, 0, 0, -1, -1}, odd4 = {0, 0, 0, 0, -1, -1, -1, -1};
    F8 p = __builtin_shuffle(x, I8{1, 0, 3, 2, 5, 4, 7, 6});
    x = odd1 ? p - x : x + p;
    p = __builtin_shuffle(x, I8{2, 3, 0, 1, 6, 7, 4, 5});
    x = odd2 ? p - x : x + p;
    p = __builtin_shuffle(x, I8{4, 5, 6, 7, 0, 1, 2, 3});
    return odd4 ? p - x : x + p;
}

// Stage h over groups [g0, g1) of 2h values, element by element.
PCCL_INLINE void stage(float* v, size_t h, size_t g0, size_t g1) {
    for (size_t g = g0; g < g1; g++) {
        float* a = v + g * 2 * h;
        float* b = a + h;
        for (size_t j = 0; j < h; j++) {
            const float x = a[j], y = b[j];
            a[j] = x + y;
            b[j] = x - y;
        }
    }
}

// Stages h and 2h together over groups [g0, g1) of 4h values (h a multiple of 8); results times f (a power of
// two, exact but for subnormals, as a separate multiplication would be).
PCCL_INLINE void two_stages(float* v, size_t h, size_t g0, size_t g1, float f = 1.0f) {
    for (size_t g = g0; g < g1; g++) {
        float* p = v + g * 4 * h;
        for (size_t j = 0; j < h; j += 8) {
            const F8 a = load8(p + j), b = load8(p + h + j), c = load8(p + 2 * h + j), d = load8(p + 3 * h + j);
            const F8 s0 = a + b, s1 = a - b, s2 = c + d, s3 = c - d;
            if (f != 1.0f) {
                store8(p + j, (s0 + s2) * f);
                store8(p + h + j, (s1 + s3) * f);
                store8(p + 2 * h + j, (s0 - s2) * f);
                store8(p + 3 * h + j, (s1 - s3) * f);
            } else {
                store8(p + j, s0 + s2);
                store8(p + h + j, s1 + s3);
                store8(p + 2 * h + j, s0 - s2);
                store8(p + 3 * h + j, s1 - s3);
            }
        }
    }
}

// Stage h (a multiple of 8) over a whole segment of 2h values, results times f.
PCCL_INLINE void last_stage(float* v, size_t h, float f) {
    for (size_t j = 0; j < h; j += 8) {
        const F8 a = load8(v + j), b = load8(v + h + j);
        store8(v + j, (a + b) * f);
        store8(v + h + j, (a - b) * f);
    }
}

// Stages 3 and up, for every segment at once: a stage's pairs exist in the groups below nb / 2h.
PCCL_INLINE void later_stages(float* v, size_t nb) {
    size_t h = 8;
    for (; 4 * h <= nb; h *= 4) {
        // Groups of 4h that lie inside one segment take both stages at once; the rest of the pairs of the two
        // stages (a segment of exactly 2h) take them one by one.
        const size_t quads = nb / (4 * h);
        two_stages(v, h, 0, quads);
        stage(v, h, 2 * quads, nb / (2 * h));
        stage(v, 2 * h, quads, nb / (4 * h));
    }
    if (2 * h <= nb) stage(v, h, 0, nb / (2 * h));
}

// The same for one segment of nb = 2^m >= 16 values, with the last pass multiplying by f.
PCCL_INLINE void later_stages_scaled(float* v, size_t nb, float f) {
    size_t h = 8;
    for (; 4 * h < nb; h *= 4) two_stages(v, h, 0, nb / (4 * h));
    if (4 * h == nb)
        two_stages(v, h, 0, 1, f);
    else
        last_stage(v, h, f);
}

PCCL_INLINE float pow2_neg(int e) {  // 2^-e exactly (0 <= e <= 6 here)
    const uint32_t bits = uint32_t(127 - e) << 23;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// Multiplies v[j] by 2^-e(m(j)), m(j) = log2 of j's segment, e = floor(m/2) (forward) or ceil(m/2) (inverse).
PCCL_INLINE void scale_segments(float* v, size_t nb, bool forward) {
    size_t at = 0;
    for (int m = 31; m >= 0; m--) {
        const size_t len = size_t(1) << m;
        if (!(nb & len)) continue;
        const int e = forward ? m / 2 : (m + 1) / 2;
        if (e) {
            const float f = pow2_neg(e);
            for (size_t j = at; j < at + len; j++) v[j] = v[j] * f;
        }
        at += len;
    }
}

// The signs (when `signs`) and stages 0..2, from src into dst (which may be src): runs of 8 in vectors, then
// the tail of fewer than 8 one by one.
PCCL_INLINE void first_stages(const float* src, float* dst, size_t nb, bool signs, uint32_t key) {
    const uint32_t* eh = element_hashes();
    const size_t runs = nb / 8;
    for (size_t r = 0; r < runs; r++) {
        F8 x = load8(src + 8 * r);
        if (signs) x = signed8(x, key, eh + 8 * r);
        store8(dst + 8 * r, stages_012(x));
    }
    for (size_t j = runs * 8; j < nb; j++) dst[j] = signs && (fmix32(key ^ eh[j]) & 0x80000000u) ? -src[j] : src[j];
    for (size_t h = 1; h < 8 && 2 * h <= nb; h *= 2) stage(dst, h, runs * 8 / (2 * h), nb / (2 * h));
}

PCCL_INLINE void flip_signs(float* v, size_t nb, uint32_t key) {
    const uint32_t* eh = element_hashes();
    const size_t runs = nb / 8;
    for (size_t r = 0; r < runs; r++) store8(v + 8 * r, signed8(load8(v + 8 * r), key, eh + 8 * r));
    for (size_t j = runs * 8; j < nb; j++)
        if (fmix32(key ^ eh[j]) & 0x80000000u) v[j] = -v[j];
}

// The forward rotation's stages 3 and up and its scaling: fused for a whole block of 16 or more, else one
// after the other.
PCCL_INLINE void forward_rest(float* v, size_t nb) {
    if (nb >= 16 && (nb & (nb - 1)) == 0)
        later_stages_scaled(v, nb, pow2_neg(__builtin_ctzll(nb) / 2));
    else {
        later_stages(v, nb);
        scale_segments(v, nb, true);
    }
}

}  // namespace

PCCL_SIMD void rotate_block(const float* x, float* v, size_t nb, uint32_t seed, uint32_t block_index) {
    first_stages(x, v, nb, true, block_key(seed, block_index));
    forward_rest(v, nb);
}

PCCL_SIMD void unrotate_block(float* v, size_t nb, uint32_t seed, uint32_t block_index) {
    scale_segments(v, nb, false);  // first: the stages then grow values no further than the forward ones did
    first_stages(v, v, nb, false, 0);
    later_stages(v, nb);
    flip_signs(v, nb, block_key(seed, block_index));
}

}  // namespace pccl
