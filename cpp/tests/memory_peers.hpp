// What the native tests of the data plane share (transport_test, direct_test, collectives_test): peers as
// threads over the in-memory transport, each running its stripes on threads of their own.
#pragma once
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "peer/ring.hpp"
#include "wire/messages.hpp"

namespace pccl::test {

// Peers 1..world, reached at "mem":id (an in-memory network's endpoints are named by peer id).
inline std::vector<wire::PeerInfo> memory_peers(uint32_t world) {
    std::vector<wire::PeerInfo> peers;
    for (uint32_t r = 0; r < world; r++) peers.push_back({r + 1, "mem", uint16_t(r + 1)});
    return peers;
}

// Runs stripe(j, &bytes_j) for every j < stripes, each on a thread of its own; the seconds until all returned.
template <class Stripe> double run_stripes(uint32_t stripes, Stripe stripe) {
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<StripeBytes> bytes(stripes);
    std::vector<std::thread> threads;
    for (uint32_t j = 0; j < stripes; j++) threads.emplace_back([&, j] { stripe(j, &bytes[j]); });
    for (auto& t : threads) t.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace pccl::test
