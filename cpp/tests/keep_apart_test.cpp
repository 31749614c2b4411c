// Keeping unreachable peers apart (planning/keep_apart.hpp).
//
// How this works. keep_apart() runs on every ring of up to 8 peers (every order of up to 7, every ring of 8 up
// to rotation) and every subset of them unreachable: the result must be a permutation of the ring with exactly
// fewest_unreachable_neighbours() pairs, keep both kinds in their given order, start with ring[0], spread the
// unreachable peers evenly, and be the ring itself when that already had the fewest; no input ring may have
// fewer than that fewest (so it is the true minimum). discourage_unreachable_edges() then feeds best_ring()
// seeded random matrices (3 to 10 peers: the exact solver; 16 to 24: the heuristic): no unreachable neighbours
// when at most half are unreachable, exactly the fewest when more are, and no change at all when every peer is
// reachable.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "planning/keep_apart.hpp"
#include "tests/check.hpp"
#include "tests/rng.hpp"

using namespace pccl::topology;
using Ids = std::vector<uint64_t>;

namespace {

using pccl::testing::Rng;

IsUnreachable among(const Ids& ids) {
    return [ids](uint64_t p) { return std::find(ids.begin(), ids.end(), p) != ids.end(); };
}

// Runs of unreachable peers between consecutive reachable ones, cyclically (none without a reachable peer).
std::vector<size_t> blocks(const Ids& ring, const IsUnreachable& unreachable) {
    std::vector<size_t> out;
    const size_t n = ring.size();
    size_t first = 0;
    while (first < n && unreachable(ring[first])) first++;
    for (size_t k = 1; first < n && k <= n; k++) {
        if (!unreachable(ring[(first + k) % n])) out.push_back(0);
        else if (out.empty()) out.push_back(1);
        else out.back()++;
        if (k == n) out.pop_back();  // back at `first`: its own (empty) block is not one
    }
    return out;
}

}  // namespace

TEST(fewest_unreachable_neighbours_by_hand) {
    CHECK_EQ(fewest_unreachable_neighbours(0, 0), size_t(0));
    CHECK_EQ(fewest_unreachable_neighbours(1, 1), size_t(0));
    CHECK_EQ(fewest_unreachable_neighbours(2, 1), size_t(0));
    CHECK_EQ(fewest_unreachable_neighbours(2, 2), size_t(1));
    CHECK_EQ(fewest_unreachable_neighbours(3, 2), size_t(1));
    CHECK_EQ(fewest_unreachable_neighbours(3, 3), size_t(3));
    CHECK_EQ(fewest_unreachable_neighbours(4, 2), size_t(0));
    CHECK_EQ(fewest_unreachable_neighbours(4, 3), size_t(2));
    CHECK_EQ(fewest_unreachable_neighbours(7, 4), size_t(1));
    CHECK_EQ(fewest_unreachable_neighbours(24, 12), size_t(0));
    CHECK_EQ(fewest_unreachable_neighbours(24, 15), size_t(6));
    CHECK_THROWS_KIND(fewest_unreachable_neighbours(3, 4), kInvalidArgument);
}

TEST(unreachable_neighbours_by_hand) {
    CHECK_EQ(unreachable_neighbours({}, among({})), size_t(0));
    CHECK_EQ(unreachable_neighbours({7}, among({7})), size_t(0));
    CHECK_EQ(unreachable_neighbours({7, 9}, among({7, 9})), size_t(1));  // one pair, both ways round
    CHECK_EQ(unreachable_neighbours({7, 9}, among({9})), size_t(0));
    CHECK_EQ(unreachable_neighbours({1, 2, 3, 4}, among({3, 4})), size_t(1));
    CHECK_EQ(unreachable_neighbours({1, 2, 3, 4}, among({4, 1})), size_t(1));  // cyclic: 4 -> 1
    CHECK_EQ(unreachable_neighbours({1, 3, 2, 4}, among({3, 4})), size_t(0));
    CHECK_EQ(unreachable_neighbours({1, 2, 3}, among({1, 2, 3})), size_t(3));
}

TEST(named_examples) {
    CHECK_EQ(keep_apart({1, 2, 3, 4}, among({3, 4})), (Ids{1, 3, 2, 4}));
    CHECK_EQ(keep_apart({1, 2, 3, 4, 5, 6}, among({4, 5, 6})), (Ids{1, 4, 2, 5, 3, 6}));
    CHECK_EQ(keep_apart({5, 6, 1, 2}, among({5, 6})), (Ids{5, 1, 6, 2}));  // an unreachable ring[0] stays first
    CHECK_EQ(keep_apart({1, 2, 3, 4, 5, 6, 7}, among({4, 5, 6, 7})), (Ids{1, 4, 5, 2, 6, 3, 7}));  // 1 pair
    CHECK_EQ(keep_apart({9, 8, 7, 6, 5, 4, 3, 2}, among({9, 8, 7})), (Ids{9, 6, 8, 5, 4, 7, 3, 2}));
    // Already the fewest: unchanged, though keep_apart would have built another order.
    CHECK_EQ(keep_apart({3, 1, 4, 2}, among({3, 4})), (Ids{3, 1, 4, 2}));
    CHECK_EQ(keep_apart({1, 2, 3, 4, 5}, among({2, 3, 4, 5})), (Ids{1, 2, 3, 4, 5}));  // 3 pairs at best
    CHECK_EQ(keep_apart({4, 1, 2, 3, 5}, among({2, 3, 4, 5})), (Ids{4, 1, 2, 3, 5}));
    CHECK_EQ(keep_apart({1, 2}, among({1, 2})), (Ids{1, 2}));
    CHECK_EQ(keep_apart({}, among({})), Ids{});
}

// Every order of up to 7 peers, and every ring of 8 up to rotation (ring[0] fixed: 8x fewer, and what depends on
// ring[0], reachable or not, is still covered by the subsets), with every subset of the peers unreachable.
TEST(every_ring_of_up_to_8_peers_and_every_unreachable_subset) {
    size_t cases = 0;
    for (size_t n = 0; n <= 8; n++) {
        Ids ring(n);
        std::iota(ring.begin(), ring.end(), uint64_t(100));  // ids 100 ..: not positions
        do {
            for (uint32_t mask = 0; mask < (uint32_t(1) << n); mask++) {
                const IsUnreachable unreachable = [mask](uint64_t p) { return (mask >> (p - 100) & 1) != 0; };
                const size_t u = size_t(__builtin_popcount(mask)), fewest = fewest_unreachable_neighbours(n, u);
                const size_t before = unreachable_neighbours(ring, unreachable);
                const Ids out = keep_apart(ring, unreachable);
                // A permutation that keeps both relative orders: walking `ring`, each kind's next peer in `out`.
                bool ok = out.size() == n && before >= fewest && (out == ring) == (before == fewest) &&
                          (n == 0 || out[0] == ring[0]);
                size_t next[2] = {0, 0};
                for (size_t k = 0; ok && k < n; k++) {
                    const bool kind = unreachable(ring[k]);
                    while (next[kind] < n && unreachable(out[next[kind]]) != kind) next[kind]++;
                    ok = next[kind] < n && out[next[kind]] == ring[k];
                    next[kind]++;
                }
                if (ok && out != ring) {  // built: the fewest, stable, the blocks' sizes differ by at most one
                    const auto sizes = blocks(out, unreachable);
                    ok = unreachable_neighbours(out, unreachable) == fewest && keep_apart(out, unreachable) == out &&
                         !sizes.empty() && *std::max_element(sizes.begin(), sizes.end()) <=
                                               *std::min_element(sizes.begin(), sizes.end()) + 1;
                }
                if (!ok) {
                    FAIL("keep_apart(" + pccl::check::show(ring) + ", mask " + std::to_string(mask) + ") = " +
                         pccl::check::show(out));
                    return;
                }
                cases++;
            }
        } while (std::next_permutation(ring.begin() + (n == 8 ? 1 : 0), ring.end()));
    }
    CHECK_EQ(cases, size_t(1'985'723));  // sum over n <= 7 of n! 2^n, and 7! 2^8
}

namespace {
LinkMatrix random_matrix(Rng& rng, size_t n, bool levels) {
    LinkMatrix m{n, std::vector<double>(n * n, 0.0), std::vector<double>(n * n, 0.0)};
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            if (i != j) {
                m.bandwidth[i * n + j] = levels ? double(1 + rng.below(3)) * 1e8 : 1e7 + double(rng.below(1000)) * 1e6;
                m.latency[i * n + j] = 1e-4 + double(rng.below(500)) * 1e-4;
            }
    return m;
}

// best_ring on m with u random peers unreachable (their edges unmeasured, 0, in every other case): the ring's
// unreachable neighbours.
size_t solved(Rng& rng, size_t n, size_t u, int trial) {
    LinkMatrix m = random_matrix(rng, n, trial % 3 == 0);
    std::vector<uint32_t> admission(n);
    std::iota(admission.begin(), admission.end(), 0u);
    for (size_t i = n; i > 1; i--) std::swap(admission[i - 1], admission[rng.below(uint32_t(i))]);
    std::vector<uint32_t> pick = admission;  // u peers at random
    for (size_t i = n; i > 1; i--) std::swap(pick[i - 1], pick[rng.below(uint32_t(i))]);
    std::vector<bool> flags(n, false);
    for (size_t k = 0; k < u; k++) flags[pick[k]] = true;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            if (i != j && flags[i] && flags[j] && trial % 2) m.bandwidth[i * n + j] = 0;
    const LinkMatrix before = m;
    discourage_unreachable_edges(m, flags);
    const std::vector<uint32_t> ring = best_ring(m, admission);
    CHECK_EQ(ring[0], admission[0]);
    if (u == 0) CHECK_EQ(ring, best_ring(before, admission));
    return unreachable_neighbours(Ids(ring.begin(), ring.end()), [&](uint64_t p) { return bool(flags[p]); });
}
}  // namespace

TEST(discouraged_edges_get_one_tiny_bandwidth_and_nothing_else_changes) {
    Rng rng{5};
    LinkMatrix m = random_matrix(rng, 5, false);
    m.bandwidth[3 * 5 + 4] = 0;  // unmeasured: a relay makes it work
    const LinkMatrix before = m;
    const std::vector<bool> flags{false, true, false, true, true};
    discourage_unreachable_edges(m, flags);
    for (size_t i = 0; i < 5; i++)
        for (size_t j = 0; j < 5; j++) {
            const bool both = i != j && flags[i] && flags[j];
            CHECK_EQ(m.bw(i, j), both ? 1e-6 : before.bw(i, j));  // B/s: every edge is above 1, so 1e-6 * 1
            CHECK_EQ(m.lat(i, j), before.lat(i, j));
        }
    LinkMatrix gb = before;  // in GB/s: relative to the slowest other edge
    for (auto& b : gb.bandwidth) b *= 1e-9;
    gb.bandwidth[0 * 5 + 2] = 0.004;
    gb.bandwidth[1 * 5 + 3] = 0.001;  // discouraged itself: not counted
    discourage_unreachable_edges(gb, flags);
    CHECK_EQ(gb.bw(4, 1), 0.004 * 1e-6);
    CHECK_THROWS_KIND(discourage_unreachable_edges(m, {true, false}), kInvalidArgument);
}

TEST(best_ring_keeps_unreachable_peers_apart_with_the_exact_solver) {
    Rng rng{20260517};
    for (size_t n = 3; n <= 10; n++)
        for (int t = 0; t < (n <= 8 ? 12 : 4); t++)
            for (size_t u = 0; u <= n; u++) {
                if (n >= 9 && u % 2) continue;
                CHECK_EQ(solved(rng, n, u, t), fewest_unreachable_neighbours(n, u));
            }
}

TEST(best_ring_keeps_unreachable_peers_apart_with_the_heuristic) {
    Rng rng{99};
    for (size_t n : {16, 20, 24})
        for (size_t u : {n / 4, n / 2, n / 2 + 2, n})
            for (int t = 0; t < 2; t++) CHECK_EQ(solved(rng, n, u, t), fewest_unreachable_neighbours(n, u));
}
