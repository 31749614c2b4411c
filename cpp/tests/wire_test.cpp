// The wire format (wire/wire.hpp) through its public API only: wire::frame, wire::decode_header,
// wire::decode_payload<T>, wire::Writer / Reader and the message structs by their field names.
//
// How this works. round_trip() frames a message with every field set to something other than its default,
// checks the header (type, payload length) and decodes the payload back; each test then compares the fields one
// by one. round_trip() also checks that every proper prefix of the payload and the payload plus one byte are
// refused with a CoreError of kind kProtocol (a short payload, trailing bytes). The other tests feed malformed
// headers and payloads (bad magic, version, unknown type, reserved bits, lengths over a type's limit, invalid
// UTF-8, over-long strings, counts beyond their bound or beyond the bytes left, out-of-range flags, broken
// cross-field rules): each must be kProtocol, never a crash or another error. docs/protocol.md is the format.
#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "tests/check.hpp"
#include "wire/wire.hpp"

using namespace pccl::wire;
using Bytes = std::vector<uint8_t>;

namespace {

// The payload of a frame, after checking its header.
Bytes payload_of(const Bytes& frame_bytes, MsgType type) {
    CHECK(frame_bytes.size() >= kHeaderSize);
    const Header h = decode_header(frame_bytes.data());
    CHECK_EQ(h.type, uint16_t(type));
    CHECK_EQ(size_t(h.length), frame_bytes.size() - kHeaderSize);
    return Bytes(frame_bytes.begin() + kHeaderSize, frame_bytes.end());
}

template <class T> T round_trip(MsgType type, const T& m) {
    const Bytes payload = payload_of(frame(type, m), type);
    for (size_t k = 0; k < payload.size(); k++)
        CHECK_THROWS_KIND(decode_payload<T>(Bytes(payload.begin(), payload.begin() + long(k))), kProtocol);
    Bytes longer = payload;
    longer.push_back(0);
    CHECK_THROWS_KIND(decode_payload<T>(longer), kProtocol);
    return decode_payload<T>(payload);
}

PeerInfo info(uint64_t id, const std::string& host, uint16_t port) {
    PeerInfo p;
    p.id = id;
    p.host = host;
    p.port = port;
    return p;
}
const std::vector<PeerInfo> kRing{info(7, "10.0.0.7", 4000), info(~uint64_t(0), "hôte-ü", 65535)};

Bytes32 counting(uint8_t from) {
    Bytes32 b;
    for (size_t i = 0; i < b.size(); i++) b[i] = uint8_t(from + i);
    return b;
}

Bytes header_bytes(uint16_t type, uint32_t length) {
    Bytes h(kHeaderSize);
    encode_header(h.data(), MsgType(type), length);
    return h;
}

Hello hello_with_host(const std::string& host) {
    Hello m;
    m.group = 1;
    m.connections = 2;
    m.host = host;
    m.port = 3;
    return m;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ the bytes

TEST(a_hello_frame_has_the_documented_bytes) {
    Hello m;
    m.group = 3;
    m.connections = 0x01020304;
    m.host = "ab";
    m.port = 0x1234;
    Bytes want{'P', 'C', 'A', 'R', 8, 0, 1, 0, 68, 0, 0, 0, 0, 0, 0, 0,  // magic, version 8, type 1, length 68
               3, 0, 0, 0, 4, 3, 2, 1, 2, 0, 'a', 'b', 0x34, 0x12};     // group, connections, "ab", port
    // back (a newcomer: all zero): peer_id u64, epoch u64, ring (count u32), revision u64, synced u8,
    // committed (count u32), in_doubt (count u32), doubt_sync u64, doubt_revision u64; then standby u8
    want.insert(want.end(), 8 + 8 + 4 + 8 + 1 + 4 + 4 + 8 + 8 + 1, 0);
    CHECK_EQ(frame(MsgType::kHello, m), want);
    CHECK_EQ(empty_frame(MsgType::kLeave), (Bytes{'P', 'C', 'A', 'R', 8, 0, 15, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(writer_and_reader_are_little_endian) {
    Writer w;
    w.u8(0xAB);
    w.u16(0x0102);
    w.u32(0x03040506);
    w.u64(0x0708090A0B0C0D0Eull);
    w.str("é");
    CHECK_EQ(w.bytes(), (Bytes{0xAB, 2, 1, 6, 5, 4, 3, 0x0E, 0x0D, 0x0C, 0x0B, 0x0A, 9, 8, 7, 2, 0, 0xC3, 0xA9}));
    Reader r(w.bytes().data(), w.bytes().size());
    CHECK_EQ(r.u8(), 0xAB);
    CHECK_EQ(r.u16(), 0x0102);
    CHECK_EQ(r.u32(), 0x03040506u);
    CHECK_EQ(r.u64(), 0x0708090A0B0C0D0Eull);
    CHECK_EQ(r.str(), "é");
    r.finish();
    CHECK_THROWS_KIND(r.u8(), kProtocol);
}

// ------------------------------------------------------------------------------------------------ round trips

TEST(hello_welcome_heartbeat_ack_round_trip) {
    Hello h;
    h.group = 3;
    h.connections = 8;
    h.host = "192.168.1.20";
    h.port = 29500;
    const Hello h2 = round_trip(MsgType::kHello, h);
    CHECK_EQ(h2.group, 3u);
    CHECK_EQ(h2.connections, 8u);
    CHECK_EQ(h2.host, "192.168.1.20");
    CHECK_EQ(h2.port, 29500);
    Welcome w;
    w.peer_id = 0x0102030405060708ull;
    CHECK_EQ(round_trip(MsgType::kWelcome, w).peer_id, 0x0102030405060708ull);
    HeartbeatAck a;
    a.pending = 4;
    CHECK_EQ(round_trip(MsgType::kHeartbeatAck, a).pending, 4u);
    PendingReply p;
    p.pending = 2;
    CHECK_EQ(round_trip(MsgType::kPendingReply, p).pending, 2u);
    Kicked k;
    k.reason = "silent for more than 10 s";
    CHECK_EQ(round_trip(MsgType::kKicked, k).reason, "silent for more than 10 s");
    for (MsgType t : {MsgType::kHeartbeat, MsgType::kLeave}) CHECK_EQ(payload_of(empty_frame(t), t).size(), size_t(0));
}

TEST(topo_request_and_its_twins_round_trip) {
    for (MsgType t : {MsgType::kTopoRequest, MsgType::kPendingRequest, MsgType::kOptStart}) {
        TopoRequest m;
        m.seq = 12;
        m.timeout_ms = 30000;
        m.min_world = 2;
        const TopoRequest d = round_trip(t, m);
        CHECK_EQ(d.seq, uint64_t(12));
        CHECK_EQ(d.timeout_ms, 30000u);
        CHECK_EQ(d.min_world, 2u);
    }
}

TEST(topo_result_round_trips) {
    TopoResult m;
    m.seq = 12;
    m.world_size = 5;
    m.pending = 1;
    m.ring = kRing;
    m.kind = 10;
    m.reason = "timed out";
    const TopoResult d = round_trip(MsgType::kTopoResult, m);
    CHECK_EQ(d.seq, uint64_t(12));
    CHECK_EQ(d.world_size, 5u);
    CHECK_EQ(d.pending, 1u);
    CHECK(d.ring == kRing);
    CHECK_EQ(d.ring.size(), size_t(2));
    CHECK_EQ(d.kind, 10);
    CHECK_EQ(d.reason, "timed out");
}

TEST(op_start_round_trips_with_its_descriptor) {
    OpStart m;
    m.tag = 99;
    m.desc.count = (uint64_t(1) << 40) + 3;
    m.desc.dtype = 9;
    m.desc.op = 1;
    m.desc.quant = 2;
    m.desc.qblock = 1024;
    m.desc.qround = 1;
    m.desc.qseed = 7;
    m.desc.qrotate = 1;
    m.desc.shape = {uint64_t(1) << 20, (uint64_t(1) << 20) + 3};
    m.desc.structure = (uint64_t(1) << 63) + 5;
    m.desc.structure_text = "{'a': float32[3]}";
    m.timeout_ms = 1800000;
    m.min_world = 3;
    const OpStart d = round_trip(MsgType::kOpStart, m);
    CHECK_EQ(d.tag, uint64_t(99));
    CHECK(d.desc == m.desc);
    CHECK_EQ(d.desc.count, (uint64_t(1) << 40) + 3);
    CHECK_EQ(d.desc.shape, m.desc.shape);
    CHECK_EQ(d.desc.structure_text, "{'a': float32[3]}");
    CHECK_EQ(d.desc.qseed, 7u);
    CHECK_EQ(d.desc.qrotate, 1);
    CHECK_EQ(d.timeout_ms, 1800000u);
    CHECK_EQ(d.min_world, 3u);
}

TEST(op_go_reject_done_commit_abort_round_trip) {
    OpGo g;
    g.tag = 99;
    g.op_id = 17;
    g.stripes = 4;
    g.ring = kRing;
    g.slot = 3;
    g.ring_epoch = 5;
    const OpGo g2 = round_trip(MsgType::kOpGo, g);
    CHECK_EQ(g2.tag, uint64_t(99));
    CHECK_EQ(g2.op_id, uint64_t(17));
    CHECK_EQ(g2.stripes, 4u);
    CHECK(g2.ring == kRing);
    CHECK_EQ(g2.slot, 3u);
    CHECK_EQ(g2.ring_epoch, uint64_t(5));
    OpReject r;
    r.tag = 99;
    r.kind = 6;
    r.reason = "peers started different operations";
    const OpReject r2 = round_trip(MsgType::kOpReject, r);
    CHECK_EQ(r2.tag, uint64_t(99));
    CHECK_EQ(r2.kind, 6);
    CHECK_EQ(r2.reason, r.reason);
    OpDone d;
    d.op_id = 17;
    d.ok = 0;
    d.kind = 2;
    d.reason = "peer 3 lost";
    const OpDone d2 = round_trip(MsgType::kOpDone, d);
    CHECK_EQ(d2.op_id, uint64_t(17));
    CHECK_EQ(d2.ok, 0);
    CHECK_EQ(d2.kind, 2);
    CHECK_EQ(d2.reason, "peer 3 lost");
    d.ok = 1;
    CHECK_EQ(round_trip(MsgType::kOpDone, d).ok, 1);
    OpCommit c;
    c.op_id = 0xFEDCBA9876543210ull;
    CHECK_EQ(round_trip(MsgType::kOpCommit, c).op_id, 0xFEDCBA9876543210ull);
    OpAbort a;
    a.op_id = 17;
    a.kind = 2;
    a.reason = "peer 3 (1.2.3.4:5) lost";
    const OpAbort a2 = round_trip(MsgType::kOpAbort, a);
    CHECK_EQ(a2.op_id, uint64_t(17));
    CHECK_EQ(a2.kind, 2);
    CHECK_EQ(a2.reason, a.reason);
}

TEST(sync_start_round_trips) {
    SyncStart m;
    m.revision = (uint64_t(1) << 40) + 1;
    m.strategy = 2;
    m.timeout_ms = 5000;
    m.min_world = 2;
    StateEntry w;
    w.name = "layer.0.weight";
    w.dtype = 10;
    w.shape = {4096, 1024};
    w.nbytes = uint64_t(1) << 24;
    w.hash = ~uint64_t(0) - 1;
    w.tolerate = 0;
    StateEntry rng;
    rng.name = "rng";
    rng.dtype = 7;
    rng.nbytes = 8;
    rng.hash = 5;
    rng.tolerate = 1;
    m.entries = {w, rng};
    const SyncStart d = round_trip(MsgType::kSyncStart, m);
    CHECK_EQ(d.revision, (uint64_t(1) << 40) + 1);
    CHECK_EQ(d.strategy, 2);
    CHECK_EQ(d.timeout_ms, 5000u);
    CHECK_EQ(d.min_world, 2u);
    CHECK_EQ(d.entries.size(), size_t(2));
    CHECK(d.entries == m.entries);
    CHECK_EQ(d.entries[0].shape, (std::vector<uint64_t>{4096, 1024}));
    CHECK(d.entries[1].shape.empty());
    CHECK_EQ(d.entries[1].tolerate, 1);
}

TEST(sync_plan_round_trips) {
    SyncPlan m;
    m.sync_id = 9;
    m.ok = 1;
    m.kind = 0;
    m.reason = "";
    m.revision = 12;
    m.commit_now = 1;
    m.fetch = {3, 1};
    m.expect = {uint64_t(1) << 63, 7};
    SyncSend s;
    s.to = kRing[0];
    s.fetch = {0, 2};
    s.begin = 10;
    s.end = uint64_t(1) << 40;
    s.stripes = 4;
    m.sends = {s};
    SyncRecv r;
    r.from = 5;
    r.begin = 0;
    r.end = 10;
    r.stripes = 2;
    m.recvs = {r};
    const SyncPlan d = round_trip(MsgType::kSyncPlan, m);
    CHECK_EQ(d.sync_id, uint64_t(9));
    CHECK_EQ(d.ok, 1);
    CHECK_EQ(d.revision, uint64_t(12));
    CHECK_EQ(d.commit_now, 1);
    CHECK_EQ(d.fetch, (std::vector<uint32_t>{3, 1}));
    CHECK_EQ(d.expect, (std::vector<uint64_t>{uint64_t(1) << 63, 7}));
    CHECK_EQ(d.sends.size(), size_t(1));
    CHECK_EQ(d.recvs.size(), size_t(1));
    if (d.sends.size() == 1 && d.recvs.size() == 1) {
        CHECK(d.sends[0].to == kRing[0]);
        CHECK_EQ(d.sends[0].fetch, (std::vector<uint32_t>{0, 2}));
        CHECK_EQ(d.sends[0].begin, uint64_t(10));
        CHECK_EQ(d.sends[0].end, uint64_t(1) << 40);
        CHECK_EQ(d.sends[0].stripes, 4u);
        CHECK_EQ(d.recvs[0].from, uint64_t(5));
        CHECK_EQ(d.recvs[0].begin, uint64_t(0));
        CHECK_EQ(d.recvs[0].end, uint64_t(10));
        CHECK_EQ(d.recvs[0].stripes, 2u);
    }
    SyncPlan refused;
    refused.ok = 0;
    refused.kind = 11;
    refused.reason = "the group's shared state is lost";
    const SyncPlan r2 = round_trip(MsgType::kSyncPlan, refused);
    CHECK_EQ(r2.ok, 0);
    CHECK_EQ(r2.kind, 11);
    CHECK_EQ(r2.reason, refused.reason);
}

TEST(opt_plan_and_opt_report_round_trip) {
    OptPlan p;
    p.opt_id = 21;
    p.seq = 4;
    p.probe_ms = 700;
    ProbeRound a, none;
    a.send_to = kRing[0];
    a.recv_from = 9;
    p.rounds = {a, none};
    const OptPlan p2 = round_trip(MsgType::kOptPlan, p);
    CHECK_EQ(p2.opt_id, uint64_t(21));
    CHECK_EQ(p2.seq, uint64_t(4));
    CHECK_EQ(p2.probe_ms, 700u);
    CHECK_EQ(p2.rounds.size(), size_t(2));
    if (p2.rounds.size() == 2) {
        CHECK(p2.rounds[0].send_to == kRing[0]);
        CHECK_EQ(p2.rounds[0].recv_from, uint64_t(9));
        CHECK(p2.rounds[1].send_to == PeerInfo{});
        CHECK_EQ(p2.rounds[1].recv_from, uint64_t(0));
    }
    OptReport r;
    r.opt_id = 21;
    LinkMeasure l;
    l.from = 9;
    l.to = 7;
    l.bandwidth = 12500000;
    l.rtt_us = 40000;
    r.links = {l, l};
    r.links[1].from = 8;
    const OptReport r2 = round_trip(MsgType::kOptReport, r);
    CHECK_EQ(r2.opt_id, uint64_t(21));
    CHECK_EQ(r2.links.size(), size_t(2));
    if (r2.links.size() == 2) {
        CHECK_EQ(r2.links[0].from, uint64_t(9));
        CHECK_EQ(r2.links[0].to, uint64_t(7));
        CHECK_EQ(r2.links[0].bandwidth, uint64_t(12500000));
        CHECK_EQ(r2.links[0].rtt_us, 40000u);
        CHECK_EQ(r2.links[1].from, uint64_t(8));
    }
}

TEST(peer_hello_and_data_header_round_trip) {
    PeerHello h;
    h.from = 3;
    h.to = 4;
    h.index = 2;
    h.slot = 0xFFFF0000u;
    const PeerHello h2 = round_trip(MsgType::kPeerHello, h);
    CHECK_EQ(h2.from, uint64_t(3));
    CHECK_EQ(h2.to, uint64_t(4));
    CHECK_EQ(h2.index, 2u);
    CHECK_EQ(h2.slot, 0xFFFF0000u);
    DataHeader d;
    d.op_id = 17;
    d.step = 3;
    d.stripe = 1;
    d.offset = uint64_t(1) << 33;
    const Bytes payload = payload_of(frame(MsgType::kData, d), MsgType::kData);
    CHECK_EQ(payload.size(), kDataHeaderSize);
    const DataHeader d2 = round_trip(MsgType::kData, d);
    CHECK_EQ(d2.op_id, uint64_t(17));
    CHECK_EQ(d2.step, 3u);
    CHECK_EQ(d2.stripe, 1u);
    CHECK_EQ(d2.offset, uint64_t(1) << 33);
}

TEST(auth_frames_round_trip) {
    AuthHello h;
    h.context = 2;
    h.nonce = counting(0);
    const AuthHello h2 = round_trip(MsgType::kAuthHello, h);
    CHECK_EQ(h2.context, 2);
    CHECK(h2.nonce == counting(0));
    AuthChallenge c;
    c.nonce = counting(100);
    c.encrypt = 1;
    c.mac = counting(200);
    const AuthChallenge c2 = round_trip(MsgType::kAuthChallenge, c);
    CHECK(c2.nonce == counting(100));
    CHECK_EQ(c2.encrypt, 1);
    CHECK(c2.mac == counting(200));
    AuthProof p;
    p.mac = counting(1);
    CHECK(round_trip(MsgType::kAuthProof, p).mac == counting(1));
    AuthRefused r;
    r.reason = "this master requires the run's secret";
    CHECK_EQ(round_trip(MsgType::kAuthRefused, r).reason, r.reason);
}

// ------------------------------------------------------------------------------------------------ bad headers

TEST(bad_magic_version_type_and_reserved_bits_are_protocol_errors) {
    const Bytes good = frame(MsgType::kWelcome, Welcome{});
    decode_header(good.data());
    for (size_t i = 0; i < 4; i++) {
        Bytes b = good;
        b[i] ^= 0x20;
        CHECK_THROWS_KIND(decode_header(b.data()), kProtocol);
    }
    for (uint16_t version : {0, 7, 9, 0x0800}) {
        Bytes b = good;
        b[4] = uint8_t(version);
        b[5] = uint8_t(version >> 8);
        CHECK_THROWS_KIND(decode_header(b.data()), kProtocol);
    }
    for (uint16_t type : {0, 22, 31, 34, 39, 44, 0x0100, 0xFFFF}) {
        Bytes b = good;
        b[6] = uint8_t(type);
        b[7] = uint8_t(type >> 8);
        CHECK_THROWS_KIND(decode_header(b.data()), kProtocol);
    }
    for (size_t i = 12; i < 16; i++) {
        Bytes b = good;
        b[i] = 1;
        CHECK_THROWS_KIND(decode_header(b.data()), kProtocol);
    }
}

TEST(every_known_type_decodes_and_no_other) {
    size_t known = 0;
    for (uint32_t type = 0; type < 0x10000; type++) {
        const Bytes h = header_bytes(uint16_t(type), 0);
        try {
            CHECK_EQ(decode_header(h.data()).type, uint16_t(type));
            known++;
        } catch (const pccl::CoreError& e) {
            CHECK_EQ(e.kind(), pccl::ErrorKind::kProtocol);
        }
    }
    CHECK_EQ(known, size_t(27));  // 1..21, 32, 33, 40..43 (docs/protocol.md)
    for (uint16_t type : {1, 21, 32, 33, 40, 43}) CHECK_EQ(decode_header(header_bytes(type, 0).data()).type, type);
}

TEST(lengths_over_a_types_limit_are_protocol_errors) {
    struct Limit {
        MsgType type;
        uint32_t max;
    };
    for (const Limit& l : {Limit{MsgType::kHello, kMaxControlPayload}, Limit{MsgType::kTopoResult, kMaxControlPayload},
                           Limit{MsgType::kSyncStart, kMaxStatePayload}, Limit{MsgType::kSyncPlan, kMaxStatePayload},
                           Limit{MsgType::kData, kMaxDataPayload + uint32_t(kDataHeaderSize)}}) {
        CHECK_EQ(decode_header(header_bytes(uint16_t(l.type), l.max).data()).length, l.max);
        CHECK_THROWS_KIND(decode_header(header_bytes(uint16_t(l.type), l.max + 1).data()), kProtocol);
        CHECK_THROWS_KIND(decode_header(header_bytes(uint16_t(l.type), 0xFFFFFFFFu).data()), kProtocol);
    }
    CHECK_EQ(kMaxControlPayload, 1u << 20);
    CHECK_EQ(kMaxStatePayload, 16u << 20);
    CHECK_EQ(kMaxDataPayload, 64u << 20);
}

// ------------------------------------------------------------------------------------------------ bad payloads

TEST(strings_must_be_utf8) {
    for (const std::string& good : {std::string("plain"), std::string("hôte-ü ✓ 𝄞"), std::string("\xF4\x8F\xBF\xBF"),
                                    std::string("\x7F"), std::string("")}) {
        CHECK_EQ(round_trip(MsgType::kHello, hello_with_host(good)).host, good);
    }
    for (const std::string& bad : {
             std::string("\xC0\x80"),              // overlong NUL
             std::string("\xE0\x80\xAF"),          // overlong '/'
             std::string("\xED\xA0\x80"),          // a surrogate
             std::string("\xF4\x90\x80\x80"),      // past U+10FFFF
             std::string("ok\xE2\x82"),            // truncated at the end
             std::string("\x80"),                  // a lone continuation byte
             std::string("\xE2\x28\xA1"),          // a bad continuation byte
             std::string("\xF8\x88\x80\x80\x80"),  // a five-byte form
             std::string("\xFF"),
         }) {
        const Bytes frame_bytes = frame(MsgType::kHello, hello_with_host(bad));  // the writer does not judge
        CHECK_THROWS_KIND(decode_payload<Hello>(payload_of(frame_bytes, MsgType::kHello)), kProtocol);
    }
    Kicked k;
    k.reason = "bad \xC3";
    CHECK_THROWS_KIND(decode_payload<Kicked>(payload_of(frame(MsgType::kKicked, k), MsgType::kKicked)), kProtocol);
}

TEST(strings_over_4096_bytes_are_refused_both_ways) {
    CHECK_EQ(round_trip(MsgType::kKicked, Kicked{std::string(kMaxString, 'x')}).reason.size(), kMaxString);
    CHECK_THROWS_KIND(frame(MsgType::kKicked, Kicked{std::string(kMaxString + 1, 'x')}), kInvalidArgument);
    Writer w;  // a reader never accepts what a writer refuses to write
    w.u16(uint16_t(kMaxString + 1));
    const std::string body(kMaxString + 1, 'x');
    w.raw(reinterpret_cast<const uint8_t*>(body.data()), body.size());
    CHECK_THROWS_KIND(decode_payload<Kicked>(w.bytes()), kProtocol);
}

TEST(counts_beyond_their_bound_are_refused) {
    OpStart m;
    m.desc.shape.assign(kMaxDims, 2);
    CHECK_EQ(round_trip(MsgType::kOpStart, m).desc.shape.size(), kMaxDims);
    m.desc.shape.assign(kMaxDims + 1, 2);
    CHECK_THROWS_KIND(decode_payload<OpStart>(payload_of(frame(MsgType::kOpStart, m), MsgType::kOpStart)), kProtocol);
    StateEntry e;
    e.shape.assign(kMaxDims + 1, 1);
    SyncStart s;
    s.entries = {e};
    CHECK_THROWS_KIND(decode_payload<SyncStart>(payload_of(frame(MsgType::kSyncStart, s), MsgType::kSyncStart)), kProtocol);
    OptPlan p;
    p.rounds.resize(kMaxProbeRounds);
    CHECK_EQ(decode_payload<OptPlan>(payload_of(frame(MsgType::kOptPlan, p), MsgType::kOptPlan)).rounds.size(),
             kMaxProbeRounds);
    p.rounds.resize(kMaxProbeRounds + 1);
    CHECK_THROWS_KIND(decode_payload<OptPlan>(payload_of(frame(MsgType::kOptPlan, p), MsgType::kOptPlan)), kProtocol);
}

TEST(counts_beyond_the_bytes_left_are_refused_before_allocating) {
    for (uint32_t count : {1u, 1000u, 65536u, 0xFFFFFFFFu}) {
        Writer w;  // TOPO_RESULT: seq, world_size, pending, then a ring count with no peers after it
        w.u64(1);
        w.u32(2);
        w.u32(0);
        w.u32(count);
        CHECK_THROWS_KIND(decode_payload<TopoResult>(w.bytes()), kProtocol);
    }
    Writer w;  // SYNC_START: revision, strategy, timeout, min_world, then 2^32 - 1 entries
    w.u64(1);
    w.u8(0);
    w.u32(0);
    w.u32(0);
    w.u32(0xFFFFFFFFu);
    CHECK_THROWS_KIND(decode_payload<SyncStart>(w.bytes()), kProtocol);
    const uint8_t bytes[10] = {7, 0, 0, 0, 1, 2, 3, 4, 5, 6};  // a count of 7 with 6 bytes left
    Reader r(bytes, sizeof(bytes));
    CHECK_THROWS_KIND(r.count(1000), kProtocol);
    Reader r2(bytes, sizeof(bytes));
    CHECK_THROWS_KIND(r2.count(6), kProtocol);  // over the bound
}

TEST(flags_and_rules_between_fields_are_checked) {
    AuthChallenge c;
    c.encrypt = 2;
    CHECK_THROWS_KIND(decode_payload<AuthChallenge>(payload_of(frame(MsgType::kAuthChallenge, c), MsgType::kAuthChallenge)),
                      kProtocol);
    StateEntry e;
    e.tolerate = 2;
    SyncStart s;
    s.entries = {e};
    CHECK_THROWS_KIND(decode_payload<SyncStart>(payload_of(frame(MsgType::kSyncStart, s), MsgType::kSyncStart)), kProtocol);
    s.entries[0].tolerate = 1;
    s.strategy = 3;
    CHECK_THROWS_KIND(decode_payload<SyncStart>(payload_of(frame(MsgType::kSyncStart, s), MsgType::kSyncStart)), kProtocol);
    auto plan_refused = [](const SyncPlan& p) {
        CHECK_THROWS_KIND(decode_payload<SyncPlan>(payload_of(frame(MsgType::kSyncPlan, p), MsgType::kSyncPlan)),
                          kProtocol);
    };
    SyncPlan p;
    p.fetch = {1, 2};
    p.expect = {5};  // a hash for every fetched entry
    plan_refused(p);
    SyncPlan q;
    q.sends.resize(1);
    q.sends[0].begin = 10;
    q.sends[0].end = 9;  // begin after end
    plan_refused(q);
    SyncPlan z;
    z.recvs.resize(1);
    z.recvs[0].stripes = 0;  // no connection to receive on
    plan_refused(z);
}
