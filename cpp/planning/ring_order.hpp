// The ring order that a group's links favour: a pure function of a measured link matrix (docs/topology.md).
//
// A ring all-reduce moves the same bytes over every edge of the ring in lockstep, so it runs at the pace of its
// slowest edge: the order's worth is its bottleneck bandwidth, min over edges (order[k] -> order[k+1]) of the
// measured bandwidth from the sender to its successor (asymmetric: i -> j may differ from j -> i). Measurements
// are noisy, so bandwidths within kTie (5 %) of each other count as equal: among orders whose bottlenecks are
// that close, fewer edges near the bottleneck are better (a ring that crosses an ocean twice beats one that
// crosses it four times at the same measured speed: every slow edge is where the next measurement error or
// congestion hides), then less total latency (every step of a small all-reduce pays each edge's latency).
//
// How this works. Exact up to kExactPeers: the best bottleneck is the largest bandwidth t whose graph of edges
// >= t still has a Hamiltonian cycle (a binary search over the distinct bandwidths, each step a reachability DP
// over subsets); then a Held-Karp DP over subsets finds, among cycles of edges >= t, the one with the fewest
// edges at t and then the least latency (pairs added and compared lexicographically, which DP respects).
// Beyond that, the same binary search over bandwidths with a heuristic test at each t: a local search (moves of
// segments of 1-3 peers, swaps, 2-opt reversals, each priced in O(1) by the change of a cost that is huge for an
// edge below t, large at t and the latency otherwise) from the best ring so far, from greedy widest-next-edge
// tours and from shuffles, within a time budget (70 ms). Either way the result is never worse than the
// admission order, which is always a candidate, and a tie keeps the admission order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace pccl::topology {

constexpr size_t kExactPeers = 12;
constexpr double kTie = 0.05;  // bandwidths this close (relative) count as equal

// bandwidth[i * n + j], latency[i * n + j]: the edge from peer i to peer j (the diagonal is ignored). A
// bandwidth <= 0 is an edge that does not work (or was not measured).
struct LinkMatrix {
    size_t n = 0;
    std::vector<double> bandwidth;
    std::vector<double> latency;
    double bw(size_t i, size_t j) const { return bandwidth[i * n + j]; }
    double lat(size_t i, size_t j) const { return latency[i * n + j]; }
};

struct RingScore {
    double bottleneck = 0;    // the slowest edge's bandwidth
    size_t at_bottleneck = 0; // edges within kTie of it (itself included)
    double latency = 0;       // sum over the ring's edges
};
RingScore score(const LinkMatrix& m, const std::vector<uint32_t>& order);
// Whether a is the better ring: a bottleneck higher by more than kTie; else fewer edges near the bottleneck,
// then less latency, then the higher bottleneck.
bool better(const RingScore& a, const RingScore& b);

std::vector<uint32_t> solve_exact(const LinkMatrix& m);  // n <= kExactPeers
std::vector<uint32_t> solve_heuristic(const LinkMatrix& m, const std::vector<uint32_t>& admission);
// The order the master uses: exact when the group is small, else the heuristic; never worse than `admission`
// (a permutation of 0..n-1). The result starts with admission[0] (a ring has no first peer; this keeps it stable).
std::vector<uint32_t> best_ring(const LinkMatrix& m, const std::vector<uint32_t>& admission);

}  // namespace pccl::topology
