#include "wire/wire.hpp"

#include <cstring>

namespace pccl::wire {

namespace {
[[noreturn]] void bad(const std::string& what) { throw CoreError(ErrorKind::kProtocol, "malformed frame: " + what); }

uint32_t load32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }
uint16_t load16(const uint8_t* p) { return uint16_t(p[0] | p[1] << 8); }
void store32(uint8_t* p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = uint8_t(v >> (8 * i)); }
void store16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v); p[1] = uint8_t(v >> 8); }
}  // namespace

bool is_known_type(uint16_t t) { return (t >= 1 && t <= 21) || t == 32 || t == 33 || (t >= 40 && t <= 43); }

Header decode_header(const uint8_t* b) {
    if (load32(b) != kMagic) bad("bad magic");
    uint16_t version = load16(b + 4);
    if (version != kVersion)
        bad("protocol version " + std::to_string(version) + ", expected " + std::to_string(kVersion));
    Header h;
    h.type = load16(b + 6);
    h.length = load32(b + 8);
    if (!is_known_type(h.type)) bad("unknown message type " + std::to_string(h.type));
    if (load32(b + 12) != 0) bad("reserved bits set");
    uint32_t limit = kMaxControlPayload;
    if (h.type == uint16_t(MsgType::kData)) limit = kMaxDataPayload + kDataHeaderSize;
    if (h.type == uint16_t(MsgType::kSyncStart) || h.type == uint16_t(MsgType::kSyncPlan)) limit = kMaxStatePayload;
    if (h.length > limit) bad("payload length " + std::to_string(h.length) + " over the limit " + std::to_string(limit));
    return h;
}

void encode_header(uint8_t* out, MsgType type, uint32_t length) {
    store32(out, kMagic);
    store16(out + 4, kVersion);
    store16(out + 6, uint16_t(type));
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
    if (size_t(end_ - p_) < n) bad("payload ends early");
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
    if (n > kMaxString) bad("string length " + std::to_string(n));
    const uint8_t* p = need(n);
    if (!valid_utf8(p, n)) bad("string is not UTF-8");
    return std::string(reinterpret_cast<const char*>(p), n);
}
size_t Reader::count(size_t max) {
    uint32_t n = u32();
    if (n > max || n > size_t(end_ - p_)) bad("element count " + std::to_string(n));
    return n;
}
void Reader::finish() const {
    if (p_ != end_) bad(std::to_string(end_ - p_) + " trailing bytes");
}

std::vector<uint8_t> empty_frame(MsgType type) {
    std::vector<uint8_t> b(kHeaderSize);
    encode_header(b.data(), type, 0);
    return b;
}

void encode(Writer& w, const PeerInfo& m) { w.u64(m.id); w.str(m.host); w.u16(m.port); }
void encode(Writer& w, const OpDesc& m) {
    w.u64(m.count); w.u8(m.dtype); w.u8(m.op); w.u8(m.quant); w.u32(m.qblock); w.u8(m.qround); w.u32(m.qseed);
    w.u32(uint32_t(m.shape.size()));
    for (uint64_t d : m.shape) w.u64(d);
    w.u64(m.structure);
    w.str(m.structure_text);
}
void encode(Writer& w, const Hello& m) { w.u32(m.group); w.u32(m.connections); w.str(m.host); w.u16(m.port); }
void encode(Writer& w, const Welcome& m) { w.u64(m.peer_id); }
void encode(Writer& w, const HeartbeatAck& m) { w.u32(m.pending); }
void encode(Writer& w, const TopoRequest& m) { w.u64(m.seq); w.u32(m.timeout_ms); w.u32(m.min_world); }
static void encode_ring(Writer& w, const std::vector<PeerInfo>& ring) {
    w.u32(uint32_t(ring.size()));
    for (const auto& p : ring) encode(w, p);
}
void encode(Writer& w, const TopoResult& m) {
    w.u64(m.seq); w.u32(m.world_size); w.u32(m.pending); encode_ring(w, m.ring); w.u8(m.kind); w.str(m.reason);
}
void encode(Writer& w, const OpStart& m) { w.u64(m.tag); encode(w, m.desc); w.u32(m.timeout_ms); w.u32(m.min_world); }
void encode(Writer& w, const OpGo& m) {
    w.u64(m.tag);
    w.u64(m.op_id);
    w.u32(m.stripes);
    encode_ring(w, m.ring);
    w.u32(m.slot);
    w.u64(m.ring_epoch);
}
void encode(Writer& w, const OpReject& m) { w.u64(m.tag); w.u8(m.kind); w.str(m.reason); }
void encode(Writer& w, const OpDone& m) { w.u64(m.op_id); w.u8(m.ok); w.u8(m.kind); w.str(m.reason); }
void encode(Writer& w, const OpCommit& m) { w.u64(m.op_id); }
void encode(Writer& w, const OpAbort& m) { w.u64(m.op_id); w.u8(m.kind); w.str(m.reason); }
void encode(Writer& w, const PendingReply& m) { w.u32(m.pending); }
void encode(Writer& w, const Kicked& m) { w.str(m.reason); }
void encode(Writer& w, const OptPlan& m) {
    w.u64(m.opt_id);
    w.u64(m.seq);
    w.u32(m.probe_ms);
    w.u32(uint32_t(m.rounds.size()));
    for (const auto& r : m.rounds) {
        encode(w, r.send_to);
        w.u64(r.recv_from);
    }
}
void encode(Writer& w, const OptReport& m) {
    w.u64(m.opt_id);
    w.u32(uint32_t(m.links.size()));
    for (const auto& l : m.links) {
        w.u64(l.from);
        w.u64(l.to);
        w.u64(l.bandwidth);
        w.u32(l.rtt_us);
    }
}
void encode(Writer& w, const AuthHello& m) { w.u8(m.context); w.raw(m.nonce.data(), m.nonce.size()); }
void encode(Writer& w, const AuthChallenge& m) {
    w.raw(m.nonce.data(), m.nonce.size());
    w.u8(m.encrypt);
    w.raw(m.mac.data(), m.mac.size());
}
void encode(Writer& w, const AuthProof& m) { w.raw(m.mac.data(), m.mac.size()); }
void encode(Writer& w, const AuthRefused& m) { w.str(m.reason); }
void encode(Writer& w, const PeerHello& m) { w.u64(m.from); w.u64(m.to); w.u32(m.index); w.u32(m.slot); }
void encode(Writer& w, const DataHeader& m) { w.u64(m.op_id); w.u32(m.step); w.u32(m.stripe); w.u64(m.offset); }
void encode(Writer& w, const StateEntry& m) {
    w.str(m.name);
    w.u8(m.dtype);
    w.u32(uint32_t(m.shape.size()));
    for (uint64_t d : m.shape) w.u64(d);
    w.u64(m.nbytes);
    w.u64(m.hash);
    w.u8(m.tolerate);
}
void encode(Writer& w, const SyncStart& m) {
    w.u64(m.revision);
    w.u8(m.strategy);
    w.u32(m.timeout_ms);
    w.u32(m.min_world);
    w.u32(uint32_t(m.entries.size()));
    for (const auto& e : m.entries) encode(w, e);
}
static void encode_u32s(Writer& w, const std::vector<uint32_t>& v) {
    w.u32(uint32_t(v.size()));
    for (uint32_t x : v) w.u32(x);
}
void encode(Writer& w, const SyncPlan& m) {
    w.u64(m.sync_id); w.u8(m.ok); w.u8(m.kind); w.str(m.reason); w.u64(m.revision); w.u8(m.commit_now);
    encode_u32s(w, m.fetch);
    w.u32(uint32_t(m.expect.size()));
    for (uint64_t h : m.expect) w.u64(h);
    w.u32(uint32_t(m.sends.size()));
    for (const auto& s : m.sends) {
        encode(w, s.to); encode_u32s(w, s.fetch); w.u64(s.begin); w.u64(s.end); w.u32(s.stripes);
    }
    w.u32(uint32_t(m.recvs.size()));
    for (const auto& r : m.recvs) { w.u64(r.from); w.u64(r.begin); w.u64(r.end); w.u32(r.stripes); }
}

static std::vector<PeerInfo> decode_ring(Reader& r);

template <> PeerInfo decode<PeerInfo>(Reader& r) {
    PeerInfo m;
    m.id = r.u64();
    m.host = r.str();
    m.port = r.u16();
    return m;
}
static std::vector<PeerInfo> decode_ring(Reader& r) {
    size_t n = r.count(kMaxPeers);
    std::vector<PeerInfo> ring;
    ring.reserve(n);
    for (size_t i = 0; i < n; i++) ring.push_back(decode<PeerInfo>(r));
    return ring;
}
template <> OpDesc decode<OpDesc>(Reader& r) {
    OpDesc m;
    m.count = r.u64();
    m.dtype = r.u8();
    m.op = r.u8();
    m.quant = r.u8();
    m.qblock = r.u32();
    m.qround = r.u8();
    m.qseed = r.u32();
    const size_t ndim = r.count(kMaxDims);
    for (size_t i = 0; i < ndim; i++) m.shape.push_back(r.u64());
    m.structure = r.u64();
    m.structure_text = r.str();
    return m;
}
template <> Hello decode<Hello>(Reader& r) {
    Hello m;
    m.group = r.u32();
    m.connections = r.u32();
    m.host = r.str();
    m.port = r.u16();
    return m;
}
template <> Welcome decode<Welcome>(Reader& r) { return Welcome{r.u64()}; }
template <> HeartbeatAck decode<HeartbeatAck>(Reader& r) { return HeartbeatAck{r.u32()}; }
template <> TopoRequest decode<TopoRequest>(Reader& r) {
    TopoRequest m;
    m.seq = r.u64();
    m.timeout_ms = r.u32();
    m.min_world = r.u32();
    return m;
}
template <> TopoResult decode<TopoResult>(Reader& r) {
    TopoResult m;
    m.seq = r.u64();
    m.world_size = r.u32();
    m.pending = r.u32();
    m.ring = decode_ring(r);
    m.kind = r.u8();
    m.reason = r.str();
    return m;
}
template <> OpStart decode<OpStart>(Reader& r) {
    OpStart m;
    m.tag = r.u64();
    m.desc = decode<OpDesc>(r);
    m.timeout_ms = r.u32();
    m.min_world = r.u32();
    return m;
}
template <> OpGo decode<OpGo>(Reader& r) {
    OpGo m;
    m.tag = r.u64();
    m.op_id = r.u64();
    m.stripes = r.u32();
    m.ring = decode_ring(r);
    m.slot = r.u32();
    m.ring_epoch = r.u64();
    return m;
}
template <> OpReject decode<OpReject>(Reader& r) {
    OpReject m;
    m.tag = r.u64();
    m.kind = r.u8();
    m.reason = r.str();
    return m;
}
template <> OpDone decode<OpDone>(Reader& r) {
    OpDone m;
    m.op_id = r.u64();
    m.ok = r.u8();
    m.kind = r.u8();
    m.reason = r.str();
    return m;
}
template <> OpCommit decode<OpCommit>(Reader& r) { return OpCommit{r.u64()}; }
template <> OpAbort decode<OpAbort>(Reader& r) {
    OpAbort m;
    m.op_id = r.u64();
    m.kind = r.u8();
    m.reason = r.str();
    return m;
}
template <> PendingReply decode<PendingReply>(Reader& r) { return PendingReply{r.u32()}; }
template <> Kicked decode<Kicked>(Reader& r) { return Kicked{r.str()}; }
template <> OptPlan decode<OptPlan>(Reader& r) {
    OptPlan m;
    m.opt_id = r.u64();
    m.seq = r.u64();
    m.probe_ms = r.u32();
    const size_t n = r.count(kMaxProbeRounds);
    for (size_t i = 0; i < n; i++) {
        ProbeRound pr;
        pr.send_to = decode<PeerInfo>(r);
        pr.recv_from = r.u64();
        m.rounds.push_back(std::move(pr));
    }
    return m;
}
template <> OptReport decode<OptReport>(Reader& r) {
    OptReport m;
    m.opt_id = r.u64();
    const size_t n = r.count(kMaxPeers);
    for (size_t i = 0; i < n; i++) {
        LinkMeasure l;
        l.from = r.u64();
        l.to = r.u64();
        l.bandwidth = r.u64();
        l.rtt_us = r.u32();
        m.links.push_back(l);
    }
    return m;
}
template <> AuthHello decode<AuthHello>(Reader& r) {
    AuthHello m;
    m.context = r.u8();
    r.raw(m.nonce.data(), m.nonce.size());
    return m;
}
template <> AuthChallenge decode<AuthChallenge>(Reader& r) {
    AuthChallenge m;
    r.raw(m.nonce.data(), m.nonce.size());
    m.encrypt = r.u8();
    if (m.encrypt > 1) bad("encryption flag " + std::to_string(m.encrypt));
    r.raw(m.mac.data(), m.mac.size());
    return m;
}
template <> AuthProof decode<AuthProof>(Reader& r) {
    AuthProof m;
    r.raw(m.mac.data(), m.mac.size());
    return m;
}
template <> AuthRefused decode<AuthRefused>(Reader& r) { return AuthRefused{r.str()}; }
template <> PeerHello decode<PeerHello>(Reader& r) {
    PeerHello m;
    m.from = r.u64();
    m.to = r.u64();
    m.index = r.u32();
    m.slot = r.u32();
    return m;
}
template <> DataHeader decode<DataHeader>(Reader& r) {
    DataHeader m;
    m.op_id = r.u64();
    m.step = r.u32();
    m.stripe = r.u32();
    m.offset = r.u64();
    return m;
}
template <> StateEntry decode<StateEntry>(Reader& r) {
    StateEntry m;
    m.name = r.str();
    m.dtype = r.u8();
    const size_t ndim = r.count(kMaxDims);
    for (size_t i = 0; i < ndim; i++) m.shape.push_back(r.u64());
    m.nbytes = r.u64();
    m.hash = r.u64();
    m.tolerate = r.u8();
    if (m.tolerate > 1) bad("tolerate flag " + std::to_string(m.tolerate));
    return m;
}
template <> SyncStart decode<SyncStart>(Reader& r) {
    SyncStart m;
    m.revision = r.u64();
    m.strategy = r.u8();
    if (m.strategy > uint8_t(SyncStrategy::kSendOnly)) bad("sync strategy " + std::to_string(m.strategy));
    m.timeout_ms = r.u32();
    m.min_world = r.u32();
    const size_t n = r.count(kMaxStateEntries);
    m.entries.reserve(n);
    for (size_t i = 0; i < n; i++) m.entries.push_back(decode<StateEntry>(r));
    return m;
}
static std::vector<uint32_t> decode_u32s(Reader& r) {
    const size_t n = r.count(kMaxStateEntries);
    std::vector<uint32_t> v(n);
    for (auto& x : v) x = r.u32();
    return v;
}
template <> SyncPlan decode<SyncPlan>(Reader& r) {
    SyncPlan m;
    m.sync_id = r.u64(); m.ok = r.u8(); m.kind = r.u8(); m.reason = r.str(); m.revision = r.u64(); m.commit_now = r.u8();
    m.fetch = decode_u32s(r);
    const size_t ne = r.count(kMaxStateEntries);
    for (size_t i = 0; i < ne; i++) m.expect.push_back(r.u64());
    if (m.expect.size() != m.fetch.size()) bad("a hash for every fetched entry");
    const size_t ns = r.count(kMaxPeers);
    for (size_t i = 0; i < ns; i++) {
        SyncSend s;
        s.to = decode<PeerInfo>(r); s.fetch = decode_u32s(r); s.begin = r.u64(); s.end = r.u64(); s.stripes = r.u32();
        if (s.begin > s.end || s.stripes == 0) bad("sync range");
        m.sends.push_back(std::move(s));
    }
    const size_t nr = r.count(kMaxPeers);
    for (size_t i = 0; i < nr; i++) {
        SyncRecv v;
        v.from = r.u64(); v.begin = r.u64(); v.end = r.u64(); v.stripes = r.u32();
        if (v.begin > v.end || v.stripes == 0) bad("sync range");
        m.recvs.push_back(v);
    }
    return m;
}

}  // namespace pccl::wire
