// The master's decisions, as a pure state machine: every event (a frame from a peer, a disconnect, a clock
// tick) goes in with the current time, and the actions (frames to send, connections to close) come out. No
// sockets, threads or clocks live here, so tests drive it with a fake clock (tests/test_master_state.py,
// tests/test_master_sync.py).
//
// How it decides:
// - Membership. A peer says HELLO and waits as "pending". Pending peers are admitted when every accepted peer
//   (of all groups: admission votes are global) is inside update_topology(), or at once when nobody is accepted.
//   The ring of a group is its accepted peers in the order they were admitted.
// - Operations. Each peer of a group announces OP_START(tag, descriptor). When every accepted peer of the
//   group has announced the tag, the descriptors must be equal: then OP_GO carries the op id, the ring and the
//   stripe count (the smallest connection count of the ring); otherwise OP_REJECT tells everyone what differed.
//   A peer that sits in update_topology() while the others start an operation makes that operation fail too.
// - Concurrency. A peer may have many operations in flight (distinct tags). Each running operation of a group
//   gets a connection slot, the smallest one no other running operation of the group holds, so concurrent
//   operations never share a connection; update_topology() is refused while a peer has operations in flight.
// - Commit. Each member reports OP_DONE. When all report success, OP_COMMIT tells them to publish the result;
//   a failure report, or a member that disconnects or is evicted, turns the operation into OP_ABORT for all, so
//   no peer ever keeps a result that another peer threw away.
// - Shared state. Each peer of a group announces SYNC_START(revision, strategy, entries with hashes). When all
//   have, state_election.hpp decides who is refused, who fetches what from which holders; SYNC_PLAN tells each
//   peer. If nothing moves the plan commits the sync at once; otherwise members report OP_DONE for the sync id
//   and get OP_COMMIT / OP_ABORT as for an operation. Peers that completed a sync hold the group's state
//   (`synced`): only they can win later elections. A sync and an all-reduce or update_topology() called in
//   different orders by different peers fail instead of waiting for each other.
// - Liveness. Any frame from a peer counts as a heartbeat. A peer silent for longer than peer_timeout is
//   evicted (told KICKED, then disconnected); a connection that does not say HELLO within handshake_timeout is
//   dropped.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "wire.hpp"

namespace pccl {

struct MasterConfig {
    double peer_timeout = 10.0;      // seconds of silence before a peer is evicted
    double handshake_timeout = 5.0;  // seconds for a new connection to say HELLO
};

struct MasterAction {
    enum Kind : uint8_t { kSend = 1, kClose = 2 } kind = kSend;
    uint64_t conn = 0;
    std::vector<uint8_t> frame;  // kSend: header + payload
    std::string reason;          // kClose: logged
};

struct MasterStats {
    uint64_t peers_accepted = 0, peers_pending = 0, ops_committed = 0, ops_aborted = 0, ops_rejected = 0;
    uint64_t evictions = 0, dropped_connections = 0, topology_updates = 0;
    uint64_t syncs_committed = 0, syncs_aborted = 0, syncs_refused = 0;
    std::vector<std::string> recent_drops;  // reasons of the last dropped connections
};

class MasterState {
public:
    explicit MasterState(MasterConfig config) : config_(config) {}

    std::vector<MasterAction> on_connect(uint64_t conn, const std::string& addr, double now);
    std::vector<MasterAction> on_frame(uint64_t conn, uint16_t type, const std::vector<uint8_t>& payload, double now);
    std::vector<MasterAction> on_disconnect(uint64_t conn, const std::string& reason, double now);
    std::vector<MasterAction> on_tick(double now);
    // A frame that failed to decode (garbage, wrong version, oversized length): the connection is dropped.
    std::vector<MasterAction> on_bad_frame(uint64_t conn, const std::string& reason, double now);

    const MasterStats& stats() const { return stats_; }
    size_t connection_count() const { return conns_.size(); }

private:
    struct Conn {
        std::string addr;
        double since = 0, last_seen = 0;
        bool hello = false, accepted = false;
        uint32_t group = 0, connections = 1;
        uint64_t admitted_seq = 0;
        wire::PeerInfo info;
        bool in_topo = false;            // inside update_topology()
        uint64_t topo_seq = 0;
        std::set<uint64_t> op_tags;      // operations this peer has started and not yet seen end
        bool in_sync = false;            // inside sync_shared_state()
        bool synced = false;             // completed a sync of its group: holds the group's state
    };
    struct Sync {
        uint32_t group = 0;
        uint64_t id = 0, revision = 0;
        std::map<uint64_t, wire::SyncStart> started;  // while collecting announcements
        std::vector<uint64_t> members;                // peers taking part, once running
        std::set<uint64_t> done;
    };
    struct Op {
        uint32_t group = 0;
        uint64_t tag = 0;
        bool running = false;
        uint64_t op_id = 0;
        uint32_t slot = 0;  // which set of pooled connections it runs on (concurrent operations do not share)
        std::map<uint64_t, wire::OpDesc> started;  // peer -> descriptor it announced
        std::vector<uint64_t> members;             // ring order once running
        std::set<uint64_t> done;
    };
    using Actions = std::vector<MasterAction>;

    void handle(uint64_t id, Conn& c, uint16_t type, const std::vector<uint8_t>& payload, double now, Actions& out);
    void remove(uint64_t id, const std::string& reason, Actions& out);
    void drop(uint64_t id, const std::string& reason, Actions& out);
    void try_complete_topology(Actions& out);
    void try_start(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, Actions& out);
    void finish_op(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, Actions& out);
    void fail_op(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, ErrorKind kind, const std::string& reason,
                 Actions& out);
    void try_start_sync(uint32_t group, Actions& out);
    void fail_pending_sync(uint32_t group, const std::string& reason, Actions& out);
    void finish_sync(std::map<uint64_t, Sync>::iterator it, Actions& out);
    void abort_sync(std::map<uint64_t, Sync>::iterator it, ErrorKind kind, const std::string& reason, Actions& out);
    std::vector<uint64_t> group_ring(uint32_t group) const;
    std::vector<wire::PeerInfo> ring_infos(const std::vector<uint64_t>& ids) const;
    uint32_t pending_count() const;
    std::string describe(uint64_t id) const;

    template <class T> void send(Actions& out, uint64_t conn, wire::MsgType type, const T& m) {
        out.push_back(MasterAction{MasterAction::kSend, conn, wire::frame(type, m), {}});
    }

    MasterConfig config_;
    std::map<uint64_t, Conn> conns_;
    std::map<std::pair<uint32_t, uint64_t>, Op> ops_;  // by (group, tag)
    std::map<uint32_t, Sync> syncs_pending_;      // by group: collecting SYNC_START
    std::map<uint64_t, Sync> syncs_running_;      // by sync id: moving state
    std::map<uint32_t, uint64_t> group_revision_;  // revision of the group's last committed sync
    uint64_t next_admitted_ = 1, next_op_id_ = 1;
    MasterStats stats_;
};

}  // namespace pccl
