#include "peer/direct.hpp"

#include <algorithm>

#include "transport/data_link.hpp"
#include "transport/wait.hpp"

namespace pccl {

size_t direct_inbox_bytes(const RingPlan& plan) {
    size_t most = 0;
    for (uint32_t c = 0; c < plan.world; c++) {
        size_t first, first_len, last, last_len;  // the chunk runs from stripe 0's start to the last stripe's end
        plan.region(c, 0, &first, &first_len);
        plan.region(c, plan.stripes - 1, &last, &last_len);
        most = std::max(most, plan.byte_len(first, last + last_len - first));
    }
    return most;
}

namespace {

constexpr uint32_t kSteps = 2;  // 0: scatter to the owners, 1: gather from them

class DirectStripe {
public:
    DirectStripe(const RingPlan& plan, uint32_t j, const DirectWork& work, uint8_t* mine, uint8_t* inbox,
                 uint8_t* result, const DirectLinks& links, OpControl& ctl, StripeBytes* bytes)
        : plan_(plan), j_(j), work_(work), mine_(mine), result_(result), links_(links), ctl_(ctl), bytes_(bytes) {
        const size_t stride = direct_inbox_bytes(plan);
        size_t chunk_first, unused;
        plan.region(plan.rank, 0, &chunk_first, &unused);
        const size_t at = begin_of(plan.rank) - plan.byte_offset(chunk_first);  // this stripe's place in the chunk
        if (work.chunk_only) shift_ = plan.byte_offset(chunk_first);
        for (uint32_t k = 1; k < plan.world; k++) {  // senders in summation order: ring order from our successor
            const uint32_t p = (plan.rank + k) % plan.world;
            outs_.emplace_back().rank = p;
            In& in = ins_.emplace_back();
            in.rank = p;
            if (inbox) in.inbox = inbox + (k - 1) * stride + at;
        }
        received_.resize(ins_.size());
        // Our chunk is final from the start where nobody sends it to us: all_gather's (our input), the root's.
        const bool mine_final = work.kind == OpKind::kAllGather || (work.kind == OpKind::kBroadcast && plan.rank == work.root) ||
                                work.collect;  // nothing to sum during the run: done once the inbox is full
        if (mine_final) summed_ = len_of(plan.rank);
    }

    void run() {
        for (Out& o : outs_) skip_empty(o);
        for (In& in : ins_) skip_empty(in);
        if (done()) return;
        // Dials this peer makes for its incoming connections (docs/nat.md) start before it opens its own, which
        // may wait for the others' dials.
        for (const In& in : ins_)
            if (in.step < kSteps) links_.pool->expect(peer(in.rank).id, links_.slot, j_);
        for (Out& o : outs_) {
            if (o.step >= kSteps) continue;
            try {
                o.conn = links_.pool->outgoing(links_.peers[o.rank], links_.slot, j_, links_.connect_timeout);
            } catch (const CoreError& e) {
                ctl_.fail(ErrorKind::kPeerLost, e.what());
                return;
            }
        }
        double last_progress = net::now_seconds();
        for (In& in : ins_) in.last = last_progress;
        std::vector<Want> wants;
        while (!done() && !ctl_.stopped()) {
            bool progressed = false;
            for (In& in : ins_)
                if (in.step < kSteps && !receive(in, &progressed)) return;
            sum_ready(&progressed);
            for (Out& o : outs_)
                if (o.step < kSteps && !send(o, &progressed)) return;
            if (interrupted(ctl_)) return;  // only the calling thread has a check (Ctrl-C in Python's main thread)
            const double now = net::now_seconds();
            if (progressed) {
                last_progress = now;
                continue;
            }
            if (now - last_progress > links_.progress_timeout) {
                ctl_.fail(ErrorKind::kPeerLost, "no progress for " + std::to_string(links_.progress_timeout) +
                                                    " s on connection " + std::to_string(j_) + ": " + stalled());
                return;
            }
            wants.clear();
            bool dialing = false;  // an incoming connection not there yet: its peer is dialing it, look again soon
            for (const In& in : ins_) {
                if (in.step >= kSteps) continue;
                dialing |= !in.conn;
                wants.push_back({in.conn.get(), true, false});
            }
            for (const Out& o : outs_)
                if (o.blocked) wants.push_back({o.conn.get(), false, true});
            wait_for(ctl_, wants.data(), wants.size(), dialing ? 5 : 100);
        }
    }

private:
    struct Out {
        uint32_t rank = 0;
        ConnPtr conn;
        PieceSender tx;
        uint32_t step = 0;
        size_t off = 0, piece = 0;
        bool blocked = false;
    };
    struct In {
        uint32_t rank = 0;
        ConnPtr conn;
        PieceReceiver rx;
        Leftover left;  // bytes of this operation received on conn
        uint32_t step = 0;
        size_t off = 0;
        uint8_t* inbox = nullptr;  // where this sender's units of our chunk land (step 0)
        double last = 0;           // when a byte last arrived
    };

    // Chunk c's stripe j: its first unit, its first byte, its length in bytes.
    size_t unit_of(uint32_t c) const {
        size_t b, l;
        plan_.region(c, j_, &b, &l);
        return b;
    }
    size_t begin_of(uint32_t c) const { return plan_.byte_offset(unit_of(c)); }
    size_t len_of(uint32_t c) const {
        size_t b, l;
        plan_.region(c, j_, &b, &l);
        return plan_.byte_len(b, l);
    }
    // What an outgoing connection sends at its step (their chunk, then ours) and an incoming one receives (ours,
    // then theirs). Both ends compute the same lengths, so neither sends nor expects frames for empty ones.
    uint32_t out_chunk(const Out& o) const { return o.step == 0 ? o.rank : plan_.rank; }
    uint32_t in_chunk(const In& in) const { return in.step == 0 ? plan_.rank : in.rank; }
    // Whether `from` sends to `to` at a step, by collective (the top of direct.hpp).
    bool moves(uint32_t step, uint32_t from, uint32_t to) const {
        switch (work_.kind) {
            case OpKind::kReduceScatter: return step == 0;
            case OpKind::kAllGather: return step == 1;
            case OpKind::kBroadcast: return step == 0 ? from == work_.root : to != work_.root;
            default: return true;
        }
    }
    void skip_empty(Out& o) {
        while (o.step < kSteps && (!moves(o.step, plan_.rank, o.rank) || len_of(out_chunk(o)) == 0)) o.step++;
    }
    void skip_empty(In& in) {
        while (in.step < kSteps && (!moves(in.step, in.rank, plan_.rank) || len_of(in_chunk(in)) == 0)) in.step++;
    }
    // Where chunk c's result lives (with chunk_only, `result_` starts at our chunk's first byte).
    uint8_t* result_at(uint32_t c) const { return result_ + (begin_of(c) - shift_); }
    bool done() const {
        for (const Out& o : outs_)
            if (o.step < kSteps) return false;
        for (const In& in : ins_)
            if (in.step < kSteps) return false;
        return summed_ == len_of(plan_.rank);
    }
    size_t units_in(size_t bytes) const { return (bytes + plan_.unit_bytes - 1) / plan_.unit_bytes; }

    // The owner's sum of every run of units that has arrived from all senders (a broadcast's: what has arrived
    // from the root, straight into our chunk of the result).
    void sum_ready(bool* progressed) {
        const size_t mine_len = len_of(plan_.rank);
        if (work_.kind == OpKind::kBroadcast) {
            for (const In& in : ins_)
                if (in.rank == work_.root) summed_ = in.step > 0 ? mine_len : in.off;
            return;
        }
        if (!work_.reduce) return;
        size_t ready = mine_len;
        for (const In& in : ins_)
            if (in.step == 0) ready = std::min(ready, in.off);
        if (ready < mine_len) ready -= ready % plan_.unit_bytes;  // whole units (only the region's last is short)
        if (ready <= summed_) return;
        for (size_t k = 0; k < ins_.size(); k++) received_[k] = ins_[k].inbox + summed_;
        uint8_t* out = result_at(plan_.rank) + summed_;
        const size_t first = unit_of(plan_.rank) + summed_ / plan_.unit_bytes, n = units_in(ready - summed_);
        work_.reduce(out, received_.data(), first, n);
        if (work_.finish) work_.finish(out, first, n);
        summed_ = ready;
        *progressed = true;
    }

    // Which peer the operation waits for, in words: the silent sender that has been silent longest, or a
    // receiver that stopped reading.
    std::string stalled() const {
        const In* quiet = nullptr;
        for (const In& in : ins_)
            if (in.step < kSteps && (!quiet || in.last < quiet->last)) quiet = &in;
        if (quiet) return "nothing arrived from peer " + std::to_string(links_.peers[quiet->rank].id);
        for (const Out& o : outs_)
            if (o.blocked) return "peer " + std::to_string(links_.peers[o.rank].id) + " stopped reading";
        return "no peer moved";
    }

    const wire::PeerInfo& peer(uint32_t rank) const { return links_.peers[rank]; }

    // A receive-side connection failed: a leftover of an aborted operation is dropped (its peer dials a fresh
    // one), anything else fails the operation (ring.cpp has the same rule).
    bool lost_incoming(In& in, ErrorKind kind, const std::string& why) {
        if (in.left.is_leftover()) {
            links_.pool->discard(in.conn);
            in.conn.reset();
            in.rx.reset();
            return true;
        }
        ctl_.fail(kind, "connection " + std::to_string(j_) + " from peer " + std::to_string(peer(in.rank).id) + " (" +
                            peer(in.rank).host + ":" + std::to_string(peer(in.rank).port) + ") broke: " + why);
        return false;
    }

    bool receive(In& in, bool* progressed) {
        if (!in.conn) {
            try {
                in.conn = links_.pool->incoming(peer(in.rank).id, links_.slot, j_);
            } catch (const CoreError& e) {  // this peer dials for it (docs/nat.md), and could not
                ctl_.fail(ErrorKind::kPeerLost, e.what());
                return false;
            }
            in.left.replaced();
            if (!in.conn) return true;
        }
        for (int rounds = 0; rounds < 64 && in.step < kSteps; rounds++) {
            size_t n;
            int err = 0;
            const auto st = in.rx.pump(*in.conn->stream, &n, &err, in.conn->rx());
            if (n) {
                *progressed = true;
                in.last = net::now_seconds();
                in.conn->bytes += n;
                bytes_->received += n;
            }
            switch (st) {
                case PieceReceiver::kAgain: return true;
                case PieceReceiver::kProgress: break;
                case PieceReceiver::kClosed: return lost_incoming(in, ErrorKind::kPeerLost, "closed by the other side");
                case PieceReceiver::kFailed: return lost_incoming(in, ErrorKind::kPeerLost, errno_text("recv", err));
                case PieceReceiver::kForged:  // nothing of it was used; retryable, the connection is replaced
                    ctl_.fail(ErrorKind::kPeerLost,
                              "data connection from peer " + std::to_string(peer(in.rank).id) + ": " + in.rx.why());
                    return false;
                case PieceReceiver::kBadFrame:
                    if (in.left.is_leftover()) return lost_incoming(in, ErrorKind::kProtocol, in.rx.why());
                    ctl_.fail(ErrorKind::kProtocol,
                              "data connection from peer " + std::to_string(peer(in.rank).id) + ": " + in.rx.why());
                    return false;
                case PieceReceiver::kHeader:
                    if (!check_head(in)) return false;
                    if (!in.conn) return true;  // a leftover, discarded
                    in.left.arrived(kPieceHead);
                    in.rx.accept((in.step == 1 ? result_at(in.rank) : in.inbox ? in.inbox : result_at(plan_.rank)) + in.off);
                    break;
                case PieceReceiver::kPiece: {
                    in.left.arrived(in.rx.piece_len());
                    if (in.step == 1 && work_.finish)  // an owner's final units: decode them now
                        work_.finish(result_at(in.rank) + in.off,
                                     unit_of(in.rank) + in.off / plan_.unit_bytes, units_in(in.rx.piece_len()));
                    in.off += in.rx.piece_len();
                    if (in.off == len_of(in_chunk(in))) {
                        in.off = 0;
                        in.step++;
                        skip_empty(in);
                    }
                    break;
                }
            }
        }
        return true;
    }

    // The header of the next piece must be this operation's, at the step, stripe and offset we expect.
    bool check_head(In& in) {
        const wire::DataHeader& d = in.rx.header();
        if (d.op_id != ctl_.op_id()) {
            if (in.left.is_leftover())
                return lost_incoming(in, ErrorKind::kProtocol, "bytes of operation " + std::to_string(d.op_id));
            ctl_.fail(ErrorKind::kProtocol, "frame of operation " + std::to_string(d.op_id) + " inside operation " +
                                                std::to_string(ctl_.op_id()));
            return false;
        }
        const size_t left = len_of(in_chunk(in)) - in.off, piece = in.rx.piece_len();
        const bool whole = piece % plan_.unit_bytes == 0 || piece == left;
        if (d.step != in.step || d.stripe != j_ || d.offset != in.off || piece == 0 || piece > left || !whole) {
            ctl_.fail(ErrorKind::kProtocol, "unexpected data frame from peer " + std::to_string(peer(in.rank).id) +
                                                " (step " + std::to_string(d.step) + ", stripe " +
                                                std::to_string(d.stripe) + ", offset " + std::to_string(d.offset) +
                                                "), expected step " + std::to_string(in.step) + " offset " +
                                                std::to_string(in.off));
            return false;
        }
        return true;
    }

    bool send(Out& o, bool* progressed) {
        const size_t per_piece = std::max<size_t>(1, plan_.piece_bytes / plan_.unit_bytes) * plan_.unit_bytes;
        o.blocked = false;
        for (int rounds = 0; rounds < 64 && o.step < kSteps; rounds++) {
            const uint32_t c = out_chunk(o);
            const size_t len = len_of(c);
            if (!o.tx.in_piece()) {
                const size_t piece = std::min(per_piece, len - o.off);
                if (o.step == 1 && o.off + piece > summed_) return true;  // our sum is not that far yet
                uint8_t* src = (o.step == 0 ? mine_ + begin_of(c) : result_at(c)) + o.off;
                if (o.step == 0 && work_.encode)  // their chunk of our contribution, quantized as it leaves
                    work_.encode(src, unit_of(c) + o.off / plan_.unit_bytes, units_in(piece));
                o.tx.start(wire::DataHeader{ctl_.op_id(), o.step, j_, o.off}, src, piece, o.conn->tx());
                o.piece = piece;
            }
            size_t n;
            int err = 0;
            const auto st = o.tx.pump(*o.conn->stream, &n, &err);
            if (n) {
                *progressed = true;
                o.conn->bytes += n;
                bytes_->sent += n;
            }
            if (st == PieceSender::kBlocked) {
                o.blocked = true;
                return true;
            }
            if (st == PieceSender::kFailed) {
                ctl_.fail(ErrorKind::kPeerLost, errno_text("sending to peer " + std::to_string(peer(o.rank).id) + " (" +
                                                               peer(o.rank).host + ":" + std::to_string(peer(o.rank).port) +
                                                               ") on connection " + std::to_string(j_) + " failed",
                                                           err));
                return false;
            }
            o.off += o.piece;
            if (o.off == len) {
                o.off = 0;
                o.step++;
                skip_empty(o);
            }
        }
        return true;
    }

    const RingPlan& plan_;
    const uint32_t j_;
    const DirectWork& work_;
    uint8_t* mine_;
    uint8_t* result_;
    const DirectLinks& links_;
    OpControl& ctl_;
    StripeBytes* bytes_;
    std::vector<Out> outs_;
    std::vector<In> ins_;
    std::vector<const uint8_t*> received_;
    size_t summed_ = 0;  // bytes of our own chunk's stripe that hold the final sum
    size_t shift_ = 0;   // the byte offset of result_[0] in the whole array (chunk_only)
};

}  // namespace

void run_direct_stripe(const RingPlan& plan, uint32_t j, const DirectWork& work, uint8_t* mine, uint8_t* inbox,
                       uint8_t* result, const DirectLinks& links, OpControl& ctl, StripeBytes* bytes) {
    DirectStripe(plan, j, work, mine, inbox, result, links, ctl, bytes).run();
}

}  // namespace pccl
