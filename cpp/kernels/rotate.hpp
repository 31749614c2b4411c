// The randomized Hadamard rotation of quantized blocks (docs/quantization.md, "Rotation"): sign flips from a
// hash of (seed, block, element), then a fast Walsh-Hadamard transform of each power-of-two segment of the
// block, then an exact power-of-two scaling. The inverse runs the same transform, the complementary scaling and
// the same signs. Float32 with one rounding per addition (-ffp-contract=off), so the Triton kernels and the
// NumPy reference produce the same bits.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pccl {

constexpr uint32_t kMaxRotateBlock = 4096;
constexpr uint32_t kRotateKey = 0x9E3779B9u;  // keeps the signs apart from the stochastic rounding's draws

// The nb (<= kMaxRotateBlock) float32 values of global block `block_index`: rotate_block reads x and writes v
// (x may be v), unrotate_block works in place.
void rotate_block(const float* x, float* v, size_t nb, uint32_t seed, uint32_t block_index);
void unrotate_block(float* v, size_t nb, uint32_t seed, uint32_t block_index);

}  // namespace pccl
