#include "planning/keep_apart.hpp"

#include <algorithm>
#include <string>

#include "base/error.hpp"

namespace pccl::topology {

size_t unreachable_neighbours(const std::vector<uint64_t>& ring, const IsUnreachable& unreachable) {
    const size_t n = ring.size();
    if (n < 2) return 0;
    if (n == 2) return unreachable(ring[0]) && unreachable(ring[1]) ? 1 : 0;  // one pair, not two
    size_t pairs = 0;
    for (size_t k = 0; k < n; k++) pairs += unreachable(ring[k]) && unreachable(ring[(k + 1) % n]) ? 1 : 0;
    return pairs;
}

size_t fewest_unreachable_neighbours(size_t n, size_t unreachable) {
    if (unreachable > n)
        throw CoreError(ErrorKind::kInvalidArgument, "a ring of " + std::to_string(n) + " peers cannot hold " +
                                                         std::to_string(unreachable) + " unreachable ones");
    if (n < 2) return 0;                          // a ring of 1 has no pair
    if (n == 2) return unreachable == 2 ? 1 : 0;  // its two edges are one pair
    const size_t reachable = n - unreachable;     // each separates the unreachable peers on either side of it
    return unreachable > reachable ? unreachable - reachable : 0;
}

std::vector<uint64_t> keep_apart(const std::vector<uint64_t>& ring, const IsUnreachable& unreachable) {
    std::vector<uint64_t> reach, unreach;  // each in its given order
    for (uint64_t p : ring) (unreachable(p) ? unreach : reach).push_back(p);
    if (unreachable_neighbours(ring, unreachable) == fewest_unreachable_neighbours(ring.size(), unreach.size()))
        return ring;  // also every ring of 0, 1 or 2 peers, and every ring without a reachable peer
    const size_t r = reach.size(), u = unreach.size();  // here r >= 1 and u >= 2
    const bool reachable_first = !unreachable(ring[0]);
    auto start = [&](size_t i) { return (i * u + r - 1) / r; };  // ceil(i u / r): block i is [start(i), start(i+1))
    std::vector<uint64_t> out;
    out.reserve(ring.size());
    for (size_t i = 0; i < r; i++) {
        if (reachable_first) out.push_back(reach[i]);  // R0, block 0, R1, block 1, ...
        out.insert(out.end(), unreach.begin() + long(start(i)), unreach.begin() + long(start(i + 1)));
        if (!reachable_first) out.push_back(reach[i]);  // block 0 (never empty), R0, block 1, R1, ...
    }
    return out;
}

// The tiny bandwidth. It must sit below every other edge by far more than kTie, so that (1) a ring that avoids
// every discouraged edge has a bottleneck better by more than kTie and wins on best_ring's first criterion, and
// (2) when no ring avoids them, every ring's bottleneck is this value, the discouraged edges are the only ones
// within kTie of it, and best_ring's second criterion (the fewest edges near the bottleneck) counts exactly
// them. Any factor below 1 / (1 + kTie) would do; 1e-6 leaves six orders of magnitude. It is relative to the
// smallest working edge, so it holds whatever unit the matrix is in, and capped at 1e-6 B/s so that it reads
// as what it is, not as a slow measurement. The discouraged edges' own measurements (through a relay, or none:
// <= 0) are left out of the minimum; they are replaced, since a relay makes such an edge work. Edges that do not
// work (<= 0) elsewhere stay so, and a ring still prefers a relay to one of them.
void discourage_unreachable_edges(LinkMatrix& m, const std::vector<bool>& unreachable) {
    const size_t n = m.n;
    if (unreachable.size() != n || m.bandwidth.size() != n * n)
        throw CoreError(ErrorKind::kInvalidArgument,
                        "discourage_unreachable_edges needs one flag per peer of the matrix");
    double smallest = 1.0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            if (i != j && !(unreachable[i] && unreachable[j]) && m.bw(i, j) > 0)
                smallest = std::min(smallest, m.bw(i, j));
    const double tiny = kDiscouraged * smallest;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            if (i != j && unreachable[i] && unreachable[j]) m.bandwidth[i * n + j] = tiny;
}

}  // namespace pccl::topology
