#include "data_link.hpp"

#include <cerrno>
#include <cstring>
#include <sys/socket.h>
#include <sys/uio.h>

namespace pccl {

void PieceSender::start(const wire::DataHeader& header, const uint8_t* payload, size_t len) {
    wire::encode_header(head_, wire::MsgType::kData, uint32_t(wire::kDataHeaderSize + len));
    wire::Writer w;
    wire::encode(w, header);
    std::memcpy(head_ + wire::kHeaderSize, w.bytes().data(), wire::kDataHeaderSize);
    payload_ = payload;
    len_ = len;
    sent_ = 0;
    active_ = true;
}

PieceSender::Status PieceSender::pump(int fd, size_t* wrote, int* err) {
    *wrote = 0;
    while (sent_ < kPieceHead + len_) {
        iovec iov[2];
        int cnt = 0;
        if (sent_ < kPieceHead) iov[cnt++] = {head_ + sent_, kPieceHead - sent_};
        const size_t done = sent_ > kPieceHead ? sent_ - kPieceHead : 0;
        iov[cnt++] = {const_cast<uint8_t*>(payload_) + done, len_ - done};
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = size_t(cnt);
        const ssize_t n = ::sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return kBlocked;
            *err = errno;
            return kFailed;
        }
        sent_ += size_t(n);
        *wrote += size_t(n);
    }
    active_ = false;
    return kSent;
}

PieceReceiver::Status PieceReceiver::pump(int fd, size_t* got, int* err) {
    *got = 0;
    const bool reading_head = have_ < kPieceHead;
    const ssize_t n = reading_head ? ::recv(fd, head_ + have_, kPieceHead - have_, MSG_DONTWAIT)
                                   : ::recv(fd, dst_ + piece_got_, piece_ - piece_got_, MSG_DONTWAIT);
    if (n == 0) return kClosed;
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return kAgain;
        *err = errno;
        return kFailed;
    }
    *got = size_t(n);
    if (!reading_head) {
        piece_got_ += size_t(n);
        if (piece_got_ < piece_) return kProgress;
        have_ = 0;  // ready for the next frame
        return kPiece;
    }
    have_ += size_t(n);
    if (have_ < kPieceHead) return kProgress;
    try {
        const wire::Header h = wire::decode_header(head_);
        if (h.type != uint16_t(wire::MsgType::kData))
            throw CoreError(ErrorKind::kProtocol, "expected a data frame, got type " + std::to_string(h.type));
        if (h.length < wire::kDataHeaderSize)
            throw CoreError(ErrorKind::kProtocol, "a data frame of " + std::to_string(h.length) + " bytes");
        wire::Reader r(head_ + wire::kHeaderSize, wire::kDataHeaderSize);
        header_ = wire::decode<wire::DataHeader>(r);
        piece_ = h.length - wire::kDataHeaderSize;
    } catch (const CoreError& e) {
        why_ = e.what();
        return kBadFrame;
    }
    return kHeader;
}

void PieceReceiver::accept(uint8_t* dst) {
    dst_ = dst;
    piece_got_ = 0;
}

void PieceReceiver::reset() {
    have_ = 0;
    piece_ = piece_got_ = 0;
    dst_ = nullptr;
}

}  // namespace pccl
