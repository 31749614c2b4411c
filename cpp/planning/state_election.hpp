// The master's decision for one shared-state sync, as a pure function of what the peers announced.
//
// How it decides (docs/shared_state.md has the user-facing rules):
// 1. Voters. Receive-only peers never vote. If any peer of the group already holds the group's state (it
//    completed a sync before: `synced`), only such peers vote, so a newcomer can never outvote, or tie with,
//    the peers that hold the state. Otherwise (the first sync of a group) every other peer votes.
// 2. Revisions. With a known group revision L, a voter announcing more than L + 1 is refused (it ran ahead).
//    Among the remaining voters the highest revision R is current; voters below R are behind and catch up.
// 3. Election. Current voters are grouped by content: the layout (names, dtypes, shapes, flags) and the
//    hash of every entry that is not marked tolerant. The largest group wins; a tie goes to the group holding
//    the most senior peer (admitted first). Its peers are the holders.
// 4. Verdicts. A peer whose layout differs from the winner's, and a send-only peer that is not a holder, is
//    refused with a reason. Every other peer takes part and fetches the entries whose hash differs from the
//    winner's; entries marked tolerant are fetched only by a peer that holds no state (its first sync, or
//    receive-only), whole, from the most senior holder.
// 5. Striping. A receiver's fetched entries, concatenated (tolerant ones first), form its stream; the stream
//    is cut into one contiguous range per holder (the most senior one also carries the tolerant prefix), so
//    every holder sends a share and each range travels over min(connections) of its two ends.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "wire/wire.hpp"

namespace pccl {

struct SyncPeer {
    uint64_t id = 0;
    uint64_t seniority = 0;  // admission order: smaller is older
    bool synced = false;     // completed a sync of this group before: holds the group's state
    uint32_t connections = 1;
    wire::PeerInfo info;
    wire::SyncStart start;
};

struct SyncDecision {
    uint64_t revision = 0;
    std::map<uint64_t, wire::SyncPlan> plans;  // every peer's plan; sync_id is left for the caller to fill
    std::vector<uint64_t> members;              // peers taking part (plan.ok)
    bool moves = false;                         // some bytes move: the sync needs a transfer phase
};

SyncDecision elect_state(const std::vector<SyncPeer>& peers, std::optional<uint64_t> group_revision);

}  // namespace pccl
