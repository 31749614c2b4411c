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

// A descriptor in words: "sum of float32 (2, 4)", "... quantized minmax (block 1024, stochastic rounding, seed 3)".
inline std::string desc_text(const wire::OpDesc& d) {
    std::string s = std::string(op_name(ReduceOp(d.op))) + " of " + dtype_name(DType(d.dtype)) + " " + shape_text(d.shape);
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
    if (a.dtype != b.dtype) return "dtypes differ";
    if (a.op != b.op) return "ops differ";
    if (a.structure != b.structure) return "tree structures differ (keys, order, leaf dtypes or shapes)";
    if (a.shape != b.shape || a.count != b.count) return "shapes differ";
    return "quantization settings differ";
}

inline constexpr const char* kSameOrder = ": collectives must be called in the same order on every peer";

inline double deadline_of(uint32_t timeout_ms, double now) { return timeout_ms ? now + timeout_ms / 1000.0 : -1; }

inline std::string seconds_text(double s) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%g s", s);
    return buf;
}

}  // namespace pccl::master_text
