// What the host quantization kernels share: the target_clones attribute of their hot loops and the hash their
// stochastic rounding and rotation signs draw from.
#pragma once
#include <cstdint>

// The hot loops are compiled three times, for AVX-512 (x86-64-v4), for AVX2 and for the baseline, and the
// loader picks one per machine (GCC target_clones). All do the same IEEE operations in the same order, without
// fused multiply-add (-ffp-contract=off), so they produce the same bytes.
// Not under ThreadSanitizer: GCC instruments the clones' resolvers, which the loader runs before the sanitizer's
// runtime is up, so an executable linked to an instrumented core would crash before main().
// No exception may leave such a function (it terminates under ThreadSanitizer): callers check arguments first.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define PCCL_SIMD __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define PCCL_SIMD
#endif

namespace pccl {

// MurmurHash3's 32-bit finalizer (multiplications wrap mod 2^32), on a uint32_t or, lane by lane, on a GCC
// vector of them (always inlined: a clone computes it with its own instructions, and no vector crosses a call).
template <class U> inline __attribute__((always_inline)) U fmix32(U h) {
    h ^= h >> 16;
    h *= 0x85EBCA6Bu;
    h ^= h >> 13;
    h *= 0xC2B2AE35u;
    h ^= h >> 16;
    return h;
}

}  // namespace pccl
