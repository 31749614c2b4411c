#include "python/module_common.hpp"

#include <pybind11/stl.h>

namespace py = pybind11;

namespace pccl {

namespace {
bool (*g_interrupted)() = nullptr;
}

void register_core_errors(bool (*interrupted)()) {
    g_interrupted = interrupted;
    py::register_local_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const CoreError& e) {
            if (e.kind() == ErrorKind::kInterrupted) {  // what the signal handler raised, else KeyboardInterrupt
                if (!g_interrupted || !g_interrupted()) PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
                return;
            }
            py::object errors = py::module_::import("pccl_arrays.errors");
            py::object cls = errors.attr("error_class")(error_kind_name(e.kind()));
            PyErr_SetString(cls.ptr(), e.what());
        }
    });
}

py::list links_list(const std::vector<wire::LinkMeasure>& links) {
    py::list out;
    for (const auto& l : links)
        out.append(py::dict(py::arg("from") = l.from, py::arg("to") = l.to, py::arg("bandwidth") = l.bandwidth,
                            py::arg("rtt_us") = l.rtt_us));
    return out;
}

py::dict master_stats_dict(const MasterStats& s) {
    py::dict d;
    d["peers_accepted"] = s.peers_accepted;
    d["ops_committed"] = s.ops_committed;
    d["ops_aborted"] = s.ops_aborted;
    d["ops_rejected"] = s.ops_rejected;
    d["evictions"] = s.evictions;
    d["dropped_connections"] = s.dropped_connections;
    d["topology_updates"] = s.topology_updates;
    d["syncs_committed"] = s.syncs_committed;
    d["syncs_aborted"] = s.syncs_aborted;
    d["syncs_refused"] = s.syncs_refused;
    d["optimizations"] = s.optimizations;
    d["links_probed"] = s.links_probed;
    d["links_known"] = s.links_known;
    d["takeovers"] = s.takeovers;
    d["fenced"] = s.fenced;
    d["outbound_only"] = s.outbound_only;
    d["relayed_edges"] = s.relayed_edges;
    d["master_relay_pipes"] = s.master_relay_pipes;
    d["master_relay_bytes"] = s.master_relay_bytes;
    d["cpu_seconds"] = s.cpu_seconds;
    d["recent_drops"] = s.recent_drops;
    return d;
}

}  // namespace pccl
