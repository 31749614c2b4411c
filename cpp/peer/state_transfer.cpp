#include "peer/state_transfer.hpp"

#include <algorithm>

#include "transport/data_link.hpp"
#include "transport/wait.hpp"

namespace pccl {

namespace {

// The entry holding stream offset `off`, and the offset inside it.
void locate(const Stream& s, uint64_t off, size_t* entry, uint64_t* inner) {
    size_t k = 0;
    while (k < s.sizes.size() && off >= s.sizes[k]) off -= s.sizes[k++];
    *entry = k;
    *inner = off;
}

std::string who(const wire::PeerInfo& p) {
    return "peer " + std::to_string(p.id) + (p.host.empty() ? "" : " (" + p.host + ":" + std::to_string(p.port) + ")");
}
}  // namespace

void stripe_range(uint64_t begin, uint64_t end, uint32_t stripes, uint32_t j, uint64_t* b, uint64_t* e) {
    const uint64_t n = end - begin, base = n / stripes, rem = n % stripes;
    *b = begin + j * base + std::min<uint64_t>(j, rem);
    *e = *b + base + (j < rem ? 1 : 0);
}

void send_stream(const Stream& s, uint64_t begin, uint64_t end, const TransferLink& link, OpControl& ctl,
                 std::atomic<uint64_t>* bytes) {
    if (begin >= end) return;
    ConnPtr out;
    try {
        out = link.pool->outgoing(link.peer, kStateSlot, link.stripe, link.connect_timeout);
    } catch (const CoreError& e) {
        ctl.fail(ErrorKind::kPeerLost, e.what());
        return;
    }
    for (uint64_t off = begin; off < end;) {
        size_t k;
        uint64_t inner;
        locate(s, off, &k, &inner);
        const uint64_t piece = std::min<uint64_t>({link.piece_bytes, end - off, s.sizes[k] - inner});
        int err = 0;
        switch (send_whole(*out, wire::DataHeader{ctl.op_id(), 0, link.stripe, off}, s.data[k] + inner, size_t(piece),
                           ctl, link.progress_timeout, kNever, &err)) {
            case PieceResult::kSent: break;
            case PieceResult::kStopped: return;
            case PieceResult::kFailed:
                ctl.fail(ErrorKind::kPeerLost, errno_text("sending state to " + who(link.peer) + " failed", err));
                return;
            case PieceResult::kTimedOut:
                ctl.fail(ErrorKind::kPeerLost, who(link.peer) + " stopped reading state for " +
                                                   std::to_string(link.progress_timeout) + " s");
                return;
        }
        *bytes += piece;
        off += piece;
    }
}

void recv_stream(const Stream& s, uint64_t begin, uint64_t end, const TransferLink& link, OpControl& ctl,
                 std::atomic<uint64_t>* bytes) {
    if (begin >= end) return;
    ConnPtr in;
    Leftover left;  // bytes of this sync read from `in`
    PieceReceiver rx;
    uint64_t off = begin;
    double last_progress = net::now_seconds();
    auto fail = [&](ErrorKind kind, const std::string& why) {
        ctl.fail(kind, "receiving state from " + who(link.peer) + " on connection " + std::to_string(link.stripe) + ": " + why);
    };
    // A leftover of an aborted sync is dropped, and we wait for the holder's fresh connection (data_link.hpp).
    auto lost = [&](ErrorKind kind, const std::string& why) {
        if (left.is_leftover()) {
            link.pool->discard(in);
            in.reset();
            rx.reset();
            return true;
        }
        fail(kind, why);
        return false;
    };
    while (off < end) {
        if (ctl.stopped()) return;
        if (net::now_seconds() - last_progress > link.progress_timeout) {
            fail(ErrorKind::kPeerLost, "nothing arrived for " + std::to_string(link.progress_timeout) + " s");
            return;
        }
        if (!in) {
            try {
                in = link.pool->incoming(link.peer.id, kStateSlot, link.stripe);
            } catch (const CoreError& e) {  // this peer dials for it (docs/nat.md), and could not
                fail(ErrorKind::kPeerLost, e.what());
                return;
            }
            left.replaced();
            if (!in) {  // the holder is dialing it
                wait_for(ctl, {}, 5);
                continue;
            }
        }
        size_t n;
        int err = 0;
        const auto st = rx.pump(*in->stream, &n, &err, in->rx());
        if (n) {
            last_progress = net::now_seconds();
            in->bytes += n;
        }
        switch (st) {
            case PieceReceiver::kAgain: wait_for(ctl, {{in.get(), true, false}}, 100); break;
            case PieceReceiver::kProgress: break;
            case PieceReceiver::kClosed:
                if (!lost(ErrorKind::kPeerLost, "connection closed by the other side")) return;
                break;
            case PieceReceiver::kFailed:
                if (!lost(ErrorKind::kPeerLost, errno_text("recv", err))) return;
                break;
            case PieceReceiver::kBadFrame:
                if (!lost(ErrorKind::kProtocol, rx.why())) return;
                break;
            case PieceReceiver::kForged:  // retryable: the sync aborts and nothing of it is kept
                fail(ErrorKind::kPeerLost, rx.why());
                return;
            case PieceReceiver::kHeader: {
                const wire::DataHeader& d = rx.header();
                if (d.op_id != ctl.op_id()) {
                    if (!lost(ErrorKind::kProtocol, "bytes of sync " + std::to_string(d.op_id))) return;
                    break;
                }
                size_t k;
                uint64_t inner;
                locate(s, off, &k, &inner);
                const size_t piece = rx.piece_len();
                if (d.stripe != link.stripe || d.offset != off || d.step != 0 || piece == 0 || piece > end - off ||
                    piece > s.sizes[k] - inner) {
                    fail(ErrorKind::kProtocol, "unexpected state frame (stripe " + std::to_string(d.stripe) + ", offset " +
                                                   std::to_string(d.offset) + ", " + std::to_string(piece) +
                                                   " bytes), expected offset " + std::to_string(off));
                    return;
                }
                rx.accept(s.data[k] + inner);
                left.arrived(kPieceHead);
                break;
            }
            case PieceReceiver::kPiece:
                left.arrived(rx.piece_len());
                *bytes += rx.piece_len();
                off += rx.piece_len();
                break;
        }
    }
}

}  // namespace pccl
