// Core messages and records as Python dicts (the bindings layer; the core never sees Python): frames for tests
// and tools, shared-state messages for the sync binding and the election seam, the master's counters.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pccl {
std::string frame_type_name(uint16_t type);
std::pair<uint16_t, std::vector<uint8_t>> frame_from_dict(const std::string& type, const pybind11::dict& fields);
pybind11::dict dict_from_frame(uint16_t type, const std::vector<uint8_t>& payload);
}  // namespace pccl

#include "wire/wire.hpp"

namespace pccl {
// Shared-state messages as dicts (also used by the election binding).
wire::SyncStart sync_start_of(const pybind11::dict& d);
pybind11::dict sync_start_dict(const wire::SyncStart& m);
wire::SyncPlan sync_plan_of(const pybind11::dict& d);
pybind11::dict sync_plan_dict(const wire::SyncPlan& m);
}  // namespace pccl

#include "master/state.hpp"

namespace pccl {
pybind11::dict master_stats_dict(const MasterStats& s);
// Binds the test seams (test_seams.cpp) into the module.
void bind_test_seams(pybind11::module_& m);
void bind_master_cost(pybind11::module_& m);  // master_cost.cpp
}  // namespace pccl
