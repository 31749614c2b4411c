// The peer's side of a shared-state sync (docs/shared_state.md):
//   1. SYNC_START(revision, strategy, entries with hashes) to the master; wait for SYNC_PLAN.
//   2. A refused peer raises the plan's reason. A plan that commits at once (nothing moves) returns.
//   3. Otherwise every send and receive of the plan runs at once, one thread per stripe (state_transfer.hpp);
//      received bytes land in fresh buffers, never in the caller's arrays, and each fetched entry's hash is
//      checked against the winner's.
//   4. OP_DONE to the master; OP_COMMIT publishes (the caller copies the buffers into its arrays), OP_ABORT raises.
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "peer/communicator.hpp"
#include "kernels/hash.hpp"
#include "peer/state_transfer.hpp"

namespace pccl {

using wire::MsgType;

static std::shared_ptr<uint8_t> aligned_buffer(size_t n) {
    auto* p = static_cast<uint8_t*>(std::aligned_alloc(64, std::max<size_t>(64, (n + 63) / 64 * 64)));
    if (!p) throw std::bad_alloc();
    return std::shared_ptr<uint8_t>(p, [](uint8_t* q) { std::free(q); });
}

SyncOutcome Communicator::sync_state(const std::vector<wire::StateEntry>& entries, const std::vector<const uint8_t*>& data,
                                     uint64_t revision, uint8_t strategy, double timeout) {
    if (entries.size() != data.size()) throw CoreError(ErrorKind::kInvalidArgument, "one data pointer per entry");
    if (entries.size() > wire::kMaxStateEntries)
        throw CoreError(ErrorKind::kInvalidArgument, "at most " + std::to_string(wire::kMaxStateEntries) + " entries");
    if (strategy > uint8_t(wire::SyncStrategy::kSendOnly)) throw CoreError(ErrorKind::kInvalidArgument, "unknown strategy");
    require_accepted();
    {
        std::lock_guard<std::mutex> g(mu_);
        if (in_flight_ > 0)
            throw CoreError(ErrorKind::kState, "sync_shared_state() while " + std::to_string(in_flight_.load()) +
                                                   " all-reduce(s) are in flight: wait for them first");
        if (syncing_) throw CoreError(ErrorKind::kState, "sync_shared_state() is already running on this peer");
        syncing_ = true;
    }
    struct Syncing {
        Communicator* c;
        ~Syncing() {
            std::lock_guard<std::mutex> g(c->mu_);
            c->syncing_ = false;
        }
    } syncing_guard{this};
    const double t0 = net::now_seconds();
    const uint32_t ms = timeout_ms(timeout);
    const uint64_t gen = send_master(MsgType::kSyncStart, wire::SyncStart{revision, strategy, ms, cfg_.min_world, entries}, Send::kStart);
    Frame f = wait_frame([](const Frame& f) { return f.type == uint16_t(MsgType::kSyncPlan); },
                         ms ? net::now_seconds() + ms / 1000.0 + cfg_.master_timeout : -1,
                         "the other peers to call sync_shared_state()", gen);
    const auto plan = wire::decode_payload<wire::SyncPlan>(f.payload);
    if (!plan.ok) throw CoreError(ErrorKind(plan.kind), plan.reason);
    SyncOutcome out;
    out.sync_id = plan.sync_id;
    out.revision = plan.revision;
    out.fetched = plan.fetch;
    out.world_size = group_world_size_;
    for (uint32_t i : plan.fetch) {
        if (i >= entries.size()) throw CoreError(ErrorKind::kProtocol, "the plan fetches an entry that does not exist");
        out.buffers.push_back(aligned_buffer(entries[i].nbytes));
    }
    auto stream_of = [&](const std::vector<uint32_t>& fetch, bool receiving) {
        Stream s;
        for (size_t k = 0; k < fetch.size(); k++) {
            if (fetch[k] >= entries.size()) throw CoreError(ErrorKind::kProtocol, "the plan sends an entry that does not exist");
            s.data.push_back(receiving ? out.buffers[k].get() : const_cast<uint8_t*>(data[fetch[k]]));
            s.sizes.push_back(entries[fetch[k]].nbytes);
        }
        return s;
    };
    if (plan.commit_now) {
        if (!plan.fetch.empty()) throw CoreError(ErrorKind::kProtocol, "a plan that commits at once fetches nothing");
        {
            std::lock_guard<std::mutex> g(mu_);  // what a next master is told (rejoin.cpp)
            note_commit(plan.sync_id);
            revision_ = plan.revision;
            synced_ = true;
        }
        out.seconds = net::now_seconds() - t0;
        return out;
    }

    OpControl ctl(plan.sync_id);
    track(ctl);
    const Stream mine = stream_of(plan.fetch, true);
    std::vector<Stream> outgoing;
    for (const auto& snd : plan.sends) outgoing.push_back(stream_of(snd.fetch, false));
    std::vector<std::atomic<uint64_t>> sent(plan.sends.size()), received(plan.recvs.size());
    // One thread per stripe of every send and receive; both ends cut a range into the same stripes.
    std::vector<std::thread> threads;
    std::mutex done_mu;
    std::condition_variable done_cv;
    size_t running = 0;  // guarded by done_mu
    auto per_stripe = [&](uint64_t begin, uint64_t end, uint32_t connections, auto&& body) {
        const uint32_t stripes = stripes_for(end - begin, connections);
        for (uint32_t j = 0; j < stripes; j++) {
            uint64_t b, e;
            stripe_range(begin, end, stripes, j, &b, &e);
            {
                std::lock_guard<std::mutex> g(done_mu);
                running++;
            }
            threads.emplace_back([=, &done_mu, &done_cv, &running] {
                body(j, b, e);
                std::lock_guard<std::mutex> g(done_mu);
                if (--running == 0) done_cv.notify_all();
            });
        }
    };
    for (size_t t = 0; t < plan.sends.size(); t++) {
        const auto& snd = plan.sends[t];
        per_stripe(snd.begin, snd.end, snd.stripes, [&, t](uint32_t j, uint64_t b, uint64_t e) {
            TransferLink link{&pool_, snd.to, j, cfg_.connect_timeout, cfg_.data_timeout, cfg_.piece_bytes};
            send_stream(outgoing[t], b, e, link, ctl, &sent[t]);
        });
    }
    for (size_t t = 0; t < plan.recvs.size(); t++) {
        const auto& rcv = plan.recvs[t];
        per_stripe(rcv.begin, rcv.end, rcv.stripes, [&, t](uint32_t j, uint64_t b, uint64_t e) {
            TransferLink link{&pool_, wire::PeerInfo{rcv.from, "", 0}, j, cfg_.connect_timeout, cfg_.data_timeout,
                              cfg_.piece_bytes};
            recv_stream(mine, b, e, link, ctl, &received[t]);
        });
    }
    {  // wait for every stripe, noticing Ctrl-C on the way (the stripes stop on ctl.fail)
        std::unique_lock<std::mutex> lk(done_mu);
        while (!done_cv.wait_for(lk, std::chrono::milliseconds(100), [&] { return running == 0; }))
            if (interrupt_requested()) ctl.fail(ErrorKind::kInterrupted, "interrupted (KeyboardInterrupt) while state moved");
    }
    for (auto& th : threads) th.join();
    untrack(ctl);
    for (size_t t = 0; t < plan.sends.size(); t++) {
        out.sent_to[plan.sends[t].to.id] += sent[t];
        out.bytes_sent += sent[t];
    }
    for (size_t t = 0; t < plan.recvs.size(); t++) {
        out.received_from[plan.recvs[t].from] += received[t];
        out.bytes_received += received[t];
    }
    ErrorKind kind;
    std::string why;
    if (!ctl.failed(&kind, &why)) {
        for (size_t k = 0; k < plan.fetch.size(); k++) {
            const auto& e = entries[plan.fetch[k]];
            const uint64_t h = content_hash(out.buffers[k].get(), e.nbytes);
            if (h != plan.expect[k]) {
                ctl.fail(ErrorKind::kSharedState,
                         "entry '" + e.name + "' arrived with hash " + std::to_string(h) + ", the group's is " +
                             std::to_string(plan.expect[k]) + ": a holder changed it during the sync, or it was corrupted");
                break;
            }
        }
    }
    settle(ctl, kStateSlot, gen, plan.revision);
    out.seconds = net::now_seconds() - t0;
    return out;
}

}  // namespace pccl
