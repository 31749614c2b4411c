// splitmix64 for the native tests: the same numbers on every platform and standard library (std::
// distributions are not pinned), so a seeded test checks the same cases everywhere.
#pragma once
#include <cstdint>

namespace pccl::testing {

struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform(double lo, double hi) { return lo + (hi - lo) * double(next() >> 11) * 0x1p-53; }
    uint32_t below(uint32_t n) { return uint32_t(next() % n); }
};

}  // namespace pccl::testing
