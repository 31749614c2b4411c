#include "state_transfer.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

namespace pccl {

namespace {
constexpr size_t kFrameHead = wire::kHeaderSize + wire::kDataHeaderSize;

// The entry holding stream offset `off`, and the offset inside it.
void locate(const Stream& s, uint64_t off, size_t* entry, uint64_t* inner) {
    size_t k = 0;
    while (k < s.sizes.size() && off >= s.sizes[k]) off -= s.sizes[k++];
    *entry = k;
    *inner = off;
}

// Waits until fd is ready for `events` or the sync stops; false when stopped.
bool wait_ready(int fd, short events, OpControl& ctl, int timeout_ms) {
    pollfd p[2] = {{ctl.wake_fd(), POLLIN, 0}, {fd, events, 0}};
    ::poll(p, fd >= 0 ? 2 : 1, timeout_ms);
    return !ctl.stopped();
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
    uint64_t off = begin;
    double last_progress = net::now_seconds();
    while (off < end) {
        size_t k;
        uint64_t inner;
        locate(s, off, &k, &inner);
        const uint64_t piece = std::min<uint64_t>({link.piece_bytes, end - off, s.sizes[k] - inner});
        uint8_t head[kFrameHead];
        wire::encode_header(head, wire::MsgType::kData, uint32_t(wire::kDataHeaderSize + piece));
        wire::Writer w;
        wire::encode(w, wire::DataHeader{ctl.op_id(), 0, link.stripe, off});
        std::memcpy(head + wire::kHeaderSize, w.bytes().data(), wire::kDataHeaderSize);
        size_t sent = 0;
        while (sent < kFrameHead + piece) {
            if (ctl.stopped()) return;
            iovec iov[2];
            int cnt = 0;
            if (sent < kFrameHead) iov[cnt++] = {head + sent, kFrameHead - sent};
            const size_t done = sent > kFrameHead ? sent - kFrameHead : 0;
            iov[cnt++] = {s.data[k] + inner + done, size_t(piece) - done};
            msghdr msg{};
            msg.msg_iov = iov;
            msg.msg_iovlen = size_t(cnt);
            ssize_t n = ::sendmsg(out->fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (n < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                    ctl.fail(ErrorKind::kPeerLost, errno_text("sending state to " + who(link.peer) + " failed", errno));
                    return;
                }
                if (net::now_seconds() - last_progress > link.progress_timeout) {
                    ctl.fail(ErrorKind::kPeerLost, who(link.peer) + " stopped reading state for " +
                                                       std::to_string(link.progress_timeout) + " s");
                    return;
                }
                if (!wait_ready(out->fd, POLLOUT, ctl, 100)) return;
                continue;
            }
            sent += size_t(n);
            out->bytes += size_t(n);
            last_progress = net::now_seconds();
        }
        *bytes += piece;
        off += piece;
    }
}

void recv_stream(const Stream& s, uint64_t begin, uint64_t end, const TransferLink& link, OpControl& ctl,
                 std::atomic<uint64_t>* bytes) {
    if (begin >= end) return;
    ConnPtr in;
    uint64_t got_here = 0;  // bytes of this sync read from `in`
    uint64_t off = begin;
    double last_progress = net::now_seconds();
    uint8_t head[kFrameHead];
    size_t have = 0, piece = 0, piece_got = 0;
    uint8_t* dst = nullptr;
    auto fail = [&](ErrorKind kind, const std::string& why) {
        ctl.fail(kind, "receiving state from " + who(link.peer) + " on connection " + std::to_string(link.stripe) + ": " + why);
    };
    // Before any byte of this sync arrived, a broken or foreign connection is a leftover: wait for a fresh one.
    auto lost = [&](ErrorKind kind, const std::string& why) {
        if (got_here == 0) {
            link.pool->discard(in);
            in.reset();
            have = 0;
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
            in = link.pool->incoming(link.peer.id, kStateSlot, link.stripe);
            got_here = 0;
            if (!in) {
                wait_ready(-1, 0, ctl, 5);
                continue;
            }
        }
        ssize_t n;
        if (have < kFrameHead) n = ::recv(in->fd, head + have, kFrameHead - have, MSG_DONTWAIT);
        else n = ::recv(in->fd, dst + piece_got, piece - piece_got, MSG_DONTWAIT);
        if (n == 0) {
            if (!lost(ErrorKind::kPeerLost, "connection closed by the other side")) return;
            continue;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                wait_ready(in->fd, POLLIN, ctl, 100);
                continue;
            }
            if (!lost(ErrorKind::kPeerLost, errno_text("recv", errno))) return;
            continue;
        }
        last_progress = net::now_seconds();
        if (have < kFrameHead) {
            have += size_t(n);
            if (have < kFrameHead) continue;
            wire::DataHeader d;
            uint32_t length = 0;
            try {
                wire::Header h = wire::decode_header(head);
                if (h.type != uint16_t(wire::MsgType::kData))
                    throw CoreError(ErrorKind::kProtocol, "expected a data frame, got type " + std::to_string(h.type));
                wire::Reader r(head + wire::kHeaderSize, wire::kDataHeaderSize);
                d = wire::decode<wire::DataHeader>(r);
                length = h.length;
            } catch (const CoreError& e) {
                if (!lost(ErrorKind::kProtocol, e.what())) return;
                continue;
            }
            if (d.op_id != ctl.op_id()) {
                if (!lost(ErrorKind::kProtocol, "bytes of sync " + std::to_string(d.op_id))) return;
                continue;
            }
            size_t k;
            uint64_t inner;
            locate(s, off, &k, &inner);
            piece = length - wire::kDataHeaderSize;
            if (d.stripe != link.stripe || d.offset != off || d.step != 0 || piece == 0 || piece > end - off ||
                piece > s.sizes[k] - inner) {
                fail(ErrorKind::kProtocol, "unexpected state frame (stripe " + std::to_string(d.stripe) + ", offset " +
                                               std::to_string(d.offset) + ", " + std::to_string(piece) +
                                               " bytes), expected offset " + std::to_string(off));
                return;
            }
            dst = s.data[k] + inner;
            piece_got = 0;
            got_here += kFrameHead;
            continue;
        }
        piece_got += size_t(n);
        got_here += size_t(n);
        in->bytes += size_t(n);
        if (piece_got < piece) continue;
        *bytes += piece;
        off += piece;
        have = 0;
    }
}

}  // namespace pccl
