// The bytes of the wire format. Every message is a frame: a 16-byte header (magic, protocol version, type,
// payload length, reserved zero) followed by the payload. All integers are fixed-width little-endian; strings are
// a u16 byte count and UTF-8 bytes; lists are a u32 count and their elements. Writer and Reader are the only
// code that turns values into bytes and back; the messages themselves are declared in messages.hpp and encoded
// field by field by schema.hpp. Reading never trusts its input: a short payload, an over-long string, a count
// larger than the bytes left or invalid UTF-8 is a CoreError of kind kProtocol, never a crash or a huge
// allocation.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/error.hpp"

namespace pccl::wire {

constexpr uint32_t kMagic = 0x52414350;  // "PCAR" as little-endian bytes
constexpr uint16_t kVersion = 8;  // 3: authenticated runs (AUTH_* frames, sealed frames); 4: OP_GO.ring_epoch;
                                 // 5: OpDesc.qrotate, qreduce; 6: OpDesc.collective, root;
                                 // 7: HELLO.back (returning peers), WELCOME.epoch; 8: PeerInfo.inbound,
                                 // PEER_HELLO.mode, WELCOME.relay_port (peers behind NAT)
constexpr size_t kHeaderSize = 16;
constexpr uint32_t kMaxControlPayload = 1u << 20;  // control frames: membership lists, reasons
constexpr uint32_t kMaxDataPayload = 64u << 20;    // one piece of an operation
constexpr uint32_t kMaxStatePayload = 16u << 20;   // SYNC_START / SYNC_PLAN: entry lists of large models
constexpr size_t kMaxString = 4096;

using Bytes32 = std::array<uint8_t, 32>;

struct Header {
    uint16_t type = 0;
    uint32_t length = 0;
};
// Validates magic, version, known type, reserved bits and the length bound for the type (messages.hpp).
Header decode_header(const uint8_t* bytes);
void encode_header(uint8_t* out, uint16_t type, uint32_t length);

class Writer {
public:
    void u8(uint8_t v) { buf_.push_back(v); }
    void u16(uint16_t v);
    void u32(uint32_t v);
    void u64(uint64_t v);
    void str(const std::string& s);  // kInvalidArgument past kMaxString bytes
    void raw(const uint8_t* p, size_t n) { buf_.insert(buf_.end(), p, p + n); }
    std::vector<uint8_t>& bytes() { return buf_; }

private:
    std::vector<uint8_t> buf_;
};

class Reader {
public:
    Reader(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
    uint8_t u8();
    uint16_t u16();
    uint32_t u32();
    uint64_t u64();
    std::string str();
    void raw(uint8_t* out, size_t n);
    size_t count(size_t max);  // a u32 element count, bounded by max and by the bytes left
    void finish() const;        // the payload must be consumed exactly

private:
    const uint8_t* need(size_t n);
    const uint8_t* p_;
    const uint8_t* end_;
};

// A malformed payload: a CoreError of kind kProtocol ("malformed frame: " + what).
[[noreturn]] void malformed(const std::string& what);

}  // namespace pccl::wire
