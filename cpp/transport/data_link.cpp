#include "transport/data_link.hpp"

#include <cstring>

namespace pccl {

void PieceSender::start(const wire::DataHeader& header, const uint8_t* payload, size_t len, crypto::Sealer* seal) {
    wire::encode_header(head_, wire::MsgType::kData, uint32_t(wire::kDataHeaderSize + len));
    wire::Writer w;
    wire::encode(w, header);
    std::memcpy(head_ + wire::kHeaderSize, w.bytes().data(), wire::kDataHeaderSize);
    n_parts_ = 0;
    parts_[n_parts_++] = {head_, kPieceHead};
    if (seal == nullptr) {
        parts_[n_parts_++] = {payload, len};
    } else {
        seal->seal(head_, kPieceHead, nullptr, 0, nullptr, head_tag_);
        parts_[n_parts_++] = {head_tag_, sizeof(head_tag_)};
        if (seal->encrypts()) {
            if (cipher_.size() < len) cipher_.resize(len);
            seal->seal(nullptr, 0, payload, len, cipher_.data(), body_tag_);
            parts_[n_parts_++] = {cipher_.data(), len};
        } else {
            seal->seal(nullptr, 0, payload, len, nullptr, body_tag_);
            parts_[n_parts_++] = {payload, len};
        }
        parts_[n_parts_++] = {body_tag_, sizeof(body_tag_)};
    }
    total_ = 0;
    for (int i = 0; i < n_parts_; i++) total_ += parts_[i].n;
    sent_ = 0;
    active_ = true;
}

PieceSender::Status PieceSender::pump(ByteStream& stream, size_t* wrote, int* err) {
    *wrote = 0;
    while (sent_ < total_) {
        iovec iov[4];
        int cnt = 0;
        size_t skip = sent_;
        for (int i = 0; i < n_parts_; i++) {
            if (skip >= parts_[i].n) {
                skip -= parts_[i].n;
                continue;
            }
            if (parts_[i].n - skip) iov[cnt++] = {const_cast<uint8_t*>(parts_[i].p) + skip, parts_[i].n - skip};
            skip = 0;
        }
        const ssize_t n = stream.write(iov, cnt, err);
        if (n == ByteStream::kWouldBlock) return kBlocked;
        if (n < 0) return kFailed;
        sent_ += size_t(n);
        *wrote += size_t(n);
    }
    active_ = false;
    return kSent;
}

namespace {
// One non-blocking read; 0 when nothing is there (kAgain), -1 closed, -2 error.
ssize_t read_some(ByteStream& stream, uint8_t* p, size_t n, int* err) {
    const ssize_t got = stream.read(p, n, err);
    if (got == ByteStream::kWouldBlock) return 0;
    if (got == ByteStream::kClosed) return -1;
    if (got < 0) return -2;
    return got;
}
}  // namespace

PieceReceiver::Status PieceReceiver::read_head(ByteStream& fd, size_t* got, int* err, crypto::Opener* open) {
    const size_t want = kPieceHead + (open ? crypto::kTagBytes : 0);
    const ssize_t n = read_some(fd, head_ + have_, want - have_, err);
    if (n == 0) return kAgain;
    if (n == -1) return kClosed;
    if (n == -2) return kFailed;
    *got = size_t(n);
    have_ += size_t(n);
    if (have_ < want) return kProgress;
    if (open && !open->open(head_, kPieceHead, nullptr, 0, head_ + kPieceHead)) {
        why_ = "a data frame header failed its integrity check (bytes changed in flight)";
        return kForged;
    }
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

PieceReceiver::Status PieceReceiver::pump(ByteStream& fd, size_t* got, int* err, crypto::Opener* open) {
    *got = 0;
    if (dst_ == nullptr) return read_head(fd, got, err, open);
    if (piece_got_ < piece_) {
        const ssize_t n = read_some(fd, dst_ + piece_got_, piece_ - piece_got_, err);
        if (n == 0) return kAgain;
        if (n == -1) return kClosed;
        if (n == -2) return kFailed;
        *got = size_t(n);
        piece_got_ += size_t(n);
        if (piece_got_ < piece_ || open) return kProgress;
    } else if (open) {
        const ssize_t n = read_some(fd, tag_ + tag_got_, sizeof(tag_) - tag_got_, err);
        if (n == 0) return kAgain;
        if (n == -1) return kClosed;
        if (n == -2) return kFailed;
        *got = size_t(n);
        tag_got_ += size_t(n);
        if (tag_got_ < sizeof(tag_)) return kProgress;
        if (!open->open(nullptr, 0, dst_, piece_, tag_)) {
            why_ = "a data frame's payload failed its integrity check (bytes changed in flight)";
            return kForged;
        }
    }
    have_ = 0;  // ready for the next frame
    dst_ = nullptr;
    return kPiece;
}

void PieceReceiver::accept(uint8_t* dst) {
    dst_ = dst;
    piece_got_ = 0;
    tag_got_ = 0;
}

void PieceReceiver::reset() {
    have_ = 0;
    piece_ = piece_got_ = tag_got_ = 0;
    dst_ = nullptr;
}

}  // namespace pccl
