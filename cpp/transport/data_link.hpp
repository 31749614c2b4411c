// The data link: the only code that writes DATA frames to a peer-to-peer connection's byte stream (stream.hpp:
// TCP, or in memory for tests) or reads them from one.
// The algorithms on top (ring.cpp, state_transfer.cpp) decide which bytes go where; they hand this layer one
// piece at a time and never touch headers or sockets. Integrity and encryption will live here and only here.
//
// How this works. A piece travels as one frame: the 16-byte header (type DATA, length) and the 24-byte data
// header (op id, step, stripe, offset), then the payload. The sender writes header and payload with one
// sendmsg of two parts, non-blocking, and resumes where the socket stopped taking bytes. The receiver reads
// the 40 header bytes first (never more, so the next piece stays in the socket), hands the decoded header to
// the algorithm, which checks it against what it expects and says where the payload goes, then reads the
// payload straight into that memory.
//
// Sealed connections (a run with a secret, docs/security.md). The header and the payload are two records
// (crypto.hpp), each followed by its 16-byte tag: the receiver checks the header's tag before it acts on the
// header, and the payload's before it reports the piece, so nothing unchecked is ever folded or counted. When
// the run encrypts, the sender encrypts the payload into a buffer of its own (the caller's stays as it is) and
// the receiver decrypts in place.
//
// Leftovers. After an aborted operation every member closes the connections of its slot, and the next
// operation dials fresh ones; a receiver may still find the old connection, closed or holding bytes of the old
// operation. Such a connection is a leftover only before any byte of the current operation arrived on it:
// `Leftover` keeps that count and says whether a failure means "discard it and wait for the replacement" or
// "the operation failed".
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "crypto/crypto.hpp"
#include "transport/stream.hpp"
#include "wire/wire.hpp"

namespace pccl {

constexpr size_t kPieceHead = wire::kHeaderSize + wire::kDataHeaderSize;

class PieceSender {
public:
    enum Status { kSent, kBlocked, kFailed };
    // Begins a piece; `payload` must stay valid until pump() returns kSent. `seal`: the connection's sending
    // side when it is sealed, else null.
    void start(const wire::DataHeader& header, const uint8_t* payload, size_t len, crypto::Sealer* seal);
    bool in_piece() const { return active_; }
    // Writes what the socket takes now. kSent: the whole piece left; kBlocked: the socket is full; kFailed: a
    // socket error (errno in *err). *wrote: bytes written by this call.
    Status pump(ByteStream& stream, size_t* wrote, int* err);

private:
    struct Part { const uint8_t* p; size_t n; };
    uint8_t head_[kPieceHead] = {};
    uint8_t head_tag_[crypto::kTagBytes] = {}, body_tag_[crypto::kTagBytes] = {};
    std::vector<uint8_t> cipher_;  // the encrypted payload, when the run encrypts
    Part parts_[4] = {};
    int n_parts_ = 0;
    size_t total_ = 0, sent_ = 0;
    bool active_ = false;
};

class PieceReceiver {
public:
    enum Status {
        kAgain,     // nothing to read now
        kProgress,  // some bytes arrived; nothing complete yet
        kHeader,    // a whole header arrived: check header() and piece_len(), then accept() or give up
        kPiece,     // the accepted piece's payload has all arrived
        kBadFrame,  // the header is not a well-formed DATA frame (why())
        kForged,    // a sealed header or payload failed its integrity check (why()): bytes changed in flight
        kClosed,    // the other side closed the connection
        kFailed,    // a socket error (errno in *err)
    };
    // One non-blocking read. *got: bytes read. `open`: the connection's receiving side when it is sealed.
    Status pump(ByteStream& stream, size_t* got, int* err, crypto::Opener* open);
    const wire::DataHeader& header() const { return header_; }
    size_t piece_len() const { return piece_; }
    const std::string& why() const { return why_; }
    // After kHeader: the payload goes to dst (piece_len() bytes).
    void accept(uint8_t* dst);
    // Forgets a half-read frame (the connection is being replaced).
    void reset();

private:
    Status read_head(ByteStream& stream, size_t* got, int* err, crypto::Opener* open);
    uint8_t head_[kPieceHead + crypto::kTagBytes] = {};
    size_t have_ = 0;  // header bytes read (with its tag, when sealed)
    wire::DataHeader header_;
    size_t piece_ = 0, piece_got_ = 0;
    uint8_t tag_[crypto::kTagBytes] = {};
    size_t tag_got_ = 0;
    uint8_t* dst_ = nullptr;
    std::string why_;
};

// Bytes of the current operation received on one incoming connection, for the leftover rule (top of file).
class Leftover {
public:
    void arrived(size_t n) { bytes_ += n; }
    void replaced() { bytes_ = 0; }
    // Whether a failure on the connection means it was a leftover of an aborted operation.
    bool is_leftover() const { return bytes_ == 0; }

private:
    uint64_t bytes_ = 0;
};

}  // namespace pccl
