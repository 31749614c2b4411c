// A master taking a run over: a restarted master, or a standby the peers came to (docs/master.md). It holds
// nothing on disk; the run comes back with its peers.
//
// How it works:
// - Ids. A returning peer keeps its peer id when no one here holds it; a newcomer gets its connection number
//   unless that is taken or appears in a ring some returning peer reported (then the next unused number).
//   Operation ids start at epoch << 16 (state.hpp), so no id of this master is one an earlier master gave.
// - The fence. A group with no accepted peer here is held while its returning peers come back: they say
//   WELCOME-d and heartbeat, but are not admitted, and no newcomer of the group is. It is formed when the
//   returning peers are a strict majority of the union of the rings they reported, or exactly half of it with
//   the ring's smallest id among them (so two halves of a partition never both form it), counted by the ids
//   they had; with a majority back it waits up to kStragglerWait for the rest. A young master (rejoin_window)
//   admits no newcomer into an empty group, so that a restart's returning peers come first. Two masters can then
//   never both take one group over; docs/master.md says what this does not cover (an old master that is still
//   alive and keeps a minority).
// - Forming. Every returning peer held for the group is accepted at once, in the reported ring order, and told
//   so (TOPO_RESULT with seq 0, as at admission). The operations they report in doubt (done, no verdict) get
//   OP_COMMIT if any of them reports it committed, else OP_ABORT: the old master committed only after every
//   member reported done, so a commit anywhere means every member holds the result, and no commit anywhere
//   means aborting is what every member can still do. The state: those at the highest committed revision (an
//   in-doubt sync that commits counts at its revision) hold it, and the group's revision is that one.
// - The fence on a master that runs the group. Once any peer of a group said it knows another master
//   (HELLO.standby: the others may be cut off from it and go there), a group
//   whose ring holds no majority of the peers of its last commit (those that left gracefully not counted) starts
//   nothing and is given up at the next tick: its peers are told KICKED(elsewhere) and look for another master.
//   Peers that shrink a group one commit at a time keep it; a partition that cuts the master from most of a
//   group cannot leave it running beside a standby that took the majority. Without a standby nothing changes:
//   a lone master keeps its groups whatever they lose.
// - Late returners (the group is already formed here) rejoin as newcomers: admitted at the next vote, holders
//   of the state only if they are at the group's committed revision (or it has none here) and committed
//   nothing the group aborted; their in-doubt operations get the verdict the group got, or an abort. A peer
//   of this very master (same epoch) that reconnects replaces its dead connection first; the master's own
//   verdicts are remembered for it (verdicts_).
#include <algorithm>
#include <optional>

#include "base/log.hpp"
#include "master/state.hpp"

namespace pccl {

using wire::MsgType;

bool MasterState::quorum(const std::set<uint64_t>& back, const std::vector<uint64_t>& known) {
    if (known.empty()) return true;
    size_t k = 0;
    for (uint64_t p : known) k += back.count(p);
    const uint64_t smallest = *std::min_element(known.begin(), known.end());
    return 2 * k > known.size() || (2 * k == known.size() && back.count(smallest));
}

bool MasterState::fenced(uint32_t group) const {
    auto base = base_.find(group);
    if (base == base_.end() || !standby_groups_.count(group)) return false;
    const auto& ring = cached_ring(group);
    return !quorum(std::set<uint64_t>(ring.begin(), ring.end()), base->second);
}

void MasterState::give_up_fenced(Actions& out) {
    std::vector<uint32_t> groups;
    for (const auto& [group, base] : base_)
        if (fenced(group)) groups.push_back(group);
    for (uint32_t group : groups) {
        const std::vector<uint64_t> ring = cached_ring(group);
        const std::string why = "this master keeps " + std::to_string(ring.size()) + " of the " +
                                std::to_string(base_.at(group).size()) + " peers of the group's last commit, no " +
                                "majority: the others may run on with another master (the split-brain fence)";
        log_warn("master: group " + std::to_string(group) + " given up: " + why);
        for (uint64_t id : ring) {
            send(out, id, MsgType::kKicked, wire::Kicked{why, 1});
            remove(id, describe(id) + " let go: " + why, out);
        }
        base_.erase(group);
        stats_.fenced++;
    }
}

uint64_t MasterState::choose_id(uint64_t id, const wire::Returning& back) {
    for (uint64_t r : back.ring) {
        reserved_.insert(r);
        next_fresh_ = std::max(next_fresh_, r + 1);
    }
    const auto free = [&](uint64_t p) { return p != 0 && !(p & kTempId) && !conns_.count(p); };
    uint64_t pid;
    if (back.peer_id && free(back.peer_id)) {
        pid = back.peer_id;
    } else {
        const uint64_t conn = conn_of_.at(id);
        pid = free(conn) && !reserved_.count(conn) ? conn : next_fresh_;
        while (!free(pid) || reserved_.count(pid)) pid++;
    }
    next_fresh_ = std::max(next_fresh_, pid + 1);
    return pid;
}

void MasterState::send_verdicts(uint64_t id, const std::vector<uint64_t>& in_doubt, Actions& out) {
    for (uint64_t op : in_doubt) {
        auto v = verdicts_.find(op);
        if (v != verdicts_.end() && v->second) {
            send(out, id, MsgType::kOpCommit, wire::OpCommit{op});
        } else {
            send(out, id, MsgType::kOpAbort,
                 wire::OpAbort{op, uint8_t(ErrorKind::kPeerLost),
                               "the master was lost before this operation's verdict reached every peer; it is "
                               "aborted on every peer"});
        }
    }
}

void MasterState::on_returning(uint64_t id, Conn& c, double now, Actions& out) {
    bool formed = false;
    for (const auto& [oid, o] : conns_) formed |= o.accepted && o.group == c.group;
    if (!formed) {
        Recovery& r = recovering_[c.group];
        for (uint64_t p : c.back.ring)
            if (std::find(r.known.begin(), r.known.end(), p) == r.known.end()) r.known.push_back(p);
        const uint64_t was = c.back.peer_id;  // the fence counts the ids peers had
        if (std::find(r.known.begin(), r.known.end(), was) == r.known.end()) r.known.push_back(was);
        c.held = true;
        return try_form(c.group, now, out);
    }
    // The group went on here without it: a newcomer, holding the state at the group's revision (or when the
    // group has no committed state here: it was started by newcomers while this peer was on its way).
    auto rev = group_revision_.find(c.group);
    c.synced = c.back.synced && (rev == group_revision_.end() || rev->second == c.back.revision);
    for (uint64_t op : c.back.committed) {  // it committed what the group aborted: its state went its own way
        auto v = verdicts_.find(op);
        if (v != verdicts_.end() && !v->second) c.synced = false;
    }
    log_info("master: " + describe(id) + " came back after its group was taken over: a newcomer" +
             (c.synced ? " holding the state" : ""));
    send_verdicts(id, c.back.in_doubt, out);
    c.back = {};
    try_complete_topology(out);
}

void MasterState::try_form(uint32_t group, double now, Actions& out) {
    auto rec = recovering_.find(group);
    if (rec == recovering_.end()) return;
    const std::vector<uint64_t> known = rec->second.known;  // a copy: the entry goes once the group is formed
    // Counted by the ids they had (a peer whose id was taken here has a new one).
    std::map<uint64_t, uint64_t> back;  // old id -> id here
    for (const auto& [id, c] : conns_)
        if (c.held && c.group == group) back[c.back.peer_id] = id;
    size_t k = 0;
    for (uint64_t p : known) k += back.count(p);
    std::set<uint64_t> returned;
    for (const auto& [old, id] : back) returned.insert(old);
    if (!quorum(returned, known)) {
        rec->second.majority_at = -1;
        return;
    }
    if (k < known.size()) {  // a majority: the rest gets kStragglerWait to come back too
        if (rec->second.majority_at < 0) rec->second.majority_at = now;
        if (now - rec->second.majority_at < kStragglerWait) return;
    }

    std::set<uint64_t> committed;
    for (const auto& [was, id] : back)
        for (uint64_t op : conns_.at(id).back.committed) committed.insert(op);
    for (const auto& [was, id] : back)
        for (uint64_t op : conns_.at(id).back.in_doubt) verdicts_[op] = committed.count(op) > 0;
    std::string verdicts;
    for (const auto& [was, id] : back)
        for (uint64_t op : conns_.at(id).back.in_doubt) verdicts += " " + std::to_string(op) + (verdicts_[op] ? ":commit" : ":abort");
    // Each one's committed state after the verdicts; the group's is the highest revision held.
    std::map<uint64_t, std::pair<bool, uint64_t>> held;  // id here -> (synced, revision)
    std::optional<uint64_t> revision;
    for (const auto& [was, id] : back) {
        const wire::Returning& b = conns_.at(id).back;
        bool synced = b.synced;
        uint64_t rev = b.revision;
        if (b.doubt_sync && verdicts_[b.doubt_sync]) {
            synced = true;
            rev = b.doubt_revision;
        }
        held[id] = {synced, rev};
        if (synced && (!revision || rev > *revision)) revision = rev;
    }
    std::vector<uint64_t> order;  // the old ring order (a held peer not in it: after)
    for (uint64_t p : known)
        if (back.count(p)) order.push_back(back.at(p));
    for (const auto& [was, id] : back)
        if (std::find(order.begin(), order.end(), id) == order.end()) order.push_back(id);
    for (uint64_t id : order) {
        Conn& c = conns_.at(id);
        c.held = false;
        c.accepted = true;
        c.admitted_seq = next_admitted_++;
        c.synced = revision && held[id].first && held[id].second == *revision;
        send_verdicts(id, c.back.in_doubt, out);
        c.back = {};
    }
    if (revision) group_revision_[group] = *revision;
    order_[group] = order;
    base_[group] = order;
    recovering_.erase(rec);
    rings_changed();
    uint32_t world = 0;
    for (const auto& [id, c] : conns_) world += c.accepted ? 1 : 0;
    stats_.peers_accepted = world;
    stats_.takeovers++;
    log_info("master: group " + std::to_string(group) + " taken over: " + describe_all(order) + " of " +
             std::to_string(known.size()) + " known; revision " + (revision ? std::to_string(*revision) : "none") +
             "; in doubt:" + (verdicts.empty() ? " none" : verdicts));
    for (uint64_t id : order) {
        wire::TopoResult r;
        r.world_size = world;
        r.ring = ring_infos(group_ring(group));
        r.pending = pending_count();
        send(out, id, MsgType::kTopoResult, r);
    }
}

}  // namespace pccl
