// The connection pool of one peer: k TCP connections to its ring successor (outgoing, used to send) and the
// k connections its predecessor opened to it (incoming, used to receive). Connections are opened lazily when an
// operation needs them and kept across operations; an aborted operation clears the pool on every peer, so the
// next operation never reads bytes left over from the aborted one.
//
// Incoming connections announce themselves with PEER_HELLO (from, to, index) on the data port, in a run with a
// secret after the handshake; the accept thread runs one Greeting (greeting.hpp) per connection, with a
// handshake deadline: garbage, a wrong version, a hello meant for another peer or a missing secret closes that
// connection with a logged reason and nothing else changes.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "transport/handshake.hpp"
#include "transport/link.hpp"
#include "transport/net.hpp"

namespace pccl {


struct ConnStat {
    uint64_t peer;
    uint32_t slot;
    uint32_t index;
    bool outgoing;
    uint64_t bytes;
};

class ConnPool final : public LinkSource {
public:
    ConnPool() = default;
    ~ConnPool() override;
    uint16_t start(const std::string& host, uint16_t port, double handshake_timeout);
    void stop();
    void set_self(uint64_t id) { self_ = id; }
    // A run with a secret: the run key (before start()), and the master's encryption policy once known (data
    // connections are refused until then: no peer of the run dials us before the master admitted us).
    void set_key(const crypto::Key& key) { key_ = key; }
    void set_policy(bool encrypt) { encrypt_ = encrypt; policy_known_ = true; }

    // The outgoing connection (slot, index) to `to`, opened (and greeted) now if there is none.
    ConnPtr outgoing(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double connect_timeout) override;
    // The incoming connection (slot, index) from peer `from`, or null if it has not arrived yet.
    ConnPtr incoming(uint64_t from, uint32_t slot, uint32_t index) override;
    // Closes one connection (found stale or broken) so that a replacement can take its place.
    void discard(const ConnPtr& c) override;
    // Closes the connections of one slot, after an operation on it aborted: the next one starts fresh.
    void clear_slot(uint32_t slot);
    // Closes every connection: on shutdown.
    void clear();
    // Closes connections to and from peers that are no longer in the ring.
    void retain(const std::set<uint64_t>& peers);
    std::vector<ConnStat> stats() const;
    uint64_t dropped() const { return dropped_; }

private:
    void accept_loop();
    mutable std::mutex mu_;
    std::map<std::tuple<uint64_t, uint32_t, uint32_t, bool>, ConnPtr> conns_;  // (peer, slot, index, outgoing)
    std::atomic<uint64_t> self_{0};
    std::atomic<uint64_t> dropped_{0};
    int listen_fd_ = -1;
    std::string source_;  // the listen host when it is a specific address: outgoing connections come from it
    double handshake_timeout_ = 5.0;
    std::atomic<bool> running_{false};
    std::optional<crypto::Key> key_;
    std::atomic<bool> encrypt_{false}, policy_known_{false};
    net::Wakeup wake_;
    std::thread thread_;
};

}  // namespace pccl
