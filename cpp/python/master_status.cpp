// Master.status(): the master's copy for monitoring (master/server.hpp MasterStatus) as plain Python data. Times
// on the master's clock become ages in seconds before the copy was taken, so nothing depends on that clock.
#include <pybind11/stl.h>

#include "master/server.hpp"
#include "python/module_common.hpp"

namespace py = pybind11;

namespace pccl {

namespace {
py::dict histogram_dict(const Histogram& h) {
    py::dict d;
    d["bounds"] = h.bounds;
    d["counts"] = h.counts;  // per bucket, the last above every bound
    d["sum"] = h.sum;
    d["count"] = h.count;
    return d;
}
}  // namespace

py::dict master_status_dict(const MasterStatus& s) {
    py::dict d;
    const auto ago = [&](double t) { return std::max(0.0, s.now - t); };
    d["stats"] = master_stats_dict(s.stats);
    d["uptime_s"] = ago(s.started);
    d["connections"] = s.connections;
    d["auth_failures"] = s.auth_failures;
    const Observed& o = s.observed;
    d["ops_started"] = o.ops_started;
    d["admissions"] = o.admissions;
    d["leaves"] = o.leaves;
    d["aborted_by_cause"] = o.aborted_by_cause;
    d["rejected_by_cause"] = o.rejected_by_cause;
    d["op_seconds"] = histogram_dict(o.op_seconds);
    d["op_bytes"] = histogram_dict(o.op_bytes);
    py::list recent;
    for (auto it = o.recent.rbegin(); it != o.recent.rend(); ++it) {  // newest first
        py::dict r;
        r["id"] = it->id;
        r["group"] = it->group;
        r["tag"] = it->tag;
        r["what"] = it->what;
        r["outcome"] = it->outcome;
        r["cause"] = it->cause;
        r["reason"] = it->reason;
        r["duration_s"] = std::max(0.0, it->ended - it->started);
        r["ago_s"] = ago(it->ended);
        r["bytes"] = it->bytes;
        r["world"] = it->world;
        recent.append(r);
    }
    d["recent"] = recent;
    py::list peers;
    for (const auto& p : s.peers) {
        py::dict r;
        r["id"] = p.id;
        r["group"] = p.group;
        r["address"] = p.addr;
        r["data_address"] = p.data_addr;
        r["state"] = p.state;
        r["activity"] = p.activity;
        r["age_s"] = ago(p.since);
        r["heartbeat_age_s"] = ago(p.last_seen);
        r["inbound"] = p.inbound;
        r["synced"] = p.synced;
        peers.append(r);
    }
    d["peers"] = peers;
    py::dict groups;
    for (const auto& [group, revision] : s.revisions) {
        py::dict g;
        auto ring = s.rings.find(group);
        g["ring"] = ring == s.rings.end() ? std::vector<uint64_t>{} : ring->second;
        g["revision"] = revision;
        auto ob = o.groups.find(group);
        const GroupObserved go = ob == o.groups.end() ? GroupObserved{} : ob->second;
        g["syncs"] = go.syncs;
        g["sync_bytes"] = go.sync_bytes;
        g["last_sync_ago_s"] = go.last_sync_at < 0 ? py::object(py::none()) : py::object(py::float_(ago(go.last_sync_at)));
        g["last_sync_bytes"] = go.last_sync_bytes;
        g["last_sync_revision"] = go.last_sync_revision;
        groups[py::int_(group)] = g;
    }
    d["groups"] = groups;
    d["links"] = links_list(s.links);
    return d;
}

}  // namespace pccl
