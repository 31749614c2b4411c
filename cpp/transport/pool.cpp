#include "transport/pool.hpp"

#include <cerrno>
#include <poll.h>
#include <sys/socket.h>

#include "base/log.hpp"

namespace pccl {

ConnPool::~ConnPool() { stop(); }

uint16_t ConnPool::start(const std::string& host, uint16_t port, double handshake_timeout) {
    uint16_t bound = 0;
    listen_fd_ = net::listen_on(host, port, &bound);
    // A peer that listens on one address of a multi-homed host also dials from it (the emulated regions of
    // pccl_arrays.wan_regions tell peers apart by it).
    source_ = (host.empty() || host == "0.0.0.0" || host == "::") ? "" : host;
    handshake_timeout_ = handshake_timeout;
    running_ = true;
    thread_ = std::thread([this] { accept_loop(); });
    return bound;
}

void ConnPool::stop() {
    if (running_.exchange(false)) {
        wake_.signal();
        if (thread_.joinable()) thread_.join();
    }
    net::close_fd(listen_fd_);
    clear();
}

ConnPtr ConnPool::outgoing(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double connect_timeout) {
    {
        std::lock_guard<std::mutex> g(mu_);
        auto it = conns_.find({to.id, slot, index, true});
        if (it != conns_.end()) return it->second;
    }
    const double deadline = net::now_seconds() + connect_timeout;
    int fd = net::connect_to(net::Address{to.host, to.port}, connect_timeout, source_);
    auto c = std::make_shared<Conn>();
    c->fd = fd;  // closed with c on any failure below
    auto hello = wire::frame(wire::MsgType::kPeerHello, wire::PeerHello{self_, to.id, index, slot});
    if (key_) {
        const std::string who = "peer " + std::to_string(to.id) + " at " + to.host + ":" + std::to_string(to.port);
        c->channel = auth::client_handshake(fd, *key_, auth::kDataLink, bool(encrypt_), deadline, who);
        auth::seal_frame(hello, *c->tx());
    }
    int err = 0;
    if (!net::send_all(fd, hello.data(), hello.size(), &err)) {
        throw CoreError(ErrorKind::kPeerLost, errno_text("greeting peer " + std::to_string(to.id) + " at " + to.host + ":" +
                                                             std::to_string(to.port) + " failed",
                                                         err));
    }
    c->peer = to.id;
    c->slot = slot;
    c->index = index;
    c->outgoing = true;
    std::lock_guard<std::mutex> g(mu_);
    auto& entry = conns_[{to.id, slot, index, true}];
    if (entry) ::shutdown(entry->fd, SHUT_RDWR);
    entry = c;
    return c;
}

ConnPtr ConnPool::incoming(uint64_t from, uint32_t slot, uint32_t index) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = conns_.find({from, slot, index, false});
    return it == conns_.end() ? nullptr : it->second;
}

void ConnPool::discard(const ConnPtr& c) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = conns_.find({c->peer, c->slot, c->index, c->outgoing});
    if (it != conns_.end() && it->second == c) conns_.erase(it);
    ::shutdown(c->fd, SHUT_RDWR);
}

void ConnPool::clear_slot(uint32_t slot) {
    std::lock_guard<std::mutex> g(mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
        if (it->second->slot != slot) { ++it; continue; }
        ::shutdown(it->second->fd, SHUT_RDWR);
        it = conns_.erase(it);
    }
}

void ConnPool::clear() {
    std::lock_guard<std::mutex> g(mu_);
    for (auto& [key, c] : conns_) ::shutdown(c->fd, SHUT_RDWR);
    conns_.clear();
}

void ConnPool::retain(const std::set<uint64_t>& peers) {
    std::lock_guard<std::mutex> g(mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
        if (peers.count(it->second->peer)) { ++it; continue; }
        ::shutdown(it->second->fd, SHUT_RDWR);
        it = conns_.erase(it);
    }
}

std::vector<ConnStat> ConnPool::stats() const {
    std::lock_guard<std::mutex> g(mu_);
    std::vector<ConnStat> out;
    for (const auto& [key, c] : conns_) out.push_back({c->peer, c->slot, c->index, c->outgoing, c->bytes.load()});
    return out;
}

namespace {
// A connection that has not finished its greeting yet: PEER_HELLO, or in a run with a secret the handshake and
// then a sealed PEER_HELLO. It reads exactly one frame at a time, never more, so any data that follows stays
// in the socket for the operation that will use it.
constexpr size_t kMaxGreeting = 64;  // payload bytes of any greeting frame
constexpr size_t kMaxWaiting = 256;  // connections waiting for their greeting; beyond, the oldest is dropped
struct Handshake {
    int fd = -1;
    std::string who;
    double deadline = 0;
    enum Stage { kFirst, kProof, kSealedHello } stage = kFirst;
    uint8_t buf[wire::kHeaderSize + kMaxGreeting + crypto::kTagBytes] = {};
    size_t got = 0;
    std::unique_ptr<auth::Server> server;
    auth::Channel channel;
};

// Best effort: tells the other side why it is refused (it may be an honest peer with another configuration).
void refuse_with(int fd, const std::string& reason) {
    auto f = wire::frame(wire::MsgType::kAuthRefused, wire::AuthRefused{reason});
    [[maybe_unused]] ssize_t n = ::send(fd, f.data(), f.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}
}  // namespace

void ConnPool::accept_loop() {
    std::vector<Handshake> shakes;
    auto reject = [&](Handshake& h, const std::string& why) {
        log_warn("data port: dropping connection from " + h.who + ": " + why);
        dropped_++;
        net::close_fd(h.fd);
    };
    // A whole greeting frame is in h.buf: act on it (throws to reject the connection; the last greeting hands
    // it to the pool).
    auto greeted = [&](Handshake& h, const wire::Header& hdr) {
        const uint8_t* payload = h.buf + wire::kHeaderSize;
        if (h.stage == Handshake::kFirst && hdr.type == uint16_t(wire::MsgType::kAuthHello)) {
            if (!key_) {
                refuse_with(h.fd, "this peer's run has no secret, and the connecting peer has one");
                throw CoreError(ErrorKind::kAuthentication, "a handshake, but this run has no secret");
            }
            if (!policy_known_) throw CoreError(ErrorKind::kAuthentication, "a handshake before this peer was admitted");
            h.server = std::make_unique<auth::Server>(*key_, auth::kDataLink, bool(encrypt_));
            auto challenge = wire::frame(wire::MsgType::kAuthChallenge,
                                         h.server->challenge(wire::decode_payload<wire::AuthHello>({payload, payload + hdr.length})));
            int err = 0;
            if (!net::send_all(h.fd, challenge.data(), challenge.size(), &err)) throw CoreError(ErrorKind::kNetwork, errno_text("send", err));
            h.stage = Handshake::kProof;
            return;
        }
        if (h.stage == Handshake::kProof) {
            if (hdr.type != uint16_t(wire::MsgType::kAuthProof))
                throw CoreError(ErrorKind::kAuthentication, "expected AUTH_PROOF, got type " + std::to_string(hdr.type));
            h.server->verify(wire::decode_payload<wire::AuthProof>({payload, payload + hdr.length}));
            h.channel = h.server->channel();
            h.stage = Handshake::kSealedHello;
            return;
        }
        if (hdr.type != uint16_t(wire::MsgType::kPeerHello) || hdr.length != 24)
            throw CoreError(ErrorKind::kProtocol, "expected PEER_HELLO, got type " + std::to_string(hdr.type));
        if (h.stage == Handshake::kFirst && key_) {
            refuse_with(h.fd, "this peer's run requires its secret");
            throw CoreError(ErrorKind::kAuthentication, "a connection without the run's secret");
        }
        uint8_t* body = h.buf + wire::kHeaderSize;
        if (h.stage == Handshake::kSealedHello && !h.channel.rx->open(h.buf, wire::kHeaderSize, body, 24, body + 24))
            throw CoreError(ErrorKind::kAuthentication, "a sealed PEER_HELLO failed its integrity check");
        wire::Reader r(body, 24);
        auto hello = wire::decode<wire::PeerHello>(r);
        if (hello.to != self_)
            throw CoreError(ErrorKind::kProtocol, "PEER_HELLO for peer " + std::to_string(hello.to) +
                                                      ", this is peer " + std::to_string(self_.load()));
        auto c = std::make_shared<Conn>();
        c->fd = h.fd;
        c->peer = hello.from;
        c->slot = hello.slot;
        c->index = hello.index;
        c->channel = std::move(h.channel);
        h.fd = -1;  // owned by the pool now
        std::lock_guard<std::mutex> g(mu_);
        auto& entry = conns_[{c->peer, c->slot, c->index, false}];
        if (entry) ::shutdown(entry->fd, SHUT_RDWR);
        entry = c;
    };
    while (running_) {
        std::vector<pollfd> pfds{{wake_.fd(), POLLIN, 0}, {listen_fd_, POLLIN, 0}};
        for (auto& h : shakes) pfds.push_back({h.fd, POLLIN, 0});
        ::poll(pfds.data(), pfds.size(), 100);
        if (!running_) break;
        const double now = net::now_seconds();
        if (pfds[1].revents & POLLIN) {
            for (;;) {
                Handshake h;
                h.fd = net::accept_on(listen_fd_, &h.who);
                if (h.fd < 0) break;
                h.deadline = now + handshake_timeout_;
                shakes.push_back(std::move(h));
            }
            // A flood of connections that never greet cannot hold the port: an honest peer greets at once.
            for (size_t k = 0; k + kMaxWaiting < shakes.size(); k++)
                reject(shakes[k], "more than " + std::to_string(kMaxWaiting) + " connections wait for their greeting");
        }
        for (auto& h : shakes) {
            if (h.fd < 0) continue;
            try {
                // The frame's size is known once its header is in (the tag follows a sealed frame).
                wire::Header hdr;
                auto frame_size = [&] {
                    hdr = wire::decode_header(h.buf);
                    if (hdr.length > kMaxGreeting)
                        throw CoreError(ErrorKind::kProtocol, "a greeting of " + std::to_string(hdr.length) + " bytes");
                    return wire::kHeaderSize + hdr.length + (h.stage == Handshake::kSealedHello ? crypto::kTagBytes : 0);
                };
                size_t want = h.got >= wire::kHeaderSize ? frame_size() : wire::kHeaderSize;
                const ssize_t n = ::recv(h.fd, h.buf + h.got, want - h.got, MSG_DONTWAIT);
                if (n == 0 && h.got == 0 && h.stage == Handshake::kFirst) {
                    // connected and closed without a byte: the master's reachability probe
                    log_debug("data port: " + h.who + " connected and closed (a reachability probe)");
                    net::close_fd(h.fd);
                    continue;
                }
                if (n == 0) { reject(h, "closed during the handshake"); continue; }
                if (n < 0) {
                    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) reject(h, errno_text("recv", errno));
                    else if (now > h.deadline) reject(h, "no PEER_HELLO within the handshake deadline");
                    continue;
                }
                h.got += size_t(n);
                if (h.got == wire::kHeaderSize) want = frame_size();
                if (h.got < want) continue;
                h.got = 0;
                greeted(h, hdr);
            } catch (const CoreError& e) {
                reject(h, e.what());
            }
        }
        std::erase_if(shakes, [](const Handshake& h) { return h.fd < 0; });
    }
    for (auto& h : shakes) net::close_fd(h.fd);
}

}  // namespace pccl
