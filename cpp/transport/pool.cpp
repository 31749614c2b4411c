#include "transport/pool.hpp"

#include <cerrno>
#include <poll.h>
#include <sys/socket.h>

#include "base/log.hpp"
#include "transport/greeting.hpp"
#include "transport/tcp_stream.hpp"

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
    c->stream = std::make_unique<TcpStream>(fd);  // closed with c on any failure below
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
    if (entry) entry->stream->shutdown();
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
    c->stream->shutdown();
}

void ConnPool::clear_slot(uint32_t slot) {
    std::lock_guard<std::mutex> g(mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
        if (it->second->slot != slot) { ++it; continue; }
        it->second->stream->shutdown();
        it = conns_.erase(it);
    }
}

void ConnPool::clear() {
    std::lock_guard<std::mutex> g(mu_);
    for (auto& [key, c] : conns_) c->stream->shutdown();
    conns_.clear();
}

void ConnPool::retain(const std::set<uint64_t>& peers) {
    std::lock_guard<std::mutex> g(mu_);
    for (auto it = conns_.begin(); it != conns_.end();) {
        if (peers.count(it->second->peer)) { ++it; continue; }
        it->second->stream->shutdown();
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
constexpr size_t kMaxWaiting = 256;  // connections waiting for their greeting; beyond, the oldest is dropped
}  // namespace

void ConnPool::accept_loop() {
    std::vector<std::unique_ptr<Greeting>> waiting;  // connections that have not finished their greeting
    auto drop = [&](Greeting& g) {
        log_warn("data port: dropping connection from " + g.who() + ": " + g.why());
        dropped_++;
    };
    while (running_) {
        std::vector<pollfd> pfds{{wake_.fd(), POLLIN, 0}, {listen_fd_, POLLIN, 0}};
        for (auto& g : waiting) pfds.push_back({g->fd(), POLLIN, 0});
        ::poll(pfds.data(), pfds.size(), 100);
        if (!running_) break;
        const double now = net::now_seconds();
        if (pfds[1].revents & POLLIN) {
            for (;;) {
                std::string who;
                const int fd = net::accept_on(listen_fd_, &who);
                if (fd < 0) break;
                waiting.push_back(std::make_unique<Greeting>(fd, who, now + handshake_timeout_));
            }
            // A flood of connections that never greet cannot hold the port: an honest peer greets at once.
            for (size_t k = 0; k + kMaxWaiting < waiting.size(); k++) {
                waiting[k]->refuse("more than " + std::to_string(kMaxWaiting) + " connections wait for their greeting");
                drop(*waiting[k]);
            }
        }
        const GreetingPolicy policy{self_, key_ ? &*key_ : nullptr, bool(policy_known_), bool(encrypt_)};
        for (auto& g : waiting) {
            if (g->fd() < 0) continue;
            switch (g->step(policy, now)) {
                case Greeting::kWaiting: break;
                case Greeting::kProbe: log_debug("data port: " + g->who() + " connected and closed (a reachability probe)"); break;
                case Greeting::kRefused: drop(*g); break;
                case Greeting::kGreeted: {
                    ConnPtr c = g->conn();
                    std::lock_guard<std::mutex> lock(mu_);
                    auto& entry = conns_[{c->peer, c->slot, c->index, false}];
                    if (entry) entry->stream->shutdown();
                    entry = std::move(c);
                    break;
                }
            }
        }
        std::erase_if(waiting, [](const std::unique_ptr<Greeting>& g) { return g->fd() < 0; });
    }
}

}  // namespace pccl
