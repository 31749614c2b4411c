// The greeting of one incoming data connection, as a state machine of its own (the pool's accept thread drives
// one per connection). How this works: a new connection must first say who it is, PEER_HELLO(from, to, index,
// slot); in a run with a secret it first proves the secret (AUTH_HELLO → AUTH_CHALLENGE → AUTH_PROOF,
// handshake.hpp) and then sends PEER_HELLO sealed. step() reads exactly one frame at a time, never more, so the
// data that follows stays in the socket for the operation that uses it, and says what became of the connection:
// still greeting, a reachability probe (closed without a byte), refused (why), or greeted (its Conn, ready for
// the pool, and the PEER_HELLO's mode: a connection opened to this peer, a call from a peer that cannot be dialed,
// or half of a connection to relay, docs/nat.md). Anything else — garbage, a wrong version, a hello meant for another peer, a missing or wrong
// secret, silence past the deadline — refuses it, and nothing it sent was acted on.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "transport/handshake.hpp"
#include "transport/link.hpp"

namespace pccl {

// What a data port knows when it judges a greeting; read at every step (the policy arrives with admission).
struct GreetingPolicy {
    uint64_t self = 0;                 // this peer's id: PEER_HELLO must be for it
    const crypto::Key* key = nullptr;  // a run with a secret: its key
    bool policy_known = false;         // the master's encryption policy has arrived (else no handshake yet)
    bool encrypt = false;
    bool relays = true;                // relay requests are served (PEER_HELLO modes 2 and 3)
};

// PEER_HELLO.mode (wire/messages.hpp).
enum HelloMode : uint8_t { kOpen = 0, kCall = 1, kRelayOpen = 2, kRelayAccept = 3 };

class Greeting {
public:
    enum Status { kWaiting, kProbe, kRefused, kGreeted };
    Greeting(int fd, std::string who, double deadline) : fd_(fd), who_(std::move(who)), deadline_(deadline) {}
    ~Greeting();
    Greeting(const Greeting&) = delete;
    Greeting& operator=(const Greeting&) = delete;
    // Reads what is there (non-blocking) and acts on whole frames. kRefused: why() says why, the socket is closed;
    // kProbe: closed; kGreeted: take conn().
    Status step(const GreetingPolicy& policy, double now);
    int fd() const { return fd_; }
    const std::string& who() const { return who_; }
    const std::string& why() const { return why_; }
    ConnPtr conn() { return std::move(conn_); }
    const wire::PeerHello& hello() const { return hello_; }  // once greeted
    void refuse(const std::string& why);  // closes the socket now (the accept loop's own reasons)

private:
    enum Stage { kFirst, kProof, kSealedHello };
    static constexpr size_t kMaxGreeting = 64;  // payload bytes of any greeting frame
    static constexpr size_t kHelloBytes = 25;   // PEER_HELLO's payload
    void on_frame(const wire::Header& hdr, const GreetingPolicy& policy);  // throws CoreError to refuse
    int fd_;
    std::string who_, why_;
    double deadline_;
    Stage stage_ = kFirst;
    uint8_t buf_[wire::kHeaderSize + kMaxGreeting + crypto::kTagBytes] = {};
    size_t got_ = 0;
    std::unique_ptr<auth::Server> server_;
    auth::Channel channel_;
    ConnPtr conn_;
    wire::PeerHello hello_;
};

}  // namespace pccl
