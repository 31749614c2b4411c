#include "master_state.hpp"

#include <algorithm>

#include "state_election.hpp"

namespace pccl {

using wire::MsgType;

namespace {
std::string desc_text(const wire::OpDesc& d) {
    std::string s = "count=" + std::to_string(d.count) + " dtype=" + std::to_string(d.dtype) +
                    " op=" + std::to_string(d.op) + " quant=" + std::to_string(d.quant);
    if (d.quant)
        s += " (block " + std::to_string(d.qblock) + ", rounding " + std::to_string(d.qround) + ", seed " +
             std::to_string(d.qseed) + ")";
    return s;
}
}  // namespace

std::string MasterState::describe(uint64_t id) const {
    auto it = conns_.find(id);
    if (it == conns_.end()) return "peer " + std::to_string(id);
    return "peer " + std::to_string(id) + " (" + it->second.addr + ")";
}

uint32_t MasterState::pending_count() const {
    uint32_t n = 0;
    for (const auto& [id, c] : conns_) n += (c.hello && !c.accepted) ? 1 : 0;
    return n;
}

std::vector<uint64_t> MasterState::group_ring(uint32_t group) const {
    std::vector<std::pair<uint64_t, uint64_t>> order;  // (admitted_seq, id)
    for (const auto& [id, c] : conns_)
        if (c.accepted && c.group == group) order.emplace_back(c.admitted_seq, id);
    std::sort(order.begin(), order.end());
    std::vector<uint64_t> ids;
    for (auto& [seq, id] : order) ids.push_back(id);
    return ids;
}

std::vector<wire::PeerInfo> MasterState::ring_infos(const std::vector<uint64_t>& ids) const {
    std::vector<wire::PeerInfo> infos;
    for (uint64_t id : ids) infos.push_back(conns_.at(id).info);
    return infos;
}

std::vector<MasterAction> MasterState::on_connect(uint64_t conn, const std::string& addr, double now) {
    Conn c;
    c.addr = addr;
    c.since = c.last_seen = now;
    conns_[conn] = c;
    return {};
}

std::vector<MasterAction> MasterState::on_frame(uint64_t id, uint16_t type, const std::vector<uint8_t>& payload,
                                                double now) {
    Actions out;
    auto it = conns_.find(id);
    if (it == conns_.end()) return out;
    it->second.last_seen = now;
    try {
        handle(id, it->second, type, payload, now, out);
    } catch (const CoreError& e) {
        drop(id, e.what(), out);
    }
    return out;
}

void MasterState::handle(uint64_t id, Conn& c, uint16_t type, const std::vector<uint8_t>& payload, double now,
                         Actions& out) {
    (void)now;
    const auto t = MsgType(type);
    if (!c.hello && t != MsgType::kHello)
        throw CoreError(ErrorKind::kProtocol, "message type " + std::to_string(type) + " before HELLO");
    if (c.hello && !c.accepted && t != MsgType::kHeartbeat && t != MsgType::kLeave && t != MsgType::kPendingRequest)
        throw CoreError(ErrorKind::kProtocol, "message type " + std::to_string(type) + " from a peer not yet admitted");
    switch (t) {
        case MsgType::kHello: {
            if (c.hello) throw CoreError(ErrorKind::kProtocol, "second HELLO");
            auto m = wire::decode_payload<wire::Hello>(payload);
            if (m.connections == 0 || m.connections > 1024)
                throw CoreError(ErrorKind::kProtocol, "connection count " + std::to_string(m.connections));
            c.hello = true;
            c.group = m.group;
            c.connections = m.connections;
            c.info = wire::PeerInfo{id, m.host, m.port};
            send(out, id, MsgType::kWelcome, wire::Welcome{id});
            try_complete_topology(out);
            return;
        }
        case MsgType::kHeartbeat:
            send(out, id, MsgType::kHeartbeatAck, wire::HeartbeatAck{pending_count()});
            return;
        case MsgType::kPendingRequest:
            wire::decode_payload<wire::TopoRequest>(payload);
            send(out, id, MsgType::kPendingReply, wire::PendingReply{pending_count()});
            return;
        case MsgType::kLeave:
            remove(id, describe(id) + " left", out);
            return;
        case MsgType::kTopoRequest: {
            auto m = wire::decode_payload<wire::TopoRequest>(payload);
            if (c.in_topo || !c.op_tags.empty() || c.in_sync)
                throw CoreError(ErrorKind::kProtocol, "update_topology with a collective in flight");
            c.in_topo = true;
            c.topo_seq = m.seq;
            if (syncs_pending_.count(c.group))
                fail_pending_sync(c.group,
                                  describe(id) + " called update_topology() while others called sync_shared_state(): "
                                                 "collectives must be called in the same order",
                                  out);
            // Operations of its group that wait for this peer can never start now.
            for (auto op = ops_.begin(); op != ops_.end();) {
                auto cur = op++;
                if (cur->second.group == c.group && !cur->second.running)
                    fail_op(cur, ErrorKind::kMismatch,
                            describe(id) + " called update_topology() while others started all_reduce tag " +
                                std::to_string(cur->second.tag) + ": collectives must be called in the same order",
                            out);
            }
            try_complete_topology(out);
            return;
        }
        case MsgType::kOpStart: {
            auto m = wire::decode_payload<wire::OpStart>(payload);
            auto key = std::make_pair(c.group, m.tag);
            auto op = ops_.find(key);
            if (op != ops_.end() && op->second.running) {  // refused for this peer only; the running op goes on
                send(out, id, MsgType::kOpReject,
                     wire::OpReject{m.tag, uint8_t(ErrorKind::kInvalidArgument),
                                    "tag " + std::to_string(m.tag) + " is already in flight in this group"});
                return;
            }
            if (c.in_topo) throw CoreError(ErrorKind::kProtocol, "OP_START during update_topology");
            if (c.op_tags.count(m.tag)) throw CoreError(ErrorKind::kProtocol, "OP_START twice for one tag");
            if (op == ops_.end()) {
                op = ops_.emplace(key, Op{}).first;
                op->second.group = c.group;
                op->second.tag = m.tag;
            }
            c.op_tags.insert(m.tag);
            op->second.started[id] = m.desc;
            try_start(op, out);
            return;
        }
        case MsgType::kSyncStart: {
            auto m = wire::decode_payload<wire::SyncStart>(payload);
            if (c.in_topo || !c.op_tags.empty() || c.in_sync)
                throw CoreError(ErrorKind::kProtocol, "SYNC_START with a collective in flight");
            c.in_sync = true;
            auto& sync = syncs_pending_[c.group];
            sync.group = c.group;
            sync.started[id] = std::move(m);
            // Operations that wait for this peer, which now waits for them: both fail, on every peer.
            std::string conflict;
            for (auto op = ops_.begin(); op != ops_.end();) {
                auto cur = op++;
                if (cur->second.group != c.group || cur->second.running) continue;
                conflict = describe(id) + " called sync_shared_state() while others started all_reduce tag " +
                           std::to_string(cur->second.tag) + ": collectives must be called in the same order";
                fail_op(cur, ErrorKind::kMismatch, conflict, out);
            }
            if (!conflict.empty()) fail_pending_sync(c.group, conflict, out);
            else try_start_sync(c.group, out);
            return;
        }
        case MsgType::kOpDone: {
            auto m = wire::decode_payload<wire::OpDone>(payload);
            auto sync = syncs_running_.find(m.op_id);
            if (sync != syncs_running_.end()) {
                auto& members = sync->second.members;
                if (std::find(members.begin(), members.end(), id) == members.end()) return;
                if (!m.ok) {
                    abort_sync(sync, ErrorKind(m.kind ? m.kind : uint8_t(ErrorKind::kPeerLost)),
                               describe(id) + " reported: " + m.reason, out);
                } else {
                    sync->second.done.insert(id);
                    if (sync->second.done.size() == members.size()) finish_sync(sync, out);
                }
                return;
            }
            for (auto op = ops_.begin(); op != ops_.end(); ++op) {
                if (!op->second.running || op->second.op_id != m.op_id) continue;
                auto& members = op->second.members;
                if (std::find(members.begin(), members.end(), id) == members.end()) break;
                if (!m.ok) {
                    fail_op(op, ErrorKind(m.kind ? m.kind : uint8_t(ErrorKind::kPeerLost)),
                            describe(id) + " reported: " + m.reason, out);
                } else {
                    op->second.done.insert(id);
                    if (op->second.done.size() == members.size()) finish_op(op, out);
                }
                return;
            }
            return;  // an operation already aborted: the report is stale
        }
        default:
            throw CoreError(ErrorKind::kProtocol, "unexpected message type " + std::to_string(type) + " at the master");
    }
}

void MasterState::try_complete_topology(Actions& out) {
    size_t accepted = 0;
    for (const auto& [id, c] : conns_) {
        if (!c.accepted) continue;
        accepted++;
        if (!c.in_topo) return;  // someone is still computing: the vote waits
    }
    if (accepted == 0 && pending_count() == 0) return;
    std::vector<uint64_t> newcomers;
    for (auto& [id, c] : conns_) {
        if (c.hello && !c.accepted) {
            c.accepted = true;
            c.admitted_seq = next_admitted_++;
            newcomers.push_back(id);
        }
    }
    stats_.topology_updates++;
    uint32_t world = 0;
    for (const auto& [id, c] : conns_) world += c.accepted ? 1 : 0;
    for (auto& [id, c] : conns_) {
        if (!c.accepted) continue;
        wire::TopoResult r;
        r.seq = c.in_topo ? c.topo_seq : 0;
        r.world_size = world;
        r.ring = ring_infos(group_ring(c.group));
        r.pending = 0;
        send(out, id, MsgType::kTopoResult, r);
        c.in_topo = false;
    }
    stats_.peers_accepted = world;
}

void MasterState::try_start(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, Actions& out) {
    Op& op = it->second;
    if (op.running) return;
    if (op.started.empty()) {
        ops_.erase(it);
        return;
    }
    auto ring = group_ring(op.group);
    // A member inside update_topology() can never start this operation: fail it now, whatever the ring order.
    for (uint64_t id : ring) {
        const Conn& m = conns_.at(id);
        if (m.in_topo || m.in_sync) {
            const std::string why = describe(id) + " is in " + (m.in_topo ? "update_topology()" : "sync_shared_state()") +
                                    " while others started all_reduce tag " + std::to_string(op.tag) +
                                    ": collectives must be called in the same order";
            const uint32_t group = op.group;
            fail_op(it, ErrorKind::kMismatch, why, out);
            if (m.in_sync) fail_pending_sync(group, why, out);  // the sync waits for them: it fails too
            return;
        }
    }
    for (uint64_t id : ring)
        if (!op.started.count(id)) return;  // still waiting for this peer
    const auto& [first_id, first] = *op.started.begin();
    for (const auto& [id, d] : op.started) {
        if (d == first) continue;
        fail_op(it, ErrorKind::kMismatch,
                "peers started different operations for tag " + std::to_string(op.tag) + ": " + describe(first_id) +
                    " has " + desc_text(first) + ", " + describe(id) + " has " + desc_text(d),
                out);
        return;
    }
    op.running = true;
    op.op_id = next_op_id_++;
    op.members = ring;
    std::set<uint32_t> taken;
    for (const auto& [key, other] : ops_)
        if (other.running && other.group == op.group && &other != &op) taken.insert(other.slot);
    while (taken.count(op.slot)) op.slot++;
    uint32_t stripes = 1024;
    for (uint64_t id : ring) stripes = std::min(stripes, conns_.at(id).connections);
    wire::OpGo go{op.tag, op.op_id, stripes, ring_infos(ring), op.slot};
    for (uint64_t id : ring) send(out, id, MsgType::kOpGo, go);
}

void MasterState::finish_op(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, Actions& out) {
    for (uint64_t id : it->second.members) {
        send(out, id, MsgType::kOpCommit, wire::OpCommit{it->second.op_id});
        conns_.at(id).op_tags.erase(it->second.tag);
    }
    stats_.ops_committed++;
    ops_.erase(it);
}

void MasterState::fail_op(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, ErrorKind kind,
                          const std::string& reason, Actions& out) {
    Op& op = it->second;
    if (op.running) {
        for (uint64_t id : op.members) {
            if (!conns_.count(id)) continue;
            send(out, id, MsgType::kOpAbort, wire::OpAbort{op.op_id, uint8_t(kind), reason});
            conns_.at(id).op_tags.erase(op.tag);
        }
        stats_.ops_aborted++;
    } else {
        for (const auto& [id, d] : op.started) {
            if (!conns_.count(id)) continue;
            send(out, id, MsgType::kOpReject, wire::OpReject{op.tag, uint8_t(kind), reason});
            conns_.at(id).op_tags.erase(op.tag);
        }
        stats_.ops_rejected++;
    }
    ops_.erase(it);
}

void MasterState::try_start_sync(uint32_t group, Actions& out) {
    auto it = syncs_pending_.find(group);
    if (it == syncs_pending_.end()) return;
    if (it->second.started.empty()) {
        syncs_pending_.erase(it);
        return;
    }
    const auto ring = group_ring(group);
    for (uint64_t id : ring) {
        const Conn& m = conns_.at(id);
        if (m.in_topo || !m.op_tags.empty()) {
            fail_pending_sync(group,
                              describe(id) + " is in " + (m.in_topo ? "update_topology()" : "all_reduce") +
                                  " while others called sync_shared_state(): collectives must be called in the same order",
                              out);
            return;
        }
    }
    for (uint64_t id : ring)
        if (!it->second.started.count(id)) return;  // still waiting for this peer
    std::vector<SyncPeer> peers;
    bool state_exists = false;
    for (uint64_t id : ring) {
        const Conn& m = conns_.at(id);
        peers.push_back(SyncPeer{id, m.admitted_seq, m.synced, m.connections, m.info, std::move(it->second.started[id])});
        state_exists |= m.synced;
    }
    syncs_pending_.erase(it);
    std::optional<uint64_t> last;
    auto rev = group_revision_.find(group);
    if (state_exists && rev != group_revision_.end()) last = rev->second;
    SyncDecision d = elect_state(peers, last);
    Sync sync;
    sync.group = group;
    sync.id = next_op_id_++;
    sync.revision = d.revision;
    sync.members = d.members;
    for (auto& [id, plan] : d.plans) {
        plan.sync_id = sync.id;
        if (!plan.ok) {
            conns_.at(id).in_sync = false;
            stats_.syncs_refused++;
        }
        plan.commit_now = d.moves ? 0 : 1;
        send(out, id, MsgType::kSyncPlan, plan);
    }
    if (sync.members.empty()) return;
    auto running = syncs_running_.emplace(sync.id, std::move(sync)).first;
    if (!d.moves) finish_sync(running, out);  // the plan already told them: nothing else to send
}

void MasterState::fail_pending_sync(uint32_t group, const std::string& reason, Actions& out) {
    auto it = syncs_pending_.find(group);
    if (it == syncs_pending_.end()) return;
    for (const auto& [id, start] : it->second.started) {
        if (!conns_.count(id)) continue;
        wire::SyncPlan plan;
        plan.ok = 0;
        plan.kind = uint8_t(ErrorKind::kMismatch);
        plan.reason = reason;
        send(out, id, MsgType::kSyncPlan, plan);
        conns_.at(id).in_sync = false;
    }
    stats_.syncs_aborted++;
    syncs_pending_.erase(it);
}

void MasterState::finish_sync(std::map<uint64_t, Sync>::iterator it, Actions& out) {
    Sync& sync = it->second;
    const bool announced = sync.done.size() == sync.members.size();  // else: committed by its plan
    for (uint64_t id : sync.members) {
        Conn& m = conns_.at(id);
        if (announced) send(out, id, MsgType::kOpCommit, wire::OpCommit{sync.id});
        m.in_sync = false;
        m.synced = true;
    }
    group_revision_[sync.group] = sync.revision;
    stats_.syncs_committed++;
    syncs_running_.erase(it);
}

void MasterState::abort_sync(std::map<uint64_t, Sync>::iterator it, ErrorKind kind, const std::string& reason,
                             Actions& out) {
    for (uint64_t id : it->second.members) {
        if (!conns_.count(id)) continue;
        send(out, id, MsgType::kOpAbort, wire::OpAbort{it->second.id, uint8_t(kind), reason});
        conns_.at(id).in_sync = false;
    }
    stats_.syncs_aborted++;
    syncs_running_.erase(it);
}

void MasterState::remove(uint64_t id, const std::string& reason, Actions& out) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    const uint32_t group = it->second.group;
    const bool was_accepted = it->second.accepted;
    conns_.erase(it);
    out.push_back(MasterAction{MasterAction::kClose, id, {}, reason});
    for (auto op = ops_.begin(); op != ops_.end();) {
        auto cur = op++;
        if (cur->second.group != group) continue;
        if (cur->second.running) {
            auto& m = cur->second.members;
            if (std::find(m.begin(), m.end(), id) != m.end())
                fail_op(cur, ErrorKind::kPeerLost, "peer " + std::to_string(id) + " lost: " + reason, out);
        } else {
            cur->second.started.erase(id);
            try_start(cur, out);  // the group shrank: the others may be complete now
        }
    }
    for (auto sync = syncs_running_.begin(); sync != syncs_running_.end();) {
        auto cur = sync++;
        auto& m = cur->second.members;
        if (std::find(m.begin(), m.end(), id) != m.end())
            abort_sync(cur, ErrorKind::kPeerLost, "peer " + std::to_string(id) + " lost: " + reason, out);
    }
    auto pending = syncs_pending_.find(group);
    if (pending != syncs_pending_.end()) {
        pending->second.started.erase(id);
        try_start_sync(group, out);  // the group shrank: the others may be complete now
    }
    if (was_accepted) try_complete_topology(out);
    uint32_t world = 0;
    for (const auto& [cid, c] : conns_) world += c.accepted ? 1 : 0;
    stats_.peers_accepted = world;
}

void MasterState::drop(uint64_t id, const std::string& reason, Actions& out) {
    stats_.dropped_connections++;
    stats_.recent_drops.push_back(describe(id) + ": " + reason);
    if (stats_.recent_drops.size() > 16) stats_.recent_drops.erase(stats_.recent_drops.begin());
    remove(id, "dropped: " + reason, out);
}

std::vector<MasterAction> MasterState::on_disconnect(uint64_t id, const std::string& reason, double now) {
    (void)now;
    Actions out;
    auto it = conns_.find(id);
    if (it == conns_.end()) return out;
    if (!it->second.hello) {
        drop(id, "disconnected before HELLO: " + reason, out);
    } else {
        remove(id, describe(id) + " disconnected: " + reason, out);
    }
    return out;
}

std::vector<MasterAction> MasterState::on_bad_frame(uint64_t id, const std::string& reason, double now) {
    (void)now;
    Actions out;
    if (conns_.count(id)) drop(id, reason, out);
    return out;
}

std::vector<MasterAction> MasterState::on_tick(double now) {
    Actions out;
    std::vector<std::pair<uint64_t, std::string>> victims;
    for (const auto& [id, c] : conns_) {
        if (!c.hello && now - c.since > config_.handshake_timeout)
            victims.emplace_back(id, "no HELLO within " + std::to_string(config_.handshake_timeout) + " s");
        else if (c.hello && now - c.last_seen > config_.peer_timeout)
            victims.emplace_back(id, "");
    }
    for (auto& [id, why] : victims) {
        if (!why.empty()) {
            drop(id, why, out);
            continue;
        }
        const std::string reason =
            describe(id) + " was silent for more than " + std::to_string(config_.peer_timeout) + " s and was evicted";
        send(out, id, MsgType::kKicked, wire::Kicked{reason});
        stats_.evictions++;
        remove(id, reason, out);
    }
    return out;
}

}  // namespace pccl
