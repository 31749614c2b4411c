#include "master/state.hpp"

#include <algorithm>

#include "base/log.hpp"
#include "master/text.hpp"
#include "planning/keep_apart.hpp"

namespace pccl {

using wire::MsgType;
using namespace master_text;

std::string MasterState::describe(uint64_t id) const {
    auto it = conns_.find(id);
    const std::string name = (id & kTempId) ? "connection " + std::to_string(id & ~kTempId) : "peer " + std::to_string(id);
    if (it == conns_.end()) return name;
    return name + " (" + it->second.addr + ")";
}

std::string MasterState::describe_all(const std::vector<uint64_t>& ids) const {
    std::string s;
    for (size_t i = 0; i < ids.size(); i++) s += (i ? ", " : "") + describe(ids[i]);
    return s.empty() ? "none" : s;
}

std::vector<uint64_t> MasterState::group_missing(uint32_t group, const std::set<uint64_t>& present) const {
    std::vector<uint64_t> missing;
    for (uint64_t id : group_ring(group))
        if (!present.count(id)) missing.push_back(id);
    return missing;
}

uint32_t MasterState::pending_count() const {
    uint32_t n = 0;
    // Only newcomers a vote could admit now: one whose address is still being probed would make the others vote
    // without it, and vote again once it passed (are_peers_pending() in the README loop).
    for (const auto& [id, c] : conns_) n += admissible(c) ? 1 : 0;
    return n;
}

const std::vector<uint64_t>& MasterState::cached_ring(uint32_t group) const {
    auto hit = ring_cache_.find(group);
    if (hit != ring_cache_.end()) return hit->second;
    std::vector<std::pair<uint64_t, uint64_t>> order;  // (admitted_seq, id)
    for (const auto& [id, c] : conns_)
        if (c.accepted && c.group == group) order.emplace_back(c.admitted_seq, id);
    std::sort(order.begin(), order.end());
    std::vector<uint64_t> ids;
    for (auto& [seq, id] : order) ids.push_back(id);
    // Peers that accept no connections are kept apart where the group allows it (docs/nat.md): an edge between
    // two of them needs a relay.
    auto apart = [this](const std::vector<uint64_t>& ring) {
        return topology::keep_apart(ring, [this](uint64_t id) { return !conns_.at(id).info.inbound; });
    };
    auto solved = order_.find(group);
    if (solved == order_.end()) return ring_cache_[group] = apart(ids);
    // The order optimize_topology() chose, for the peers still here; peers admitted since follow it.
    const std::set<uint64_t> here(ids.begin(), ids.end());
    std::vector<uint64_t> ring;
    std::set<uint64_t> placed;
    for (uint64_t id : solved->second)
        if (here.count(id) && placed.insert(id).second) ring.push_back(id);
    for (uint64_t id : ids)
        if (placed.insert(id).second) ring.push_back(id);
    return ring_cache_[group] = apart(ring);
}

bool MasterState::group_syncing(uint32_t group) const {
    if (syncs_pending_.count(group)) return true;
    for (const auto& [id, sync] : syncs_running_)
        if (sync.group == group) return true;
    return false;
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
    now_ = now;
    if (born_ < 0) born_ = now;
    const uint64_t id = kTempId | conn;
    by_conn_[conn] = id;
    conn_of_[id] = conn;
    conns_[id] = c;
    return {};
}

MasterState::Actions MasterState::external(Actions out) {
    for (auto& a : out) {
        if (a.external) continue;
        auto it = conn_of_.find(a.conn);
        if (it != conn_of_.end()) a.conn = it->second;
        a.external = true;
    }
    for (auto [id, conn] : forget_) {  // unless the id went on to a new connection (a peer that reconnected)
        auto it = conn_of_.find(id);
        if (it != conn_of_.end() && it->second == conn) conn_of_.erase(it);
        auto c = by_conn_.find(conn);
        if (c != by_conn_.end() && c->second == id) by_conn_.erase(c);
    }
    forget_.clear();
    return out;
}

std::vector<MasterAction> MasterState::on_frame(uint64_t conn, uint16_t type, const std::vector<uint8_t>& payload,
                                                double now) {
    Actions out;
    const uint64_t id = internal(conn);
    auto it = conns_.find(id);
    if (it == conns_.end()) return out;
    it->second.last_seen = now;
    now_ = now;
    try {
        handle(id, it->second, type, payload, now, out);
    } catch (const CoreError& e) {
        drop(id, e.what(), out);
    }
    return external(std::move(out));
}

void MasterState::handle(uint64_t id, Conn& c, uint16_t type, const std::vector<uint8_t>& payload, double now,
                         Actions& out) {
    const auto t = MsgType(type);
    if (!c.hello && t != MsgType::kHello)
        throw CoreError(ErrorKind::kProtocol, "message type " + std::to_string(type) + " before HELLO");
    if (c.hello && !c.accepted && t != MsgType::kHeartbeat && t != MsgType::kLeave && t != MsgType::kPendingRequest)
        throw CoreError(ErrorKind::kProtocol, "message type " + std::to_string(type) + " from a peer not yet admitted");
    switch (t) {
        case MsgType::kHello: return on_hello(id, c, payload, now, out);
        case MsgType::kHeartbeat:
            send(out, id, MsgType::kHeartbeatAck, wire::HeartbeatAck{pending_count()});
            return;
        case MsgType::kPendingRequest:
            wire::decode_payload<wire::TopoRequest>(payload);
            send(out, id, MsgType::kPendingReply, wire::PendingReply{pending_count()});
            return;
        case MsgType::kLeave: {  // a peer that leaves is not lost to a partition: the fence stops counting it
            auto base = base_.find(c.group);
            if (base != base_.end()) std::erase(base->second, id);
            observed_.leaves++;
            return remove(id, describe(id) + " left", out);
        }
        case MsgType::kTopoRequest: return on_topo_request(id, c, payload, now, out);
        case MsgType::kOpStart: return on_op_start(id, c, payload, now, out);
        case MsgType::kSyncStart: return on_sync_start(id, c, payload, now, out);
        case MsgType::kOpDone: return on_op_done(id, payload, out);
        case MsgType::kOptStart: return on_opt_start(id, c, payload, now, out);
        case MsgType::kOptReport: return on_opt_report(id, payload, out);
        default:
            throw CoreError(ErrorKind::kProtocol, "unexpected message type " + std::to_string(type) + " at the master");
    }
}

void MasterState::on_hello(uint64_t id, Conn& c, const std::vector<uint8_t>& payload, double now, Actions& out) {
    if (c.hello) throw CoreError(ErrorKind::kProtocol, "second HELLO");
    auto m = wire::decode_payload<wire::Hello>(payload);
    if (m.connections == 0 || m.connections > 1024)
        throw CoreError(ErrorKind::kProtocol, "connection count " + std::to_string(m.connections));
    // A peer of this very master that reconnected before its old connection was noticed dead: that one goes
    // (its operations abort; the peer had failed them already), and the peer comes back as any returning one.
    const uint64_t old = m.back.peer_id;
    if (old && config_.epoch && m.back.epoch == config_.epoch && conns_.count(old) && conns_.at(old).hello) {
        remove(old, describe(old) + " reconnected: its old connection is dead", out);
        for (auto& a : out) {  // addressed now: the id moves to the new connection below
            auto cid = conn_of_.find(a.conn);
            if (!a.external && cid != conn_of_.end()) a.conn = cid->second;
            a.external = true;
        }
    }
    // The connection takes its peer id (state.hpp: kTempId); c moves with it.
    const uint64_t pid = choose_id(id, m.back);
    Conn& p = conns_[pid] = std::move(c);
    conns_.erase(id);
    const uint64_t conn = conn_of_.at(id);
    conn_of_.erase(id);
    conn_of_[pid] = conn;
    by_conn_[conn] = pid;
    p.hello = true;
    p.group = m.group;
    p.connections = m.connections;
    p.info = wire::PeerInfo{pid, m.host, m.port, uint8_t(m.port != 0)};
    p.back = std::move(m.back);
    if (m.standby) standby_groups_.insert(p.group);  // its group is fenced here too, from now on
    send(out, pid, MsgType::kWelcome, wire::Welcome{pid, config_.epoch, config_.relay_port});
    if (m.port == 0) {  // no data port at all (listen=None): nothing to probe
        if (config_.require_inbound) return refuse_outbound_only(pid, "it has no data port", out);
        log_info("master: " + describe(pid) + " has no data port: it dials all its connections (docs/nat.md)");
    } else if (config_.probe_addresses) {
        out.push_back(MasterAction{MasterAction::kProbe, pid, {}, {}, p.info});
        return;  // admitted once the probe succeeds (on_probe_result)
    }
    p.probed = true;
    if (p.back.peer_id) return on_returning(pid, p, now, out);
    try_complete_topology(out);
}

std::vector<MasterAction> MasterState::on_probe_result(uint64_t conn, bool reachable, const std::string& reason, double now) {
    Actions out;
    const uint64_t id = internal(conn);
    auto it = conns_.find(id);
    if (it == conns_.end() || it->second.accepted) return out;
    Conn& c = it->second;
    const std::string where = c.info.host + ":" + std::to_string(c.info.port);
    if (!reachable) {
        if (config_.require_inbound) {
            refuse_outbound_only(id, "the master could not connect to its data address " + where + " (" + reason + ")", out);
            return external(std::move(out));
        }
        c.info.inbound = 0;
        log_info("master: " + describe(id) + ": its data address " + where + " is unreachable (" + reason +
                 "); admitting it as a peer that dials all its connections (docs/nat.md)");
    }
    c.probed = true;
    if (c.back.peer_id) on_returning(id, c, now, out);
    else try_complete_topology(out);
    return external(std::move(out));
}

void MasterState::refuse_outbound_only(uint64_t id, const std::string& why, Actions& out) {
    wire::TopoResult refusal;
    refusal.kind = uint8_t(ErrorKind::kNetwork);
    refusal.reason = "this master requires every peer to accept connections (require_inbound), and " + why +
                     ": open that port to the other peers, or pass Communicator(advertise='host[:port]') with an "
                     "address they can reach";
    send(out, id, MsgType::kTopoResult, refusal);
    remove(id, describe(id) + " refused: " + why, out);
}

std::vector<uint64_t> MasterState::outbound_only() const {
    std::vector<uint64_t> ids;
    for (const auto& [id, c] : conns_)
        if (c.accepted && !c.info.inbound) ids.push_back(id);
    return ids;
}

uint64_t MasterState::relayed_edges() const {
    std::set<uint32_t> groups;
    for (const auto& [id, c] : conns_)
        if (c.accepted) groups.insert(c.group);
    uint64_t n = 0;
    for (uint32_t g : groups) {
        const auto& ring = cached_ring(g);
        if (ring.size() < 2) continue;
        for (size_t k = 0; k < ring.size(); k++) {
            if (ring.size() == 2 && k == 1) break;  // two peers: one edge
            n += !conns_.at(ring[k]).info.inbound && !conns_.at(ring[(k + 1) % ring.size()]).info.inbound;
        }
    }
    return n;
}

bool MasterState::group_in_collective(uint32_t group, uint64_t except) const {
    for (const auto& [id, c] : conns_)
        if (id != except && c.accepted && c.group == group && (!c.op_tags.empty() || c.in_sync || c.in_opt)) return true;
    return false;
}

void MasterState::answer_topology(uint64_t id, Conn& c, ErrorKind kind, const std::string& reason, Actions& out) {
    wire::TopoResult r;
    r.seq = c.topo_seq;
    for (const auto& [cid, other] : conns_) r.world_size += other.accepted ? 1 : 0;
    r.ring = ring_infos(group_ring(c.group));
    r.pending = pending_count();
    if (kind != ErrorKind(0)) {
        r.kind = uint8_t(kind);
        r.reason = reason;
    }
    send(out, id, MsgType::kTopoResult, r);
    c.in_topo = false;
}

void MasterState::Collective::add_starter(uint32_t timeout_ms, uint32_t starter_min_world, double now) {
    const double d = master_text::deadline_of(timeout_ms, now);
    if (d >= 0 && (deadline < 0 || d < deadline)) {
        deadline = d;
        timeout = timeout_ms / 1000.0;
    }
    if (starter_min_world > min_world) min_world = starter_min_world;
    if (first_start < 0) first_start = now;
}

void MasterState::enter_collective(Conn& c, const char* what, Actions& out) {
    if (c.in_collective()) throw CoreError(ErrorKind::kProtocol, std::string(what) + " with a collective in flight");
    release_topology(c.group, out);
}

void MasterState::release_topology(uint32_t group, Actions& out) {
    for (auto& [id, c] : conns_)
        if (c.accepted && c.in_topo && c.group == group) answer_topology(id, c, ErrorKind(0), "", out);
}

void MasterState::on_topo_request(uint64_t id, Conn& c, const std::vector<uint8_t>& payload, double now, Actions& out) {
    auto m = wire::decode_payload<wire::TopoRequest>(payload);
    if (c.in_collective())
        throw CoreError(ErrorKind::kProtocol, "update_topology with a collective in flight");
    c.in_topo = true;
    c.topo_seq = m.seq;
    c.topo_deadline = deadline_of(m.timeout_ms, now);
    c.topo_timeout = m.timeout_ms / 1000.0;
    c.topo_min_world = m.min_world;
    // Its group has moved on to a collective (this peer is a step behind, e.g. a newcomer's first call): the
    // vote cannot complete now; the peer goes on to that collective and takes part in a later vote.
    if (group_in_collective(c.group, id)) return answer_topology(id, c, ErrorKind(0), "", out);
    try_complete_topology(out);
}

void MasterState::on_op_start(uint64_t id, Conn& c, const std::vector<uint8_t>& payload, double now, Actions& out) {
    auto m = wire::decode_payload<wire::OpStart>(payload);
    auto key = std::make_pair(c.group, m.tag);
    auto op = ops_.find(key);
    if (op != ops_.end() && op->second.running) {  // refused for this peer only; the running op goes on
        send(out, id, MsgType::kOpReject,
             wire::OpReject{m.tag, uint8_t(ErrorKind::kInvalidArgument),
                            "tag " + std::to_string(m.tag) + " is already in flight in this group"});
        return;
    }
    if (c.in_topo || c.in_opt) throw CoreError(ErrorKind::kProtocol, "OP_START during update_topology");
    if (c.op_tags.count(m.tag)) throw CoreError(ErrorKind::kProtocol, "OP_START twice for one tag");
    if (c.op_tags.size() >= kMaxOpsInFlight) {  // refused for this call only: the master's memory stays bounded
        send(out, id, MsgType::kOpReject,
             wire::OpReject{m.tag, uint8_t(ErrorKind::kInvalidArgument),
                            "more than " + std::to_string(kMaxOpsInFlight) + " all-reduces in flight on this peer"});
        return;
    }
    const bool first = op == ops_.end();
    if (first) {
        op = ops_.emplace(key, Op{}).first;
        op->second.group = c.group;
        op->second.tag = m.tag;
    }
    c.op_tags.insert(m.tag);
    Op& o = op->second;
    o.started[id] = m.desc;
    o.add_starter(m.timeout_ms, m.min_world, now);
    // Peers still in update_topology() come to this operation instead (once: from now on the group is in a
    // collective, so a later TOPO_REQUEST of this group is answered at once).
    if (first) release_topology(c.group, out);
    if (opts_.count(c.group)) {  // others are in optimize_topology(): both fail
        check_opt_conflict(c.group, out);
        op = ops_.find(key);
        if (op == ops_.end()) return;
    }
    try_start(op, out);
}

void MasterState::on_op_done(uint64_t id, const std::vector<uint8_t>& payload, Actions& out) {
    auto m = wire::decode_payload<wire::OpDone>(payload);
    const ErrorKind failure = ErrorKind(m.kind ? m.kind : uint8_t(ErrorKind::kPeerLost));
    for (auto& [group, opt] : opts_) {  // a probe of optimize_topology() failed on this peer: it fails for all
        if (!opt.running || opt.id != m.op_id || m.ok) continue;
        if (std::find(opt.members.begin(), opt.members.end(), id) == opt.members.end()) return;
        return fail_opt(group, failure == ErrorKind::kInterrupted ? ErrorKind::kPeerLost : failure,
                        describe(id) + " reported: " + m.reason, out);
    }
    auto sync = syncs_running_.find(m.op_id);
    if (sync != syncs_running_.end()) {
        auto& members = sync->second.members;
        if (std::find(members.begin(), members.end(), id) == members.end()) return;
        if (!m.ok) return abort_sync(sync, failure, describe(id) + " reported: " + m.reason, out);
        sync->second.done.insert(id);
        if (sync->second.done.size() == members.size()) finish_sync(sync, out);
        return;
    }
    for (auto op = ops_.begin(); op != ops_.end(); ++op) {
        if (!op->second.running || op->second.id != m.op_id) continue;
        if (!op->second.member_set.count(id)) return;
        if (!m.ok) return fail_op(op, failure, describe(id) + " reported: " + m.reason, out);
        op->second.done.insert(id);
        if (op->second.done.size() == op->second.members.size()) finish_op(op, out);
        return;
    }
    // an operation already aborted: the report is stale
}

void MasterState::try_complete_topology(Actions& out) {
    size_t accepted = 0;
    for (const auto& [id, c] : conns_) {
        if (!c.accepted) continue;
        accepted++;
        if (!c.in_topo) return;  // someone is still computing: the vote waits
    }
    size_t ready = 0;
    std::map<uint32_t, uint32_t> group_size;  // each group's size once the ready newcomers are in
    for (const auto& [id, c] : conns_) {
        if (admissible(c)) ready++;
        if (c.accepted || admissible(c)) group_size[c.group]++;
    }
    if (accepted == 0 && ready == 0) return;
    if (accepted == 0 && young(now_)) return;  // returning peers first (rejoin_window; on_tick comes back)
    for (const auto& [id, c] : conns_)
        if (c.accepted && group_size[c.group] < c.topo_min_world) return;  // wait for newcomers (or the timeout)
    std::vector<uint64_t> newcomers;
    for (auto& [id, c] : conns_) {
        if (admissible(c)) {
            c.accepted = true;
            rings_changed();
            c.admitted_seq = next_admitted_++;
            observed_.admissions++;
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
        r.pending = pending_count();
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
    // Until every member has started, this costs O(1) per OP_START (no scan of the group per message).
    if (op.started.size() < cached_ring(op.group).size() && !group_syncing(op.group)) return;
    if (fenced(op.group)) return;  // given up at the next tick (recovery.cpp)
    const std::vector<uint64_t> ring = cached_ring(op.group);
    // A member inside sync_shared_state() can never start this operation: fail both now, whatever the ring order.
    for (uint64_t id : ring) {
        const Conn& m = conns_.at(id);
        if (m.in_sync) {
            const std::string why = describe(id) + " is in sync_shared_state() while others started " +
                                    op_title(op.started.begin()->second, op.tag) + kSameOrder;
            const uint32_t group = op.group;
            fail_op(it, ErrorKind::kMismatch, why, out);
            fail_pending_sync(group, ErrorKind::kMismatch, why, out);
            return;
        }
    }
    for (uint64_t id : ring)
        if (!op.started.count(id)) return;  // still waiting for this peer
    const auto& [first_id, first] = *op.started.begin();
    for (const auto& [id, d] : op.started) {
        if (d == first) continue;
        fail_op(it, ErrorKind::kMismatch,
                "peers started different operations for tag " + std::to_string(op.tag) + " (" +
                    desc_difference(first, d) + "): " + describe(first_id) + " has " + desc_text(first) + ", " +
                    describe(id) + " has " + desc_text(d),
                out);
        return;
    }
    if (OpKind(first.collective) == OpKind::kBroadcast && !std::count(ring.begin(), ring.end(), first.root)) {
        fail_op(it, ErrorKind::kPeerLost,
                op_title(first, op.tag) + ": its root, peer " + std::to_string(first.root) +
                    ", is not in the group (it left or was lost; the group is " + describe_all(ring) +
                    "): call update_topology() and choose a root of the group",
                out);
        return;
    }
    if (ring.size() < op.min_world) {
        fail_op(it, ErrorKind::kTooFewPeers,
                op_title(first, op.tag) + " needs at least " + std::to_string(op.min_world) +
                    " peers (min_world_size) and the group has " + std::to_string(ring.size()) + ": " + describe_all(ring),
                out);
        return;
    }
    op.running = true;
    op.id = next_op_id_++;
    op.began = now_;
    op.bytes = first.count * dtype_size(DType(first.dtype));
    observed_.ops_started++;
    op.members = ring;
    op.member_set.insert(ring.begin(), ring.end());
    std::set<uint32_t> taken;
    for (const auto& [key, other] : ops_)
        if (other.running && other.group == op.group && &other != &op) taken.insert(other.slot);
    while (taken.count(op.slot)) op.slot++;
    uint32_t stripes = 1024;
    for (uint64_t id : ring) stripes = std::min(stripes, conns_.at(id).connections);
    // Two frames at most, encoded once: with the ring for peers that have not got this epoch, without for the rest.
    wire::OpGo go{op.tag, op.id, stripes, {}, op.slot, ring_epoch_};
    const std::vector<uint8_t> short_go = wire::frame(MsgType::kOpGo, go);
    std::vector<uint8_t> full_go;
    for (uint64_t id : ring) {
        Conn& m = conns_.at(id);
        if (m.ring_epoch_sent == ring_epoch_) {
            out.push_back(MasterAction{MasterAction::kSend, id, short_go, {}});
            continue;
        }
        if (full_go.empty()) {
            go.ring = ring_infos(ring);
            full_go = wire::frame(MsgType::kOpGo, go);
        }
        out.push_back(MasterAction{MasterAction::kSend, id, full_go, {}});
        m.ring_epoch_sent = ring_epoch_;
    }
}

void MasterState::finish_op(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, Actions& out) {
    for (uint64_t id : it->second.members) {
        send(out, id, MsgType::kOpCommit, wire::OpCommit{it->second.id});
        conns_.at(id).op_tags.erase(it->second.tag);
    }
    stats_.ops_committed++;
    observe_end(it->second, "committed", ErrorKind(0), "");
    remember_verdict(it->second.id, true);
    base_[it->second.group] = it->second.members;
    ops_.erase(it);
}

void MasterState::fail_op(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, ErrorKind kind,
                          const std::string& reason, Actions& out) {
    Op& op = it->second;
    if (op.running) {
        for (uint64_t id : op.members) {
            if (!conns_.count(id)) continue;
            send(out, id, MsgType::kOpAbort, wire::OpAbort{op.id, uint8_t(kind), reason});
            conns_.at(id).op_tags.erase(op.tag);
        }
        stats_.ops_aborted++;
        observe_end(op, "aborted", kind, reason);
        remember_verdict(op.id, false);
    } else {
        for (const auto& [id, d] : op.started) {
            if (!conns_.count(id)) continue;
            send(out, id, MsgType::kOpReject, wire::OpReject{op.tag, uint8_t(kind), reason});
            conns_.at(id).op_tags.erase(op.tag);
        }
        stats_.ops_rejected++;
        observe_end(op, "rejected", kind, reason);
    }
    ops_.erase(it);
}

}  // namespace pccl
