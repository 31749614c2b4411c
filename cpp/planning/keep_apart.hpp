// Ring orders that keep unreachable peers apart (docs/topology.md).
//
// An unreachable peer (behind NAT) can dial out but cannot accept connections, so a ring edge between two of
// them needs a relay, which is slow. Each reachable peer separates the unreachable ones on either side of it,
// so a ring of n >= 3 peers, u of them unreachable, has at least u - (n - u) adjacent unreachable pairs and
// can have exactly that many (none when u <= n / 2); a ring of 2 has one pair, counted once.
//
// How this works. keep_apart() leaves an order that already has the fewest pairs alone. Otherwise it deals
// the unreachable peers, in their given order, into one block per reachable peer, block i holding
// ceil((i + 1) u / r) - ceil(i u / r) of them (sizes differ by at most one, and block 0 is never empty): the
// ring is R0, block 0, R1, block 1, ... when ring[0] is reachable, and block 0, R0, block 1, R1, ... when it is
// not. Either way both kinds keep their given order, ring[0] comes first, and every block of k peers sits
// between two reachable peers, which makes k - 1 pairs: u - r in all when u > r, none otherwise.
// discourage_unreachable_edges() serves the ring-order solver (planning/ring_order.hpp) instead: it gives every
// edge between two unreachable peers one tiny bandwidth, far below every other edge, so that a best bottleneck
// avoids them whenever it can and otherwise, all rings then sharing that bottleneck, the fewest edges at it
// (best_ring's second criterion) means the fewest such edges.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "planning/ring_order.hpp"

namespace pccl::topology {

using IsUnreachable = std::function<bool(uint64_t peer)>;

// The cyclically adjacent pairs (ring[k], ring[k + 1 mod n]) whose peers are both unreachable, each unordered
// pair once: a ring of 1 has none, a ring of 2 peers both unreachable has one.
size_t unreachable_neighbours(const std::vector<uint64_t>& ring, const IsUnreachable& unreachable);

// The fewest unreachable_neighbours() of any ring of n peers of which `unreachable` are: max(0, 2u - n), but 0
// when n == 1 and 1 when n == 2 and u == 2. Throws kInvalidArgument when unreachable > n.
size_t fewest_unreachable_neighbours(size_t n, size_t unreachable);

// `ring` (distinct peers) itself when it has the fewest unreachable neighbours; otherwise the order described
// above: the fewest, both kinds in their given order, ring[0] first, the unreachable spread evenly. A pure
// function of its arguments.
std::vector<uint64_t> keep_apart(const std::vector<uint64_t>& ring, const IsUnreachable& unreachable);

// The bandwidth it gives the edges between two unreachable peers of m (both directions, measured or not, since
// a relay makes them work): kDiscouraged times the smallest positive bandwidth of the other edges, or of 1
// B/s when that is smaller (or there is none). Other edges, and every latency, stay as they are. `unreachable`
// is indexed like m's peers; throws kInvalidArgument when its size is not m.n.
constexpr double kDiscouraged = 1e-6;
void discourage_unreachable_edges(LinkMatrix& m, const std::vector<bool>& unreachable);

}  // namespace pccl::topology
