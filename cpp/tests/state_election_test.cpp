// The shared-state election (planning/state_election.hpp) as a pure function: who votes, which content wins,
// who is refused and why, what each peer fetches, and how a receiver's bytes are striped over the holders.
//
// How this works. peer() builds a SyncPeer announcing entries e0, e1, ... (400 bytes each unless given) with
// the given hashes; elect_state() runs on a handful of them; the checks read the plans. tiles() checks the
// striping contract on a receiver's plan: its recvs cover [0, bytes of its fetched entries) without gap or
// overlap, and each range has exactly one matching send in the holder's plan with the same fetch list.
// tests/test_master_election.py checks the same rules through the bindings; docs/shared_state.md states them.
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "planning/state_election.hpp"
#include "tests/check.hpp"

using pccl::elect_state;
using pccl::ErrorKind;
using pccl::SyncDecision;
using pccl::SyncPeer;
using pccl::wire::SyncStrategy;

namespace {

constexpr uint8_t kF32 = 10;  // DType::kFloat32's code

struct Spec {
    uint64_t revision = 1;
    SyncStrategy strategy = SyncStrategy::kEnforcePopular;
    bool synced = false;
    uint64_t seniority = 0;  // 0: the id
    uint32_t connections = 1;
    std::vector<uint64_t> sizes = {};     // bytes per entry (400 each when empty)
    std::vector<uint32_t> tolerate = {};  // entries marked allow_content_inequality
};

SyncPeer peer(uint64_t id, const std::vector<uint64_t>& hashes, Spec s = {}) {
    SyncPeer p;
    p.id = id;
    p.seniority = s.seniority ? s.seniority : id;
    p.synced = s.synced;
    p.connections = s.connections;
    p.info = pccl::wire::PeerInfo{id, "10.0.0." + std::to_string(id), uint16_t(9000 + id)};
    p.start.revision = s.revision;
    p.start.strategy = uint8_t(s.strategy);
    for (size_t i = 0; i < hashes.size(); i++) {
        pccl::wire::StateEntry e;
        e.name = "e" + std::to_string(i);
        e.dtype = kF32;
        e.nbytes = s.sizes.empty() ? 400 : s.sizes[i];
        e.shape = {e.nbytes / 4};
        e.hash = hashes[i];
        e.tolerate = std::count(s.tolerate.begin(), s.tolerate.end(), uint32_t(i)) ? 1 : 0;
        p.start.entries.push_back(e);
    }
    return p;
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

// The bytes each holder sends `receiver`, after checking that its recvs tile its stream and match the sends.
std::map<uint64_t, uint64_t> tiles(const SyncDecision& d, uint64_t receiver, const std::vector<SyncPeer>& peers) {
    const auto& plan = d.plans.at(receiver);
    pccl::wire::PeerInfo receiver_info;
    for (const auto& p : peers)
        if (p.id == receiver) receiver_info = p.info;
    uint64_t stream = 0;
    const auto& layout = peers.front().start.entries;
    for (uint32_t i : plan.fetch) stream += layout.at(i).nbytes;
    auto recvs = plan.recvs;
    std::sort(recvs.begin(), recvs.end(), [](const auto& a, const auto& b) { return a.begin < b.begin; });
    std::map<uint64_t, uint64_t> shares;
    uint64_t at = 0;
    for (const auto& r : recvs) {
        CHECK_EQ(r.begin, at);
        CHECK(r.end > r.begin);
        at = r.end;
        shares[r.from] += r.end - r.begin;
        size_t matching = 0;
        for (const auto& s : d.plans.at(r.from).sends) {
            if (s.to.id != receiver) continue;
            matching++;
            CHECK_EQ(s.begin, r.begin);
            CHECK_EQ(s.end, r.end);
            CHECK_EQ(s.stripes, r.stripes);
            CHECK_EQ(s.fetch, plan.fetch);
            CHECK(s.to == receiver_info);
        }
        CHECK_EQ(matching, size_t(1));
    }
    CHECK_EQ(at, stream);
    return shares;
}

using Ids = std::vector<uint64_t>;
using Fetch = std::vector<uint32_t>;
using Hashes = std::vector<uint64_t>;

}  // namespace

TEST(equal_state_moves_nothing) {
    const auto d = elect_state({peer(1, {1, 2}), peer(2, {1, 2})}, std::nullopt);
    CHECK(!d.moves);
    CHECK_EQ(d.members, (Ids{1, 2}));
    for (const auto& [id, plan] : d.plans) {
        CHECK(plan.ok);
        CHECK(plan.fetch.empty() && plan.sends.empty() && plan.recvs.empty());
        CHECK_EQ(plan.revision, uint64_t(1));
    }
}

TEST(a_newcomer_receives_from_every_holder) {
    const std::vector<SyncPeer> peers{peer(1, {1, 2}, {.synced = true}), peer(2, {1, 2}, {.synced = true}),
                                      peer(3, {5, 6}, {.revision = 0})};
    const auto d = elect_state(peers, 1);
    CHECK(d.moves);
    CHECK_EQ(d.revision, uint64_t(1));
    CHECK_EQ(d.members, (Ids{1, 2, 3}));
    const auto& p3 = d.plans.at(3);
    CHECK(p3.ok);
    CHECK_EQ(p3.fetch, (Fetch{0, 1}));
    CHECK_EQ(p3.expect, (Hashes{1, 2}));
    CHECK_EQ(tiles(d, 3, peers), (std::map<uint64_t, uint64_t>{{1, 400}, {2, 400}}));
    CHECK(d.plans.at(1).fetch.empty() && d.plans.at(2).fetch.empty());
    CHECK(d.plans.at(1).recvs.empty() && d.plans.at(2).recvs.empty());
}

TEST(holders_outvote_newcomers_whatever_their_number_or_revision) {
    for (uint64_t newcomer_revision : {1, 2, 50}) {
        const std::vector<SyncPeer> peers{peer(1, {1}, {.synced = true, .seniority = 9}),
                                          peer(2, {2}, {.revision = newcomer_revision, .seniority = 1})};
        const auto d = elect_state(peers, 1);
        CHECK(d.plans.at(2).ok);
        CHECK_EQ(d.plans.at(2).fetch, (Fetch{0}));
        CHECK_EQ(d.revision, uint64_t(1));
    }
    std::vector<SyncPeer> peers{peer(1, {1}, {.synced = true})};
    for (uint64_t id : {2, 3, 4}) peers.push_back(peer(id, {2}));
    const auto d = elect_state(peers, 1);
    for (uint64_t id : {2, 3, 4}) {
        CHECK_EQ(d.plans.at(id).fetch, (Fetch{0}));
        CHECK_EQ(d.plans.at(id).expect, (Hashes{1}));
        CHECK_EQ(tiles(d, id, peers), (std::map<uint64_t, uint64_t>{{1, 400}}));
    }
    CHECK_EQ(d.plans.at(1).sends.size(), size_t(3));
}

TEST(the_most_popular_content_wins_and_the_minority_fetches_only_what_differs) {
    const std::vector<SyncPeer> peers{peer(1, {1, 2, 3}), peer(2, {1, 2, 3}), peer(3, {1, 9, 3})};
    const auto d = elect_state(peers, std::nullopt);
    CHECK_EQ(d.members, (Ids{1, 2, 3}));
    CHECK_EQ(d.plans.at(3).fetch, (Fetch{1}));
    CHECK_EQ(d.plans.at(3).expect, (Hashes{2}));
    CHECK_EQ(tiles(d, 3, peers), (std::map<uint64_t, uint64_t>{{1, 200}, {2, 200}}));
    // Three against two, listed minority first.
    const auto e = elect_state({peer(1, {7}), peer(2, {7}), peer(3, {8}), peer(4, {8}), peer(5, {8})}, std::nullopt);
    CHECK_EQ(e.plans.at(1).fetch, (Fetch{0}));
    CHECK_EQ(e.plans.at(1).expect, (Hashes{8}));
    CHECK(e.plans.at(5).fetch.empty());
}

TEST(a_tie_goes_to_the_most_senior_holder) {
    const auto d = elect_state({peer(5, {7}, {.seniority = 2}), peer(6, {8}, {.seniority = 1})}, std::nullopt);
    CHECK_EQ(d.plans.at(5).fetch, (Fetch{0}));
    CHECK_EQ(d.plans.at(5).expect, (Hashes{8}));
    CHECK(d.plans.at(6).fetch.empty());
}

TEST(a_revision_advances_by_one_at_most) {
    // Behind catches up, even with identical content.
    auto d = elect_state({peer(1, {1}, {.revision = 5, .synced = true}), peer(2, {1}, {.revision = 4, .synced = true})}, 4);
    CHECK_EQ(d.revision, uint64_t(5));
    CHECK(d.plans.at(2).ok);
    CHECK(d.plans.at(2).fetch.empty());
    CHECK_EQ(d.plans.at(2).revision, uint64_t(5));
    // One ahead is the current revision: it wins against a majority that stayed behind.
    d = elect_state({peer(1, {9}, {.revision = 5, .synced = true}), peer(2, {1}, {.revision = 4, .synced = true}),
                     peer(3, {1}, {.revision = 4, .synced = true})},
                    4);
    CHECK_EQ(d.revision, uint64_t(5));
    CHECK_EQ(d.plans.at(2).fetch, (Fetch{0}));
    CHECK_EQ(d.plans.at(3).expect, (Hashes{9}));
    // More than one ahead is refused; the rest go on.
    d = elect_state({peer(1, {9}, {.revision = 6, .synced = true}), peer(2, {1}, {.revision = 5, .synced = true}),
                     peer(3, {1}, {.revision = 5, .synced = true})},
                    4);
    CHECK(!d.plans.at(1).ok);
    CHECK_EQ(d.plans.at(1).kind, uint8_t(ErrorKind::kSharedState));
    CHECK(contains(d.plans.at(1).reason, "ahead of the group's revision 4 by more than one"));
    CHECK_EQ(d.members, (Ids{2, 3}));
    CHECK_EQ(d.revision, uint64_t(5));
    // Without peers holding state (a new group) there is no rule to break.
    d = elect_state({peer(1, {1}, {.revision = 100}), peer(2, {1}, {.revision = 3})}, 4);
    CHECK_EQ(d.revision, uint64_t(100));
    CHECK_EQ(d.members, (Ids{1, 2}));
}

TEST(receive_only_peers_never_vote) {
    const std::vector<SyncPeer> peers{peer(1, {1}), peer(2, {2}, {.strategy = SyncStrategy::kReceiveOnly}),
                                      peer(3, {2}, {.strategy = SyncStrategy::kReceiveOnly})};
    const auto d = elect_state(peers, std::nullopt);
    CHECK_EQ(d.plans.at(2).fetch, (Fetch{0}));
    CHECK_EQ(d.plans.at(3).fetch, (Fetch{0}));
    CHECK_EQ(d.plans.at(3).expect, (Hashes{1}));
    CHECK(d.plans.at(1).fetch.empty());
}

TEST(send_only_must_win) {
    auto d = elect_state({peer(1, {1}, {.strategy = SyncStrategy::kSendOnly}), peer(2, {2}), peer(3, {2})}, std::nullopt);
    CHECK(!d.plans.at(1).ok);
    CHECK(contains(d.plans.at(1).reason, "lost the election"));
    CHECK_EQ(d.members, (Ids{2, 3}));
    CHECK(!d.moves);
    // A tie it wins by seniority.
    d = elect_state({peer(1, {1}, {.strategy = SyncStrategy::kSendOnly}), peer(2, {2})}, std::nullopt);
    CHECK(d.plans.at(1).ok);
    CHECK_EQ(d.plans.at(2).fetch, (Fetch{0}));
    // A send-only peer that has not synced with a group holding state.
    d = elect_state({peer(1, {1}, {.synced = true}), peer(2, {1}, {.strategy = SyncStrategy::kSendOnly})}, 1);
    CHECK(!d.plans.at(2).ok);
    CHECK(contains(d.plans.at(2).reason, "has not synced with the group yet"));
    // A send-only peer behind the group's revision.
    d = elect_state({peer(1, {1}, {.revision = 3, .synced = true}),
                     peer(2, {1}, {.revision = 2, .strategy = SyncStrategy::kSendOnly, .synced = true})},
                    2);
    CHECK(!d.plans.at(2).ok);
    CHECK(contains(d.plans.at(2).reason, "its revision 2 is behind the group's 3"));
}

TEST(nobody_left_to_hold_the_state_refuses_everyone) {
    // Every peer receive-only.
    auto d = elect_state({peer(1, {1}, {.strategy = SyncStrategy::kReceiveOnly}),
                          peer(2, {1}, {.strategy = SyncStrategy::kReceiveOnly})},
                         std::nullopt);
    CHECK(d.members.empty());
    CHECK(!d.moves);
    for (const auto& [id, plan] : d.plans) {
        CHECK(!plan.ok);
        CHECK_EQ(plan.kind, uint8_t(ErrorKind::kSharedState));
        CHECK(contains(plan.reason, "no peer of the group offers state"));
    }
    // The only holder is refused (it ran ahead) and newcomers do not vote: nobody offers state.
    d = elect_state({peer(1, {1}, {.revision = 9, .synced = true}), peer(2, {2})}, 1);
    CHECK(d.members.empty());
    CHECK(!d.plans.at(1).ok && !d.plans.at(2).ok);
    CHECK(contains(d.plans.at(1).reason, "ahead"));
    CHECK(contains(d.plans.at(2).reason, "no peer of the group offers state"));
}

TEST(a_different_layout_refuses_that_peer_with_the_difference) {
    struct Case {
        SyncPeer bad;
        std::string needle;
    };
    SyncPeer wrong_dtype = peer(3, {1, 2});
    wrong_dtype.start.entries[1].dtype = 11;
    SyncPeer renamed = peer(3, {1, 2});
    renamed.start.entries[1].name = "z";
    const std::vector<Case> cases{
        {peer(3, {1}), "lacks entry 'e1'"},
        {peer(3, {1, 2}, {.sizes = {200, 400}}), "entry 'e0' has shape (50,)"},
        {peer(3, {1, 2}, {.tolerate = {0}}), "marked allow_content_inequality"},
        {wrong_dtype, "entry 'e1' has dtype code 11"},
        {renamed, "lacks entry 'e1'"},
    };
    for (const auto& c : cases) {
        const auto d = elect_state({peer(1, {1, 2}), peer(2, {1, 2}), c.bad}, std::nullopt);
        CHECK(!d.plans.at(3).ok);
        CHECK_EQ(d.plans.at(3).kind, uint8_t(ErrorKind::kSharedState));
        if (!contains(d.plans.at(3).reason, c.needle)) CHECK_EQ(d.plans.at(3).reason, c.needle);
        CHECK_EQ(d.members, (Ids{1, 2}));
    }
}

TEST(tolerant_entries_go_whole_from_the_senior_holder_to_peers_without_state_only) {
    // Entry 1 (800 bytes) may differ between holders. Three holders; peer 4 holds state but lost the election
    // (its entry 0 differs); peer 5 is new.
    const Spec holder{.synced = true, .sizes = {400, 800}, .tolerate = {1}};
    const std::vector<SyncPeer> peers{peer(1, {1, 5}, holder), peer(2, {1, 6}, holder), peer(3, {1, 7}, holder),
                                      peer(4, {9, 8}, holder), peer(5, {0, 0}, {.sizes = {400, 800}, .tolerate = {1}})};
    const auto d = elect_state(peers, 1);
    for (uint64_t id : {1, 2, 3}) CHECK(d.plans.at(id).fetch.empty());  // holders keep their own
    CHECK_EQ(d.plans.at(4).fetch, (Fetch{0}));  // what differs, not the tolerant entry it holds
    CHECK_EQ(d.plans.at(4).expect, (Hashes{1}));
    const auto& p5 = d.plans.at(5);
    CHECK_EQ(p5.fetch, (Fetch{1, 0}));  // tolerant first
    CHECK_EQ(p5.expect, (Hashes{5, 1}));  // the senior holder's hash
    const auto shares = tiles(d, 5, peers);
    CHECK(shares.count(1) && shares.at(1) >= 800);  // the senior holder carries the whole tolerant entry
    CHECK_EQ(shares.size(), size_t(3));             // and the others share the rest
}

TEST(striping_uses_every_holder_and_the_smaller_connection_count) {
    std::vector<SyncPeer> peers;
    for (uint64_t id : {1, 2, 3, 4}) peers.push_back(peer(id, {1}, {.connections = 8, .sizes = {1 << 20}}));
    peers.push_back(peer(5, {0}, {.connections = 2, .sizes = {1 << 20}}));
    const auto d = elect_state(peers, std::nullopt);
    const auto shares = tiles(d, 5, peers);
    CHECK_EQ(shares.size(), size_t(4));
    uint64_t lo = ~uint64_t(0), hi = 0;
    for (const auto& [id, bytes] : shares) {
        lo = std::min(lo, bytes);
        hi = std::max(hi, bytes);
    }
    CHECK(hi - lo <= 1);
    for (const auto& r : d.plans.at(5).recvs) CHECK_EQ(r.stripes, 2u);
}
