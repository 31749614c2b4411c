// MasterState's view for monitoring: the rows of the status page and the records of ended collectives
// (observed.hpp has the overview). Nothing here decides anything.
#include <algorithm>

#include "base/dtype.hpp"
#include "base/error.hpp"
#include "master/state.hpp"

namespace pccl {

void MasterState::observe_end(const Collective& c, std::string what, uint64_t tag, bool ran, uint32_t world,
                              const char* outcome, ErrorKind kind, const std::string& reason) {
    OpRecord r;
    r.id = ran ? c.id : 0;
    r.group = c.group;
    r.tag = tag;
    r.what = std::move(what);
    r.outcome = outcome;
    r.cause = kind == ErrorKind(0) ? "" : error_kind_name(kind);
    r.reason = reason;
    r.started = ran ? c.began : c.first_start;
    r.ended = now_;
    r.bytes = c.bytes;
    r.world = world;
    observed_.ended(std::move(r));
}

void MasterState::observe_end(const Op& op, const char* outcome, ErrorKind kind, const std::string& reason) {
    const char* what = op.started.empty() ? "all_reduce" : op_kind_name(OpKind(op.started.begin()->second.collective));
    observe_end(op, what, op.tag, op.running, uint32_t(op.running ? op.members.size() : op.started.size()), outcome,
                kind, reason);
}

void MasterState::observe_sync_end(const Collective& sync, const char* outcome, ErrorKind kind,
                                   const std::string& reason) {
    observe_end(sync, "sync_shared_state", 0, sync.id != 0, uint32_t(sync.members.size()), outcome, kind, reason);
}

std::vector<MasterState::PeerRow> MasterState::peer_rows() const {
    std::vector<PeerRow> rows;
    for (const auto& [id, c] : conns_) {
        if (!c.hello) continue;
        PeerRow r;
        r.id = id;
        r.group = c.group;
        r.addr = c.addr;
        r.data_addr = c.info.port ? c.info.host + ":" + std::to_string(c.info.port) : "";
        r.state = c.accepted ? "accepted" : c.held ? "held" : "pending";
        r.activity = c.in_sync ? "sync_shared_state" : c.in_opt ? "optimize_topology" : c.in_topo ? "update_topology"
                     : !c.op_tags.empty() ? "collective" : "idle";
        r.since = c.since;
        r.last_seen = c.last_seen;
        r.inbound = c.info.inbound != 0;
        r.synced = c.synced;
        rows.push_back(std::move(r));
    }
    return rows;
}

}  // namespace pccl
