// The ring-order solver (planning/ring_order.hpp) against a brute force written here.
//
// How this works. brute_force() walks every ring of n peers (peer 0 first, the (n-1)! orders of the others)
// and finds the optimum by the solver's own definition, as tests/test_topology_solver.py does in NumPy: B, the
// best bottleneck; then, among rings whose bottleneck is at least B / (1 + kTie), the fewest edges below
// B (1 + kTie), then the least latency. solve_exact() must reach that optimum on seeded random matrices of 3 to
// 9 peers (continuous bandwidths, and a few levels so that ties happen); best_ring() must start with the
// admission order's first peer, never be worse than the admission order and change it only for a better ring.
// Hand-made cases cover 1, 2 and 3 peers, exact ties, near ties (noise) and regions.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "planning/ring_order.hpp"
#include "tests/check.hpp"
#include "tests/rng.hpp"

using pccl::topology::best_ring;
using pccl::topology::better;
using pccl::topology::kTie;
using pccl::topology::LinkMatrix;
using pccl::topology::score;
using pccl::topology::solve_exact;
using pccl::topology::solve_heuristic;
using Order = std::vector<uint32_t>;

namespace {

using pccl::testing::Rng;

LinkMatrix matrix(size_t n) {
    LinkMatrix m;
    m.n = n;
    m.bandwidth.assign(n * n, 0.0);
    m.latency.assign(n * n, 0.0);
    return m;
}

// Asymmetric bandwidths (levels > 0: a few levels, so that ties happen) and latencies; the diagonal is 0.
LinkMatrix random_matrix(Rng& rng, size_t n, int levels) {
    LinkMatrix m = matrix(n);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            if (i == j) continue;
            m.bandwidth[i * n + j] = levels ? double(1 + rng.below(uint32_t(levels))) * 1e8 : rng.uniform(1e7, 1e9);
            m.latency[i * n + j] = rng.uniform(1e-4, 5e-2);
        }
    return m;
}

Order random_permutation(Rng& rng, size_t n) {
    Order o(n);
    std::iota(o.begin(), o.end(), 0u);
    for (size_t i = n; i > 1; i--) std::swap(o[i - 1], o[rng.below(uint32_t(i))]);
    return o;
}

struct Optimum {
    double bottleneck = 0;  // B
    size_t near = 0;        // edges below B (1 + kTie) of the best ring
    double latency = 0;     // its latency
};

double min_edge(const LinkMatrix& m, const Order& o) {
    double b = std::numeric_limits<double>::infinity();
    for (size_t k = 0; k < o.size(); k++) b = std::min(b, m.bw(o[k], o[(k + 1) % o.size()]));
    return b;
}

Optimum brute_force(const LinkMatrix& m) {
    Order rest(m.n - 1);
    std::iota(rest.begin(), rest.end(), 1u);
    auto ring = [&] {
        Order o{0};
        o.insert(o.end(), rest.begin(), rest.end());
        return o;
    };
    Optimum best;
    do best.bottleneck = std::max(best.bottleneck, min_edge(m, ring()));
    while (std::next_permutation(rest.begin(), rest.end()));
    bool found = false;
    do {
        const Order o = ring();
        if (min_edge(m, o) < best.bottleneck / (1 + kTie)) continue;
        size_t near = 0;
        double latency = 0;
        for (size_t k = 0; k < o.size(); k++) {
            near += m.bw(o[k], o[(k + 1) % o.size()]) < best.bottleneck * (1 + kTie) ? 1 : 0;
            latency += m.lat(o[k], o[(k + 1) % o.size()]);
        }
        if (!found || near < best.near || (near == best.near && latency < best.latency)) {
            best.near = near;
            best.latency = latency;
            found = true;
        }
    } while (std::next_permutation(rest.begin(), rest.end()));
    return best;
}

bool is_permutation_of_peers(const Order& o, size_t n) {
    Order sorted = o;
    std::sort(sorted.begin(), sorted.end());
    Order want(n);
    std::iota(want.begin(), want.end(), 0u);
    return sorted == want;
}

// The order reaches the brute force's optimum.
void check_optimal(const LinkMatrix& m, const Order& order, const Optimum& best) {
    CHECK(is_permutation_of_peers(order, m.n));
    if (!is_permutation_of_peers(order, m.n)) return;
    size_t near = 0;
    double latency = 0;
    for (size_t k = 0; k < order.size(); k++) {
        near += m.bw(order[k], order[(k + 1) % order.size()]) < best.bottleneck * (1 + kTie) ? 1 : 0;
        latency += m.lat(order[k], order[(k + 1) % order.size()]);
    }
    CHECK(min_edge(m, order) >= best.bottleneck / (1 + kTie));
    CHECK_EQ(near, best.near);
    CHECK(std::abs(latency - best.latency) <= 1e-9 * best.latency);
}

// Peers in regions: 1 GB/s inside a region, `between[a][b]` from region a to region b; latency 1 ms inside,
// 40 ms between.
LinkMatrix regions_matrix(const std::vector<uint32_t>& region_of, const std::vector<std::vector<double>>& between) {
    const size_t n = region_of.size();
    LinkMatrix m = matrix(n);
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            if (i == j) continue;
            const bool same = region_of[i] == region_of[j];
            m.bandwidth[i * n + j] = same ? 1e9 : between[region_of[i]][region_of[j]];
            m.latency[i * n + j] = same ? 1e-3 : 4e-2;
        }
    return m;
}

size_t crossings(const Order& o, const std::vector<uint32_t>& region_of) {
    size_t c = 0;
    for (size_t k = 0; k < o.size(); k++) c += region_of[o[k]] != region_of[o[(k + 1) % o.size()]] ? 1 : 0;
    return c;
}

}  // namespace

TEST(the_brute_force_itself_finds_the_known_best_ring) {
    // 4 peers whose only fast ring is 0 -> 2 -> 1 -> 3 -> 0: B is its slowest edge, and it alone is near B.
    LinkMatrix m = matrix(4);
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 4; j++) m.bandwidth[i * 4 + j] = i == j ? 0 : 1e6;
    const Order fast{0, 2, 1, 3};
    for (size_t k = 0; k < 4; k++) m.bandwidth[fast[k] * 4 + fast[(k + 1) % 4]] = 1e9 + 1e8 * double(k);
    for (auto& l : m.latency) l = 1e-3;
    const Optimum best = brute_force(m);
    CHECK_EQ(best.bottleneck, 1e9);
    CHECK_EQ(best.near, size_t(1));  // 1.0e9 alone is below 1.05e9
    CHECK(std::abs(best.latency - 4e-3) < 1e-15);
    CHECK_EQ(solve_exact(m), fast);
}

TEST(exact_matches_brute_force_on_random_matrices_of_3_to_9_peers) {
    Rng rng{20261201};
    for (size_t n = 3; n <= 9; n++) {
        const int trials = n <= 7 ? 40 : n == 8 ? 20 : 8;
        for (int t = 0; t < trials; t++) {
            const LinkMatrix m = random_matrix(rng, n, t % 2 ? 3 : 0);
            const Order order = solve_exact(m);
            CHECK_EQ(order.size(), n);
            CHECK_EQ(order[0], 0u);  // the exact solver's rings start at peer 0
            check_optimal(m, order, brute_force(m));
        }
    }
}

TEST(best_ring_never_loses_to_the_admission_order_and_changes_it_only_for_the_optimum) {
    Rng rng{77};
    for (size_t n = 3; n <= 8; n++) {
        for (int t = 0; t < 12; t++) {
            const LinkMatrix m = random_matrix(rng, n, t % 3 == 0 ? 2 : 0);
            const Order admission = random_permutation(rng, n);
            const Order order = best_ring(m, admission);
            CHECK(is_permutation_of_peers(order, n));
            CHECK_EQ(order[0], admission[0]);
            CHECK(!better(score(m, admission), score(m, order)));
            if (order != admission) {
                CHECK(better(score(m, order), score(m, admission)));
                check_optimal(m, order, brute_force(m));
            }
        }
    }
}

TEST(one_and_two_peers_keep_their_order) {
    LinkMatrix one = matrix(1);
    CHECK_EQ(best_ring(one, {0}), (Order{0}));
    CHECK_EQ(solve_exact(one), (Order{0}));
    CHECK(std::isinf(score(one, {0}).bottleneck));
    LinkMatrix two = matrix(2);
    two.bandwidth = {0, 1e6, 1e9, 0};
    two.latency = {0, 1e-3, 1e-3, 0};
    CHECK_EQ(best_ring(two, {1, 0}), (Order{1, 0}));  // two peers have one ring
    CHECK_EQ(solve_exact(two), (Order{0, 1}));
    CHECK_EQ(score(two, {0, 1}).bottleneck, 1e6);
    CHECK_EQ(score(two, {0, 1}).at_bottleneck, size_t(1));
}

TEST(three_peers_go_the_fast_way_round) {
    // 0 -> 1 -> 2 -> 0 at 1 GB/s, the other direction at 10 MB/s.
    LinkMatrix m = matrix(3);
    for (size_t i = 0; i < 3; i++) {
        m.bandwidth[i * 3 + (i + 1) % 3] = 1e9;
        m.bandwidth[((i + 1) % 3) * 3 + i] = 1e7;
    }
    for (auto& l : m.latency) l = 1e-3;
    CHECK_EQ(solve_exact(m), (Order{0, 1, 2}));
    CHECK_EQ(best_ring(m, {0, 1, 2}), (Order{0, 1, 2}));
    CHECK_EQ(best_ring(m, {0, 2, 1}), (Order{0, 1, 2}));
    CHECK_EQ(best_ring(m, {2, 1, 0}), (Order{2, 0, 1}));  // starts with the admission order's first peer
    // Reversed links: the other direction.
    LinkMatrix r = matrix(3);
    for (size_t i = 0; i < 3; i++)
        for (size_t j = 0; j < 3; j++) r.bandwidth[i * 3 + j] = m.bandwidth[j * 3 + i];
    r.latency = m.latency;
    CHECK_EQ(best_ring(r, {0, 1, 2}), (Order{0, 2, 1}));
}

TEST(an_exact_tie_keeps_the_admission_order) {
    for (size_t n : {3, 5, 8}) {
        LinkMatrix m = matrix(n);
        for (size_t i = 0; i < n * n; i++) {
            m.bandwidth[i] = i % (n + 1) ? 5e8 : 0;
            m.latency[i] = i % (n + 1) ? 1e-3 : 0;
        }
        Rng rng{n};
        const Order admission = random_permutation(rng, n);
        CHECK_EQ(best_ring(m, admission), admission);
    }
}

TEST(near_ties_prefer_fewer_slow_edges) {
    // Two regions of two peers; the cross-region links differ by noise (2.00 .. 2.05 MB/s): cross twice, not
    // four times (admission 0, 2, 1, 3 crosses at every hop).
    const std::vector<uint32_t> region{0, 0, 1, 1};
    const double noise[4][4] = {{0, 1.0, 2.00, 2.05}, {1.0, 0, 2.04, 2.01}, {2.03, 2.02, 0, 1.0}, {2.05, 2.01, 1.0, 0}};
    LinkMatrix m = matrix(4);
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 4; j++) {
            if (i == j) continue;
            m.bandwidth[i * 4 + j] = region[i] == region[j] ? 25e6 : noise[i][j] * 1e6;
            m.latency[i * 4 + j] = region[i] == region[j] ? 1e-3 : 2e-2;
        }
    const Order order = best_ring(m, {0, 2, 1, 3});
    CHECK_EQ(order[0], 0u);
    CHECK_EQ(crossings(order, region), size_t(2));
}

TEST(regions_are_crossed_once_each) {
    // 6 peers in 3 regions, admitted so that every hop crosses regions; every crossing runs at 50 MB/s, so every
    // ring has that bottleneck and the best one crosses 3 times. (With unequal crossings a ring that crosses
    // 4 times can have the higher bottleneck: r0 -> r1 -> r2 -> r1 -> r0 avoids the slowest pair.)
    const std::vector<uint32_t> region{0, 0, 1, 1, 2, 2};
    const std::vector<std::vector<double>> between(3, std::vector<double>(3, 5e7));
    const LinkMatrix m = regions_matrix(region, between);
    const Order crossing{0, 2, 4, 1, 3, 5};
    CHECK_EQ(crossings(crossing, region), size_t(6));
    const Order order = best_ring(m, crossing);
    CHECK_EQ(order[0], 0u);
    CHECK_EQ(crossings(order, region), size_t(3));
    check_optimal(m, order, brute_force(m));
}

TEST(heuristic_is_near_optimal_and_never_worse_than_admission) {
    Rng rng{4242};
    for (size_t n : {4, 6, 8}) {
        for (int t = 0; t < 6; t++) {
            const LinkMatrix m = random_matrix(rng, n, 0);
            const Order admission = random_permutation(rng, n);
            const Order order = solve_heuristic(m, admission);
            CHECK(is_permutation_of_peers(order, n));
            CHECK(score(m, order).bottleneck >= 0.95 * brute_force(m).bottleneck);
            CHECK(score(m, order).bottleneck * (1 + kTie) >= score(m, admission).bottleneck);
        }
    }
}

TEST(sixteen_peers_in_four_regions_beat_an_admission_that_crosses_at_every_hop) {
    // Beyond kExactPeers best_ring uses the heuristic: the regions must be grouped (4 crossings, not 16).
    std::vector<uint32_t> region(16);
    for (size_t i = 0; i < 16; i++) region[i] = uint32_t(i / 4);
    const LinkMatrix m = regions_matrix(region, std::vector<std::vector<double>>(4, std::vector<double>(4, 3e7)));
    Order admission;
    for (uint32_t k = 0; k < 4; k++)
        for (uint32_t r = 0; r < 4; r++) admission.push_back(r * 4 + k);
    CHECK_EQ(crossings(admission, region), size_t(16));
    const Order order = best_ring(m, admission);
    CHECK(is_permutation_of_peers(order, 16));
    CHECK_EQ(order[0], admission[0]);
    CHECK(better(score(m, order), score(m, admission)));
    CHECK_EQ(crossings(order, region), size_t(4));
}

TEST(bad_matrices_are_refused) {
    LinkMatrix short_latency = matrix(2);
    short_latency.latency.resize(2);
    CHECK_THROWS_KIND(best_ring(short_latency, {0, 1}), kInvalidArgument);
    CHECK_THROWS_KIND(best_ring(matrix(3), {0, 1}), kInvalidArgument);  // the admission order lacks a peer
    CHECK_THROWS_KIND(solve_exact(matrix(13)), kInvalidArgument);
}
