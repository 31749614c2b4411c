// Block-wise 8- and 4-bit quantization: the format of docs/quantization.md (the specification; read it first).
// Host kernels for quantize, dequantize and the ring hop (decode, add, re-quantize), with the optional rotation
// (kernels/rotate.hpp) before quantizing and after the final decoding. All arithmetic is float32
// with one rounding per operation (compiled with -ffp-contract=off), so the Triton kernels in kernels/ and
// the NumPy reference in the tests produce the same bytes and floats.
#pragma once
#include <cstddef>
#include <cstdint>

#include "base/dtype.hpp"

namespace pccl {

enum class QuantKind : uint8_t { kNone = 0, kMinMax = 1, kZeroPoint = 2, kMinMax4 = 3 };
enum class Rounding : uint8_t { kNearest = 0, kStochastic = 1 };

struct QuantConfig {
    QuantKind kind = QuantKind::kNone;
    uint32_t block = 1024;
    Rounding rounding = Rounding::kNearest;
    uint32_t seed = 0;  // stochastic rounding's and the rotation's
    bool rotate = false;  // the randomized Hadamard rotation (a power-of-two block of at most 4096)
    bool direct = false;  // the direct all-reduce (peer/direct.hpp: one quantization per sum) rather than the ring
    bool enabled() const { return kind != QuantKind::kNone; }
};

constexpr size_t kQuantHeader = 8;  // p0, p1 as float32
void check_quant_config(const QuantConfig& q);
size_t quant_blocks(size_t n, uint32_t block);
// Bytes of one block of nb elements (header and codes), and of a whole quantized array of n elements.
size_t quant_block_bytes(const QuantConfig& q, size_t nb);
size_t quantized_bytes(size_t n, const QuantConfig& q);

// x (n elements of dtype, a floating type) -> out (quantized_bytes(n, q) bytes), round to nearest even; rotated
// first when q.rotate. dequantize undoes the rotation before dividing.
void quantize(const void* x, DType dtype, size_t n, const QuantConfig& q, uint8_t* out);
// q (the whole quantized array of n elements) -> out (n elements of dtype), each value divided by divide_by.
void dequantize(const uint8_t* q, size_t n, const QuantConfig& q_cfg, DType dtype, void* out, uint32_t divide_by);

// What quantizing x loses, for error feedback: out = x - D(Q(x)) (with the rotation and its inverse when
// q.rotate) per element, computed in float32 and converted to dtype; 0 where that is not finite.
void quantization_residual(const void* x, DType dtype, size_t n, const QuantConfig& q, void* out);

// The same over blocks [first_block, first_block + n_blocks) of an array of n elements: x and out point at the
// array's first element, the quantized side at block first_block's bytes.
void quantize_blocks(const void* x, DType dtype, size_t first_block, size_t n_blocks, size_t n, const QuantConfig& q,
                     uint8_t* out);
void dequantize_blocks(const uint8_t* q, size_t first_block, size_t n_blocks, size_t n, const QuantConfig& q_cfg,
                       DType dtype, void* out, uint32_t divide_by);

// One ring hop over `n_blocks` whole blocks starting at global block `first_block` of an array of `n`
// elements: acc = Q(D(acc) + D(own)), with stochastic rounding seeded by (seed, op_id, step, block, element)
// when the config asks for it. (With rotation both sides are already rotated: nothing rotates here.)
void reduce_hop(uint8_t* acc, const uint8_t* own, size_t first_block, size_t n_blocks, size_t n, const QuantConfig& q,
                uint64_t op_id, uint32_t step);
// The same hop with our own contribution exact: acc = Q(D(acc) + R(float32(own_x))), own_x pointing at the first
// element of block first_block (the host path, where the unquantized input is at hand; R only when q.rotate).
void reduce_hop_exact(uint8_t* acc, const void* own_x, DType dtype, size_t first_block, size_t n_blocks, size_t n,
                      const QuantConfig& q, uint64_t op_id, uint32_t step);

// The owner's sum of the direct all-reduce (peer/direct.hpp) over `n_blocks` blocks from `first_block`:
// out = Q(own + D(received[0]) + ... + D(received[m-1])), added in that order in float32 and quantized once
// (stochastic rounding draws with step 0). `own` is R(float32(own_x)) when own_x is set (the host path; own_x at
// the first block's first element), else D(own_q); received[i] and own_q point at the first block's bytes.
void reduce_owner(uint8_t* out, const uint8_t* const* received, size_t m, const uint8_t* own_q, const void* own_x,
                  DType dtype, size_t first_block, size_t n_blocks, size_t n, const QuantConfig& q, uint64_t op_id);

}  // namespace pccl
