// Words and times of the master's messages, shared by master/state.cpp and master/sync.cpp.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "wire/wire.hpp"

namespace pccl::master_text {

inline std::string shape_text(const std::vector<uint64_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",)" : ")");
}

// A descriptor in words: "sum of float32 (2, 4)", "... quantized minmax (block 1024, stochastic rounding, seed 3)",
// "broadcast of int64 (3,) from peer 2", "barrier".
inline std::string desc_text(const wire::OpDesc& d) {
    const OpKind kind = OpKind(d.collective);
    if (kind == OpKind::kBarrier) return "barrier";
    std::string s = std::string(op_name(ReduceOp(d.op))) + " of ";
    if (kind == OpKind::kBroadcast || kind == OpKind::kAllGather) s = std::string(op_kind_name(kind)) + " of ";
    if (kind == OpKind::kReduceScatter) s = "reduce_scatter (" + std::string(op_name(ReduceOp(d.op))) + ") of ";
    s += std::string(dtype_name(DType(d.dtype))) + " " + shape_text(d.shape);
    if (kind == OpKind::kBroadcast) s += " from peer " + std::to_string(d.root);
    if (d.structure) s += " packed from the tree " + d.structure_text;
    if (d.quant)
        s += std::string(" quantized ") +
             (d.quant == 1 ? "minmax" : d.quant == 2 ? "zeropoint" : d.quant == 3 ? "minmax4" : "unknown") + " (block " +
             std::to_string(d.qblock) + ", " + (d.qround ? "stochastic" : "nearest-even") + " rounding, seed " +
             std::to_string(d.qseed) + (d.qrotate ? ", rotated" : "") + (d.qreduce ? ", direct" : ", ring") + ")";
    return s;
}

// The first field in which two descriptors differ, in words.
inline std::string desc_difference(const wire::OpDesc& a, const wire::OpDesc& b) {
    if (a.collective != b.collective)
        return std::string("collectives differ: ") + op_kind_name(OpKind(a.collective)) + " and " +
               op_kind_name(OpKind(b.collective));
    if (a.root != b.root) return "roots differ";
    if (a.dtype != b.dtype) return "dtypes differ";
    if (a.op != b.op) return "ops differ";
    if (a.structure != b.structure) return "tree structures differ (keys, order, leaf dtypes or shapes)";
    if (a.shape != b.shape || a.count != b.count) return "shapes differ";
    return "quantization settings differ";
}

// An operation in words, for errors: "all_reduce tag 7", "broadcast tag 3".
inline std::string op_title(const wire::OpDesc& d, uint64_t tag) {
    return std::string(op_kind_name(OpKind(d.collective))) + " tag " + std::to_string(tag);
}

inline constexpr const char* kSameOrder = ": collectives must be called in the same order on every peer";

inline double deadline_of(uint32_t timeout_ms, double now) { return timeout_ms ? now + timeout_ms / 1000.0 : -1; }

inline std::string seconds_text(double s) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g s", s);
    return buf;
}

}  // namespace pccl::master_text
