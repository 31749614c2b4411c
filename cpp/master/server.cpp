#include "master/server.hpp"

#include <cerrno>
#include <chrono>
#include <ctime>
#include <poll.h>
#include <sys/socket.h>
#include <vector>

#include "base/log.hpp"

namespace pccl {

// This incarnation's epoch: its start time in milliseconds, unless given (tests).
static MasterConfig with_epoch(MasterConfig config) {
    if (!config.epoch)
        config.epoch = uint64_t(std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch()).count());
    return config;
}

MasterServer::MasterServer(std::string listen, MasterConfig config, AuthConfig auth)
    : listen_(std::move(listen)), config_(with_epoch(config)), auth_(auth), state_(config_) {
    if (auth_.encrypt && !auth_.key) throw CoreError(ErrorKind::kInvalidArgument, "encryption needs a secret");
}

MasterServer::~MasterServer() { stop(); }

void MasterServer::start() {
    if (running_) throw CoreError(ErrorKind::kState, "master already running");
    net::Address a = net::parse_address(listen_);
    listen_fd_ = net::listen_on(a.host, a.port, &port_);
    host_ = a.host;
    if (auth_.key) relay_.set_key(*auth_.key);
    relay_.set_policy(auth_.encrypt);
    state_.set_relay_port(relay_.start(a.host, 0, config_.handshake_timeout));
    running_ = true;
    started_ = net::now_seconds();
    thread_ = std::thread([this] { loop(); });
    log_info("master listening on " + address());
}

void MasterServer::stop() {
    if (!running_.exchange(false)) return;
    wake_.signal();
    if (thread_.joinable()) thread_.join();
    for (auto& [id, link] : links_) net::close_fd(link.fd);
    links_.clear();
    for (auto& [id, t] : probes_) t.join();  // each is bounded by handshake_timeout
    probes_.clear();
    net::close_fd(listen_fd_);
    relay_.stop();
}

std::string MasterServer::address() const { return host_ + ":" + std::to_string(port_); }

MasterStats MasterServer::stats() const {
    std::lock_guard<std::mutex> g(mu_);
    MasterStats s = state_.stats();
    s.cpu_seconds = cpu_seconds_;
    s.outbound_only = state_.outbound_only().size();
    s.relayed_edges = state_.relayed_edges();
    const RelayStats r = relay_.relay_stats();
    s.master_relay_pipes = r.pipes;
    s.master_relay_bytes = r.bytes;
    return s;
}

MasterStatus MasterServer::status() const {
    MasterStatus s;
    s.stats = stats();
    std::lock_guard<std::mutex> g(mu_);
    s.observed = state_.observed();
    s.peers = state_.peer_rows();
    for (const auto& p : s.peers) {
        if (p.state != "accepted" || s.rings.count(p.group)) continue;
        s.rings[p.group] = state_.group_ring(p.group);
        s.revisions[p.group] = state_.group_revision(p.group);
    }
    for (const auto& [group, o] : s.observed.groups)
        if (!s.revisions.count(group)) s.revisions[group] = state_.group_revision(group);
    s.links = state_.links();
    s.now = net::now_seconds();
    s.started = started_;
    s.connections = links_.size();
    s.auth_failures = auth_failures_;
    return s;
}

std::vector<wire::LinkMeasure> MasterServer::links() const {
    std::lock_guard<std::mutex> g(mu_);
    return state_.links();
}

void MasterServer::close_link(uint64_t id) {
    auto it = links_.find(id);
    if (it == links_.end()) return;
    flush(it->second);  // a last KICKED or reason frame, best effort
    net::close_fd(it->second.fd);
    links_.erase(it);
}

void MasterServer::refuse(uint64_t id, Link& link, const std::string& reason, const std::string& log_reason, double now) {
    log_warn("master: refused " + link.addr + ": " + log_reason);
    auth_failures_++;
    link.out.append(wire::frame(wire::MsgType::kAuthRefused, wire::AuthRefused{reason}));
    apply(state_.on_disconnect(id, "refused: " + log_reason, now));
    close_link(id);
}

bool MasterServer::handshake_frame(uint64_t id, Link& link, const wire::Header& h, const std::vector<uint8_t>& payload,
                                   double now) {
    const auto type = wire::MsgType(h.type);
    try {
        if (link.auth == Link::kOpen) {  // an AUTH_HELLO to a master without a secret
            refuse(id, link, "this master runs without a secret, and this peer has one: give both the same secret, or neither",
                   "a peer with a secret, and this master has none", now);
            return false;
        }
        if (link.auth == Link::kWantHello) {
            if (type != wire::MsgType::kAuthHello) {
                refuse(id, link, "this master requires the run's secret, and this peer has none "
                                 "(Communicator(secret=...) or the PCCL_ARRAYS_SECRET environment variable)",
                       "no secret (a frame of type " + std::to_string(h.type) + " before the handshake)", now);
                return false;
            }
            link.server = std::make_unique<auth::Server>(*auth_.key, auth::kMasterLink, auth_.encrypt);
            link.out.append(wire::frame(wire::MsgType::kAuthChallenge,
                                        link.server->challenge(wire::decode_payload<wire::AuthHello>(payload))));
            flush(link);
            link.auth = Link::kWantProof;
            return true;
        }
        if (type != wire::MsgType::kAuthProof)
            throw CoreError(ErrorKind::kAuthentication, "expected AUTH_PROOF, got type " + std::to_string(h.type));
        link.server->verify(wire::decode_payload<wire::AuthProof>(payload));
        link.channel = link.server->channel();
        link.server.reset();
        link.reader.seal_with(link.channel.rx.get());
        link.auth = Link::kSealed;
        return true;
    } catch (const CoreError& e) {
        log_warn("master: refused " + link.addr + ": " + e.what());
        auth_failures_++;
        apply(state_.on_disconnect(id, std::string("refused: ") + e.what(), now));
        close_link(id);
        return false;
    }
}

void Outbox::consume(size_t n) {
    sent_ += n;
    if (sent_ == buf_.size()) {  // all out: start again at the front (the capacity stays for the next frames)
        buf_.clear();
        sent_ = 0;
    } else if (sent_ >= buf_.size() - sent_) {  // the rest moves, and it is no longer than what was sent
        buf_.erase(buf_.begin(), buf_.begin() + ptrdiff_t(sent_));
        sent_ = 0;
    }
}

void MasterServer::flush(Link& link) {
    while (!link.out.empty() && link.fd >= 0) {
        ssize_t n = ::send(link.fd, link.out.data(), link.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n <= 0) return;  // full (a stalled peer) or broken: the read side will notice
        link.out.consume(size_t(n));
    }
}

void MasterServer::drop_oldest_ungreeted(double now) {
    if (links_.size() <= kMaxUngreeted) return;  // the usual case, checked on every pass of the loop: no scan
    size_t waiting = 0;
    for (const auto& [id, link] : links_) waiting += state_.said_hello(id) ? 0 : 1;
    for (auto it = links_.begin(); waiting > kMaxUngreeted && it != links_.end();) {
        const uint64_t id = (it++)->first;  // links_ is ordered by id: the oldest first
        if (state_.said_hello(id)) continue;
        if (now - links_.at(id).since < kUngreetedGrace && waiting <= 4 * kMaxUngreeted) break;  // still young
        log_warn("master: dropping " + links_.at(id).addr + ": more than " + std::to_string(kMaxUngreeted) +
                 " connections wait before their HELLO, this one the longest");
        apply(state_.on_disconnect(id, "dropped: too many connections without HELLO", now));
        close_link(id);
        waiting--;
    }
}

void MasterServer::apply(std::vector<MasterAction> actions) {
    for (auto& a : actions) {
        auto it = links_.find(a.conn);
        if (it == links_.end()) continue;
        if (a.kind == MasterAction::kSend) {
            if (it->second.channel.tx) auth::seal_frame(a.frame, *it->second.channel.tx);
            it->second.out.append(a.frame);
            flush(it->second);
            if (it->second.out.size() > kMaxQueuedOut) {  // it stopped reading: as good as lost
                const std::string why = "stopped reading: " + std::to_string(it->second.out.size()) + " bytes queued";
                log_warn("master: dropping " + it->second.addr + ": " + why);
                apply(state_.on_disconnect(a.conn, why, net::now_seconds()));
                close_link(a.conn);
            }
        } else if (a.kind == MasterAction::kProbe) {
            start_probe(a.conn, a.probe);
        } else {
            log_info("master: closing " + it->second.addr + ": " + a.reason);
            close_link(a.conn);
        }
    }
}

void MasterServer::start_probe(uint64_t conn, const wire::PeerInfo& where) {
    const double timeout = config_.handshake_timeout;
    probes_[conn] = std::thread([this, conn, where, timeout] {
        ProbeResult r{conn, true, ""};
        try {
            int fd = net::connect_to(net::Address{where.host, where.port}, timeout);
            net::close_fd(fd);
        } catch (const CoreError& e) {
            r.reachable = false;
            r.reason = e.what();
        }
        {
            std::lock_guard<std::mutex> g(probe_mu_);
            probe_results_.push_back(std::move(r));
        }
        wake_.signal();
    });
}

void MasterServer::collect_probes(double now) {
    std::vector<ProbeResult> results;
    {
        std::lock_guard<std::mutex> g(probe_mu_);
        results.swap(probe_results_);
    }
    for (auto& r : results) {
        auto t = probes_.find(r.conn);
        if (t != probes_.end()) {
            t->second.join();  // it has pushed its result: it is ending
            probes_.erase(t);
        }
        if (!r.reachable) log_warn("master: data address of connection " + std::to_string(r.conn) + " unreachable: " + r.reason);
        apply(state_.on_probe_result(r.conn, r.reachable, r.reason, now));
    }
}

void MasterServer::loop() {
    std::vector<pollfd> pfds;
    std::vector<uint64_t> ids;
    while (running_) {
        timespec cpu{};
        if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu) == 0) cpu_seconds_ = double(cpu.tv_sec) + cpu.tv_nsec / 1e9;
        pfds.clear();
        ids.clear();
        pfds.push_back({wake_.fd(), POLLIN, 0});
        pfds.push_back({listen_fd_, POLLIN, 0});
        for (auto& [id, link] : links_) {
            pfds.push_back({link.fd, short(POLLIN | (link.out.empty() ? 0 : POLLOUT)), 0});
            ids.push_back(id);
        }
        ::poll(pfds.data(), pfds.size(), 50);
        if (!running_) break;
        const double now = net::now_seconds();
        std::lock_guard<std::mutex> g(mu_);
        if (pfds[0].revents & POLLIN) wake_.drain();
        collect_probes(now);
        if (pfds[1].revents & POLLIN) {
            for (;;) {
                std::string who;
                int fd = net::accept_on(listen_fd_, &who);
                if (fd < 0) break;
                net::set_nonblocking(fd, true);
                uint64_t id = next_conn_++;
                Link& link = links_[id];
                link.fd = fd;
                link.addr = who;
                link.since = now;
                link.auth = auth_.key ? Link::kWantHello : Link::kOpen;
                link.reader.limit(kMaxGreetingPayload, false);
                apply(state_.on_connect(id, who, now));
            }
        }
        for (size_t i = 0; i < ids.size(); i++) {
            const short ev = pfds[i + 2].revents;
            auto it = links_.find(ids[i]);
            if (it == links_.end() || ev == 0) continue;
            if (ev & POLLOUT) flush(it->second);
            if (!(ev & (POLLIN | POLLHUP | POLLERR))) continue;
            std::string reason;
            bool alive;
            try {
                alive = it->second.reader.fill(it->second.fd, &reason);
                wire::Header h;
                std::vector<uint8_t> payload;
                while (links_.count(ids[i]) && it->second.reader.next(&h, &payload)) {
                    if (it->second.auth == Link::kSealed ||
                        (it->second.auth == Link::kOpen && h.type != uint16_t(wire::MsgType::kAuthHello))) {
                        apply(state_.on_frame(ids[i], h.type, payload, now));
                        if (links_.count(ids[i]) && state_.said_hello(ids[i]))  // a peer: the protocol's own limits
                            it->second.reader.limit(wire::kMaxStatePayload, false);
                    } else if (!handshake_frame(ids[i], it->second, h, payload, now)) {
                        break;
                    }
                }
            } catch (const CoreError& e) {
                // Garbage, a wrong version or a huge length prefix: drop this connection only.
                log_warn("master: dropping " + it->second.addr + ": " + e.what());
                apply(state_.on_bad_frame(ids[i], e.what(), now));
                continue;
            }
            if (!alive && links_.count(ids[i])) {
                if (it->second.reader.mid_frame()) reason += " (in the middle of a frame)";
                if (it->second.auth == Link::kWantProof) {  // the peer found that our proof does not match its secret
                    log_warn("master: refused " + it->second.addr + ": it left the handshake (" + reason +
                             "): a different secret, or not a peer of this run");
                    auth_failures_++;
                }
                apply(state_.on_disconnect(ids[i], reason, now));
                close_link(ids[i]);
            }
        }
        drop_oldest_ungreeted(now);  // those that aged past the grace while over the cap
        apply(state_.on_tick(now));
    }
}

}  // namespace pccl
