#include "transport/wait.hpp"

#include <poll.h>

#include <vector>

#include "transport/net.hpp"

namespace pccl {

bool interrupted(OpControl& ctl) {
    if (!interrupt_requested()) return false;
    ctl.fail(ErrorKind::kInterrupted, "interrupted (KeyboardInterrupt) while data moved");
    return true;
}

bool wait_for(OpControl& ctl, std::initializer_list<Want> wants, int timeout_ms) {
    return wait_for(ctl, wants.begin(), wants.size(), timeout_ms);
}

bool wait_for(OpControl& ctl, const Want* wants, size_t count, int timeout_ms) {
    pollfd on_stack[16];  // the ring's waits: no allocation; the direct reduce-scatter's with many peers: one
    std::vector<pollfd> on_heap(count + 1 > 16 ? count + 1 : 0);
    pollfd* p = on_heap.empty() ? on_stack : on_heap.data();
    nfds_t n = 0;
    p[n++] = {ctl.wake_fd(), POLLIN, 0};
    for (size_t i = 0; i < count; i++)
        if (wants[i].conn && (wants[i].read || wants[i].write))
            p[n++] = wants[i].conn->stream->readiness(wants[i].read, wants[i].write);
    ::poll(p, n, timeout_ms);
    interrupted(ctl);
    return !ctl.stopped();
}

PieceResult send_whole(Conn& c, const wire::DataHeader& header, const uint8_t* data, size_t len, OpControl& ctl,
                       double progress_s, double deadline, int* err, size_t* moved) {
    PieceSender tx;
    tx.start(header, data, len, c.tx());
    double last = net::now_seconds();
    for (;;) {
        if (ctl.stopped()) return PieceResult::kStopped;
        size_t n;
        const auto st = tx.pump(*c.stream, &n, err);
        if (n) {
            c.bytes += n;
            if (moved) *moved += n;
            last = net::now_seconds();
        }
        if (st == PieceSender::kSent) return PieceResult::kSent;
        if (st == PieceSender::kFailed) return PieceResult::kFailed;
        const double now = net::now_seconds();
        if (now - last > progress_s || now > deadline) return PieceResult::kTimedOut;
        if (!wait_for(ctl, {{&c, false, true}}, 100)) return PieceResult::kStopped;
    }
}

int64_t recv_whole(Conn& c, PieceReceiver& rx, uint8_t* buf, size_t cap, OpControl& ctl, double deadline) {
    for (;;) {
        size_t n;
        int err = 0;
        const auto st = rx.pump(*c.stream, &n, &err, c.rx());
        c.bytes += n;
        switch (st) {
            case PieceReceiver::kHeader:
                if (rx.piece_len() > cap) return -1;
                rx.accept(buf);
                break;
            case PieceReceiver::kPiece: return int64_t(rx.piece_len());
            case PieceReceiver::kProgress: break;
            case PieceReceiver::kAgain:
                if (net::now_seconds() > deadline || !wait_for(ctl, {{&c, true, false}}, 50)) return -1;
                break;
            default: return -1;
        }
    }
}

}  // namespace pccl
