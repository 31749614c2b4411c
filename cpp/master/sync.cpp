// The master's shared-state syncs: collecting SYNC_START, the election (state_election.hpp), the plans, the
// commit or abort, and the refusal when every holder of a group's state is gone (master/state.hpp explains
// the rules).
#include "master/state.hpp"

#include <algorithm>

#include "master/text.hpp"
#include "planning/state_election.hpp"

namespace pccl {

using wire::MsgType;
using master_text::kSameOrder;
using master_text::op_title;

void MasterState::on_sync_start(uint64_t id, Conn& c, const std::vector<uint8_t>& payload, double now, Actions& out) {
    auto m = wire::decode_payload<wire::SyncStart>(payload);
    enter_collective(c, "SYNC_START", out);
    c.in_sync = true;
    auto& sync = syncs_pending_[c.group];
    sync.group = c.group;
    sync.add_starter(m.timeout_ms, m.min_world, now);
    sync.started[id] = std::move(m);
    // Operations that wait for this peer, which now waits for them: both fail, on every peer.
    std::string conflict;
    for (auto op = ops_.begin(); op != ops_.end();) {
        auto cur = op++;
        if (cur->second.group != c.group || cur->second.running) continue;
        conflict = describe(id) + " called sync_shared_state() while others started " +
                   op_title(cur->second.started.begin()->second, cur->second.tag) + kSameOrder;
        fail_op(cur, ErrorKind::kMismatch, conflict, out);
    }
    if (!conflict.empty()) fail_pending_sync(c.group, ErrorKind::kMismatch, conflict, out);
    else if (opts_.count(c.group)) check_opt_conflict(c.group, out);  // others are in optimize_topology()
    if (syncs_pending_.count(c.group)) try_start_sync(c.group, out);
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
        if (!m.op_tags.empty()) {
            fail_pending_sync(group, ErrorKind::kMismatch,
                              describe(id) + " is in a collective (all_reduce, broadcast, ...) while others called sync_shared_state()" + kSameOrder, out);
            return;
        }
    }
    for (uint64_t id : ring)
        if (!it->second.started.count(id)) return;  // still waiting for this peer
    if (fenced(group)) return;  // given up at the next tick (recovery.cpp)
    if (ring.size() < it->second.min_world) {
        fail_pending_sync(group, ErrorKind::kTooFewPeers,
                          "sync_shared_state() needs at least " + std::to_string(it->second.min_world) +
                              " peers (min_world_size) and the group has " + std::to_string(ring.size()) + ": " +
                              describe_all(ring),
                          out);
        return;
    }
    std::vector<SyncPeer> peers;
    bool state_exists = false, offered = false;
    for (uint64_t id : ring) {
        const Conn& m = conns_.at(id);
        const auto& start = it->second.started[id];
        peers.push_back(SyncPeer{id, m.admitted_seq, m.synced, m.connections, m.info, start});
        state_exists |= m.synced;
        offered |= start.strategy == uint8_t(wire::SyncStrategy::kSendOnly);
    }
    auto rev = group_revision_.find(group);
    if (!state_exists && rev != group_revision_.end()) {
        // Every peer that held the group's state is gone. Starting over from whatever the newcomers hold would
        // silently lose the model: refuse, unless a send-only peer offers the state (a checkpoint); then only
        // send-only peers vote.
        if (!offered) {
            fail_pending_sync(group, ErrorKind::kSharedState,
                              "the group's shared state is lost: no peer that held it remains (the last committed "
                              "revision was " + std::to_string(rev->second) + "). Resume from a checkpoint: one "
                              "peer calls sync_shared_state(state, strategy='send_only')",
                              out);
            return;
        }
        for (auto& p : peers) p.synced = p.start.strategy == uint8_t(wire::SyncStrategy::kSendOnly);
    }
    const double first_start = it->second.first_start;
    syncs_pending_.erase(it);
    std::optional<uint64_t> last;
    if (state_exists && rev != group_revision_.end()) last = rev->second;
    SyncDecision d = elect_state(peers, last);
    Sync sync;
    sync.group = group;
    sync.id = next_op_id_++;
    sync.revision = d.revision;
    sync.members = d.members;
    sync.began = now_;
    sync.first_start = first_start;
    std::map<uint64_t, const std::vector<wire::StateEntry>*> entries_of;  // each peer's announced entries
    for (const auto& p : peers) entries_of[p.id] = &p.start.entries;
    for (auto& [id, plan] : d.plans) {
        plan.sync_id = sync.id;
        const auto* entries = entries_of.count(id) ? entries_of.at(id) : nullptr;
        for (uint32_t e : plan.fetch)  // what moves: the bytes of each entry this peer fetches
            if (entries && e < entries->size()) sync.bytes += (*entries)[e].nbytes;
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

void MasterState::fail_pending_sync(uint32_t group, ErrorKind kind, const std::string& reason, Actions& out) {
    auto it = syncs_pending_.find(group);
    if (it == syncs_pending_.end()) return;
    for (const auto& [id, start] : it->second.started) {
        if (!conns_.count(id)) continue;
        wire::SyncPlan plan;
        plan.ok = 0;
        plan.kind = uint8_t(kind);
        plan.reason = reason;
        send(out, id, MsgType::kSyncPlan, plan);
        conns_.at(id).in_sync = false;
    }
    stats_.syncs_aborted++;
    observe_sync_end(it->second, "rejected", kind, reason);
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
    // The fence counts from the peers of the last commit that they confirmed. A sync that moves nothing commits
    // with its plan, before anyone answers: its members may include a peer whose connection is already gone
    // (its SYNC_START came first), so it re-counts nothing. Else a partition that removes two peers one by one
    // could commit such a sync between the two removals and leave the second a majority of three.
    if (announced) base_[sync.group] = sync.members;
    stats_.syncs_committed++;
    observe_sync_end(sync, "committed", ErrorKind(0), "");
    GroupObserved& g = observed_.groups[sync.group];
    g.syncs++;
    g.sync_bytes += sync.bytes;
    g.last_sync_at = now_;
    g.last_sync_bytes = sync.bytes;
    g.last_sync_revision = sync.revision;
    remember_verdict(sync.id, true);
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
    observe_sync_end(it->second, "aborted", kind, reason);
    remember_verdict(it->second.id, false);
    syncs_running_.erase(it);
}


}  // namespace pccl
