#include "peer/ring.hpp"

#include <algorithm>
#include "transport/data_link.hpp"
#include "transport/wait.hpp"

namespace pccl {

uint32_t stripes_for(size_t bytes, uint32_t connections) {
    const size_t by_size = bytes / kMinStripeBytes;
    return uint32_t(std::max<size_t>(1, std::min<size_t>(connections, by_size)));
}

void RingPlan::region(uint32_t c, uint32_t j, size_t* begin, size_t* len) const {
    const size_t rows = units / row_units, base = rows / world, rem = rows % world;
    const size_t chunk_begin = bounds.empty() ? (c * base + std::min<size_t>(c, rem)) * row_units : bounds[c];
    const size_t chunk_len = bounds.empty() ? (base + (c < rem ? 1 : 0)) * row_units : bounds[c + 1] - bounds[c];
    const size_t sbase = chunk_len / stripes, srem = chunk_len % stripes;
    *begin = chunk_begin + j * sbase + std::min<size_t>(j, srem);
    *len = sbase + (j < srem ? 1 : 0);
}

uint32_t RingPlan::send_chunk(uint32_t s) const {
    return reducing(s) ? (rank + world - s) % world : (rank + 1 + world - (s - (world - 1))) % world;
}

uint32_t RingPlan::recv_chunk(uint32_t s) const {
    return reducing(s) ? (rank + 2 * world - s - 1) % world : (rank + world - (s - (world - 1))) % world;
}

namespace {

// The state of one stripe's two directions, advanced by non-blocking calls of the data link.
class Stripe {
public:
    Stripe(const RingPlan& plan, uint32_t j, const RingWork& work, const uint8_t* input, uint8_t* result,
           const RingLinks& links, OpControl& ctl, StripeBytes* bytes)
        : plan_(plan), j_(j), work_(work), input_(input), result_(result), links_(links), ctl_(ctl),
          bytes_(bytes), steps_(plan.steps()) {}

    void run() {
        skip_empty(&s_step_);
        skip_empty(&r_step_);
        if (s_step_ >= steps_ && r_step_ >= steps_) return;
        // Where this peer must dial for its incoming connection (docs/nat.md: a peer that cannot be dialed), that
        // dial starts before ours, which may itself wait for the successor's dial.
        if (r_step_ < steps_) links_.pool->expect(links_.prev.id, links_.slot, j_);
        try {
            out_ = links_.pool->outgoing(links_.next, links_.slot, j_, links_.connect_timeout);
        } catch (const CoreError& e) {
            ctl_.fail(ErrorKind::kPeerLost, e.what());
            return;
        }
        double last_progress = net::now_seconds();
        while ((s_step_ < steps_ || r_step_ < steps_) && !ctl_.stopped()) {
            bool progressed = false;
            if (r_step_ < steps_ && !receive(&progressed)) return;
            if (s_step_ < steps_ && !send(&progressed)) return;
            if (interrupted(ctl_)) return;  // only the calling thread has a check (Ctrl-C in Python's main thread)
            const double now = net::now_seconds();
            if (progressed) {
                last_progress = now;
                continue;
            }
            if (now - last_progress > links_.progress_timeout) {
                const bool waiting_for_prev = r_step_ < steps_ && !sender_blocked_;
                ctl_.fail(ErrorKind::kPeerLost,
                          "no progress for " + std::to_string(links_.progress_timeout) + " s on connection " +
                              std::to_string(j_) + ": " +
                              (waiting_for_prev ? "nothing arrived from peer " + std::to_string(links_.prev.id)
                                                : "peer " + std::to_string(links_.next.id) + " stopped reading"));
                return;
            }
            // Without an incoming connection yet, look again soon: the predecessor is dialing it.
            wait_for(ctl_, {{r_step_ < steps_ ? in_.get() : nullptr, true, false}, {sender_blocked_ ? out_.get() : nullptr, false, true}},
                     in_ || r_step_ >= steps_ ? 100 : 5);
        }
    }

private:
    // In bytes: the length and start of this stripe's region at a step.
    size_t region_len(uint32_t step, bool sending) const {
        size_t b, l;
        plan_.region(sending ? plan_.send_chunk(step) : plan_.recv_chunk(step), j_, &b, &l);
        return plan_.byte_len(b, l);
    }
    size_t region_unit(uint32_t step, bool sending) const {
        size_t b, l;
        plan_.region(sending ? plan_.send_chunk(step) : plan_.recv_chunk(step), j_, &b, &l);
        return b;
    }
    size_t region_begin(uint32_t step, bool sending) const { return plan_.byte_offset(region_unit(step, sending)); }
    void skip_empty(uint32_t* step) {
        // Both sides compute the same empty regions, so neither sends nor expects frames for them.
        while (*step < steps_ && region_len(*step, step == &s_step_) == 0) (*step)++;
    }

    // A receive-side connection failed. A leftover of an aborted operation (nothing of this one arrived on it)
    // is dropped: the predecessor has closed it and will open a fresh one. Otherwise the operation fails.
    bool lost_incoming(ErrorKind kind, const std::string& why) {
        if (in_left_.is_leftover()) {
            links_.pool->discard(in_);
            in_.reset();
            rx_.reset();
            return true;
        }
        ctl_.fail(kind, "connection " + std::to_string(j_) + " from peer " + std::to_string(links_.prev.id) + " (" +
                            links_.prev.host + ":" + std::to_string(links_.prev.port) + ") broke: " + why);
        return false;
    }

    bool receive(bool* progressed) {
        if (!in_) {
            try {
                in_ = links_.pool->incoming(links_.prev.id, links_.slot, j_);
            } catch (const CoreError& e) {  // this peer dials for it (docs/nat.md), and could not
                ctl_.fail(ErrorKind::kPeerLost, e.what());
                return false;
            }
            in_left_.replaced();
            if (!in_) return true;
        }
        for (int rounds = 0; rounds < 64 && r_step_ < steps_; rounds++) {
            size_t n;
            int err = 0;
            const auto st = rx_.pump(*in_->stream, &n, &err, in_->rx());
            if (n) {
                *progressed = true;
                in_->bytes += n;
                bytes_->received += n;
            }
            switch (st) {
                case PieceReceiver::kAgain: return true;
                case PieceReceiver::kProgress: break;
                case PieceReceiver::kClosed: return lost_incoming(ErrorKind::kPeerLost, "closed by the other side");
                case PieceReceiver::kFailed: return lost_incoming(ErrorKind::kPeerLost, errno_text("recv", err));
                case PieceReceiver::kForged:  // nothing of it was used; retryable, the connection is replaced
                    ctl_.fail(ErrorKind::kPeerLost,
                              "data connection from peer " + std::to_string(links_.prev.id) + ": " + rx_.why());
                    return false;
                case PieceReceiver::kBadFrame:
                    if (in_left_.is_leftover()) return lost_incoming(ErrorKind::kProtocol, rx_.why());
                    ctl_.fail(ErrorKind::kProtocol,
                              "data connection from peer " + std::to_string(links_.prev.id) + ": " + rx_.why());
                    return false;
                case PieceReceiver::kHeader:
                    if (!check_head()) return false;
                    if (!in_) return true;  // a leftover, discarded
                    in_left_.arrived(kPieceHead);
                    rx_.accept(result_ + region_begin(r_step_, false) + r_off_);
                    break;
                case PieceReceiver::kPiece: {
                    in_left_.arrived(rx_.piece_len());
                    // A whole piece is here: fold our own input into it on reduce-scatter steps.
                    const size_t at = region_begin(r_step_, false) + r_off_;
                    const size_t first = region_unit(r_step_, false) + r_off_ / plan_.unit_bytes;
                    const size_t n_units = (rx_.piece_len() + plan_.unit_bytes - 1) / plan_.unit_bytes;
                    if (plan_.reducing(r_step_)) work_.fold(result_ + at, input_ + at, first, n_units, r_step_);
                    if (work_.finish && r_step_ + 2 >= plan_.world)  // the last fold, or any all-gather step
                        work_.finish(result_ + at, first, n_units);
                    r_off_ += rx_.piece_len();
                    if (r_off_ == region_len(r_step_, false)) {
                        r_off_ = 0;
                        r_step_++;
                        skip_empty(&r_step_);
                    }
                    break;
                }
            }
        }
        return true;
    }

    // The header of the next piece must be this operation's, at the step, stripe and offset we expect.
    bool check_head() {
        const wire::DataHeader& d = rx_.header();
        if (d.op_id != ctl_.op_id()) {
            if (in_left_.is_leftover()) return lost_incoming(ErrorKind::kProtocol, "bytes of operation " + std::to_string(d.op_id));
            ctl_.fail(ErrorKind::kProtocol, "frame of operation " + std::to_string(d.op_id) + " inside operation " +
                                                std::to_string(ctl_.op_id()));
            return false;
        }
        // The piece size is the sender's choice (peers may be configured differently): any whole number of
        // units up to what is left of the region is fine (the region's end may hold a short last unit).
        const size_t left = region_len(r_step_, false) - r_off_;
        const size_t piece = rx_.piece_len();
        const bool whole = piece % plan_.unit_bytes == 0 || piece == left;
        if (d.step != r_step_ || d.stripe != j_ || d.offset != r_off_ || piece == 0 || piece > left || !whole) {
            ctl_.fail(ErrorKind::kProtocol, "unexpected data frame (step " + std::to_string(d.step) + ", stripe " +
                                                std::to_string(d.stripe) + ", offset " + std::to_string(d.offset) +
                                                "), expected step " + std::to_string(r_step_) + " offset " +
                                                std::to_string(r_off_));
            return false;
        }
        return true;
    }

    bool send(bool* progressed) {
        const size_t per_piece = std::max<size_t>(1, plan_.piece_bytes / plan_.unit_bytes) * plan_.unit_bytes;
        sender_blocked_ = false;
        for (int rounds = 0; rounds < 64 && s_step_ < steps_; rounds++) {
            const size_t len = region_len(s_step_, true);
            if (!tx_.in_piece()) {
                // Bytes of step s are ready once the same bytes of step s-1 arrived (and were reduced).
                size_t ready = len;
                if (s_step_ > 0 && r_step_ <= s_step_ - 1) ready = r_step_ == s_step_ - 1 ? r_off_ : 0;
                const size_t piece = std::min(per_piece, len - s_off_);
                if (s_off_ + piece > ready) return true;
                const uint8_t* src = (s_step_ == 0 ? input_ : result_) + region_begin(s_step_, true) + s_off_;
                if (s_step_ == 0 && work_.encode) {  // our own chunk, encoded into the result as it leaves
                    uint8_t* units = result_ + region_begin(0, true) + s_off_;
                    work_.encode(units, region_unit(0, true) + s_off_ / plan_.unit_bytes,
                                 (piece + plan_.unit_bytes - 1) / plan_.unit_bytes);
                    src = units;
                }
                tx_.start(wire::DataHeader{ctl_.op_id(), s_step_, j_, s_off_}, src, piece, out_->tx());
                s_piece_ = piece;
            }
            size_t n;
            int err = 0;
            const auto st = tx_.pump(*out_->stream, &n, &err);
            if (n) {
                *progressed = true;
                out_->bytes += n;
                bytes_->sent += n;
            }
            if (st == PieceSender::kBlocked) {
                sender_blocked_ = true;
                return true;
            }
            if (st == PieceSender::kFailed) {
                ctl_.fail(ErrorKind::kPeerLost, errno_text("sending to peer " + std::to_string(links_.next.id) + " (" +
                                                               links_.next.host + ":" + std::to_string(links_.next.port) +
                                                               ") on connection " + std::to_string(j_) + " failed",
                                                           err));
                return false;
            }
            s_off_ += s_piece_;
            if (s_off_ == len) {
                s_off_ = 0;
                s_step_++;
                skip_empty(&s_step_);
            }
        }
        return true;
    }

    const RingPlan& plan_;
    const uint32_t j_;
    const RingWork& work_;
    const uint8_t* input_;
    uint8_t* result_;
    const RingLinks& links_;
    OpControl& ctl_;
    StripeBytes* bytes_;
    const uint32_t steps_;
    ConnPtr out_, in_;
    Leftover in_left_;  // bytes of this operation received on in_
    // send side
    PieceSender tx_;
    uint32_t s_step_ = 0;
    size_t s_off_ = 0, s_piece_ = 0;
    bool sender_blocked_ = false;
    // receive side
    PieceReceiver rx_;
    uint32_t r_step_ = 0;
    size_t r_off_ = 0;
};

}  // namespace

void run_stripe(const RingPlan& plan, uint32_t j, const RingWork& work, const uint8_t* input, uint8_t* result,
                const RingLinks& links, OpControl& ctl, StripeBytes* bytes) {
    Stripe(plan, j, work, input, result, links, ctl, bytes).run();
}

}  // namespace pccl
