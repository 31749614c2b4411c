#include "transport/pool.hpp"

#include <cerrno>
#include <poll.h>
#include <sys/socket.h>

#include "base/log.hpp"
#include "transport/greeting.hpp"
#include "transport/tcp_stream.hpp"

namespace pccl {

ConnPool::~ConnPool() { stop(); }

uint16_t ConnPool::start(const std::string& host, uint16_t port, double handshake_timeout, bool listen) {
    uint16_t bound = 0;
    if (listen) listen_fd_ = net::listen_on(host, port, &bound);
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
    arrived_.notify_all();
    cancel_.signal();  // never drained: every connect of this pool from now on ends at once
    {
        std::unique_lock<std::mutex> g(mu_);
        for (int fd : dial_fds_) ::shutdown(fd, SHUT_RDWR);  // a greeting waiting for its answer ends too
        dialers_done_.wait(g, [this] { return dialing_ == 0; });
    }
    relay_.stop();
    net::close_fd(listen_fd_);
    {
        std::lock_guard<std::mutex> g(mu_);
        for (auto& a : adopted_) net::close_fd(a.fd);
        adopted_.clear();
    }
    clear();
}

ConnPtr ConnPool::outgoing(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double connect_timeout) {
    Route how;
    {
        std::lock_guard<std::mutex> g(mu_);
        auto it = conns_.find({to.id, slot, index, true});
        if (it != conns_.end() && !closed_by_peer(*it->second->stream)) return it->second;
        if (it != conns_.end()) {  // closed at the other end since (a call that came late for an aborted one)
            it->second->stream->shutdown();
            conns_.erase(it);
        }
        how = route(self_, to.id);
    }
    const double deadline = net::now_seconds() + connect_timeout;
    ConnPtr c = how == Route::kOpen ? open(to, slot, index, deadline)
              : how == Route::kCall ? await_call(to, slot, index, deadline)
                                    : open_relayed(to, slot, index, deadline);
    if (how == Route::kCall) return c;  // registered by the accept thread
    std::lock_guard<std::mutex> g(mu_);
    auto& entry = conns_[{to.id, slot, index, true}];
    if (entry) entry->stream->shutdown();
    entry = c;
    return c;
}

ConnPtr ConnPool::incoming(uint64_t from, uint32_t slot, uint32_t index) {
    {
        std::lock_guard<std::mutex> g(mu_);
        auto it = conns_.find({from, slot, index, false});
        if (it != conns_.end()) return it->second;
        auto d = dials_.find({from, slot, index});
        if (d != dials_.end() && !d->second.failed.empty()) {
            const std::string why = d->second.failed;
            dials_.erase(d);  // the next call dials again
            throw CoreError(ErrorKind::kPeerLost, why);
        }
    }
    expect(from, slot, index);
    return nullptr;
}

void ConnPool::discard(const ConnPtr& c) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = conns_.find({c->peer, c->slot, c->index, c->outgoing});
    if (it != conns_.end() && it->second == c) conns_.erase(it);
    c->stream->shutdown();
}

void ConnPool::clear_slot(uint32_t slot) {
    std::lock_guard<std::mutex> g(mu_);
    forget_dials([slot](const Key& k) { return std::get<1>(k) == slot; });
    for (auto it = conns_.begin(); it != conns_.end();) {
        if (it->second->slot != slot) { ++it; continue; }
        it->second->stream->shutdown();
        it = conns_.erase(it);
    }
}

void ConnPool::clear() {
    std::lock_guard<std::mutex> g(mu_);
    forget_dials([](const Key&) { return true; });
    for (auto& [key, c] : conns_) c->stream->shutdown();
    conns_.clear();
}

void ConnPool::retain(const std::set<uint64_t>& peers) {
    std::lock_guard<std::mutex> g(mu_);
    forget_dials([&](const Key& k) { return !peers.count(std::get<0>(k)); });
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
    std::map<const Greeting*, Key> ours;              // those this peer dialed for an incoming connection
    auto drop = [&](Greeting& g) {
        log_warn("data port: dropping connection from " + g.who() + ": " + g.why());
        dropped_++;
        auto mine = ours.find(&g);
        if (mine == ours.end()) return;
        std::lock_guard<std::mutex> lock(mu_);
        auto d = dials_.find(mine->second);
        if (d != dials_.end()) d->second.failed = "the relayed connection from peer " + std::to_string(std::get<0>(mine->second)) +
                                                  " failed its greeting: " + g.why();
        ours.erase(mine);
    };
    while (running_) {
        std::vector<pollfd> pfds{{wake_.fd(), POLLIN, 0}, {listen_fd_, POLLIN, 0}};
        for (auto& g : waiting) pfds.push_back({g->fd(), POLLIN, 0});
        ::poll(pfds.data(), pfds.size(), 100);
        if (!running_) break;
        const double now = net::now_seconds();
        {
            std::lock_guard<std::mutex> lock(mu_);
            for (auto& a : adopted_) {
                waiting.push_back(std::make_unique<Greeting>(a.fd, a.who, now + handshake_timeout_));
                ours[waiting.back().get()] = a.key;
            }
            adopted_.clear();
        }
        if (listen_fd_ >= 0 && (pfds[1].revents & POLLIN)) {
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
        {  // a connection this peer dialed for an incoming one that is no longer wanted (its slot was cleared)
            std::lock_guard<std::mutex> lock(mu_);
            for (auto& g : waiting) {
                auto mine = ours.find(g.get());
                if (mine == ours.end() || dials_.count(mine->second)) continue;
                ours.erase(mine);
                g->refuse("no longer wanted");
            }
        }
        const GreetingPolicy policy{self_, key_ ? &*key_ : nullptr, bool(policy_known_), bool(encrypt_), true};
        for (auto& g : waiting) {
            if (g->fd() < 0) continue;
            switch (g->step(policy, now)) {
                case Greeting::kWaiting: break;
                case Greeting::kProbe:
                    if (ours.count(g.get())) {  // a relay that closed what this peer dialed before anything came
                        g->refuse("the relay closed the connection");
                        drop(*g);
                    } else {
                        log_debug("data port: " + g->who() + " connected and closed (a reachability probe)");
                    }
                    break;
                case Greeting::kRefused: drop(*g); break;
                case Greeting::kGreeted: {
                    ours.erase(g.get());
                    const wire::PeerHello& h = g->hello();
                    ConnPtr c = g->conn();
                    if (h.mode == kRelayOpen || h.mode == kRelayAccept) {
                        relay_.offer(std::move(c), h.from, h.to, h.mode, now + handshake_timeout_);
                        break;
                    }
                    std::lock_guard<std::mutex> lock(mu_);
                    auto& entry = conns_[{c->peer, c->slot, c->index, c->outgoing}];
                    if (entry) entry->stream->shutdown();
                    if (!c->outgoing) dials_.erase({c->peer, c->slot, c->index});
                    entry = std::move(c);
                    arrived_.notify_all();
                    break;
                }
            }
        }
        std::erase_if(waiting, [&](const std::unique_ptr<Greeting>& g) {
            if (g->fd() >= 0) return false;
            ours.erase(g.get());
            return true;
        });
    }
}

}  // namespace pccl
