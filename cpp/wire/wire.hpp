// The wire format. Every message is a frame: a 16-byte header (magic, protocol version, type, payload length,
// reserved zero) followed by the payload. All integers are fixed-width little-endian. Lengths are bounded
// before anything is allocated, and decoding is a pure function over bytes that never trusts its input: a
// short, oversized or malformed payload is a CoreError of kind kProtocol, never a crash or a huge allocation.
// docs/protocol.md describes every message.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/error.hpp"

namespace pccl::wire {

constexpr uint32_t kMagic = 0x52414350;  // "PCAR" as little-endian bytes
constexpr uint16_t kVersion = 4;  // 3: authenticated runs (AUTH_* frames, sealed frames); 4: OP_GO.ring_epoch
constexpr size_t kHeaderSize = 16;
constexpr uint32_t kMaxControlPayload = 1u << 20;  // control frames: membership lists, reasons
constexpr uint32_t kMaxDataPayload = 64u << 20;    // one piece of an operation
constexpr size_t kMaxString = 4096;
constexpr size_t kMaxPeers = 65536;
constexpr uint32_t kMaxStatePayload = 16u << 20;  // SYNC_START / SYNC_PLAN: entry lists of large models
constexpr size_t kMaxStateEntries = 65536;
constexpr size_t kMaxDims = 32;

enum class MsgType : uint16_t {
    // peer <-> master
    kHello = 1, kWelcome = 2, kHeartbeat = 3, kHeartbeatAck = 4, kTopoRequest = 5, kTopoResult = 6,
    kOpStart = 7, kOpGo = 8, kOpReject = 9, kOpDone = 10, kOpCommit = 11, kOpAbort = 12,
    kPendingRequest = 13, kPendingReply = 14, kLeave = 15, kKicked = 16,
    kSyncStart = 17, kSyncPlan = 18,  // shared state: ends with OP_DONE, OP_COMMIT / OP_ABORT of the sync id
    kOptStart = 19, kOptPlan = 20, kOptReport = 21,  // optimize_topology(): ends with TOPO_RESULT of its seq
    // peer <-> peer
    kPeerHello = 32, kData = 33,
    // the handshake of an authenticated run, first on every connection (docs/security.md)
    kAuthHello = 40, kAuthChallenge = 41, kAuthProof = 42, kAuthRefused = 43,
};
bool is_known_type(uint16_t type);

struct Header {
    uint16_t type = 0;
    uint32_t length = 0;
};
// Validates magic, version, known type, reserved bits and the length bound for the type.
Header decode_header(const uint8_t* bytes);
void encode_header(uint8_t* out, MsgType type, uint32_t length);

class Writer {
public:
    void u8(uint8_t v) { buf_.push_back(v); }
    void u16(uint16_t v);
    void u32(uint32_t v);
    void u64(uint64_t v);
    void str(const std::string& s);
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

struct PeerInfo {
    uint64_t id = 0;
    std::string host;
    uint16_t port = 0;
    bool operator==(const PeerInfo&) const = default;
};

// The descriptor every peer of an operation must agree on before any data moves.
struct OpDesc {
    uint64_t count = 0;
    uint8_t dtype = 0;
    uint8_t op = 0;
    uint8_t quant = 0;    // 0 none, 1 minmax, 2 zeropoint (docs/quantization.md)
    uint32_t qblock = 0;  // quantization block size
    uint8_t qround = 0;   // 0 nearest even, 1 stochastic
    uint32_t qseed = 0;   // stochastic rounding seed
    std::vector<uint64_t> shape;  // the caller's array shape (a tree: the packed buffer's), at most kMaxDims
    uint64_t structure = 0;       // a pytree's structure fingerprint (keys, order, leaf dtypes and shapes); 0: one array
    std::string structure_text;   // its readable summary, for mismatch messages
    bool operator==(const OpDesc&) const = default;
};

struct Hello { uint32_t group = 0; uint32_t connections = 1; std::string host; uint16_t port = 0; };
struct Welcome { uint64_t peer_id = 0; };
struct HeartbeatAck { uint32_t pending = 0; };
// timeout_ms: how long this peer waits for the others (0: no bound); min_world: the smallest group it accepts.
struct TopoRequest { uint64_t seq = 0; uint32_t timeout_ms = 0; uint32_t min_world = 0; };
// kind != 0: the request failed (a timeout; for seq 0, admission refused: the data address is unreachable).
struct TopoResult {
    uint64_t seq = 0; uint32_t world_size = 0; uint32_t pending = 0; std::vector<PeerInfo> ring;
    uint8_t kind = 0; std::string reason;
};
struct OpStart { uint64_t tag = 0; OpDesc desc; uint32_t timeout_ms = 0; uint32_t min_world = 0; };
// ring_epoch names the ring; the master sends the ring itself only to a peer that has not got this epoch yet
// (empty otherwise), so an operation costs the master O(N) bytes, not O(N^2).
struct OpGo { uint64_t tag = 0; uint64_t op_id = 0; uint32_t stripes = 1; std::vector<PeerInfo> ring; uint32_t slot = 0; uint64_t ring_epoch = 0; };
struct OpReject { uint64_t tag = 0; uint8_t kind = 0; std::string reason; };
struct OpDone { uint64_t op_id = 0; uint8_t ok = 0; uint8_t kind = 0; std::string reason; };
struct OpCommit { uint64_t op_id = 0; };
struct OpAbort { uint64_t op_id = 0; uint8_t kind = 0; std::string reason; };
struct PendingReply { uint32_t pending = 0; };
struct Kicked { std::string reason; };
struct PeerHello { uint64_t from = 0; uint64_t to = 0; uint32_t index = 0; uint32_t slot = 0; };
// Shared state (docs/shared_state.md). One entry of a peer's state as it announces it.
struct StateEntry {
    std::string name;
    uint8_t dtype = 0;
    std::vector<uint64_t> shape;
    uint64_t nbytes = 0;
    uint64_t hash = 0;
    uint8_t tolerate = 0;  // content may differ between peers holding state
    bool operator==(const StateEntry&) const = default;
};
enum class SyncStrategy : uint8_t { kEnforcePopular = 0, kReceiveOnly = 1, kSendOnly = 2 };
struct SyncStart {
    uint64_t revision = 0; uint8_t strategy = 0; uint32_t timeout_ms = 0; uint32_t min_world = 0;
    std::vector<StateEntry> entries;
};
// A source sends bytes [begin, end) of the receiver's stream (its fetched entries, concatenated in fetch order)
// over `stripes` connections.
struct SyncSend { PeerInfo to; std::vector<uint32_t> fetch; uint64_t begin = 0, end = 0; uint32_t stripes = 1; };
struct SyncRecv { uint64_t from = 0; uint64_t begin = 0, end = 0; uint32_t stripes = 1; };
struct SyncPlan {
    uint64_t sync_id = 0;
    uint8_t ok = 1, kind = 0;  // ok = 0: this peer is refused (kind, reason); it takes no further part
    std::string reason;
    uint64_t revision = 0;     // the group's revision after the sync
    uint8_t commit_now = 0;    // nothing moves anywhere: the sync is committed by this plan
    std::vector<uint32_t> fetch;   // entries this peer receives, in stream order
    std::vector<uint64_t> expect;  // the hash each fetched entry must have
    std::vector<SyncSend> sends;
    std::vector<SyncRecv> recvs;
};

// optimize_topology() (docs/topology.md). A plan lists rounds; in each, this peer sends a probe to `send_to`
// (id 0: none) and receives one from `recv_from` (0: none).
struct ProbeRound { PeerInfo send_to; uint64_t recv_from = 0; };
struct OptPlan { uint64_t opt_id = 0; uint64_t seq = 0; uint32_t probe_ms = 0; std::vector<ProbeRound> rounds; };
// What a peer measured on the probes it received: bandwidth in bytes/s, round trip in microseconds.
struct LinkMeasure { uint64_t from = 0; uint64_t to = 0; uint64_t bandwidth = 0; uint32_t rtt_us = 0; };
struct OptReport { uint64_t opt_id = 0; std::vector<LinkMeasure> links; };
constexpr size_t kMaxProbeRounds = 4096;

// The handshake (handshake.hpp). context: which kind of connection (1 master link, 2 data connection).
using Bytes32 = std::array<uint8_t, 32>;
struct AuthHello { uint8_t context = 0; Bytes32 nonce{}; };
struct AuthChallenge { Bytes32 nonce{}; uint8_t encrypt = 0; Bytes32 mac{}; };
struct AuthProof { Bytes32 mac{}; };
struct AuthRefused { std::string reason; };

// Precedes each piece of payload on a data connection; the piece's length is the frame length minus this.
struct DataHeader { uint64_t op_id = 0; uint32_t step = 0; uint32_t stripe = 0; uint64_t offset = 0; };
constexpr size_t kDataHeaderSize = 24;

void encode(Writer& w, const PeerInfo& m);
void encode(Writer& w, const OpDesc& m);
void encode(Writer& w, const Hello& m);
void encode(Writer& w, const Welcome& m);
void encode(Writer& w, const HeartbeatAck& m);
void encode(Writer& w, const TopoRequest& m);
void encode(Writer& w, const TopoResult& m);
void encode(Writer& w, const OpStart& m);
void encode(Writer& w, const OpGo& m);
void encode(Writer& w, const OpReject& m);
void encode(Writer& w, const OpDone& m);
void encode(Writer& w, const OpCommit& m);
void encode(Writer& w, const OpAbort& m);
void encode(Writer& w, const PendingReply& m);
void encode(Writer& w, const Kicked& m);
void encode(Writer& w, const PeerHello& m);
void encode(Writer& w, const DataHeader& m);
void encode(Writer& w, const StateEntry& m);
void encode(Writer& w, const SyncStart& m);
void encode(Writer& w, const SyncPlan& m);
void encode(Writer& w, const OptPlan& m);
void encode(Writer& w, const OptReport& m);
void encode(Writer& w, const AuthHello& m);
void encode(Writer& w, const AuthChallenge& m);
void encode(Writer& w, const AuthProof& m);
void encode(Writer& w, const AuthRefused& m);

template <class T> T decode(Reader& r);
template <> PeerInfo decode<PeerInfo>(Reader& r);
template <> OpDesc decode<OpDesc>(Reader& r);
template <> Hello decode<Hello>(Reader& r);
template <> Welcome decode<Welcome>(Reader& r);
template <> HeartbeatAck decode<HeartbeatAck>(Reader& r);
template <> TopoRequest decode<TopoRequest>(Reader& r);
template <> TopoResult decode<TopoResult>(Reader& r);
template <> OpStart decode<OpStart>(Reader& r);
template <> OpGo decode<OpGo>(Reader& r);
template <> OpReject decode<OpReject>(Reader& r);
template <> OpDone decode<OpDone>(Reader& r);
template <> OpCommit decode<OpCommit>(Reader& r);
template <> OpAbort decode<OpAbort>(Reader& r);
template <> PendingReply decode<PendingReply>(Reader& r);
template <> Kicked decode<Kicked>(Reader& r);
template <> PeerHello decode<PeerHello>(Reader& r);
template <> DataHeader decode<DataHeader>(Reader& r);
template <> StateEntry decode<StateEntry>(Reader& r);
template <> SyncStart decode<SyncStart>(Reader& r);
template <> SyncPlan decode<SyncPlan>(Reader& r);
template <> OptPlan decode<OptPlan>(Reader& r);
template <> OptReport decode<OptReport>(Reader& r);
template <> AuthHello decode<AuthHello>(Reader& r);
template <> AuthChallenge decode<AuthChallenge>(Reader& r);
template <> AuthProof decode<AuthProof>(Reader& r);
template <> AuthRefused decode<AuthRefused>(Reader& r);

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
