// A peer outliving its master (communicator.hpp has the overview; docs/master.md the guarantees).
//
// How it works: the link thread notices the loss (a broken connection, or master_timeout of silence) and, for
// an admitted peer, calls rejoin(). The first loss starts the grace, counts a new link generation (waits for
// the old master's answers raise kPeerLost from then on) and fails every running operation that has not
// reported done. Then it dials the addresses in order, with backoff, until one answers: it proves the secret
// again (a run with one), says HELLO with what it knows (peer id, epoch, ring, revision, committed and in-doubt
// operations) and goes back to reading frames. WELCOME from an older epoch than the last master's ends that
// link and that address is not tried again; the admission (TOPO_RESULT seq 0) ends the absence: the ring is
// applied and calls that waited send their requests. The verdicts on operations in doubt arrive as ordinary
// OP_COMMIT / OP_ABORT frames. Past master_grace the communicator is broken with kMasterUnreachable.
//
// From the loss on, every new collective raises kPeerLost (resume_pending_) until the caller has seen one fail
// (acknowledge_loss) or calls update_topology(): the peers of a group may have lost the master at different calls
// of a step, and each must see a failure at its next call to redo the step (or the call) with the others.
#include <algorithm>
#include <thread>

#include "base/log.hpp"
#include "peer/communicator.hpp"

namespace pccl {

using wire::MsgType;

namespace {
constexpr size_t kRecentCommits = 64;  // committed ids a peer remembers for the next master
}

void Communicator::note_commit(uint64_t op_id) {
    committed_.push_back(op_id);
    if (committed_.size() > kRecentCommits) committed_.pop_front();
    auto d = doubts_.find(op_id);
    if (d == doubts_.end()) return;
    if (d->second.sync_revision != kNotSync) {
        revision_ = d->second.sync_revision;
        synced_ = true;
    }
    doubts_.erase(d);
}

CoreError Communicator::master_lost_error(const char* what) const {
    return CoreError(ErrorKind::kPeerLost,
                     "the master at " + master_now_ + " was lost (" + lost_why_ + ") while this call waited for " +
                         what + "; no peer committed it: redo the step (this communicator looks for a master for "
                         "master_grace = " + std::to_string(int(cfg_.master_grace)) + " s and later calls wait for it)");
}

CoreError Communicator::resume_error() const {
    return CoreError(ErrorKind::kPeerLost,
                     "the master at " + master_now_ + " was lost (" + lost_why_ + ") after this peer's last "
                     "collective; the others may have lost it at another call of the step: redo the step (or "
                     "retry this call), as after any lost peer");
}

void Communicator::acknowledge_loss(uint64_t generation) {
    std::lock_guard<std::mutex> g(mu_);
    if (generation_ == generation && !away_) resume_pending_ = false;
}

int Communicator::dial_master(const std::string& address, double deadline, auth::Channel* channel) {
    int fd = net::connect_to(net::parse_address(address), std::clamp(deadline - net::now_seconds(), 0.05, 1.0));
    if (cfg_.key) {  // prove the secret before anything else; the master's policy says whether the run encrypts
        try {
            *channel = auth::client_handshake(fd, *cfg_.key, auth::kMasterLink, std::nullopt,
                                              net::now_seconds() + cfg_.connect_timeout, "the master at " + address);
        } catch (...) {
            net::close_fd(fd);
            throw;
        }
    }
    return fd;
}

wire::Returning Communicator::returning_report() const {
    wire::Returning b;
    b.peer_id = peer_id_;
    b.epoch = epoch_;
    for (const auto& p : ring_) b.ring.push_back(p.id);
    b.revision = revision_;
    b.synced = synced_ ? 1 : 0;
    b.committed.assign(committed_.begin(), committed_.end());
    for (const auto& [id, d] : doubts_) {
        b.in_doubt.push_back(id);
        if (d.sync_revision != kNotSync) {
            b.doubt_sync = id;
            b.doubt_revision = d.sync_revision;
        }
    }
    return b;
}

bool Communicator::rejoin(const std::string& why) {
    const double now = net::now_seconds();
    {
        std::lock_guard<std::mutex> g(mu_);
        if (state_ != State::kAccepted) return false;  // closing
        const auto at = std::find(masters_.begin(), masters_.end(), master_now_);
        const size_t after = at == masters_.end() ? 0 : size_t(at - masters_.begin()) + 1;
        if (!away_) {  // the first loss: the grace starts now, from the first address (a broken connection: the
                       // master may be restarting there), or after this one (a silent master: it may hang on)
            away_ = true;
            grace_end_ = now + cfg_.master_grace;
            tried_.clear();
            stale_.clear();
            next_try_ = silent_ || fenced_out_ ? after : 0;
            generation_++;
            resume_pending_ = true;
            lost_why_ = why;
            for (auto& [id, ctl] : active_)
                if (!doubts_.count(id))
                    ctl->fail(ErrorKind::kPeerLost, "the master at " + master_now_ + " was lost during the operation (" +
                                                        why + "); no peer committed it: redo the step");
            cv_.notify_all();
            log_warn("peer " + std::to_string(peer_id_.load()) + ": " + why + "; looking for a master for " +
                     std::to_string(int(cfg_.master_grace)) + " s (master_grace)");
        } else {  // a master that took the connection and then failed: the search goes on with the next address
            tried_[master_now_] = why;
            next_try_ = after;
        }
        if (fenced_out_) stale_.insert(master_now_);  // it keeps no majority of the group: not again
        fenced_out_ = false;
    }
    rejoining_ = false;
    welcomed_ = false;
    {
        std::lock_guard<std::mutex> g(send_mu_);
        net::close_fd(master_fd_);
        master_channel_ = {};
    }
    for (double backoff = 0.05;; backoff = std::min(backoff * 2, 1.0)) {
        const size_t first = next_try_;
        next_try_ = 0;  // a round that finds nobody starts the next one from the primary
        for (size_t k = 0; k < masters_.size(); k++) {
            const std::string& address = masters_[(first + k) % masters_.size()];
            if (!link_running_) return false;
            if (stale_.count(address) || net::now_seconds() >= grace_end_) continue;
            auth::Channel channel;
            int fd = -1;
            try {
                fd = dial_master(address, grace_end_, &channel);
            } catch (const CoreError& e) {
                if (e.kind() == ErrorKind::kAuthentication) {
                    mark_broken(e.kind(), e.what());
                    return false;
                }
                tried_[address] = e.what();
                continue;
            }
            wire::Hello hello;
            {
                std::lock_guard<std::mutex> g(mu_);
                master_now_ = address;
                hello = wire::Hello{cfg_.peer_group, cfg_.connections, advertised_.host, advertised_.port,
                                    returning_report(), uint8_t(masters_.size() > 1)};
            }
            std::lock_guard<std::mutex> g(send_mu_);
            master_fd_ = fd;
            master_channel_ = std::move(channel);
            reader_ = net::FrameReader();
            reader_.seal_with(master_channel_.rx.get());
            int err = 0;
            if (!send_sealed(wire::frame(MsgType::kHello, hello), &err)) {
                tried_[address] = errno_text("HELLO failed", err);
                net::close_fd(master_fd_);
                master_channel_ = {};
                continue;
            }
            rejoining_ = true;
            return true;
        }
        if (net::now_seconds() >= grace_end_) {
            std::string tried;
            for (const auto& address : masters_) {
                auto t = tried_.find(address);
                tried += (tried.empty() ? "" : "; ") + address + " (" +
                         (stale_.count(address) ? std::string("an older master than the last one, or one that let "
                                                              "this peer go") :
                          t == tried_.end() ? std::string("not tried") : t->second) + ")";
            }
            std::string lost;
            {
                std::lock_guard<std::mutex> g(mu_);
                lost = lost_why_;
            }
            mark_broken(ErrorKind::kMasterUnreachable,
                        "no master took this peer back within master_grace (" + std::to_string(int(cfg_.master_grace)) +
                            " s) after the master link ended (" + lost + "); tried " + tried);
            return false;
        }
        const double retry_at = std::min(net::now_seconds() + backoff, grace_end_);
        while (link_running_ && net::now_seconds() < retry_at) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

bool Communicator::rejoin_frame(uint16_t type, const std::vector<uint8_t>& payload, ErrorKind* kind, std::string* why,
                                bool* end) {
    if (type == uint16_t(MsgType::kWelcome)) {
        const auto w = wire::decode_payload<wire::Welcome>(payload);
        if (w.epoch < epoch_) {  // the fence: never back to an older master (docs/master.md)
            *kind = ErrorKind::kMasterUnreachable;
            *why = "the master at " + master_now_ + " is older (epoch " + std::to_string(w.epoch) +
                   ") than the last one (epoch " + std::to_string(epoch_.load()) + ")";
            stale_.insert(master_now_);
            *end = true;
            return true;
        }
        if (w.peer_id != peer_id_) log_warn("peer " + std::to_string(peer_id_.load()) + " is peer " + std::to_string(w.peer_id) + " from now on (its id was taken)");
        peer_id_ = w.peer_id;
        pool_.set_self(w.peer_id);
        pool_.set_master_relay(net::parse_address(master_now_).host, w.relay_port);
        epoch_ = w.epoch;
        welcomed_ = true;
        return true;
    }
    if (type != uint16_t(MsgType::kTopoResult)) return false;
    const auto r = wire::decode_payload<wire::TopoResult>(payload);
    if (r.seq != 0) return false;
    if (r.kind) {  // refused (its data address is unreachable from the new master)
        *kind = ErrorKind(r.kind);
        *why = r.reason;
        *end = true;
        return true;
    }
    pool_.retain({});  // data connections start afresh: ids and addresses may have changed with the master
    apply_topology(r);
    rejoining_ = false;
    std::lock_guard<std::mutex> g(mu_);
    away_ = false;
    go_ring_epoch_ = 0;  // the new master numbers its rings afresh
    cv_.notify_all();
    log_info("peer " + std::to_string(peer_id_.load()) + ": back with the master at " + master_now_);
    return true;
}

}  // namespace pccl
