#include "peer/communicator.hpp"

#include "peer/probe.hpp"

#include <algorithm>
#include <arpa/inet.h>
#include <cstring>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <thread>

#include "base/log.hpp"

namespace pccl {

using wire::MsgType;

Communicator::Communicator(CommConfig config) : cfg_(std::move(config)) {
    if (cfg_.connections == 0 || cfg_.connections > 1024)
        throw CoreError(ErrorKind::kInvalidArgument, "connections must be between 1 and 1024");
    if (cfg_.piece_bytes < 4096 || cfg_.piece_bytes > wire::kMaxDataPayload)
        throw CoreError(ErrorKind::kInvalidArgument, "piece_bytes must be between 4 KiB and 64 MiB");
    cfg_.piece_bytes = cfg_.piece_bytes / 64 * 64;  // whole elements of every dtype
    if (cfg_.key) pool_.set_key(*cfg_.key);
    for (double t : {cfg_.connect_timeout, cfg_.heartbeat_interval, cfg_.master_timeout, cfg_.data_timeout})
        if (!(t > 0)) throw CoreError(ErrorKind::kInvalidArgument, "timeouts must be positive");
    if (!(cfg_.op_timeout >= 0)) throw CoreError(ErrorKind::kInvalidArgument, "op_timeout must be positive (0: no bound)");
    if (cfg_.min_world == 0) throw CoreError(ErrorKind::kInvalidArgument, "min_world_size must be at least 1");
    if (!(cfg_.master_grace >= 0)) throw CoreError(ErrorKind::kInvalidArgument, "master_grace must be >= 0 seconds");
    for (size_t at = 0; at <= cfg_.master.size();) {  // "primary,standby,...": each must parse
        size_t comma = cfg_.master.find(',', at);
        if (comma == std::string::npos) comma = cfg_.master.size();
        std::string one = cfg_.master.substr(at, comma - at);
        one.erase(0, one.find_first_not_of(" \t"));
        one.erase(one.find_last_not_of(" \t") + 1);
        net::parse_address(one);
        masters_.push_back(one);
        at = comma + 1;
    }
    master_now_ = masters_.front();
}

Communicator::~Communicator() {
    try {
        close();
    } catch (...) {
    }
}

static std::string local_host_of(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    char host[INET6_ADDRSTRLEN] = "127.0.0.1";
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0) {
        if (ss.ss_family == AF_INET) inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&ss)->sin_addr, host, sizeof(host));
        if (ss.ss_family == AF_INET6) inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&ss)->sin6_addr, host, sizeof(host));
    }
    return host;
}

void Communicator::connect(double admission_timeout) {
    if (state_ != State::kNew) throw CoreError(ErrorKind::kState, "connect() may be called once; make a new Communicator to rejoin");
    // No data port (listen empty): the pool only dials, and HELLO's port 0 tells the master (docs/nat.md).
    net::Address listen = cfg_.listen.empty() ? net::Address{} : net::parse_address(cfg_.listen);
    const uint16_t data_port = pool_.start(listen.host, listen.port, cfg_.connect_timeout, !cfg_.listen.empty());
    data_port_ = data_port;
    // The master may not be up yet (started at the same moment as the peers): retry the addresses in order
    // with backoff until connect_timeout, each attempt bounded so that Ctrl-C is noticed. A refused secret is
    // final.
    const double give_up = net::now_seconds() + cfg_.connect_timeout;
    for (double backoff = 0.05;; backoff = std::min(backoff * 2, 1.0)) {
        std::string failures;
        for (const auto& address : masters_) {
            try {
                master_fd_ = dial_master(address, give_up, &master_channel_);
                master_now_ = address;
                break;
            } catch (const CoreError& e) {
                if (e.kind() == ErrorKind::kAuthentication) {
                    pool_.stop();
                    throw;
                }
                failures += (failures.empty() ? "" : "; ") + std::string(e.what());
            }
        }
        if (master_fd_ >= 0) break;
        const double retry_at = net::now_seconds() + backoff;
        if (retry_at >= give_up) {
            pool_.stop();
            throw CoreError(ErrorKind::kMasterUnreachable, failures + "; gave up after connect_timeout (" +
                                                               std::to_string(cfg_.connect_timeout) + " s) of retries");
        }
        while (net::now_seconds() < retry_at) {
            if (interrupt_requested()) {
                pool_.stop();
                throw CoreError(ErrorKind::kInterrupted, "interrupted (KeyboardInterrupt) while connecting to the master");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
    }
    if (cfg_.key) pool_.set_policy(master_channel_.encrypt);
    wire::PeerInfo advertised;
    advertised.port = data_port;
    advertised.host = (listen.host == "0.0.0.0" || listen.host == "::" || listen.host.empty()) ? local_host_of(master_fd_)
                                                                                               : listen.host;
    if (!cfg_.advertise.empty() && data_port != 0) {  // behind NAT or a relay: others dial this address instead
        if (cfg_.advertise.find(':') != std::string::npos) {
            net::Address a = net::parse_address(cfg_.advertise);
            advertised.host = a.host;
            if (a.port != 0) advertised.port = a.port;
        } else {
            advertised.host = cfg_.advertise;
        }
    }
    {
        std::lock_guard<std::mutex> g(mu_);  // data_address() may be read from other threads meanwhile
        advertised_ = advertised;
    }
    state_ = State::kJoining;
    // HELLO goes out before the link thread starts: nothing else may precede it on the wire.
    send_master(MsgType::kHello, wire::Hello{cfg_.peer_group, cfg_.connections, advertised.host, advertised.port, {},
                                             uint8_t(masters_.size() > 1)});
    reader_.seal_with(master_channel_.rx.get());  // null without a secret
    link_running_ = true;
    link_thread_ = std::thread([this] { link_loop(); });
    const double now = net::now_seconds();
    Frame f = wait_frame([](const Frame& f) { return f.type == uint16_t(MsgType::kWelcome); }, now + cfg_.connect_timeout,
                         "the master's WELCOME");
    const auto welcome = wire::decode_payload<wire::Welcome>(f.payload);
    peer_id_ = welcome.peer_id;
    epoch_ = welcome.epoch;
    pool_.set_self(peer_id_);
    pool_.set_master_relay(net::parse_address(master_now_).host, welcome.relay_port);
    const double deadline = admission_timeout < 0 ? -1 : net::now_seconds() + admission_timeout;
    f = wait_frame(
        [](const Frame& f) {
            return f.type == uint16_t(MsgType::kTopoResult) && wire::decode_payload<wire::TopoResult>(f.payload).seq == 0;
        },
        deadline, "admission (the other peers' next update_topology())");
    const auto admitted = wire::decode_payload<wire::TopoResult>(f.payload);
    if (admitted.kind) {  // refused (an unreachable data address): the master closes our link
        const CoreError refusal(ErrorKind(admitted.kind), admitted.reason);
        {
            std::lock_guard<std::mutex> g(mu_);
            closed_why_ = std::string("this communicator was refused by the master: ") + admitted.reason;
        }
        close();
        throw refusal;
    }
    apply_topology(admitted);
    state_ = State::kAccepted;
}

void Communicator::apply_topology(const wire::TopoResult& r) {
    set_ring(r.ring);
    world_size_ = r.world_size;
    std::set<uint64_t> ids;
    for (const auto& p : r.ring) ids.insert(p.id);
    pool_.retain(ids);
}

bool Communicator::inbound() const {
    std::lock_guard<std::mutex> g(mu_);
    for (const auto& p : ring_)
        if (p.id == peer_id_) return p.inbound != 0;
    return pool_.listening();
}

void Communicator::set_ring(const std::vector<wire::PeerInfo>& ring) {
    if (!ring.empty()) pool_.set_directory(ring);
    std::lock_guard<std::mutex> g(mu_);
    ring_ = ring;
    group_world_size_ = uint32_t(ring.size());
    group_rank_ = rank_in(ring);
}

void Communicator::require_accepted() const {
    std::lock_guard<std::mutex> g(mu_);
    if (state_ == State::kBroken || state_ == State::kClosed) throw unusable_error();
    if (state_ != State::kAccepted) throw CoreError(ErrorKind::kState, "communicator is not connected: call connect() first");
}

CoreError Communicator::unusable_error() const {
    if (state_ == State::kBroken) return CoreError(broken_kind_, broken_why_);
    return CoreError(ErrorKind::kState, closed_why_);
}

uint32_t Communicator::timeout_ms(double timeout) const {
    const double t = timeout < 0 ? cfg_.op_timeout : timeout;
    if (t <= 0) return 0;  // no bound
    return uint32_t(std::clamp(t * 1000.0, 1.0, 4.0e9));
}

void Communicator::abandon(const std::string& why) {
    {
        std::lock_guard<std::mutex> g(mu_);
        closed_why_ = why + ": this communicator left the job; make a new Communicator to rejoin";
    }
    close();
}


bool Communicator::send_sealed(std::vector<uint8_t> frame, int* err) {
    if (master_fd_ < 0) return false;
    if (master_channel_.tx) auth::seal_frame(frame, *master_channel_.tx);
    return net::send_all(master_fd_, frame.data(), frame.size(), err);
}

uint64_t Communicator::send_raw(const std::vector<uint8_t>& bytes, Send how) {
    const bool wait = how == Send::kVote || how == Send::kQuery;
    for (;;) {
        {
            // A lost master: wait for it to come back (the link thread gives up after master_grace). A call that
            // waited then raises (the others may have moved on: the loop redoes the step), unless it may go on.
            std::unique_lock<std::mutex> lk(mu_);
            if (how == Send::kStart && resume_pending_ && !away_) throw resume_error();
            const bool waited = away_;
            while (away_ && state_ != State::kBroken && state_ != State::kClosed) {
                if (interrupt_requested()) {
                    lk.unlock();
                    const std::string why = "interrupted (KeyboardInterrupt) while waiting for the master to come back";
                    abandon(why);
                    throw CoreError(ErrorKind::kInterrupted, why + "; this communicator left the job");
                }
                cv_.wait_for(lk, std::chrono::milliseconds(100));
            }
            if (state_ == State::kBroken || state_ == State::kClosed) throw unusable_error();
            if (waited && !wait) throw master_lost_error("the master to come back");
        }
        std::unique_lock<std::mutex> g(send_mu_);
        if (away_) continue;
        const uint64_t gen = generation_;
        int err = 0;
        if (send_sealed(bytes, &err)) {
            if (how == Send::kVote) {  // this peer meets its group again here (a loss from now on sets it again)
                std::lock_guard<std::mutex> lk(mu_);
                if (generation_ == gen) resume_pending_ = false;
            }
            return gen;
        }
        g.unlock();
        // The link is dead. Let the link thread read what the master said last (KICKED, say) and decide: broken,
        // or a lost master looked for (then this frame goes to the next one). It notices the same dead socket
        // within one poll.
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait_for(lk, std::chrono::seconds(1),
                     [&] { return state_ == State::kBroken || state_ == State::kClosed || generation_ != gen; });
        if (state_ == State::kBroken || state_ == State::kClosed) throw unusable_error();
        if (generation_ != gen) continue;
        lk.unlock();
        mark_broken(ErrorKind::kMasterUnreachable, errno_text("sending to the master failed", err));
        lk.lock();
        throw unusable_error();
    }
}

void Communicator::mark_broken(ErrorKind kind, const std::string& why) {
    std::lock_guard<std::mutex> g(mu_);
    if (state_ == State::kBroken || state_ == State::kClosed) return;
    state_ = State::kBroken;
    broken_kind_ = kind;
    broken_why_ = why;
    for (auto& [id, ctl] : active_) ctl->fail(kind, why);
    cv_.notify_all();
    log_warn("peer " + std::to_string(peer_id_.load()) + ": " + why);
}

void Communicator::link_loop() {
    for (;;) {
        ErrorKind kind = ErrorKind::kMasterUnreachable;
        std::string why;
        if (!run_link(&kind, &why)) return;  // closing
        // A lost master after admission is looked for (rejoin.cpp); anything else ends the communicator.
        if (kind != ErrorKind::kMasterUnreachable || state_ != State::kAccepted || cfg_.master_grace <= 0) {
            mark_broken(kind, why);
            return;
        }
        if (!rejoin(why)) return;
    }
}

bool Communicator::run_link(ErrorKind* kind, std::string* why) {
    double last_rx = net::now_seconds(), last_hb = 0;
    const auto hb = wire::empty_frame(MsgType::kHeartbeat);
    bool pending = true;  // the reader may already hold frames (read with WELCOME while rejoining)
    while (link_running_) {
        const double now = net::now_seconds();
        if (now - last_hb >= cfg_.heartbeat_interval) {
            last_hb = now;
            std::unique_lock<std::mutex> g(send_mu_, std::try_to_lock);  // never queue behind a blocked sender
            int err = 0;
            if (g.owns_lock() && !send_sealed(hb, &err)) {
                *why = errno_text("heartbeat to the master failed", err);
                return true;
            }
        }
        silent_ = now - last_rx > cfg_.master_timeout;
        if (silent_) {
            *why = "no word from the master for " + std::to_string(cfg_.master_timeout) + " s";
            return true;
        }
        if (rejoining_ && now > grace_end_) {
            *why = welcomed_ ? "the master took this peer back but did not re-form its group (it waits for a majority "
                               "of the group's last peers)"
                             : "the master accepted the connection but did not answer";
            return true;
        }
        bool alive = true;
        std::string reason;
        if (!pending) {
            pollfd pfds[2] = {{master_fd_, POLLIN, 0}, {link_wake_.fd(), POLLIN, 0}};
            int wait_ms = int(std::max(0.0, std::min(cfg_.heartbeat_interval, 0.1)) * 1000) + 1;
            ::poll(pfds, 2, wait_ms);
            if (!link_running_) return false;
            if (!(pfds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        }
        try {
            if (!pending) alive = reader_.fill(master_fd_, &reason);
            pending = false;
            wire::Header h;
            std::vector<uint8_t> payload;
            while (reader_.next(&h, &payload)) {
                last_rx = net::now_seconds();
                const auto t = MsgType(h.type);
                if (t == MsgType::kHeartbeatAck) continue;
                if (t == MsgType::kAuthRefused) {  // this peer has no secret, and the master requires one
                    *kind = ErrorKind::kAuthentication;
                    *why = "the master at " + master_now_ + " refused this peer: " +
                           wire::decode_payload<wire::AuthRefused>(payload).reason;
                    return true;
                }
                if (t == MsgType::kKicked) {
                    const auto k = wire::decode_payload<wire::Kicked>(payload);
                    if (k.elsewhere) {  // the master gave the group up (the fence): another one may have it
                        *why = "the master at " + master_now_ + " let this peer go: " + k.reason;
                        fenced_out_ = true;
                        return true;
                    }
                    *kind = ErrorKind::kEvicted;
                    *why = "evicted by the master: " + k.reason;
                    return true;
                }
                bool end = false;
                if (rejoining_ && rejoin_frame(h.type, payload, kind, why, &end)) {
                    if (end) return true;
                    continue;
                }
                std::lock_guard<std::mutex> g(mu_);
                if (t == MsgType::kOpAbort) {
                    auto m = wire::decode_payload<wire::OpAbort>(payload);
                    auto running = active_.find(m.op_id);
                    if (running != active_.end()) running->second->fail(ErrorKind(m.kind), m.reason);
                    doubts_.erase(m.op_id);
                }
                if (t == MsgType::kOpCommit) note_commit(wire::decode_payload<wire::OpCommit>(payload).op_id);
                if (t == MsgType::kOpGo) payload = complete_go(payload);
                inbox_.push_back(Frame{h.type, std::move(payload)});
                cv_.notify_all();
            }
            if (!alive) {
                *why = "connection to the master lost: " + reason;
                return true;
            }
        } catch (const CoreError& e) {
            *why = std::string("bad frame from the master: ") + e.what();
            return true;
        }
    }
    return false;
}

// update_topology() and optimize_topology() start from a quiet communicator: no all-reduce or sync running.
void Communicator::require_quiet(const char* call) {
    require_accepted();
    std::lock_guard<std::mutex> g(mu_);
    if (in_flight_ > 0)
        throw CoreError(ErrorKind::kState, std::string(call) + " while " + std::to_string(in_flight_.load()) +
                                               " all-reduce(s) are in flight: wait for them first");
    if (syncing_) throw CoreError(ErrorKind::kState, std::string(call) + " while sync_shared_state() runs");
}

bool Communicator::is_topo_result(const Frame& f, uint64_t seq) {
    return f.type == uint16_t(MsgType::kTopoResult) && wire::decode_payload<wire::TopoResult>(f.payload).seq == seq;
}

void Communicator::update_topology(double timeout) {
    require_quiet("update_topology()");
    const uint64_t seq = ++topo_seq_;
    const uint32_t ms = timeout_ms(timeout);
    const uint64_t gen = send_master(MsgType::kTopoRequest, wire::TopoRequest{seq, ms, cfg_.min_world}, Send::kVote);
    // The master ends the wait (a result, or its timeout error); our own bound only covers a master that
    // stops answering while it stays connected.
    Frame f = wait_frame([seq](const Frame& f) { return is_topo_result(f, seq); }, ms ? net::now_seconds() + ms / 1000.0 + cfg_.master_timeout : -1,
                         "the topology vote", gen);
    const auto r = wire::decode_payload<wire::TopoResult>(f.payload);
    if (r.kind) throw CoreError(ErrorKind(r.kind), r.reason);
    apply_topology(r);
}

uint32_t Communicator::optimize_topology(double timeout) {
    require_quiet("optimize_topology()");
    const uint64_t seq = ++topo_seq_;
    const uint32_t ms = timeout_ms(timeout);
    const uint64_t gen = send_master(MsgType::kOptStart, wire::TopoRequest{seq, ms, cfg_.min_world}, Send::kStart);
    const auto is_result = [seq](const Frame& f) { return is_topo_result(f, seq); };
    // The plan (probes to run), or at once the result (every link was known, or an error).
    Frame f = wait_frame(
        [&](const Frame& f) {
            return is_result(f) ||
                   (f.type == uint16_t(MsgType::kOptPlan) && wire::decode_payload<wire::OptPlan>(f.payload).seq == seq);
        },
        ms ? net::now_seconds() + ms / 1000.0 + cfg_.master_timeout : -1, "the others' optimize_topology()", gen);
    uint32_t measured = 0;
    if (f.type == uint16_t(MsgType::kOptPlan)) {
        const auto plan = wire::decode_payload<wire::OptPlan>(f.payload);
        OpControl ctl(plan.opt_id);
        track(ctl);
        std::vector<wire::LinkMeasure> links;
        try {
            links = run_probes(plan, peer_id_, pool_, ctl, ProbeSettings{cfg_.connect_timeout});
        } catch (...) {
            untrack(ctl);
            pool_.clear_slot(probe_slot(plan.opt_id));
            throw;
        }
        untrack(ctl);
        pool_.clear_slot(probe_slot(plan.opt_id));
        measured = uint32_t(links.size());
        ErrorKind kind;
        std::string why;
        if (ctl.failed(&kind, &why)) {
            if (kind == ErrorKind::kInterrupted) {  // Ctrl-C while probing: leave, as in any wait for others
                abandon("interrupted (KeyboardInterrupt) during optimize_topology()");
                throw CoreError(ErrorKind::kInterrupted, "interrupted (KeyboardInterrupt) during optimize_topology(); "
                                                         "this communicator left the job");
            }
            // The master ends it for everyone (it may have been the one to abort it: then this is stale).
            send_master(MsgType::kOpDone, wire::OpDone{plan.opt_id, 0, uint8_t(kind), why});
        } else {
            send_master(MsgType::kOptReport, wire::OptReport{plan.opt_id, links});
        }
        f = wait_frame(is_result, net::now_seconds() + cfg_.master_timeout + cfg_.connect_timeout + plan.probe_ms / 1000.0 *
                                                           double(plan.rounds.size() + 1),
                       "the master's new ring order", gen);
    }
    const auto r = wire::decode_payload<wire::TopoResult>(f.payload);
    if (r.kind) throw CoreError(ErrorKind(r.kind), r.reason);
    apply_topology(r);
    return measured;
}

uint32_t Communicator::pending_peers() {
    require_accepted();
    const uint64_t gen = send_master(MsgType::kPendingRequest, wire::TopoRequest{0}, Send::kQuery);
    Frame f = wait_frame([](const Frame& f) { return f.type == uint16_t(MsgType::kPendingReply); },
                         net::now_seconds() + cfg_.master_timeout, "the master's pending count", gen);
    return wire::decode_payload<wire::PendingReply>(f.payload).pending;
}


void Communicator::track(OpControl& ctl) {
    std::lock_guard<std::mutex> g(mu_);
    active_[ctl.op_id()] = &ctl;
    if (state_ == State::kBroken) ctl.fail(broken_kind_, broken_why_);
    for (const auto& fr : inbox_) {  // an abort that raced ahead of us
        if (fr.type != uint16_t(MsgType::kOpAbort)) continue;
        auto m = wire::decode_payload<wire::OpAbort>(fr.payload);
        if (m.op_id == ctl.op_id()) ctl.fail(ErrorKind(m.kind), m.reason);
    }
}

void Communicator::untrack(const OpControl& ctl) {
    std::lock_guard<std::mutex> g(mu_);
    active_.erase(ctl.op_id());
}

void Communicator::settle(OpControl& ctl, uint32_t slot, uint64_t gen, uint64_t sync_revision) {
    const uint64_t id = ctl.op_id();
    auto verdict_for = [id](bool abort_only) {
        return [id, abort_only](const Frame& f) {
            if (!abort_only && f.type == uint16_t(MsgType::kOpCommit)) return wire::decode_payload<wire::OpCommit>(f.payload).op_id == id;
            if (f.type == uint16_t(MsgType::kOpAbort)) return wire::decode_payload<wire::OpAbort>(f.payload).op_id == id;
            return false;
        };
    };
    ErrorKind kind;
    std::string why;
    if (ctl.failed(&kind, &why)) {
        // Report the local failure, then wait for the master's verdict: it names the root cause (which peer was
        // lost) and is the same on every peer. A broken link (eviction, lost master) raises from the wait. To the
        // others an interrupted peer is a lost one: their retry runs without it. The report goes out before the
        // slot's connections close, so that the cause reaches the master before the neighbours' reports of a
        // broken connection, which the closing causes.
        const bool interrupted = kind == ErrorKind::kInterrupted;
        if (generation_ != gen) {  // the master that ran it is gone: nobody can commit it (rejoin.cpp)
            pool_.clear_slot(slot);
            if (interrupted) throw CoreError(ErrorKind::kInterrupted, why + "; the operation was aborted on every peer");
            std::lock_guard<std::mutex> g(mu_);
            throw master_lost_error("the operation's verdict");
        }
        try {
            send_master(MsgType::kOpDone,
                        wire::OpDone{id, 0, uint8_t(interrupted ? ErrorKind::kPeerLost : kind),
                                     interrupted ? "peer " + std::to_string(peer_id_.load()) + " was interrupted (Ctrl-C)" : why});
        } catch (...) {  // the master is gone: the slot's connections close all the same
            pool_.clear_slot(slot);
            throw;
        }
        pool_.clear_slot(slot);
        Frame f = wait_frame(verdict_for(true), net::now_seconds() + cfg_.master_timeout, "the master's verdict on a failure", gen);
        auto m = wire::decode_payload<wire::OpAbort>(f.payload);
        if (interrupted) throw CoreError(ErrorKind::kInterrupted, why + "; the operation was aborted on every peer");
        throw CoreError(ErrorKind(m.kind), m.reason + (m.reason.find(why) == std::string::npos ? " (seen here: " + why + ")" : ""));
    }
    {
        // Done here. From the report on, the operation is in doubt until a verdict comes, from this master or,
        // if it is lost, from the next one (rejoin.cpp): the wait below outlives a lost master.
        std::unique_lock<std::mutex> lk(mu_);
        if (generation_ != gen) {  // lost before the report: no master can have committed it
            const CoreError lost = master_lost_error("the operation's verdict");
            lk.unlock();
            pool_.clear_slot(slot);
            throw lost;
        }
        doubts_[id] = Doubt{sync_revision};
    }
    {
        std::lock_guard<std::mutex> g(send_mu_);
        int err = 0;
        if (!away_ && generation_ == gen) send_sealed(wire::frame(MsgType::kOpDone, wire::OpDone{id, 1, 0, ""}), &err);
    }
    Frame f;
    try {
        f = wait_frame(verdict_for(false), -1, "the master's commit");
    } catch (...) {
        std::lock_guard<std::mutex> g(mu_);
        doubts_.erase(id);
        throw;
    }
    {
        std::lock_guard<std::mutex> g(mu_);
        doubts_.erase(id);
        if (f.type == uint16_t(MsgType::kOpCommit) && sync_revision != kNotSync) {
            revision_ = sync_revision;
            synced_ = true;
        }
    }
    if (f.type == uint16_t(MsgType::kOpAbort)) {
        pool_.clear_slot(slot);
        auto m = wire::decode_payload<wire::OpAbort>(f.payload);
        throw CoreError(ErrorKind(m.kind), m.reason);
    }
}

void Communicator::close() {
    State s = state_;
    if (s == State::kClosed || s == State::kNew) {
        state_ = State::kClosed;
        return;
    }
    {
        std::lock_guard<std::mutex> g(mu_);  // from here on, the master closing our link is expected
        state_ = State::kClosed;
        // Operations in flight stop now (their waits raise the closed error), never holding close() up.
        for (auto& [id, ctl] : active_) ctl->fail(ErrorKind::kState, closed_why_);
        cv_.notify_all();
    }
    if (s == State::kAccepted || s == State::kJoining) {
        std::lock_guard<std::mutex> g(send_mu_);
        int err = 0;
        send_sealed(wire::empty_frame(MsgType::kLeave), &err);
    }
    link_running_ = false;
    link_wake_.signal();
    if (link_thread_.joinable()) link_thread_.join();
    {
        std::lock_guard<std::mutex> g(send_mu_);
        net::close_fd(master_fd_);
    }
    pool_.stop();
    // The slots' threads and scratch go now (an operation still unwinding keeps its own until it ends).
    std::map<uint32_t, std::shared_ptr<SlotResources>> slots;
    {
        std::lock_guard<std::mutex> g(mu_);
        slots.swap(slots_);
    }
}

}  // namespace pccl
