#include "planning/state_election.hpp"

#include <algorithm>

#include "base/error.hpp"

namespace pccl {

namespace {

using wire::StateEntry;
using wire::SyncStrategy;

bool same_layout(const std::vector<StateEntry>& a, const std::vector<StateEntry>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); i++)
        if (a[i].name != b[i].name || a[i].dtype != b[i].dtype || a[i].shape != b[i].shape ||
            a[i].nbytes != b[i].nbytes || a[i].tolerate != b[i].tolerate)
            return false;
    return true;
}

std::string shape_text(const std::vector<uint64_t>& s) {
    std::string t = "(";
    for (size_t i = 0; i < s.size(); i++) t += (i ? ", " : "") + std::to_string(s[i]);
    return t + (s.size() == 1 ? ",)" : ")");
}

// The first difference between a peer's layout and the group's, for the error message.
std::string layout_difference(const std::vector<StateEntry>& mine, const std::vector<StateEntry>& group) {
    for (const auto& g : group) {
        auto it = std::find_if(mine.begin(), mine.end(), [&](const StateEntry& e) { return e.name == g.name; });
        if (it == mine.end()) return "it lacks entry '" + g.name + "'";
        if (it->dtype != g.dtype)
            return "entry '" + g.name + "' has dtype code " + std::to_string(it->dtype) + ", the group's has " +
                   std::to_string(g.dtype);
        if (it->shape != g.shape)
            return "entry '" + g.name + "' has shape " + shape_text(it->shape) + ", the group's has " +
                   shape_text(g.shape);
        if (it->tolerate != g.tolerate)
            return "entry '" + g.name + "' is " + (it->tolerate ? "" : "not ") +
                   "marked allow_content_inequality, unlike the group's";
        if (it->nbytes != g.nbytes) return "entry '" + g.name + "' has a different byte size";
    }
    for (const auto& e : mine)
        if (std::none_of(group.begin(), group.end(), [&](const StateEntry& g) { return g.name == e.name; }))
            return "it has entry '" + e.name + "', which the group does not";
    return "the entry order differs";
}

// What an election compares: the layout and the hashes of the entries that must be equal.
std::vector<uint64_t> content_key(const std::vector<StateEntry>& entries) {
    std::vector<uint64_t> key;
    for (const auto& e : entries) key.push_back(e.tolerate ? 0 : e.hash);
    return key;
}

void refuse(wire::SyncPlan& plan, const std::string& why) {
    plan.ok = 0;
    plan.kind = uint8_t(ErrorKind::kSharedState);
    plan.reason = why;
}

}  // namespace

SyncDecision elect_state(const std::vector<SyncPeer>& peers, std::optional<uint64_t> group_revision) {
    SyncDecision d;
    for (const auto& p : peers) d.plans[p.id];
    const bool state_exists = std::any_of(peers.begin(), peers.end(), [](const SyncPeer& p) { return p.synced; });
    auto strategy = [](const SyncPeer& p) { return SyncStrategy(p.start.strategy); };

    // 1-2. Voters, and the revision rule.
    std::vector<const SyncPeer*> voters;
    for (const auto& p : peers) {
        if (strategy(p) == SyncStrategy::kReceiveOnly || (state_exists && !p.synced)) continue;
        if (state_exists && group_revision && p.start.revision > *group_revision + 1) {
            refuse(d.plans[p.id], "revision " + std::to_string(p.start.revision) + " is ahead of the group's revision " +
                                      std::to_string(*group_revision) +
                                      " by more than one: a peer may advance its state by one revision between syncs");
            continue;
        }
        voters.push_back(&p);
    }
    if (voters.empty()) {
        for (const auto& p : peers)
            if (d.plans[p.id].ok)
                refuse(d.plans[p.id], "no peer of the group offers state to sync from: every peer is receive-only or "
                                      "refused");
        return d;
    }
    uint64_t R = 0;
    for (auto* v : voters) R = std::max(R, v->start.revision);

    // 3. Election among the current voters: most holders, then the most senior holder.
    struct Candidate {
        std::vector<uint64_t> key;
        std::vector<const SyncPeer*> holders;
    };
    std::vector<Candidate> candidates;
    for (auto* v : voters) {
        if (v->start.revision != R) continue;
        auto key = content_key(v->start.entries);
        auto it = std::find_if(candidates.begin(), candidates.end(), [&](const Candidate& c) {
            return c.key == key && same_layout(c.holders[0]->start.entries, v->start.entries);
        });
        if (it == candidates.end()) candidates.push_back(Candidate{key, {v}});
        else it->holders.push_back(v);
    }
    for (auto& c : candidates)
        std::sort(c.holders.begin(), c.holders.end(), [](auto* a, auto* b) { return a->seniority < b->seniority; });
    auto best = std::min_element(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
        if (a.holders.size() != b.holders.size()) return a.holders.size() > b.holders.size();
        return a.holders[0]->seniority < b.holders[0]->seniority;
    });
    const auto& holders = best->holders;
    const auto& layout = holders[0]->start.entries;
    d.revision = R;

    // 4. Verdicts and fetch lists.
    std::map<uint64_t, bool> is_holder;
    for (auto* h : holders) is_holder[h->id] = true;
    for (const auto& p : peers) {
        auto& plan = d.plans[p.id];
        if (!plan.ok) continue;
        plan.revision = R;
        if (!same_layout(p.start.entries, layout)) {
            refuse(plan, "its shared state does not match the group's: " + layout_difference(p.start.entries, layout) +
                             " (names, dtypes, shapes and flags must be equal on every peer)");
            continue;
        }
        if (strategy(p) == SyncStrategy::kSendOnly && !is_holder[p.id]) {
            refuse(plan, std::string("send_only, but this peer does not hold the group's state: ") +
                             (state_exists && !p.synced ? "it has not synced with the group yet"
                              : p.start.revision != R  ? "its revision " + std::to_string(p.start.revision) +
                                                             " is behind the group's " + std::to_string(R)
                                                       : "its content lost the election to the majority"));
            continue;
        }
        d.members.push_back(p.id);
        const bool holds_none = strategy(p) == SyncStrategy::kReceiveOnly || (state_exists && !p.synced);
        std::vector<uint32_t> tolerant, strict;
        for (uint32_t i = 0; i < layout.size(); i++) {
            if (layout[i].nbytes == 0) continue;
            if (layout[i].tolerate) {
                if (holds_none && !is_holder[p.id]) tolerant.push_back(i);
            } else if (p.start.entries[i].hash != layout[i].hash) {
                strict.push_back(i);
            }
        }
        plan.fetch = tolerant;
        plan.fetch.insert(plan.fetch.end(), strict.begin(), strict.end());
        for (uint32_t i : plan.fetch) plan.expect.push_back(layout[i].hash);  // tolerant: the senior holder's

        // 5. Striping over the holders.
        if (plan.fetch.empty()) continue;
        uint64_t prefix = 0, total = 0;
        for (uint32_t i : tolerant) prefix += layout[i].nbytes;
        for (uint32_t i : plan.fetch) total += layout[i].nbytes;
        const uint64_t H = holders.size();
        std::vector<uint64_t> cut(H + 1, total);
        cut[0] = 0;
        cut[1] = std::max(prefix, total / H);
        for (uint64_t k = 2; k < H; k++) cut[k] = cut[1] + (total - cut[1]) * (k - 1) / (H - 1);
        for (uint64_t k = 0; k < H; k++) {
            if (cut[k + 1] <= cut[k]) continue;
            const SyncPeer* h = holders[k];
            const uint32_t stripes = std::max<uint32_t>(1, std::min(h->connections, p.connections));
            d.plans[h->id].sends.push_back(wire::SyncSend{p.info, plan.fetch, cut[k], cut[k + 1], stripes});
            plan.recvs.push_back(wire::SyncRecv{h->id, cut[k], cut[k + 1], stripes});
            d.moves = true;
        }
    }
    return d;
}

}  // namespace pccl
