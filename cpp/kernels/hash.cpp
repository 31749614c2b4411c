#include "kernels/hash.hpp"

#include <cstring>
#include <initializer_list>

namespace pccl {

namespace {
// Odd 64-bit constants: the golden ratio and two well-mixed multipliers.
constexpr uint64_t M1 = 0x9E3779B97F4A7C15ull;
constexpr uint64_t M2 = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t M3 = 0x94D049BB133111EBull;
constexpr uint64_t SEED = 0x5043434C41525241ull;  // "ARRALCCP" as bytes

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t load64(const uint8_t* p) {
    uint64_t v;
    std::memcpy(&v, p, 8);  // the core runs on little-endian hosts only (docs/protocol.md)
    return v;
}
inline uint64_t absorb(uint64_t lane, uint64_t w) { return rotl(lane + w * M1, 31) * M2; }
inline uint64_t avalanche(uint64_t h) {
    h ^= h >> 31;
    h *= M3;
    h ^= h >> 29;
    h *= M2;
    h ^= h >> 32;
    return h;
}
}  // namespace

uint64_t content_hash(const void* data, size_t len) {
    const auto* p = static_cast<const uint8_t*>(data);
    const uint8_t* end = p + len;
    uint64_t a = SEED + M1, b = SEED ^ M2, c = SEED, d = SEED - M1;
    while (end - p >= 32) {
        a = absorb(a, load64(p));
        b = absorb(b, load64(p + 8));
        c = absorb(c, load64(p + 16));
        d = absorb(d, load64(p + 24));
        p += 32;
    }
    uint64_t h = rotl(a, 1) + rotl(b, 11) + rotl(c, 23) + rotl(d, 41);
    for (uint64_t lane : {a, b, c, d}) h = (h ^ absorb(0, lane)) * M1 + M3;
    while (end - p >= 8) {
        h = absorb(h ^ load64(p), M3);
        p += 8;
    }
    if (p < end) {
        uint8_t tail[8] = {};
        std::memcpy(tail, p, size_t(end - p));
        h = absorb(h ^ load64(tail), M1);
    }
    return avalanche(h ^ (uint64_t(len) * M2));
}

}  // namespace pccl
