// An in-memory network for tests: the same LinkSource as the TCP pool (link.hpp), with connections that are
// byte queues in this process, so the ring and the state transfer run without sockets, peers as threads.
//
// How this works. Dialing (from, to, slot, index) makes a pair of MemoryStreams over one Pipe: two bounded byte
// queues (so a slow reader blocks its writer, as a full socket does) and a Wakeup per end, signalled whenever
// the other end writes, reads or shuts down, so wait_for() polls them like sockets. The far end is filed where
// the receiver's incoming() finds it. A Fault, set before the dial, acts on the bytes one direction carries,
// counted from the connection's first byte: kFail ends the connection after `at` bytes (the reader sees it
// closed, the writer an error: a peer that died mid-piece), kStall delivers `at` bytes and then nothing (a
// SIGSTOPped peer: deadlines must fire), kCorrupt flips the byte at offset `at` (a network that changes bytes).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <tuple>

#include "transport/link.hpp"

namespace pccl {

struct Fault {
    enum Kind { kNone, kFail, kStall, kCorrupt } kind = kNone;
    uint64_t at = 0;  // bytes into the faulty direction
};

class MemoryNetwork : public std::enable_shared_from_this<MemoryNetwork> {
public:
    // With a key, every connection is sealed as in a run with a secret (the handshake is done in memory at the
    // dial): the data link's integrity checks run as over TCP.
    static std::shared_ptr<MemoryNetwork> create(size_t queue_bytes = 256 << 10,
                                                 std::optional<crypto::Key> key = std::nullopt, bool encrypt = false);
    // The network as peer `self` sees it.
    std::unique_ptr<LinkSource> endpoint(uint64_t self);
    // The next connection dialed from `from` to `to` on connection `index` (any slot) gets `fault` on the bytes
    // it carries from `from` to `to`.
    void inject(uint64_t from, uint64_t to, uint32_t index, Fault fault);

private:
    friend class MemoryEndpoint;
    MemoryNetwork(size_t queue_bytes, std::optional<crypto::Key> key, bool encrypt)
        : queue_bytes_(queue_bytes), key_(key), encrypt_(encrypt) {}
    ConnPtr dial(uint64_t from, const wire::PeerInfo& to, uint32_t slot, uint32_t index);
    ConnPtr accepted(uint64_t self, uint64_t from, uint32_t slot, uint32_t index);
    void forget(uint64_t self, const ConnPtr& c);

    using Key = std::tuple<uint64_t, uint64_t, uint32_t, uint32_t, bool>;  // (self, peer, slot, index, outgoing)
    std::mutex mu_;
    size_t queue_bytes_;
    std::optional<crypto::Key> key_;
    bool encrypt_;
    std::map<Key, ConnPtr> conns_;
    std::map<std::tuple<uint64_t, uint64_t, uint32_t>, Fault> faults_;  // (from, to, index)
};

}  // namespace pccl
