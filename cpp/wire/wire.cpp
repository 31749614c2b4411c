// The codec (codec.hpp), the message table (messages.hpp) and the rules between fields.
#include "wire/wire.hpp"

#include <cstring>

namespace pccl::wire {

void malformed(const std::string& what) { throw CoreError(ErrorKind::kProtocol, "malformed frame: " + what); }

const std::vector<MessageInfo>& message_table() {
#define PCCL_WIRE_INFO(code, Enum, name, Payload, direction, limit) \
    MessageInfo{code, name, #Payload, direction, uint32_t(limit)},
    static const std::vector<MessageInfo> table = {PCCL_WIRE_MESSAGES(PCCL_WIRE_INFO)};
#undef PCCL_WIRE_INFO
    return table;
}

const MessageInfo* message_info(uint16_t type) {
    static const auto by_code = [] {
        std::vector<const MessageInfo*> v;
        for (const auto& m : message_table()) {
            if (m.code >= v.size()) v.resize(m.code + 1u, nullptr);
            v[m.code] = &m;
        }
        return v;
    }();
    return type < by_code.size() ? by_code[type] : nullptr;
}

void check(const SyncSend& m) {
    if (m.begin > m.end || m.stripes == 0) malformed("sync range");
}
void check(const SyncRecv& m) {
    if (m.begin > m.end || m.stripes == 0) malformed("sync range");
}
void check(const SyncPlan& m) {
    if (m.expect.size() != m.fetch.size()) malformed("a hash for every fetched entry");
}

namespace {

uint32_t load32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }
uint16_t load16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
void store32(uint8_t* p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = uint8_t(v >> (8 * i)); }
void store16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v); p[1] = uint8_t(v >> 8); }
}  // namespace

Header decode_header(const uint8_t* b) {
    if (load32(b) != kMagic) malformed("bad magic");
    uint16_t version = load16(b + 4);
    if (version != kVersion)
        malformed("protocol version " + std::to_string(version) + ", expected " + std::to_string(kVersion));
    Header h;
    h.type = load16(b + 6);
    h.length = load32(b + 8);
    if (!message_info(h.type)) malformed("unknown message type " + std::to_string(h.type));
    if (load32(b + 12) != 0) malformed("reserved bits set");
    const uint32_t limit = message_info(h.type)->max_payload;
    if (h.length > limit) malformed("payload length " + std::to_string(h.length) + " over the limit " + std::to_string(limit));
    return h;
}

void encode_header(uint8_t* out, uint16_t type, uint32_t length) {
    store32(out, kMagic);
    store16(out + 4, kVersion);
    store16(out + 6, type);
    store32(out + 8, length);
    store32(out + 12, 0);
}

void Writer::u16(uint16_t v) { for (int i = 0; i < 2; i++) buf_.push_back(uint8_t(v >> (8 * i))); }
void Writer::u32(uint32_t v) { for (int i = 0; i < 4; i++) buf_.push_back(uint8_t(v >> (8 * i))); }
void Writer::u64(uint64_t v) { for (int i = 0; i < 8; i++) buf_.push_back(uint8_t(v >> (8 * i))); }
void Writer::str(const std::string& s) {
    if (s.size() > kMaxString) throw CoreError(ErrorKind::kInvalidArgument, "string too long for the wire");
    u16(uint16_t(s.size()));
    buf_.insert(buf_.end(), s.begin(), s.end());
}

const uint8_t* Reader::need(size_t n) {
    if (size_t(end_ - p_) < n) malformed("payload ends early");
    const uint8_t* at = p_;
    p_ += n;
    return at;
}
uint8_t Reader::u8() { return *need(1); }
void Reader::raw(uint8_t* out, size_t n) { std::memcpy(out, need(n), n); }
uint16_t Reader::u16() { return load16(need(2)); }
uint32_t Reader::u32() { return load32(need(4)); }
uint64_t Reader::u64() {
    const uint8_t* p = need(8);
    return uint64_t(load32(p)) | uint64_t(load32(p + 4)) << 32;
}
// Strings on the wire are UTF-8 (hosts, reasons); anything else is refused here, before it reaches a log or
// another peer.
static bool valid_utf8(const uint8_t* p, size_t n) {
    size_t i = 0;
    while (i < n) {
        const uint8_t c = p[i];
        size_t extra;
        uint32_t cp;
        if (c < 0x80) { i++; continue; }
        if ((c & 0xe0) == 0xc0) { extra = 1; cp = c & 0x1f; }
        else if ((c & 0xf0) == 0xe0) { extra = 2; cp = c & 0x0f; }
        else if ((c & 0xf8) == 0xf0) { extra = 3; cp = c & 0x07; }
        else return false;
        if (i + extra >= n) return false;  // truncated sequence
        for (size_t k = 1; k <= extra; k++) {
            if ((p[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        // overlong forms, surrogates and code points past U+10FFFF are not UTF-8
        if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return false;
        i += extra + 1;
    }
    return true;
}

std::string Reader::str() {
    uint16_t n = u16();
    if (n > kMaxString) malformed("string length " + std::to_string(n));
    const uint8_t* p = need(n);
    if (!valid_utf8(p, n)) malformed("string is not UTF-8");
    return std::string(reinterpret_cast<const char*>(p), n);
}
size_t Reader::count(size_t max) {
    uint32_t n = u32();
    if (n > max || n > size_t(end_ - p_)) malformed("element count " + std::to_string(n));
    return n;
}
void Reader::finish() const {
    if (p_ != end_) malformed(std::to_string(end_ - p_) + " trailing bytes");
}

std::vector<uint8_t> empty_frame(MsgType type) {
    std::vector<uint8_t> b(kHeaderSize);
    encode_header(b.data(), type, 0);
    return b;
}

}  // namespace pccl::wire
