#include "planning/ring_order.hpp"

#include <algorithm>
#include <cmath>
#include <chrono>
#include <limits>
#include <numeric>
#include <random>
#include <utility>

#include "base/error.hpp"

namespace pccl::topology {

namespace {
void check(const LinkMatrix& m) {
    if (m.bandwidth.size() != m.n * m.n || m.latency.size() != m.n * m.n)
        throw CoreError(ErrorKind::kInvalidArgument, "a link matrix needs n * n bandwidths and latencies");
}

// Rotates a cycle so that it starts with `first`.
std::vector<uint32_t> starting_with(std::vector<uint32_t> order, uint32_t first) {
    auto it = std::find(order.begin(), order.end(), first);
    if (it != order.end()) std::rotate(order.begin(), it, order.end());
    return order;
}

// Whether the edges with bandwidth >= t hold a Hamiltonian cycle (subset DP from peer 0).
bool has_cycle(const LinkMatrix& m, double t) {
    const size_t n = m.n, full = (size_t(1) << n) - 1;
    std::vector<uint32_t> reach(size_t(1) << n, 0);  // reach[mask]: bit v set when a path 0 .. v covers mask
    reach[1] = 1;
    for (size_t mask = 1; mask <= full; mask += 2) {  // every mask contains peer 0
        const uint32_t ends = reach[mask];
        if (!ends) continue;
        for (size_t v = 0; v < n; v++) {
            if (!(ends >> v & 1)) continue;
            for (size_t w = 1; w < n; w++)
                if (!(mask >> w & 1) && m.bw(v, w) >= t) reach[mask | (size_t(1) << w)] |= uint32_t(1) << w;
        }
    }
    for (size_t v = 1; v < n; v++)
        if ((reach[full] >> v & 1) && m.bw(v, 0) >= t) return true;
    return false;
}
}  // namespace

RingScore score(const LinkMatrix& m, const std::vector<uint32_t>& order) {
    RingScore s;
    s.bottleneck = std::numeric_limits<double>::infinity();
    const size_t n = order.size();
    if (n < 2) return RingScore{std::numeric_limits<double>::infinity(), 0, 0};
    for (size_t k = 0; k < n; k++) {
        s.bottleneck = std::min(s.bottleneck, m.bw(order[k], order[(k + 1) % n]));
        s.latency += m.lat(order[k], order[(k + 1) % n]);
    }
    for (size_t k = 0; k < n; k++) s.at_bottleneck += m.bw(order[k], order[(k + 1) % n]) < s.bottleneck * (1 + kTie) ? 1 : 0;
    return s;
}

bool better(const RingScore& a, const RingScore& b) {
    if (a.bottleneck > b.bottleneck * (1 + kTie)) return true;
    if (b.bottleneck > a.bottleneck * (1 + kTie)) return false;
    if (a.at_bottleneck != b.at_bottleneck) return a.at_bottleneck < b.at_bottleneck;
    // latency sums in another order may differ in the last bits
    if (std::abs(a.latency - b.latency) > 1e-12 * std::max(a.latency, b.latency)) return a.latency < b.latency;
    return a.bottleneck > b.bottleneck;
}

std::vector<uint32_t> solve_exact(const LinkMatrix& m) {
    check(m);
    const size_t n = m.n;
    if (n > kExactPeers) throw CoreError(ErrorKind::kInvalidArgument, "solve_exact takes at most 12 peers");
    std::vector<uint32_t> order(n);
    std::iota(order.begin(), order.end(), 0u);
    if (n <= 2) return order;
    // 1. The best bottleneck: binary search over the distinct bandwidths.
    std::vector<double> values;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            if (i != j) values.push_back(m.bw(i, j));
    std::sort(values.begin(), values.end());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    size_t lo = 0, hi = values.size();  // has_cycle(values[lo]) holds (the smallest: every edge); find the last
    if (!has_cycle(m, values[0])) return order;  // unreachable: the complete graph has a cycle at the minimum
    while (hi - lo > 1) {
        const size_t mid = (lo + hi) / 2;
        if (has_cycle(m, values[mid])) lo = mid;
        else hi = mid;
    }
    const double top = values[lo], t = top / (1 + kTie), near = top * (1 + kTie);
    // 2. Among cycles of edges >= B / (1 + kTie): fewest edges below B (1 + kTie), then least latency (Held-Karp
    // from peer 0).
    using Cost = std::pair<size_t, double>;
    const Cost kNone{std::numeric_limits<size_t>::max(), 0};
    const size_t states = size_t(1) << n;
    std::vector<Cost> cost(states * n, kNone);
    std::vector<int8_t> prev(states * n, -1);
    auto edge = [&](size_t v, size_t w) { return Cost{m.bw(v, w) < near ? 1 : 0, m.lat(v, w)}; };
    auto add = [](Cost a, Cost b) { return Cost{a.first + b.first, a.second + b.second}; };
    auto less = [](const Cost& a, const Cost& b) { return a.first != b.first ? a.first < b.first : a.second < b.second; };
    cost[1 * n + 0] = {0, 0.0};
    for (size_t mask = 1; mask < states; mask += 2) {
        for (size_t v = 0; v < n; v++) {
            const Cost c = cost[mask * n + v];
            if (c.first == kNone.first) continue;
            for (size_t w = 1; w < n; w++) {
                if (mask >> w & 1 || m.bw(v, w) < t) continue;
                const size_t next = mask | (size_t(1) << w);
                const Cost d = add(c, edge(v, w));
                if (less(d, cost[next * n + w])) {
                    cost[next * n + w] = d;
                    prev[next * n + w] = int8_t(v);
                }
            }
        }
    }
    const size_t full = states - 1;
    Cost best = kNone;
    size_t last = 0;
    for (size_t v = 1; v < n; v++) {
        if (cost[full * n + v].first == kNone.first || m.bw(v, 0) < t) continue;
        const Cost d = add(cost[full * n + v], edge(v, 0));
        if (best.first == kNone.first || less(d, best)) {
            best = d;
            last = v;
        }
    }
    std::vector<uint32_t> rev;
    for (size_t mask = full, v = last; v != 0;) {
        rev.push_back(uint32_t(v));
        const size_t p = size_t(prev[mask * n + v]);
        mask &= ~(size_t(1) << v);
        v = p;
    }
    rev.push_back(0);
    std::reverse(rev.begin(), rev.end());
    return rev;
}

namespace {
// Local search for a ring whose edges all reach the bandwidth t: the cost of an edge is huge below t, large
// below `near` (the fewer slow edges the better), and its latency otherwise. Moves are evaluated by
// their change of cost in O(1) (2-opt: O(1) amortized along a growing segment), applied when they lower it.
struct ThresholdSearch {
    const LinkMatrix& m;
    double t;     // edges below it are (all but) forbidden
    double near;  // edges below it count as slow
    static constexpr double kBelow = 1e12, kAt = 1e6;
    double c(uint32_t u, uint32_t v) const {
        const double b = m.bw(u, v);
        return (b < t ? kBelow : b < near ? kAt : 0.0) + m.lat(u, v);
    }
    double total(const std::vector<uint32_t>& o) const {
        double sum = 0;
        for (size_t k = 0; k < o.size(); k++) sum += c(o[k], o[(k + 1) % o.size()]);
        return sum;
    }
    static constexpr double kEps = 1e-12;

    bool two_opt(std::vector<uint32_t>& o) const {  // reverse o[i..j]
        const size_t n = o.size();
        for (size_t i = 1; i + 1 < n; i++) {
            double inner = 0;  // sum over k in [i, j) of c(o[k+1], o[k]) - c(o[k], o[k+1])
            for (size_t j = i + 1; j < n; j++) {
                inner += c(o[j], o[j - 1]) - c(o[j - 1], o[j]);
                const uint32_t a = o[i - 1], b = o[(j + 1) % n];
                const double delta = c(a, o[j]) + c(o[i], b) - c(a, o[i]) - c(o[j], b) + inner;
                if (delta < -kEps * (1 + std::abs(delta))) {
                    std::reverse(o.begin() + long(i), o.begin() + long(j) + 1);
                    return true;
                }
            }
        }
        return false;
    }
    bool or_opt(std::vector<uint32_t>& o) const {  // move o[i..i+len) between two other neighbours
        const size_t n = o.size();
        for (size_t len = 1; len <= 3 && len + 2 <= n; len++) {
            for (size_t i = 0; i < n; i++) {
                const uint32_t s0 = o[i], sl = o[(i + len - 1) % n], a = o[(i + n - 1) % n], b = o[(i + len) % n];
                const double removed = c(a, b) - c(a, s0) - c(sl, b);
                for (size_t k = 0; k + len + 1 < n; k++) {  // p = the k-th peer after b, q its successor
                    const size_t pj = (i + len + k) % n;
                    const uint32_t p = o[pj], q = o[(pj + 1) % n];
                    const double delta = removed + c(p, s0) + c(sl, q) - c(p, q);
                    if (delta < -1e-12) {
                        std::vector<uint32_t> seg, rest;
                        for (size_t x = 0; x < len; x++) seg.push_back(o[(i + x) % n]);
                        for (size_t x = 0; x < n - len; x++) rest.push_back(o[(i + len + x) % n]);
                        std::vector<uint32_t> out;  // rest starts at b; insert after its k-th element (p)
                        for (size_t x = 0; x < rest.size(); x++) {
                            out.push_back(rest[x]);
                            if (x == k) out.insert(out.end(), seg.begin(), seg.end());
                        }
                        o = out;
                        return true;
                    }
                }
            }
        }
        return false;
    }
    bool swap_two(std::vector<uint32_t>& o) const {
        const size_t n = o.size();
        auto around = [&](size_t i, size_t j) {  // the cost of the edges that touch positions i and j
            size_t e[4] = {(i + n - 1) % n, i, (j + n - 1) % n, j};
            std::sort(e, e + 4);
            double sum = 0;
            for (int k = 0; k < 4; k++)
                if (k == 0 || e[k] != e[k - 1]) sum += c(o[e[k]], o[(e[k] + 1) % n]);
            return sum;
        };
        for (size_t i = 0; i < n; i++)
            for (size_t j = i + 1; j < n; j++) {
                const double before = around(i, j);
                std::swap(o[i], o[j]);
                if (around(i, j) < before - 1e-12) return true;
                std::swap(o[i], o[j]);
            }
        return false;
    }
    // Improves o until no move helps or time runs out; returns its cost.
    double descend(std::vector<uint32_t>& o, std::chrono::steady_clock::time_point give_up) const {
        while (std::chrono::steady_clock::now() < give_up && (or_opt(o) || swap_two(o) || two_opt(o))) {
        }
        return total(o);
    }
};

std::vector<uint32_t> greedy_from(const LinkMatrix& m, uint32_t start) {
    const size_t n = m.n;
    std::vector<uint32_t> order{start};
    std::vector<bool> used(n, false);
    used[start] = true;
    while (order.size() < n) {
        const uint32_t v = order.back();
        int64_t pick = -1;
        for (size_t w = 0; w < n; w++) {
            if (used[w]) continue;
            if (pick < 0 || m.bw(v, w) > m.bw(v, size_t(pick)) ||
                (m.bw(v, w) == m.bw(v, size_t(pick)) && m.lat(v, w) < m.lat(v, size_t(pick))))
                pick = int64_t(w);
        }
        used[size_t(pick)] = true;
        order.push_back(uint32_t(pick));
    }
    return order;
}
}  // namespace

std::vector<uint32_t> solve_heuristic(const LinkMatrix& m, const std::vector<uint32_t>& admission) {
    check(m);
    const size_t n = m.n;
    if (n <= 3) return admission;
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::milliseconds(60);  // + 10 ms of polish: under 100 ms in all
    // Candidate starts: the admission order and greedy widest-next-edge tours.
    std::vector<std::vector<uint32_t>> starts{admission};
    for (uint32_t s = 0; s < n && starts.size() < 9; s++) starts.push_back(greedy_from(m, s));
    std::vector<uint32_t> best_order = admission;
    for (const auto& o : starts)
        if (better(score(m, o), score(m, best_order))) best_order = o;
    // The largest bandwidth t for which a ring of edges >= t is found: a binary search over the distinct values
    // above the best start's bottleneck, each step a descent from the best ring found so far and the starts.
    std::vector<double> values;
    const double floor = score(m, best_order).bottleneck;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++)
            if (i != j && m.bw(i, j) >= floor) values.push_back(m.bw(i, j));
    std::sort(values.begin(), values.end());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    size_t lo = 0, hi = values.size();  // values[lo] is reached (by best_order); values[hi] is not (or the end)
    while (hi - lo > 1 && std::chrono::steady_clock::now() < give_up) {
        const size_t mid = (lo + hi) / 2;
        const ThresholdSearch search{m, values[mid], values[mid] * (1 + kTie)};
        bool found = false;
        // Descents from the best ring so far and the starts, then from shuffles of the best ring (a stuck
        // descent is a local minimum; another start usually is not stuck in the same one).
        std::mt19937 rng(uint32_t(n * 7919 + mid));
        for (size_t attempt = 0; attempt < starts.size() + 40 && !found; attempt++) {
            if (std::chrono::steady_clock::now() >= give_up) break;
            auto o = attempt == 0 ? best_order : attempt <= starts.size() ? starts[attempt - 1] : best_order;
            if (attempt > starts.size()) std::shuffle(o.begin(), o.end(), rng);
            if (search.descend(o, give_up) < ThresholdSearch::kBelow) {
                best_order = o;
                found = true;
            }
        }
        if (found) lo = mid;
        else hi = mid;
    }
    // Polish around the bottleneck B reached, as the exact solver does: no edge below B / (1 + kTie), fewer edges
    // below B (1 + kTie), then less latency.
    auto polished = best_order;
    const double reached = score(m, best_order).bottleneck;
    ThresholdSearch{m, reached / (1 + kTie), reached * (1 + kTie)}.descend(polished, give_up + std::chrono::milliseconds(10));
    if (better(score(m, polished), score(m, best_order))) best_order = polished;
    return best_order;
}

std::vector<uint32_t> best_ring(const LinkMatrix& m, const std::vector<uint32_t>& admission) {
    check(m);
    if (admission.size() != m.n) throw CoreError(ErrorKind::kInvalidArgument, "the admission order must hold every peer");
    if (m.n <= 2) return admission;
    auto order = m.n <= kExactPeers ? solve_exact(m) : solve_heuristic(m, admission);
    if (!better(score(m, order), score(m, admission))) order = admission;  // a tie keeps the ring as it is
    return starting_with(order, admission[0]);
}

}  // namespace pccl::topology
