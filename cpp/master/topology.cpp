// The master's side of optimize_topology(): collecting OPT_START, planning the probes of the edges it has no
// measurement for, collecting what the receivers measured, solving for the ring order (ring_order.hpp) and
// answering every member; aborting on a lost member or a conflicting collective (master/state.hpp has the rules).
//
// How the probes are planned. With the members m[0..n-1] in ring order, round r (1 <= r < n) is the shift
// m[k] -> m[(k + r) mod n] for every k: every ordered pair appears in exactly one round, and in a round every
// peer sends one probe and receives one, so probes of a round never share a sender's or a receiver's link.
// Pairs already measured are left out, and so are pairs of peers that both accept no connections (docs/nat.md);
// rounds left empty are dropped: after a join only the newcomer's 2(n - 1) edges are probed.
#include <algorithm>

#include "master/state.hpp"
#include "master/text.hpp"
#include "planning/keep_apart.hpp"
#include "planning/ring_order.hpp"

namespace pccl {

using wire::MsgType;
using master_text::kSameOrder;
using master_text::seconds_text;

namespace {
constexpr uint32_t kProbeMs = 1000;  // the longest a probe may take; a stable estimate ends it sooner
}

void MasterState::on_opt_start(uint64_t id, Conn& c, const std::vector<uint8_t>& payload, double now, Actions& out) {
    auto m = wire::decode_payload<wire::TopoRequest>(payload);
    enter_collective(c, "OPT_START", out);
    c.in_opt = true;
    c.opt_seq = m.seq;
    auto& opt = opts_[c.group];
    opt.group = c.group;
    opt.add_starter(m.timeout_ms, m.min_world, now);
    opt.started.insert(id);
    check_opt_conflict(c.group, out);
    try_start_opt(c.group, out);
}

void MasterState::check_opt_conflict(uint32_t group, Actions& out) {
    auto it = opts_.find(group);
    if (it == opts_.end() || it->second.running || it->second.started.empty()) return;
    for (uint64_t id : group_ring(group)) {
        const Conn& m = conns_.at(id);
        if (m.op_tags.empty() && !m.in_sync) continue;
        const std::string why = describe(id) + (m.in_sync ? " called sync_shared_state()" : " started a collective (all_reduce, broadcast, ...)") +
                                " while others called optimize_topology()" + kSameOrder;
        for (auto op = ops_.begin(); op != ops_.end();) {
            auto cur = op++;
            if (cur->second.group == group && !cur->second.running) fail_op(cur, ErrorKind::kMismatch, why, out);
        }
        if (syncs_pending_.count(group)) fail_pending_sync(group, ErrorKind::kMismatch, why, out);
        fail_opt(group, ErrorKind::kMismatch, why, out);
        return;
    }
}

void MasterState::try_start_opt(uint32_t group, Actions& out) {
    auto it = opts_.find(group);
    if (it == opts_.end() || it->second.running) return;
    Optimize& opt = it->second;
    if (opt.started.empty()) {
        opts_.erase(it);
        return;
    }
    const auto ring = group_ring(group);
    for (uint64_t id : ring)
        if (!opt.started.count(id)) return;  // still waiting for this peer
    if (ring.size() < opt.min_world)
        return fail_opt(group, ErrorKind::kTooFewPeers,
                        "optimize_topology() needs at least " + std::to_string(opt.min_world) +
                            " peers (min_world_size) and the group has " + std::to_string(ring.size()),
                        out);
    opt.members = ring;
    const size_t n = ring.size();
    std::vector<std::vector<wire::ProbeRound>> plans(n);
    for (size_t r = 1; r < n; r++) {
        bool any = false;
        std::vector<wire::ProbeRound> round(n);
        for (size_t k = 0; k < n; k++) {
            const size_t to = (k + r) % n;
            if (links_.count({ring[k], ring[to]})) continue;
            // Between two peers that accept no connections a probe would measure a relay: the solver avoids
            // those edges anyway (finish_opt), so they are not probed.
            if (!conns_.at(ring[k]).info.inbound && !conns_.at(ring[to]).info.inbound) continue;
            round[k].send_to = conns_.at(ring[to]).info;
            round[to].recv_from = ring[k];
            opt.probes++;
            any = true;
        }
        if (!any) continue;
        for (size_t k = 0; k < n; k++) plans[k].push_back(round[k]);
    }
    if (opt.probes == 0) return finish_opt(group, out);  // every edge is known: solve now
    opt.running = true;
    opt.id = next_op_id_++;
    for (size_t k = 0; k < n; k++) {
        Conn& c = conns_.at(ring[k]);
        send(out, ring[k], MsgType::kOptPlan, wire::OptPlan{opt.id, c.opt_seq, kProbeMs, plans[k]});
    }
}

void MasterState::on_opt_report(uint64_t id, const std::vector<uint8_t>& payload, Actions& out) {
    auto m = wire::decode_payload<wire::OptReport>(payload);
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    auto opt = opts_.find(it->second.group);
    if (opt == opts_.end() || !opt->second.running || opt->second.id != m.opt_id) return;  // stale
    auto& members = opt->second.members;
    if (std::find(members.begin(), members.end(), id) == members.end()) return;
    for (const auto& l : m.links) {
        // A peer reports what it received; a measurement of another pair, or of a non-member, is ignored.
        if (l.to != id || l.from == id || std::find(members.begin(), members.end(), l.from) == members.end()) continue;
        links_[{l.from, l.to}] = Measure{l.bandwidth, l.rtt_us};
    }
    opt->second.done.insert(id);
    if (opt->second.done.size() == members.size()) finish_opt(opt->second.group, out);
}

void MasterState::finish_opt(uint32_t group, Actions& out) {
    auto it = opts_.find(group);
    if (it == opts_.end()) return;
    Optimize opt = std::move(it->second);
    opts_.erase(it);
    const auto ring = group_ring(group);
    const size_t n = ring.size();
    topology::LinkMatrix mx;
    mx.n = n;
    mx.bandwidth.assign(n * n, 0.0);
    mx.latency.assign(n * n, 0.0);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            auto l = links_.find({ring[i], ring[j]});
            if (i == j || l == links_.end()) continue;
            mx.bandwidth[i * n + j] = double(l->second.bandwidth);
            mx.latency[i * n + j] = l->second.rtt_us / 2e6;  // one way, roughly
        }
    // An edge between two peers that accept no connections goes through a relay: the solver avoids those
    // where the group allows it, and uses the fewest otherwise (docs/nat.md).
    std::vector<bool> outbound_only(n);
    for (size_t i = 0; i < n; i++) outbound_only[i] = !conns_.at(ring[i]).info.inbound;
    topology::discourage_unreachable_edges(mx, outbound_only);
    std::vector<uint32_t> current(n);
    for (size_t i = 0; i < n; i++) current[i] = uint32_t(i);
    std::vector<uint64_t> order;
    for (uint32_t k : topology::best_ring(mx, current)) order.push_back(ring[k]);
    order_[group] = order;
    rings_changed();
    stats_.optimizations++;
    stats_.links_probed += opt.probes;
    stats_.links_known = links_.size();
    uint32_t world = 0;
    for (const auto& [cid, c] : conns_) world += c.accepted ? 1 : 0;
    for (uint64_t id : ring) {
        Conn& c = conns_.at(id);
        if (!c.in_opt) continue;
        wire::TopoResult r;
        r.seq = c.opt_seq;
        r.world_size = world;
        r.ring = ring_infos(order);
        r.pending = pending_count();
        send(out, id, MsgType::kTopoResult, r);
        c.in_opt = false;
    }
}

void MasterState::fail_opt(uint32_t group, ErrorKind kind, const std::string& reason, Actions& out) {
    auto it = opts_.find(group);
    if (it == opts_.end()) return;
    Optimize opt = std::move(it->second);
    opts_.erase(it);
    for (auto& [id, c] : conns_) {
        if (!c.in_opt || c.group != group) continue;
        if (opt.running) send(out, id, MsgType::kOpAbort, wire::OpAbort{opt.id, uint8_t(kind), reason});
        wire::TopoResult r;
        r.seq = c.opt_seq;
        r.ring = ring_infos(group_ring(group));
        r.kind = uint8_t(kind);
        r.reason = reason;
        send(out, id, MsgType::kTopoResult, r);
        c.in_opt = false;
    }
}

}  // namespace pccl
