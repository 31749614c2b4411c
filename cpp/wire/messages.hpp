// Every message of the protocol, declared once (schema.hpp explains the X(type, name, default, limit) lines):
// the records messages are built from, then the messages, then PCCL_WIRE_MESSAGES, the one table of type codes,
// names, directions, payloads and length limits from which MsgType, the name table and the header's limits are
// made. docs/protocol.md's tables are checked against this file (tests/test_protocol_schema.py).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "wire/schema.hpp"

namespace pccl::wire {

constexpr size_t kMaxPeers = 65536;
constexpr size_t kMaxStateEntries = 65536;
constexpr size_t kMaxDims = 32;
constexpr size_t kMaxProbeRounds = 4096;
constexpr size_t kMaxRecent = 1024;  // operation ids a returning peer reports

// ---------------------------------------------------------------------------------------------------- records

// A peer as others reach it: its id, its data address, and whether others can dial it (inbound 0: behind NAT or
// a firewall, or no data port at all; it dials every connection it has, docs/nat.md).
#define PCCL_PEER_INFO(X) \
    X(uint64_t, id, 0, kAny) X(std::string, host, {}, kAny) X(uint16_t, port, 0, kAny) X(uint8_t, inbound, 1, 1)
PCCL_WIRE_STRUCT(PeerInfo, PCCL_PEER_INFO)

// The descriptor every peer of an operation must agree on before any data moves.
#define PCCL_OP_DESC(X)                                                                                      \
    X(uint64_t, count, 0, kAny)                                                                               \
    X(uint8_t, dtype, 0, kAny)                                                                                \
    X(uint8_t, op, 0, kAny)                                                                                   \
    X(uint8_t, collective, 0, 4)   /* 0 all_reduce, 1 broadcast, 2 all_gather, 3 reduce_scatter, 4 barrier */ \
    X(uint64_t, root, 0, kAny)     /* broadcast: the root's peer id (0 otherwise) */                         \
    X(uint8_t, quant, 0, kAny)     /* 0 none, 1 minmax, 2 zeropoint, 3 minmax4 (docs/quantization.md) */     \
    X(uint32_t, qblock, 0, kAny)   /* quantization block size */                                             \
    X(uint8_t, qround, 0, kAny)    /* 0 nearest even, 1 stochastic */                                        \
    X(uint32_t, qseed, 0, kAny)    /* stochastic rounding's and the rotation's seed */                        \
    X(uint8_t, qrotate, 0, 1)      /* 1: the randomized Hadamard rotation */                                  \
    X(uint8_t, qreduce, 0, 1)      /* 0: the ring, 1: the direct all-reduce (quantized operations) */         \
    X(std::vector<uint64_t>, shape, {}, kMaxDims)  /* the caller's array shape (a tree: the packed buffer's) */ \
    X(uint64_t, structure, 0, kAny)       /* a pytree's structure fingerprint; 0: one array */               \
    X(std::string, structure_text, {}, kAny)  /* its readable summary, for mismatch messages */
PCCL_WIRE_STRUCT(OpDesc, PCCL_OP_DESC)

// One entry of a peer's shared state as it announces it (docs/shared_state.md).
#define PCCL_STATE_ENTRY(X)                                                                                  \
    X(std::string, name, {}, kAny)                                                                            \
    X(uint8_t, dtype, 0, kAny)                                                                                \
    X(std::vector<uint64_t>, shape, {}, kMaxDims)                                                             \
    X(uint64_t, nbytes, 0, kAny)                                                                              \
    X(uint64_t, hash, 0, kAny)                                                                                \
    X(uint8_t, tolerate, 0, 1)  /* content may differ between peers holding state */
PCCL_WIRE_STRUCT(StateEntry, PCCL_STATE_ENTRY)

// A source sends bytes [begin, end) of the receiver's stream (its fetched entries, concatenated in fetch order)
// over `stripes` connections; the receiver expects them from `from`.
#define PCCL_SYNC_SEND(X)                                                                                    \
    X(PeerInfo, to, {}, kAny) X(std::vector<uint32_t>, fetch, {}, kMaxStateEntries) X(uint64_t, begin, 0, kAny) \
    X(uint64_t, end, 0, kAny) X(uint32_t, stripes, 1, kAny)
PCCL_WIRE_STRUCT(SyncSend, PCCL_SYNC_SEND)
#define PCCL_SYNC_RECV(X) \
    X(uint64_t, from, 0, kAny) X(uint64_t, begin, 0, kAny) X(uint64_t, end, 0, kAny) X(uint32_t, stripes, 1, kAny)
PCCL_WIRE_STRUCT(SyncRecv, PCCL_SYNC_RECV)
void check(const SyncSend& m);  // begin ≤ end, stripes ≥ 1
void check(const SyncRecv& m);

// optimize_topology() (docs/topology.md): in each round this peer sends a probe to `send_to` (id 0: none) and
// receives one from `recv_from` (0: none).
#define PCCL_PROBE_ROUND(X) X(PeerInfo, send_to, {}, kAny) X(uint64_t, recv_from, 0, kAny)
PCCL_WIRE_STRUCT(ProbeRound, PCCL_PROBE_ROUND)
// What a peer measured on a probe it received: bandwidth in bytes/s, round trip in microseconds.
#define PCCL_LINK_MEASURE(X) \
    X(uint64_t, from, 0, kAny) X(uint64_t, to, 0, kAny) X(uint64_t, bandwidth, 0, kAny) X(uint32_t, rtt_us, 0, kAny)
PCCL_WIRE_STRUCT(LinkMeasure, PCCL_LINK_MEASURE)

// --------------------------------------------------------------------------------------------------- messages

#define PCCL_EMPTY(X)
PCCL_WIRE_STRUCT(Empty, PCCL_EMPTY)

// What a peer that was admitted by an earlier master (a restart, a standby taking over) tells the next one, so
// that the run goes on where it stopped (docs/master.md). peer_id 0: a newcomer (the rest is empty). ring: its
// group's ring as it last knew it; revision/synced: its last committed shared state; committed: the ids of
// its last committed operations and syncs; in_doubt: those it reported done and got no verdict for (doubt_sync:
// the sync among them, 0 if none, and the revision it would commit).
#define PCCL_RETURNING(X)                                                                                    \
    X(uint64_t, peer_id, 0, kAny) X(uint64_t, epoch, 0, kAny) X(std::vector<uint64_t>, ring, {}, kMaxPeers)    \
    X(uint64_t, revision, 0, kAny) X(uint8_t, synced, 0, 1) X(std::vector<uint64_t>, committed, {}, kMaxRecent) \
    X(std::vector<uint64_t>, in_doubt, {}, kMaxRecent) X(uint64_t, doubt_sync, 0, kAny)                          \
    X(uint64_t, doubt_revision, 0, kAny)
PCCL_WIRE_STRUCT(Returning, PCCL_RETURNING)

// standby: the peer knows other master addresses (its group is then fenced on this master too: recovery.cpp).
// port 0: the peer has no data port (it accepts no connections: docs/nat.md).
#define PCCL_HELLO(X)                                                                                        \
    X(uint32_t, group, 0, kAny) X(uint32_t, connections, 1, kAny) X(std::string, host, {}, kAny)               \
    X(uint16_t, port, 0, kAny) X(Returning, back, {}, kAny) X(uint8_t, standby, 0, 1)
PCCL_WIRE_STRUCT(Hello, PCCL_HELLO)
// epoch: the master's incarnation (its start time in ms; peers never go back to an older one). relay_port: the
// master's relay for two peers that cannot reach each other and have no reachable peer between them (0: none).
#define PCCL_WELCOME(X) X(uint64_t, peer_id, 0, kAny) X(uint64_t, epoch, 0, kAny) X(uint16_t, relay_port, 0, kAny)
PCCL_WIRE_STRUCT(Welcome, PCCL_WELCOME)
#define PCCL_HEARTBEAT_ACK(X) X(uint32_t, pending, 0, kAny)
PCCL_WIRE_STRUCT(HeartbeatAck, PCCL_HEARTBEAT_ACK)
// timeout_ms: how long this peer waits for the others (0: no bound); min_world: the smallest group it accepts.
#define PCCL_TOPO_REQUEST(X) X(uint64_t, seq, 0, kAny) X(uint32_t, timeout_ms, 0, kAny) X(uint32_t, min_world, 0, kAny)
PCCL_WIRE_STRUCT(TopoRequest, PCCL_TOPO_REQUEST)
// kind != 0: the request failed (a timeout; for seq 0, admission refused: the data address is unreachable).
#define PCCL_TOPO_RESULT(X)                                                                                  \
    X(uint64_t, seq, 0, kAny) X(uint32_t, world_size, 0, kAny) X(uint32_t, pending, 0, kAny)                  \
    X(std::vector<PeerInfo>, ring, {}, kMaxPeers) X(uint8_t, kind, 0, kAny) X(std::string, reason, {}, kAny)
PCCL_WIRE_STRUCT(TopoResult, PCCL_TOPO_RESULT)
#define PCCL_OP_START(X) \
    X(uint64_t, tag, 0, kAny) X(OpDesc, desc, {}, kAny) X(uint32_t, timeout_ms, 0, kAny) X(uint32_t, min_world, 0, kAny)
PCCL_WIRE_STRUCT(OpStart, PCCL_OP_START)
// ring_epoch names the ring; the master sends the ring itself only to a peer that has not got this epoch yet
// (empty otherwise), so an operation costs the master O(N) bytes, not O(N^2).
#define PCCL_OP_GO(X)                                                                                        \
    X(uint64_t, tag, 0, kAny) X(uint64_t, op_id, 0, kAny) X(uint32_t, stripes, 1, kAny)                       \
    X(std::vector<PeerInfo>, ring, {}, kMaxPeers) X(uint32_t, slot, 0, kAny) X(uint64_t, ring_epoch, 0, kAny)
PCCL_WIRE_STRUCT(OpGo, PCCL_OP_GO)
#define PCCL_OP_REJECT(X) X(uint64_t, tag, 0, kAny) X(uint8_t, kind, 0, kAny) X(std::string, reason, {}, kAny)
PCCL_WIRE_STRUCT(OpReject, PCCL_OP_REJECT)
#define PCCL_OP_DONE(X) \
    X(uint64_t, op_id, 0, kAny) X(uint8_t, ok, 0, kAny) X(uint8_t, kind, 0, kAny) X(std::string, reason, {}, kAny)
PCCL_WIRE_STRUCT(OpDone, PCCL_OP_DONE)
#define PCCL_OP_COMMIT(X) X(uint64_t, op_id, 0, kAny)
PCCL_WIRE_STRUCT(OpCommit, PCCL_OP_COMMIT)
#define PCCL_OP_ABORT(X) X(uint64_t, op_id, 0, kAny) X(uint8_t, kind, 0, kAny) X(std::string, reason, {}, kAny)
PCCL_WIRE_STRUCT(OpAbort, PCCL_OP_ABORT)
#define PCCL_PENDING_REPLY(X) X(uint32_t, pending, 0, kAny)
PCCL_WIRE_STRUCT(PendingReply, PCCL_PENDING_REPLY)
// elsewhere: not this peer's fault; the master gave its group up (the fence): look for another master.
#define PCCL_KICKED(X) X(std::string, reason, {}, kAny) X(uint8_t, elsewhere, 0, 1)
PCCL_WIRE_STRUCT(Kicked, PCCL_KICKED)

enum class SyncStrategy : uint8_t { kEnforcePopular = 0, kReceiveOnly = 1, kSendOnly = 2 };
#define PCCL_SYNC_START(X)                                                                                   \
    X(uint64_t, revision, 0, kAny) X(uint8_t, strategy, 0, uint8_t(SyncStrategy::kSendOnly))                  \
    X(uint32_t, timeout_ms, 0, kAny) X(uint32_t, min_world, 0, kAny)                                          \
    X(std::vector<StateEntry>, entries, {}, kMaxStateEntries)
PCCL_WIRE_STRUCT(SyncStart, PCCL_SYNC_START)
// ok = 0: this peer is refused (kind, reason) and takes no further part. commit_now: nothing moves anywhere, the
// sync is committed by this plan. fetch: the entries this peer receives, in stream order; expect: the hash each
// must have.
#define PCCL_SYNC_PLAN(X)                                                                                    \
    X(uint64_t, sync_id, 0, kAny) X(uint8_t, ok, 1, kAny) X(uint8_t, kind, 0, kAny)                           \
    X(std::string, reason, {}, kAny) X(uint64_t, revision, 0, kAny) X(uint8_t, commit_now, 0, kAny)           \
    X(std::vector<uint32_t>, fetch, {}, kMaxStateEntries) X(std::vector<uint64_t>, expect, {}, kMaxStateEntries) \
    X(std::vector<SyncSend>, sends, {}, kMaxPeers) X(std::vector<SyncRecv>, recvs, {}, kMaxPeers)
PCCL_WIRE_STRUCT(SyncPlan, PCCL_SYNC_PLAN)
void check(const SyncPlan& m);  // a hash for every fetched entry

#define PCCL_OPT_PLAN(X)                                                                                     \
    X(uint64_t, opt_id, 0, kAny) X(uint64_t, seq, 0, kAny) X(uint32_t, probe_ms, 0, kAny)                     \
    X(std::vector<ProbeRound>, rounds, {}, kMaxProbeRounds)
PCCL_WIRE_STRUCT(OptPlan, PCCL_OPT_PLAN)
#define PCCL_OPT_REPORT(X) X(uint64_t, opt_id, 0, kAny) X(std::vector<LinkMeasure>, links, {}, kMaxPeers)
PCCL_WIRE_STRUCT(OptReport, PCCL_OPT_REPORT)

// The first frame of a data connection (transport/greeting.hpp). mode 0: `from` opens its connection (slot,
// index) to `to`; 1 (call): `from` cannot be dialed, so it dials `to` and offers the connection as the one `to`
// would have opened to it; 2 / 3 (relay): the receiver of the frame splices this connection to the one the peer
// `to` opens with the opposite mode for the same (slot, index) — 2 from the side that opens, 3 from the side
// that accepts (transport/relay.hpp).
#define PCCL_PEER_HELLO(X)                                                                                   \
    X(uint64_t, from, 0, kAny) X(uint64_t, to, 0, kAny) X(uint32_t, index, 0, kAny) X(uint32_t, slot, 0, kAny) \
    X(uint8_t, mode, 0, 3)
PCCL_WIRE_STRUCT(PeerHello, PCCL_PEER_HELLO)
// Precedes each piece of payload on a data connection; the piece's length is the frame length minus this.
#define PCCL_DATA_HEADER(X) \
    X(uint64_t, op_id, 0, kAny) X(uint32_t, step, 0, kAny) X(uint32_t, stripe, 0, kAny) X(uint64_t, offset, 0, kAny)
PCCL_WIRE_STRUCT(DataHeader, PCCL_DATA_HEADER)
constexpr size_t kDataHeaderSize = 24;

// The handshake of an authenticated run (transport/handshake.hpp). context: 1 master link, 2 data connection.
#define PCCL_AUTH_HELLO(X) X(uint8_t, context, 0, kAny) X(Bytes32, nonce, {}, kAny)
PCCL_WIRE_STRUCT(AuthHello, PCCL_AUTH_HELLO)
#define PCCL_AUTH_CHALLENGE(X) X(Bytes32, nonce, {}, kAny) X(uint8_t, encrypt, 0, 1) X(Bytes32, mac, {}, kAny)
PCCL_WIRE_STRUCT(AuthChallenge, PCCL_AUTH_CHALLENGE)
#define PCCL_AUTH_PROOF(X) X(Bytes32, mac, {}, kAny)
PCCL_WIRE_STRUCT(AuthProof, PCCL_AUTH_PROOF)
#define PCCL_AUTH_REFUSED(X) X(std::string, reason, {}, kAny)
PCCL_WIRE_STRUCT(AuthRefused, PCCL_AUTH_REFUSED)

// ------------------------------------------------------------------------------------------ the message table

// M(code, Enum, name, Payload, direction, max payload bytes). DATA's payload is its header, then the piece.
#define PCCL_WIRE_MESSAGES(M)                                                                                \
    M(1, kHello, "hello", Hello, "peer → master", kMaxControlPayload)                                        \
    M(2, kWelcome, "welcome", Welcome, "master → peer", kMaxControlPayload)                                  \
    M(3, kHeartbeat, "heartbeat", Empty, "peer → master", kMaxControlPayload)                                \
    M(4, kHeartbeatAck, "heartbeat_ack", HeartbeatAck, "master → peer", kMaxControlPayload)                  \
    M(5, kTopoRequest, "topo_request", TopoRequest, "peer → master", kMaxControlPayload)                     \
    M(6, kTopoResult, "topo_result", TopoResult, "master → peer", kMaxControlPayload)                        \
    M(7, kOpStart, "op_start", OpStart, "peer → master", kMaxControlPayload)                                 \
    M(8, kOpGo, "op_go", OpGo, "master → peer", kMaxControlPayload)                                          \
    M(9, kOpReject, "op_reject", OpReject, "master → peer", kMaxControlPayload)                              \
    M(10, kOpDone, "op_done", OpDone, "peer → master", kMaxControlPayload)                                   \
    M(11, kOpCommit, "op_commit", OpCommit, "master → peer", kMaxControlPayload)                             \
    M(12, kOpAbort, "op_abort", OpAbort, "master → peer", kMaxControlPayload)                                \
    M(13, kPendingRequest, "pending_request", TopoRequest, "peer → master", kMaxControlPayload)              \
    M(14, kPendingReply, "pending_reply", PendingReply, "master → peer", kMaxControlPayload)                 \
    M(15, kLeave, "leave", Empty, "peer → master", kMaxControlPayload)                                       \
    M(16, kKicked, "kicked", Kicked, "master → peer", kMaxControlPayload)                                    \
    M(17, kSyncStart, "sync_start", SyncStart, "peer → master", kMaxStatePayload)                            \
    M(18, kSyncPlan, "sync_plan", SyncPlan, "master → peer", kMaxStatePayload)                               \
    M(19, kOptStart, "opt_start", TopoRequest, "peer → master", kMaxControlPayload)                          \
    M(20, kOptPlan, "opt_plan", OptPlan, "master → peer", kMaxControlPayload)                                \
    M(21, kOptReport, "opt_report", OptReport, "peer → master", kMaxControlPayload)                          \
    M(32, kPeerHello, "peer_hello", PeerHello, "peer → peer", kMaxControlPayload)                            \
    M(33, kData, "data", DataHeader, "peer → peer", kMaxDataPayload + kDataHeaderSize)                       \
    M(40, kAuthHello, "auth_hello", AuthHello, "client → server", kMaxControlPayload)                        \
    M(41, kAuthChallenge, "auth_challenge", AuthChallenge, "server → client", kMaxControlPayload)            \
    M(42, kAuthProof, "auth_proof", AuthProof, "client → server", kMaxControlPayload)                        \
    M(43, kAuthRefused, "auth_refused", AuthRefused, "either", kMaxControlPayload)

#define PCCL_WIRE_ENUM(code, Enum, name, Payload, direction, limit) Enum = code,
enum class MsgType : uint16_t { PCCL_WIRE_MESSAGES(PCCL_WIRE_ENUM) };
#undef PCCL_WIRE_ENUM

// What the table says of one type code.
struct MessageInfo {
    uint16_t code;
    const char* name;        // snake_case, as the tests and tools name it
    const char* payload;     // the payload struct
    const char* direction;
    uint32_t max_payload;
};
// The entry of a type code, or null for an unknown code.
const MessageInfo* message_info(uint16_t type);
const std::vector<MessageInfo>& message_table();
inline bool is_known_type(uint16_t type) { return message_info(type) != nullptr; }

// Calls f(T{}) with a value of the payload struct of `type` (which must be known).
template <class F> decltype(auto) with_payload_type(MsgType type, F&& f) {
    switch (type) {
#define PCCL_WIRE_CASE(code, Enum, name, Payload, direction, limit) \
    case MsgType::Enum: return f(Payload{});
        PCCL_WIRE_MESSAGES(PCCL_WIRE_CASE)
#undef PCCL_WIRE_CASE
    }
    malformed("unknown message type " + std::to_string(uint16_t(type)));
}

}  // namespace pccl::wire
