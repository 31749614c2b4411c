// The master's side of peers going away and of time passing: removing a peer (and failing what it took part
// in: operations, syncs, optimize_topology(); its link measurements go with it), dropped connections,
// disconnects, evictions after peer_timeout, and waits whose timeout expired (master/state.hpp has the rules).
#include <algorithm>

#include "master/state.hpp"
#include "master/text.hpp"

namespace pccl {

using wire::MsgType;
using namespace master_text;

void MasterState::remove(uint64_t id, const std::string& reason, Actions& out) {
    auto it = conns_.find(id);
    if (it == conns_.end()) return;
    const uint32_t group = it->second.group;
    const bool was_accepted = it->second.accepted;
    const bool was_held = it->second.held;
    conns_.erase(it);
    forget_.emplace_back(id, conn_of_.count(id) ? conn_of_.at(id) : 0);
    rings_changed();
    out.push_back(MasterAction{MasterAction::kClose, id, {}, reason});
    if (was_held) {  // a group nobody waits for any more is no longer held (newcomers may form it afresh)
        bool others = false;
        for (const auto& [cid, c] : conns_) others |= c.held && c.group == group;
        if (!others && recovering_.erase(group)) try_complete_topology(out);  // its newcomers may go in now
    }
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
    for (auto l = links_.begin(); l != links_.end();) {  // a peer that leaves takes its edges with it
        if (l->first.first == id || l->first.second == id) l = links_.erase(l);
        else ++l;
    }
    stats_.links_known = links_.size();
    auto opt = opts_.find(group);
    if (opt != opts_.end()) {
        auto& m = opt->second.members;
        if (opt->second.running && std::find(m.begin(), m.end(), id) != m.end()) {
            fail_opt(group, ErrorKind::kPeerLost, "peer " + std::to_string(id) + " lost during optimize_topology(): " + reason, out);
        } else if (!opt->second.running) {
            opt->second.started.erase(id);
            try_start_opt(group, out);  // the group shrank: the others may be complete now
        }
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

std::vector<MasterAction> MasterState::on_disconnect(uint64_t conn, const std::string& reason, double now) {
    (void)now;
    Actions out;
    const uint64_t id = internal(conn);
    auto it = conns_.find(id);
    if (it == conns_.end()) return out;
    if (!it->second.hello) {
        drop(id, "disconnected before HELLO: " + reason, out);
    } else {
        remove(id, describe(id) + " disconnected: " + reason, out);
    }
    return external(std::move(out));
}

std::vector<MasterAction> MasterState::on_bad_frame(uint64_t conn, const std::string& reason, double now) {
    (void)now;
    Actions out;
    const uint64_t id = internal(conn);
    if (conns_.count(id)) drop(id, reason, out);
    return external(std::move(out));
}

void MasterState::expire_waits(double now, Actions& out) {
    for (auto op = ops_.begin(); op != ops_.end();) {
        auto cur = op++;
        const Op& o = cur->second;
        if (o.running || o.deadline < 0 || now < o.deadline) continue;
        std::set<uint64_t> present;
        for (const auto& [id, d] : o.started) present.insert(id);
        fail_op(cur, ErrorKind::kTimeout,
                op_title(o.started.begin()->second, o.tag) + " timed out after " + seconds_text(o.timeout) +
                    ": these peers did not start it: " + describe_all(group_missing(o.group, present)),
                out);
    }
    std::vector<uint32_t> late_syncs;
    for (const auto& [group, sync] : syncs_pending_)
        if (sync.deadline >= 0 && now >= sync.deadline) late_syncs.push_back(group);
    for (uint32_t group : late_syncs) {
        const Sync& sync = syncs_pending_.at(group);
        std::set<uint64_t> present;
        for (const auto& [id, st] : sync.started) present.insert(id);
        fail_pending_sync(group, ErrorKind::kTimeout,
                          "sync_shared_state() timed out after " + seconds_text(sync.timeout) +
                              ": these peers did not call it: " + describe_all(group_missing(group, present)),
                          out);
    }
    std::vector<uint32_t> late_opts;
    for (const auto& [group, opt] : opts_)
        if (!opt.running && opt.deadline >= 0 && now >= opt.deadline) late_opts.push_back(group);
    for (uint32_t group : late_opts) {
        const Optimize& opt = opts_.at(group);
        fail_opt(group, ErrorKind::kTimeout,
                 "optimize_topology() timed out after " + seconds_text(opt.timeout) +
                     ": these peers did not call it: " + describe_all(group_missing(group, opt.started)),
                 out);
    }
    for (auto& [id, c] : conns_) {
        if (!c.in_topo || c.topo_deadline < 0 || now < c.topo_deadline) continue;
        std::vector<uint64_t> absent;
        for (const auto& [oid, other] : conns_)
            if (other.accepted && !other.in_topo) absent.push_back(oid);
        std::string why = "update_topology() timed out after " + seconds_text(c.topo_timeout) + ": ";
        why += absent.empty() ? "the group stayed smaller than min_world_size (" + std::to_string(c.topo_min_world) +
                                    " peers) and no newcomer arrived"
                              : "these peers did not call it: " + describe_all(absent);
        answer_topology(id, c, ErrorKind::kTimeout, why, out);
    }
}

std::vector<MasterAction> MasterState::on_tick(double now) {
    Actions out;
    now_ = now;
    if (born_ < 0) born_ = now;
    if (!grown_ && !young(now)) {  // newcomers held by rejoin_window go in now
        grown_ = true;
        try_complete_topology(out);
    }
    expire_waits(now, out);
    std::vector<uint32_t> recovering;
    for (const auto& [group, r] : recovering_) recovering.push_back(group);
    for (uint32_t group : recovering) try_form(group, now, out);  // stragglers waited for long enough
    give_up_fenced(out);
    std::vector<std::pair<uint64_t, std::string>> victims;
    for (const auto& [id, c] : conns_) {
        if (!c.hello && now - c.since > config_.handshake_timeout)
            victims.emplace_back(id, "no HELLO within " + seconds_text(config_.handshake_timeout));
        else if (c.hello && now - c.last_seen > config_.peer_timeout)
            victims.emplace_back(id, "");
    }
    for (auto& [id, why] : victims) {
        if (!why.empty()) {
            drop(id, why, out);
            continue;
        }
        const std::string reason =
            describe(id) + " was silent for more than " + seconds_text(config_.peer_timeout) + " and was evicted";
        send(out, id, MsgType::kKicked, wire::Kicked{reason});
        stats_.evictions++;
        remove(id, reason, out);
    }
    return external(std::move(out));
}

}  // namespace pccl
