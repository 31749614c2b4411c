// What both extension modules need: the translation of the core's errors into pccl_arrays.errors' classes,
// and the master's counters as a dict. The runtime module (bindings.cpp, pccl_arrays._core) is what the
// package imports; the test module (test_seams.cpp, pccl_arrays._core_testing) holds the seams for tests and
// benchmarks. Both link the one shared core library, so they share its state (log queue, interrupt check).
#pragma once
#include <pybind11/pybind11.h>

#include "master/state.hpp"

namespace pccl {
// Registers the translator of CoreError for a module; `interrupted` raises what a Ctrl-C left pending
// (the runtime's blocking calls) and returns false when nothing was pending.
void register_core_errors(bool (*interrupted)());
pybind11::dict master_stats_dict(const MasterStats& s);
pybind11::list links_list(const std::vector<wire::LinkMeasure>& links);  // Master.links(), status()["links"]
struct MasterStatus;
pybind11::dict master_status_dict(const MasterStatus& s);  // master_status.cpp
}  // namespace pccl
