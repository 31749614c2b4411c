// Element types and reduction operators the core understands, with their wire codes (docs/protocol.md).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace pccl {

enum class DType : uint8_t {
    kInt8 = 0, kUInt8 = 1, kInt16 = 2, kUInt16 = 3, kInt32 = 4, kUInt32 = 5, kInt64 = 6, kUInt64 = 7,
    kFloat16 = 8, kBFloat16 = 9, kFloat32 = 10, kFloat64 = 11,
};
constexpr uint8_t kDTypeCount = 12;

enum class ReduceOp : uint8_t { kSum = 0, kAvg = 1, kProd = 2, kMax = 3, kMin = 4 };
constexpr uint8_t kReduceOpCount = 5;

// What an operation is (OpDesc.collective): all_reduce and the other collectives (docs/collectives.md).
enum class OpKind : uint8_t { kAllReduce = 0, kBroadcast = 1, kAllGather = 2, kReduceScatter = 3, kBarrier = 4 };
constexpr uint8_t kOpKindCount = 5;

size_t dtype_size(DType t);
bool dtype_is_float(DType t);
const char* dtype_name(DType t);
const char* op_name(ReduceOp op);
const char* op_kind_name(OpKind k);  // "all_reduce", "broadcast", ...

}  // namespace pccl
