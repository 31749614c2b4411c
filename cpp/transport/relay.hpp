// A relay: joins two connections from two peers that cannot dial each other (both behind NAT, docs/nat.md) into
// one byte pipe. It runs on a reachable peer's data port, or on the master's relay port as a last resort.
//
// How this works. Each of the two peers dials the relay and says PEER_HELLO with mode kRelayOpen (the side that
// would have opened the connection: from A, to B) or kRelayAccept (the other side: from B, to A), for the same
// (slot, index); in a run with a secret it proves the secret to the relay first, so strangers get no pipe. The
// greeting hands each such connection here (offer()). Once both halves of (A, B, slot, index) are in, one
// thread copies bytes both ways between them through a buffer per direction, polling every socket without
// blocking on any. What flows is the two peers' own connection: A's handshake with B (a run with a secret), its
// PEER_HELLO and the data frames, sealed end to end with keys the relay never sees, so it can neither read
// (encrypt) nor change (integrity) them without the far end noticing. A half that waits longer than its
// deadline for the other is closed; when either side of a pipe closes or fails, both are closed, and the peers
// see the connection break as they would see a direct one break (the peer at the far end lost, for that
// operation). The peers' own deadlines bound everything else: a stalled relay is a silent connection.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <vector>

#include "transport/link.hpp"
#include "transport/net.hpp"

namespace pccl {

struct RelayStats {
    uint64_t pipes = 0;         // pipes joined so far
    uint64_t open = 0;          // pipes open now
    uint64_t bytes = 0;         // bytes carried, both directions
    uint64_t unmatched = 0;     // halves closed because the other never came
};

// A test seam (pccl_arrays._core_testing.relay_tap, tests/test_nat.py): every relay of this process keeps a copy
// of the first `record` bytes of each pipe's opening-to-accepting direction, and flips one byte of it, at offset
// `flip_at` of the next pipe that gets that far (once; negative: never). Off unless a test turns it on.
void set_relay_tap(size_t record, int64_t flip_at);
std::vector<uint8_t> relay_recorded();  // what the tap kept, all pipes one after the other

class Relay {
public:
    Relay() = default;
    ~Relay();
    Relay(const Relay&) = delete;
    Relay& operator=(const Relay&) = delete;
    // Takes a greeted connection whose PEER_HELLO asked for a relay (mode 2 or 3); it waits until `deadline`.
    void offer(ConnPtr c, uint64_t from, uint64_t to, uint8_t mode, double deadline);
    void stop();  // closes every pipe and half
    RelayStats stats() const;

private:
    struct Half {
        ConnPtr conn;
        double deadline = 0;
    };
    struct Pipe;
    using Key = std::tuple<uint64_t, uint64_t, uint32_t, uint32_t>;  // (opening peer, accepting peer, slot, index)
    void loop();
    mutable std::mutex mu_;
    std::map<std::pair<Key, bool>, Half> halves_;  // (key, from the opening side) -> a half waiting for its other
    std::vector<std::shared_ptr<Pipe>> fresh_;     // joined, not yet taken by the loop
    RelayStats stats_;
    std::atomic<uint64_t> bytes_{0};
    std::atomic<bool> running_{false};
    net::Wakeup wake_;
    std::thread thread_;
};

}  // namespace pccl
