// The connection pool of one peer: k TCP connections to its ring successor (outgoing, used to send) and the
// k connections its predecessor opened to it (incoming, used to receive). Connections are opened lazily when an
// operation needs them and kept across operations; an aborted operation clears the pool on every peer, so the
// next operation never reads bytes left over from the aborted one.
//
// Incoming connections announce themselves with PEER_HELLO (from, to, index) on the data port, in a run with a
// secret after the handshake; the accept thread runs one Greeting (greeting.hpp) per connection, with a
// handshake deadline: garbage, a wrong version, a hello meant for another peer or a missing secret closes that
// connection with a logged reason and nothing else changes.
//
// Who dials (docs/nat.md). The pool knows the group (set_directory: each peer's address and whether it accepts
// connections) and picks, for each connection, how it comes to be; the algorithms only ask for outgoing and
// incoming connections as before:
//   - the accepting side can be dialed: the opening side dials it (kOpen), as always;
//   - only the opening side can be dialed: the accepting side dials it and offers the connection (kCall);
//     outgoing() then waits for that call, and incoming()/expect() start it in the background;
//   - neither can: both dial a relay (relay.hpp), a peer of the group that accepts connections, chosen from the
//     pair alone so both ends agree, or the master's relay port when the group has none; the opening side
//     then greets the accepting side through the pipe, end to end.
// No connection is ever dialed towards a peer that does not accept connections. The data port relays for
// others (Relay), and a peer without a data port (listen none) still greets what it dialed itself.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "transport/handshake.hpp"
#include "transport/link.hpp"
#include "transport/net.hpp"
#include "transport/relay.hpp"

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
    // Opens the data port (host empty and port 0 with `listen` false: none; the pool then only dials) and
    // starts the accept thread.
    uint16_t start(const std::string& host, uint16_t port, double handshake_timeout, bool listen = true);
    void stop();
    void set_self(uint64_t id) { self_ = id; }
    // A run with a secret: the run key (before start()), and the master's encryption policy once known (data
    // connections are refused until then: no peer of the run dials us before the master admitted us).
    void set_key(const crypto::Key& key) { key_ = key; }
    void set_policy(bool encrypt) { encrypt_ = encrypt; policy_known_ = true; }
    // The group as the master last described it (the ring of a topology result or an operation): who accepts
    // connections. A peer not in it counts as accepting them.
    void set_directory(const std::vector<wire::PeerInfo>& peers);
    // The master's relay (WELCOME.relay_port at the address this peer reached the master on); port 0: none.
    void set_master_relay(const std::string& host, uint16_t port);
    bool listening() const { return listen_fd_ >= 0; }

    // The outgoing connection (slot, index) to `to`, opened (and greeted) now if there is none.
    ConnPtr outgoing(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double connect_timeout) override;
    // The incoming connection (slot, index) from peer `from`, or null if it has not arrived yet.
    // Throws CoreError(kPeerLost) when this peer had to dial for it (a call or a relay) and that failed.
    ConnPtr incoming(uint64_t from, uint32_t slot, uint32_t index) override;
    void expect(uint64_t from, uint32_t slot, uint32_t index) override;
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
    RelayStats relay_stats() const { return relay_.stats(); }
    // Connections this peer opened through a relay (as either end), and of those through the master's.
    uint64_t relayed() const { return relayed_; }
    uint64_t master_relayed() const { return master_relayed_; }

private:
    using Key = std::tuple<uint64_t, uint32_t, uint32_t>;  // (peer, slot, index) of one connection
    enum class Route { kOpen, kCall, kRelay };
    struct Dial {          // a connection this peer dials for its accepting side (a call, or a relay's half)
        uint64_t gen = 0;  // this dial's number: a dial that finds another number (or none) under its key is stale
        std::string failed;  // why it failed (empty while it runs or once it succeeded)
    };
    void accept_loop();
    Route route(uint64_t opener, uint64_t acceptor) const;  // under mu_
    wire::PeerInfo relay_for(uint64_t a, uint64_t b, bool* master) const;  // under mu_
    ConnPtr open(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double deadline);
    ConnPtr open_relayed(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double deadline);
    ConnPtr await_call(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double deadline);
    void dial_for_incoming(uint64_t from, uint32_t slot, uint32_t index, uint64_t gen);
    // Dials `where` and says `hello` (sealed after a handshake in a run with a secret): a stream and its channel.
    ConnPtr dial_and_greet(const wire::PeerInfo& where, const wire::PeerHello& hello, double deadline);
    // A socket listed in dial_fds_ while this lives (throws kPeerLost if the pool is stopping).
    class Dialing {
    public:
        Dialing(ConnPool* pool, int fd);
        ~Dialing();
        Dialing(const Dialing&) = delete;
        Dialing& operator=(const Dialing&) = delete;

    private:
        ConnPool* pool_;
        int fd_;
    };
    void forget_dials(const std::function<bool(const Key&)>& which);  // under mu_
    mutable std::mutex mu_;
    std::condition_variable arrived_;  // a call (an outgoing connection offered by its peer) was registered
    std::map<uint64_t, wire::PeerInfo> directory_;
    wire::PeerInfo master_relay_;
    std::map<Key, Dial> dials_;
    uint64_t dial_gen_ = 0;
    size_t dialing_ = 0;  // dialer threads running (detached; stop() waits for them)
    std::condition_variable dialers_done_;
    // Sockets being dialed or greeted now: stop() cuts them (and cancel_ ends connects), so that close() never
    // waits for a dial to a peer that does not answer.
    std::set<int> dial_fds_;
    net::Wakeup cancel_;
    struct Adopted {
        int fd;
        std::string who;
        Key key;
    };
    std::vector<Adopted> adopted_;  // handed to the accept thread, not yet taken
    Relay relay_;
    std::atomic<uint64_t> relayed_{0}, master_relayed_{0};
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
