// Element-wise reduction kernels. Half-precision types are widened to float32, combined and rounded back to
// nearest-even; integers wrap like NumPy's. MAX and MIN propagate NaN like np.maximum / np.minimum. AVG is a
// SUM on the ring and a division by the world size after the gather (finalize_avg), identical on every peer.
#pragma once
#include <cstddef>
#include <cstdint>

#include "base/dtype.hpp"

namespace pccl {

// acc[i] = op(acc[i], local[i]) for n elements. AVG reduces as SUM.
void reduce_into(DType t, ReduceOp op, void* acc, const void* local, size_t n);
// buf[i] = buf[i] / world, for floating types (the caller refuses AVG on integers).
void finalize_avg(DType t, void* buf, size_t n, uint32_t world);

float half_to_float(uint16_t h);
uint16_t float_to_half(float f);
float bf16_to_float(uint16_t b);
uint16_t float_to_bf16(float f);

}  // namespace pccl
