// The master's server loop: accepts connections, cuts the byte streams into frames and hands them to
// MasterState, then carries out the actions it returns. It makes no decisions of its own. A reachability probe
// (a TCP connect to a newcomer's data address, bounded by handshake_timeout) runs on a thread of its own so
// that the loop never blocks; its outcome comes back to MasterState through the loop.
//
// In a run with a secret the server, not MasterState, runs the handshake (handshake.hpp) on each new connection:
// frames reach MasterState only after the peer proved the secret, sealed both ways from then on. A connection
// that does not prove it is refused and closed with a logged address; MasterState sees only a connection that
// closed before its HELLO, so no group notices.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "transport/handshake.hpp"
#include "master/state.hpp"
#include "transport/net.hpp"
#include "transport/pool.hpp"

namespace pccl {

// The run's secret policy: no key, no authentication (loopback and trusted networks).
struct AuthConfig {
    std::optional<crypto::Key> key;
    bool encrypt = false;  // encrypt every frame of the run (needs a key)
};

// What the master holds for connections, whatever they claim (docs/protocol.md, "Limits"): frames before HELLO
// (the handshake, HELLO itself) carry at most kMaxGreetingPayload bytes and no connection ever carries DATA, so
// a length prefix cannot make it buffer more; past kMaxUngreeted connections waiting for their HELLO, those
// that have waited kUngreetedGrace seconds are dropped, oldest first (an honest peer says HELLO at once, so a
// crowd of peers joining together is not cut), and past 4x as many the oldest goes whatever its age; a peer
// that stops reading has at most kMaxQueuedOut bytes queued for it before it is dropped as lost.
constexpr uint32_t kMaxGreetingPayload = 8 << 10;
constexpr size_t kMaxUngreeted = 256;
constexpr double kUngreetedGrace = 0.5;
constexpr size_t kMaxQueuedOut = 8 << 20;

// The bytes queued for one connection, sent from the front. Sent bytes are passed over by an offset rather than
// erased from the front on every send (which moved the whole rest each time, O(queued) per send); the space is
// taken back when everything is sent, or once the sent part is at least as large as what is left, so each
// queued byte is moved at most once on average.
class Outbox {
public:
    void append(const std::vector<uint8_t>& bytes) { buf_.insert(buf_.end(), bytes.begin(), bytes.end()); }
    bool empty() const { return sent_ == buf_.size(); }
    size_t size() const { return buf_.size() - sent_; }  // queued and not sent yet
    const uint8_t* data() const { return buf_.data() + sent_; }
    void consume(size_t n);  // the first n bytes of data() went out

private:
    std::vector<uint8_t> buf_;
    size_t sent_ = 0;
};

// A copy of what the master knows, for monitoring (Master.status(), the HTTP side: docs/monitoring.md).
struct MasterStatus {
    MasterStats stats;
    Observed observed;
    std::vector<MasterState::PeerRow> peers;
    std::map<uint32_t, std::vector<uint64_t>> rings;  // by group, in ring order
    std::map<uint32_t, uint64_t> revisions;           // by group: the last committed shared-state revision
    std::vector<wire::LinkMeasure> links;
    double now = 0, started = 0;                      // master clock: this copy, the server's start
    uint64_t connections = 0, auth_failures = 0;      // TCP connections held now; handshakes failed so far (refused
                                                      // here, or left by a peer whose secret differs)
};

class MasterServer {
public:
    MasterServer(std::string listen, MasterConfig config, AuthConfig auth = {});
    ~MasterServer();
    void start();  // binds (port 0 allowed) and starts the loop thread
    void stop();   // closes every connection; peers see the master as unreachable
    std::string address() const;
    uint64_t epoch() const { return config_.epoch; }  // this incarnation's (docs/master.md)
    MasterStats stats() const;
    MasterStatus status() const;  // bounded work: O(peers + links + Observed::kRecent), under the state's lock
    std::vector<wire::LinkMeasure> links() const;
    bool running() const { return running_; }

private:
    struct Link {
        int fd = -1;
        std::string addr;
        net::FrameReader reader;
        Outbox out;
        bool closing = false;
        double since = 0;  // accepted at (steady seconds)
        enum Auth { kOpen, kWantHello, kWantProof, kSealed } auth = kOpen;
        std::unique_ptr<auth::Server> server;
        auth::Channel channel;
    };
    // Before the handshake is done, a frame goes here instead of MasterState; false: the link was closed.
    bool handshake_frame(uint64_t id, Link& link, const wire::Header& h, const std::vector<uint8_t>& payload, double now);
    void refuse(uint64_t id, Link& link, const std::string& reason, const std::string& log_reason, double now);
    void loop();
    void apply(std::vector<MasterAction> actions);
    void flush(Link& link);
    void close_link(uint64_t id);
    void drop_oldest_ungreeted(double now);  // past kMaxUngreeted
    void start_probe(uint64_t conn, const wire::PeerInfo& where);
    void collect_probes(double now);

    std::string listen_;
    MasterConfig config_;
    AuthConfig auth_;
    MasterState state_;
    mutable std::mutex mu_;  // guards state_ stats reads from other threads
    int listen_fd_ = -1;
    uint16_t port_ = 0;
    std::string host_;
    std::map<uint64_t, Link> links_;
    uint64_t next_conn_ = 1;
    struct ProbeResult {
        uint64_t conn;
        bool reachable;
        std::string reason;
    };
    std::mutex probe_mu_;  // guards probe_results_
    std::vector<ProbeResult> probe_results_;
    std::map<uint64_t, std::thread> probes_;  // by connection; joined when their result is collected, or at stop()
    std::atomic<bool> running_{false};
    std::atomic<double> cpu_seconds_{0};
    std::atomic<uint64_t> auth_failures_{0};
    double started_ = 0;  // the loop thread's CPU time, for stats()
    // The relay of last resort for two peers behind NAT with no reachable peer between them (docs/nat.md): a
    // data port of its own that serves relay requests only (PEER_HELLO for peer 0 is refused).
    ConnPool relay_;
    net::Wakeup wake_;
    std::thread thread_;
};

}  // namespace pccl
