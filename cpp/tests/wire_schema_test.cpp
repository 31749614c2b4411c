// One declaration per message (wire/schema.hpp): a scratch message declared twice, the second time with one
// more line, shows that the struct, the byte layout, the decoder's bounds and the field list every visitor
// sees (the dict form and docs/protocol.md's tables are such visitors) all follow from the X(...) lines alone.
#include <string>
#include <vector>

#include "tests/check.hpp"
#include "wire/wire.hpp"

namespace pccl::wire {

#define SCRATCH_V1(X) X(uint64_t, id, 7, kAny) X(std::string, host, {}, kAny) X(std::vector<uint32_t>, ports, {}, 3)
PCCL_WIRE_STRUCT(ScratchV1, SCRATCH_V1)
// The same message with one field added: the only change a new field needs (besides its use).
#define SCRATCH_V2(X) SCRATCH_V1(X) X(uint8_t, flag, 1, 1)
PCCL_WIRE_STRUCT(ScratchV2, SCRATCH_V2)

}  // namespace pccl::wire

using namespace pccl;
using namespace pccl::wire;

namespace {
template <class T> std::vector<uint8_t> bytes_of(const T& m) {
    Writer w;
    encode(w, m);
    return w.bytes();
}

struct Names {
    std::vector<std::string> names;
    template <class T> void operator()(const char* name, const T&, uint64_t) { names.push_back(name); }
};
template <class T> std::vector<std::string> names_of() {
    Names v;
    T m{};
    visit_fields(v, m);
    return v.names;
}
}  // namespace

TEST(added_field_appears_in_the_struct_with_its_default) {
    ScratchV2 m;
    CHECK_EQ(m.id, 7u);
    CHECK_EQ(m.flag, 1u);
    CHECK_EQ(names_of<ScratchV1>(), (std::vector<std::string>{"id", "host", "ports"}));
    CHECK_EQ(names_of<ScratchV2>(), (std::vector<std::string>{"id", "host", "ports", "flag"}));
}

TEST(added_field_is_encoded_after_the_others) {
    const ScratchV1 a{9, "h", {1, 2}};
    const ScratchV2 b{9, "h", {1, 2}, 0};
    const auto ba = bytes_of(a), bb = bytes_of(b);
    // u64 id, u16 length + 1 byte, u32 count + 2 u32: 8 + 3 + 12 = 23 bytes, then the new u8.
    CHECK_EQ(ba.size(), 23u);
    CHECK_EQ(bb.size(), 24u);
    CHECK(std::equal(ba.begin(), ba.end(), bb.begin()));
    CHECK_EQ(bb.back(), 0u);
}

TEST(added_field_round_trips_and_its_bound_is_enforced) {
    const ScratchV2 b{1, "x", {5}, 1};
    auto bytes = bytes_of(b);
    Reader r(bytes.data(), bytes.size());
    CHECK(decode<ScratchV2>(r) == b);
    bytes.back() = 2;  // over the declared limit of 1
    Reader bad(bytes.data(), bytes.size());
    CHECK_THROWS_KIND(decode<ScratchV2>(bad), kProtocol);
    // A V1 decoder reading V2 bytes leaves the new byte over: decode_payload refuses trailing bytes.
    CHECK_THROWS_KIND(decode_payload<ScratchV1>(bytes_of(ScratchV2{})), kProtocol);
}

TEST(list_bounds_come_from_the_declaration) {
    auto bytes = bytes_of(ScratchV1{1, "", {1, 2, 3, 4}});  // four ports, three allowed
    Reader r(bytes.data(), bytes.size());
    CHECK_THROWS_KIND(decode<ScratchV1>(r), kProtocol);
    auto ok = bytes_of(ScratchV1{1, "", {1, 2, 3}});
    Reader r2(ok.data(), ok.size());
    CHECK_EQ(decode<ScratchV1>(r2).ports.size(), 3u);
}

TEST(the_message_table_gives_every_code_a_name_payload_and_limit) {
    for (const auto& m : message_table()) {
        CHECK(message_info(m.code) == &m);
        CHECK(m.max_payload >= kMaxControlPayload);
        std::vector<uint8_t> frame(kHeaderSize);
        encode_header(frame.data(), m.code, 0);
        CHECK_EQ(decode_header(frame.data()).type, m.code);
    }
    CHECK(message_info(22) == nullptr);
    CHECK_EQ(std::string(message_info(uint16_t(MsgType::kData))->payload), std::string("DataHeader"));
}
