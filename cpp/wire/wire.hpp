// The wire format: the bytes (codec.hpp), the one declaration of every message (messages.hpp, schema.hpp), and
// frames built from them. docs/protocol.md describes every message; its tables are checked against the schema.
#pragma once
#include <cstdint>
#include <vector>

#include "wire/codec.hpp"
#include "wire/messages.hpp"
#include "wire/schema.hpp"

namespace pccl::wire {

inline void encode_header(uint8_t* out, MsgType type, uint32_t length) { encode_header(out, uint16_t(type), length); }

// Decodes a whole payload as T and checks that nothing is left over.
template <class T> T decode_payload(const std::vector<uint8_t>& payload) {
    Reader r(payload.data(), payload.size());
    T m = decode<T>(r);
    r.finish();
    return m;
}

// Header + payload of one message, ready to send.
template <class T> std::vector<uint8_t> frame(MsgType type, const T& m) {
    Writer w;
    for (size_t i = 0; i < kHeaderSize; i++) w.u8(0);
    encode(w, m);
    auto& b = w.bytes();
    encode_header(b.data(), type, static_cast<uint32_t>(b.size() - kHeaderSize));
    return std::move(b);
}
std::vector<uint8_t> empty_frame(MsgType type);

}  // namespace pccl::wire
