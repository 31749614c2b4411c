// Frames as Python dicts, for tests and tools (part of the bindings layer; the core never sees Python).
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pccl {
std::string codec_type_name(uint16_t type);
std::pair<uint16_t, std::vector<uint8_t>> codec_encode(const std::string& type, const pybind11::dict& fields);
pybind11::dict codec_decode(uint16_t type, const std::vector<uint8_t>& payload);
}  // namespace pccl

#include "wire.hpp"

namespace pccl {
// Shared-state messages as dicts (also used by the election binding).
wire::SyncStart sync_start_of(const pybind11::dict& d);
pybind11::dict sync_start_dict(const wire::SyncStart& m);
wire::SyncPlan sync_plan_of(const pybind11::dict& d);
pybind11::dict sync_plan_dict(const wire::SyncPlan& m);
}  // namespace pccl
