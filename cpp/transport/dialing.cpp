// Who dials each connection of the pool (pool.hpp, "Who dials"): the route of a connection from the opening
// peer to the accepting one, and the three ways it comes to be — dialed by the opening side, called in by the
// accepting side, or joined at a relay. Everything else of the pool (its map, the accept thread) is pool.cpp.
#include <cerrno>

#include "base/log.hpp"
#include "transport/greeting.hpp"
#include "transport/pool.hpp"
#include "transport/tcp_stream.hpp"

namespace pccl {

namespace {
std::string where(const wire::PeerInfo& p) { return p.host + ":" + std::to_string(p.port); }
}  // namespace

void ConnPool::set_directory(const std::vector<wire::PeerInfo>& peers) {
    std::lock_guard<std::mutex> g(mu_);
    directory_.clear();
    for (const auto& p : peers) directory_[p.id] = p;
}

void ConnPool::set_master_relay(const std::string& host, uint16_t port) {
    std::lock_guard<std::mutex> g(mu_);
    master_relay_ = wire::PeerInfo{0, host, port, 1};
}

ConnPool::Route ConnPool::route(uint64_t opener, uint64_t acceptor) const {
    auto inbound = [&](uint64_t id) {
        auto it = directory_.find(id);
        if (it != directory_.end()) return it->second.inbound != 0;
        return id == self_ ? listen_fd_ >= 0 : true;
    };
    if (inbound(acceptor)) return Route::kOpen;
    return inbound(opener) ? Route::kCall : Route::kRelay;
}

wire::PeerInfo ConnPool::relay_for(uint64_t a, uint64_t b, bool* master) const {
    std::vector<const wire::PeerInfo*> candidates;  // in id order: every peer computes the same list
    for (const auto& [id, p] : directory_)
        if (p.inbound && id != a && id != b) candidates.push_back(&p);
    *master = candidates.empty();
    if (*master) {
        if (master_relay_.port == 0)
            throw CoreError(ErrorKind::kNetwork, "peers " + std::to_string(a) + " and " + std::to_string(b) +
                                                     " both accept no connections, and neither a peer of the group "
                                                     "nor the master can relay between them");
        return master_relay_;
    }
    // The pair alone picks the relay (both ends compute it), spread over the candidates.
    const uint64_t lo = std::min(a, b), hi = std::max(a, b);
    uint64_t h = lo * 0x9E3779B97F4A7C15ull ^ (hi + 0x632BE59BD9B4E019ull + (lo << 6) + (lo >> 2));
    h ^= h >> 29;
    return *candidates[h % candidates.size()];
}

ConnPool::Dialing::Dialing(ConnPool* pool, int fd) : pool_(pool), fd_(fd) {
    std::lock_guard<std::mutex> g(pool_->mu_);
    if (!pool_->running_) throw CoreError(ErrorKind::kPeerLost, "the data port closed");
    pool_->dial_fds_.insert(fd_);
}

ConnPool::Dialing::~Dialing() {
    std::lock_guard<std::mutex> g(pool_->mu_);
    pool_->dial_fds_.erase(fd_);
}

ConnPtr ConnPool::dial_and_greet(const wire::PeerInfo& to, const wire::PeerHello& hello, double deadline) {
    const std::string who = (to.id ? "peer " + std::to_string(to.id) : std::string("the master's relay")) + " at " + where(to);
    int fd = net::connect_to(net::Address{to.host, to.port}, std::max(0.05, deadline - net::now_seconds()), source_,
                             cancel_.fd());
    auto c = std::make_shared<Conn>();
    c->stream = std::make_unique<TcpStream>(fd);  // closed with c on any failure below
    Dialing listed(this, fd);  // until greeted: stop() cuts it
    auto frame = wire::frame(wire::MsgType::kPeerHello, hello);
    if (key_) {
        c->channel = auth::client_handshake(fd, *key_, auth::kDataLink, bool(encrypt_), deadline, who);
        auth::seal_frame(frame, *c->tx());
    }
    int err = 0;
    if (!net::send_all(fd, frame.data(), frame.size(), &err))
        throw CoreError(ErrorKind::kPeerLost, errno_text("greeting " + who + " failed", err));
    return c;
}

ConnPtr ConnPool::open(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double deadline) {
    ConnPtr c = dial_and_greet(to, wire::PeerHello{self_, to.id, index, slot, kOpen}, deadline);
    c->peer = to.id;
    c->slot = slot;
    c->index = index;
    c->outgoing = true;
    return c;
}

ConnPtr ConnPool::open_relayed(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double deadline) {
    bool master = false;
    wire::PeerInfo relay;
    {
        std::lock_guard<std::mutex> g(mu_);
        relay = relay_for(self_, to.id, &master);
    }
    log_info("data: connection " + std::to_string(index) + " to peer " + std::to_string(to.id) + " goes through " +
             (master ? "the master's relay at " + where(relay) + " (no peer of the group can relay)"
                     : "peer " + std::to_string(relay.id) + "'s relay") +
             ": neither end accepts connections");
    // Our half at the relay; then, through the pipe, the connection to `to` as if dialed directly.
    ConnPtr outer = dial_and_greet(relay, wire::PeerHello{self_, to.id, index, slot, kRelayOpen}, deadline);
    auto* tcp = static_cast<TcpStream*>(outer->stream.get());
    auto hello = wire::frame(wire::MsgType::kPeerHello, wire::PeerHello{self_, to.id, index, slot, kOpen});
    auto c = std::make_shared<Conn>();
    Dialing listed(this, tcp->fd());  // the far end answers through the relay, or stop() cuts it
    if (key_) {
        c->channel = auth::client_handshake(tcp->fd(), *key_, auth::kDataLink, bool(encrypt_), deadline,
                                            "peer " + std::to_string(to.id) + " through a relay");
        auth::seal_frame(hello, *c->tx());
    }
    int err = 0;
    if (!net::send_all(tcp->fd(), hello.data(), hello.size(), &err))
        throw CoreError(ErrorKind::kPeerLost, errno_text("greeting peer " + std::to_string(to.id) + " through a relay failed", err));
    c->stream = std::move(outer->stream);
    c->peer = to.id;
    c->slot = slot;
    c->index = index;
    c->outgoing = true;
    relayed_++;
    if (master) master_relayed_++;
    return c;
}

ConnPtr ConnPool::await_call(const wire::PeerInfo& to, uint32_t slot, uint32_t index, double deadline) {
    std::unique_lock<std::mutex> g(mu_);
    for (;;) {
        auto it = conns_.find({to.id, slot, index, true});
        if (it != conns_.end()) return it->second;
        if (!running_) throw CoreError(ErrorKind::kPeerLost, "the data port closed");
        const double left = deadline - net::now_seconds();
        if (left <= 0)
            throw CoreError(ErrorKind::kPeerLost, "peer " + std::to_string(to.id) + " accepts no connections and did not dial "
                                                  "this peer for connection " + std::to_string(index) + " within connect_timeout");
        arrived_.wait_for(g, std::chrono::duration<double>(std::min(left, 0.1)));
    }
}

void ConnPool::expect(uint64_t from, uint32_t slot, uint32_t index) {
    std::lock_guard<std::mutex> g(mu_);
    if (!running_ || route(from, self_) == Route::kOpen) return;  // the other side dials
    if (conns_.count({from, slot, index, false}) || dials_.count({from, slot, index})) return;
    const uint64_t gen = ++dial_gen_;
    dials_[{from, slot, index}] = Dial{gen, {}};
    dialing_++;  // stop() waits for every dialer (each is bounded by handshake_timeout)
    std::thread([this, from, slot, index, gen] {
        dial_for_incoming(from, slot, index, gen);
        std::lock_guard<std::mutex> g(mu_);
        if (--dialing_ == 0) dialers_done_.notify_all();
    }).detach();
}

void ConnPool::dial_for_incoming(uint64_t from, uint32_t slot, uint32_t index, uint64_t gen) {
    const Key key{from, slot, index};
    std::string failed;
    try {
        wire::PeerInfo peer, relay;
        Route how;
        bool master = false;
        {
            std::lock_guard<std::mutex> g(mu_);
            auto it = directory_.find(from);
            if (it == directory_.end()) throw CoreError(ErrorKind::kPeerLost, "peer " + std::to_string(from) + " is not in the group");
            peer = it->second;
            how = route(from, self_);
            if (how == Route::kOpen) {  // the group changed meanwhile: the other side dials after all
                auto d = dials_.find(key);
                if (d != dials_.end() && d->second.gen == gen) dials_.erase(d);
                return;
            }
            if (how == Route::kRelay) relay = relay_for(from, self_, &master);
        }
        const double deadline = net::now_seconds() + handshake_timeout_;
        if (how == Route::kCall) {
            ConnPtr c = dial_and_greet(peer, wire::PeerHello{self_, from, index, slot, kCall}, deadline);
            c->peer = from;
            c->slot = slot;
            c->index = index;
            std::lock_guard<std::mutex> g(mu_);
            auto d = dials_.find(key);
            if (d == dials_.end() || d->second.gen != gen || !running_) return;  // forgotten meanwhile: c closes
            auto& entry = conns_[{from, slot, index, false}];
            if (entry) entry->stream->shutdown();
            entry = std::move(c);
            dials_.erase(key);
            return;
        }
        // A relay: our half there, then the accept thread greets what the opening side sends through it.
        ConnPtr outer = dial_and_greet(relay, wire::PeerHello{self_, from, index, slot, kRelayAccept}, deadline);
        auto* tcp = static_cast<TcpStream*>(outer->stream.get());
        relayed_++;
        if (master) master_relayed_++;
        std::lock_guard<std::mutex> g(mu_);
        auto d = dials_.find(key);
        if (d == dials_.end() || d->second.gen != gen || !running_) return;  // forgotten meanwhile: outer closes
        adopted_.push_back({tcp->release(), "the relay " + where(relay) + " for peer " + std::to_string(from), key});
        wake_.signal();
        return;
    } catch (const CoreError& e) {
        failed = e.what();
    }
    log_warn("data: dialing for connection " + std::to_string(index) + " from peer " + std::to_string(from) + " failed: " + failed);
    std::lock_guard<std::mutex> g(mu_);
    auto d = dials_.find(key);
    if (d != dials_.end() && d->second.gen == gen) d->second.failed = "this peer could not dial for connection " +
                                                                      std::to_string(index) + " from peer " + std::to_string(from) + ": " + failed;
}

void ConnPool::forget_dials(const std::function<bool(const Key&)>& which) {
    std::erase_if(dials_, [&](const auto& d) { return which(d.first); });  // a dial still running finds it gone
}

}  // namespace pccl
