// The master's decisions, as a pure state machine: every event (a frame from a peer, a disconnect, a clock
// tick, the result of a reachability probe) goes in with the current time, and the actions (frames to send,
// connections to close, addresses to probe) come out. No sockets, threads or clocks live here, so tests drive
// it with a fake clock. master/state.cpp holds membership and operations, master/sync.cpp the shared-state
// syncs, master/topology.cpp optimize_topology(), master/liveness.cpp removals, evictions and expired waits
// (tests/test_master_state.py, tests/test_master_sync.py, tests/test_master_contract.py,
// tests/test_master_topology.py).
//
// How it decides:
// - Membership. A peer says HELLO and waits as "pending". With probing on (the server's default), the master
//   first asks for its advertised data address to be probed: an address that refuses connections gets the
//   newcomer a TOPO_RESULT(seq 0) with the error and a closed connection, and no running peer notices. Pending
//   peers that passed are admitted when every accepted peer (of all groups: admission votes are global) is
//   inside update_topology(), or at once when nobody is accepted. The ring of a group is its accepted peers in
//   the order they were admitted.
// - update_topology() never blocks a collective. A peer that calls it while a peer of its group has already
//   started an operation or a sync (typically a newcomer's first update_topology(), one step behind the
//   others), and a peer waiting in it when one does, gets its TOPO_RESULT at once with the current ring and
//   goes on to that collective; its admission vote happens at a later step. A vote also waits while the group
//   it would produce is smaller than a waiting peer's min_world (so a peer left alone waits there for
//   newcomers), and a waiting peer's timeout ends its wait with an error naming the peers that did not come.
// - Operations. Each peer of a group announces OP_START(tag, descriptor). When every accepted peer of the
//   group has announced the tag, the descriptors (count, dtype, op, quantization, shape, tree structure) must be
//   equal and the group at least as large as every starter's min_world: then OP_GO carries the op id, the ring
//   and the stripe count (the smallest connection count of the ring); otherwise OP_REJECT tells everyone what
//   differed, in words. A starter's timeout bounds the wait for the others: when it passes, every starter gets
//   OP_REJECT(timeout) naming the peers that did not start.
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
//   (`synced`): only they can win later elections. When a group that once committed a sync has no holder left,
//   its next sync is refused on every peer (the state is lost, loudly) unless a send-only peer offers the state
//   (a checkpoint): then only send-only peers vote. A sync and an all-reduce called in different orders by
//   different peers fail instead of waiting for each other; min_world and timeouts apply as for operations.
// - Ring order (master/topology.cpp, docs/topology.md). optimize_topology() is a collective of the group: when
//   every member has sent OPT_START, the master plans probes of the edges it has no measurement for (rounds
//   of the shifts i -> i + r, so that in a round every peer sends one probe and receives one), sends each
//   member its OPT_PLAN, and collects what the receivers measured (OPT_REPORT). It keeps measurements per
//   ordered pair of peers (a peer that leaves takes its edges with it), solves for the ring order
//   (ring_order.hpp) and answers every member with TOPO_RESULT carrying the new ring, which every later
//   operation uses. A member lost before the end aborts it on every member (OP_ABORT of its id, then a
//   TOPO_RESULT with the error); a collective started by others meanwhile fails both, as for a sync.
// - A master that takes a run over (a restart, a standby: master/recovery.cpp, docs/master.md). Peers admitted by
//   an earlier master say HELLO with what they know (HELLO.back): their peer id, their group's ring, their
//   last committed revision, the operations they committed and those whose verdict they never got. A group
//   with no accepted peer here is held until a strict majority of the ring its returning peers knew is back
//   (exactly half when the half holds the ring's smallest id): then they are all accepted at once, in their
//   old ring order, with their old ids; those at the highest committed revision hold the state; an operation
//   in doubt commits if any of them committed it and aborts otherwise. With a majority back, the group waits
//   kStragglerWait for the rest of its ring. Returning peers that come later rejoin as newcomers. A held group
//   admits no newcomer, and neither does a young master's empty group (rejoin_window). Once a peer of a group
//   said it knows another master, the master running the group gives it up when it keeps no majority of the
//   peers of its last commit (the fence's other half).
// - Liveness. Any frame from a peer counts as a heartbeat. A peer silent for longer than peer_timeout is
//   evicted (told KICKED, then disconnected); a connection that does not say HELLO within handshake_timeout is
//   dropped.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "master/observed.hpp"
#include "wire/wire.hpp"

namespace pccl {

// All-reduces one peer may have started and not yet seen end (each holds a descriptor in the master).
constexpr size_t kMaxOpsInFlight = 1024;

struct MasterConfig {
    double peer_timeout = 10.0;      // seconds of silence before a peer is evicted
    double handshake_timeout = 5.0;  // seconds for a new connection to say HELLO
    bool probe_addresses = true;     // probe a newcomer's data address before admitting it (kProbe actions)
    uint64_t epoch = 0;              // this master's incarnation (WELCOME.epoch); the server sets its start in ms
    // For its first rejoin_window seconds a master admits no newcomer into a group nobody is accepted in: if it
    // was restarted, the group's returning peers (which retry at least once a second) come first.
    double rejoin_window = 1.5;
    // A newcomer whose data address the probe cannot reach (or that has none) is admitted as a peer that dials
    // every connection itself (docs/nat.md); with require_inbound it is refused, as before NAT support.
    bool require_inbound = false;
    uint16_t relay_port = 0;  // the server's relay for peers that cannot reach each other (WELCOME.relay_port)
};

struct MasterAction {
    enum Kind : uint8_t { kSend = 1, kClose = 2, kProbe = 3 } kind = kSend;
    uint64_t conn = 0;
    std::vector<uint8_t> frame;  // kSend: header + payload
    std::string reason;          // kClose: logged
    wire::PeerInfo probe{};      // kProbe: try to connect to probe.host:probe.port, then call on_probe_result
    bool external = false;       // conn is already the server's connection id (MasterState::external)
};

struct MasterStats {
    uint64_t peers_accepted = 0, peers_pending = 0, ops_committed = 0, ops_aborted = 0, ops_rejected = 0;
    uint64_t evictions = 0, dropped_connections = 0, topology_updates = 0;
    uint64_t syncs_committed = 0, syncs_aborted = 0, syncs_refused = 0;
    uint64_t optimizations = 0, links_probed = 0, links_known = 0;
    uint64_t takeovers = 0;  // groups re-formed from returning peers (master/recovery.cpp)
    uint64_t fenced = 0;     // groups given up: fewer than a majority of their last peers left here
    double cpu_seconds = 0;  // the master's loop thread (filled in by MasterServer)
    // Peers behind NAT (docs/nat.md): admitted peers that accept no connections, ring edges between two of them
    // (each needs a relay), and what the master's own relay carried (filled in by MasterServer).
    uint64_t outbound_only = 0, relayed_edges = 0;
    uint64_t master_relay_pipes = 0, master_relay_bytes = 0;
    std::vector<std::string> recent_drops;  // reasons of the last dropped connections
};

class MasterState {
public:
    // Operation ids start at epoch << 16, so that two incarnations never give one id to different operations.
    explicit MasterState(MasterConfig config) : config_(config), next_op_id_(config.epoch ? config.epoch << 16 : 1) {}

    std::vector<MasterAction> on_connect(uint64_t conn, const std::string& addr, double now);
    std::vector<MasterAction> on_frame(uint64_t conn, uint16_t type, const std::vector<uint8_t>& payload, double now);
    std::vector<MasterAction> on_disconnect(uint64_t conn, const std::string& reason, double now);
    std::vector<MasterAction> on_tick(double now);
    // A frame that failed to decode (garbage, wrong version, oversized length): the connection is dropped.
    std::vector<MasterAction> on_bad_frame(uint64_t conn, const std::string& reason, double now);
    // The outcome of a kProbe action: whether the newcomer's data address accepted a TCP connection.
    std::vector<MasterAction> on_probe_result(uint64_t conn, bool reachable, const std::string& reason, double now);

    const MasterStats& stats() const { return stats_; }
    const Observed& observed() const { return observed_; }  // for monitoring (observed.hpp)
    // One row per connection that said HELLO, for the status page: who, where, since when, doing what.
    struct PeerRow {
        uint64_t id = 0;
        uint32_t group = 0;
        std::string addr, data_addr, state, activity;  // state: accepted, pending, held; activity: idle, ...
        double since = 0, last_seen = 0;                // master clock
        bool inbound = true, synced = false;
    };
    std::vector<PeerRow> peer_rows() const;
    std::vector<uint64_t> group_ring(uint32_t group) const { return cached_ring(group); }
    uint64_t group_revision(uint32_t group) const {
        auto it = group_revision_.find(group);
        return it == group_revision_.end() ? 0 : it->second;
    }
    void set_relay_port(uint16_t port) { config_.relay_port = port; }  // the server's, once it listens
    // The admitted peers that accept no connections, and the ring edges between two of them (relayed).
    std::vector<uint64_t> outbound_only() const;
    uint64_t relayed_edges() const;
    // The link measurements it keeps: (from, to, bandwidth bytes/s, round trip us), for diagnostics.
    std::vector<wire::LinkMeasure> links() const {
        std::vector<wire::LinkMeasure> out;
        for (const auto& [pair, m] : links_) out.push_back({pair.first, pair.second, m.bandwidth, m.rtt_us});
        return out;
    }
    size_t connection_count() const { return conns_.size(); }
    // Whether a connection has said HELLO (false for unknown connections).
    bool said_hello(uint64_t conn) const {
        auto it = conns_.find(internal(conn));
        return it != conns_.end() && it->second.hello;
    }

private:
    struct Conn {
        std::string addr;
        double since = 0, last_seen = 0;
        bool hello = false, accepted = false;
        bool probed = false;             // its data address was probed (or probing is off, or it has none):
                                         // info.inbound says whether others can dial it
        uint32_t group = 0, connections = 1;
        uint64_t admitted_seq = 0;
        wire::PeerInfo info;
        bool in_topo = false;            // inside update_topology()
        uint64_t topo_seq = 0;
        double topo_deadline = -1;       // when its update_topology() gives up (negative: never)
        double topo_timeout = 0;         // its timeout in seconds, for the message
        uint32_t topo_min_world = 0;     // the smallest group it accepts
        std::set<uint64_t> op_tags;      // operations this peer has started and not yet seen end
        bool in_sync = false;            // inside sync_shared_state()
        bool in_opt = false;             // inside optimize_topology()
        uint64_t opt_seq = 0;
        bool in_collective() const { return in_topo || !op_tags.empty() || in_sync || in_opt; }
        bool synced = false;             // completed a sync of its group: holds the group's state
        uint64_t ring_epoch_sent = 0;    // the ring epoch this peer last got with an OP_GO
        bool held = false;               // a returning peer whose group waits for a majority (recovery.cpp)
        wire::Returning back;            // what a returning peer reported, until its group is formed
    };
    // What every collective of a group shares, an operation, a sync or an optimize_topology(): it waits for its
    // starters until the earliest starter's deadline, needs the largest min_world any of them asked for, runs
    // over its members in ring order and ends when all of them are done.
    struct Collective {
        uint32_t group = 0;
        uint64_t id = 0;                  // once running: the op / sync / optimize id peers report with
        double deadline = -1;             // the earliest starter's timeout (negative: none)
        double first_start = -1;          // when the first starter announced it
        double began = 0;                 // when it started running (OP_GO, the sync's plans)
        uint64_t bytes = 0;               // an operation's array bytes, a sync's state bytes moved
        double timeout = 0;               // that starter's timeout in seconds, for the message
        uint32_t min_world = 0;           // the largest min_world of the starters
        std::vector<uint64_t> members;    // ring order once running
        std::set<uint64_t> done;          // members that reported success
        void add_starter(uint32_t timeout_ms, uint32_t starter_min_world, double now);
    };
    struct Sync : Collective {
        uint64_t revision = 0;
        std::map<uint64_t, wire::SyncStart> started;  // while collecting announcements
    };
    struct Optimize : Collective {
        bool running = false;
        std::set<uint64_t> started;      // while collecting OPT_START
        uint64_t probes = 0;             // edges measured by this run
    };
    struct Measure {
        uint64_t bandwidth = 0;  // bytes/s
        uint32_t rtt_us = 0;
    };
    struct Op : Collective {
        uint64_t tag = 0;
        bool running = false;
        uint32_t slot = 0;  // which set of pooled connections it runs on (concurrent operations do not share)
        std::map<uint64_t, wire::OpDesc> started;  // peer -> descriptor it announced
        std::set<uint64_t> member_set;             // the members, for O(log N) membership checks
    };
    using Actions = std::vector<MasterAction>;
    // A group whose returning peers wait for a majority of the ring they knew (recovery.cpp).
    struct Recovery {
        std::vector<uint64_t> known;  // the union of the rings they reported, in the order first seen
        double majority_at = -1;      // when a majority was first back (negative: not yet)
    };
    // How long a group with a majority back waits for the rest of its ring (returning peers retry at least
    // once a second), unless all of it is back.
    static constexpr double kStragglerWait = 1.0;

    // Connection ids (the server's) and peer ids (the protocol's). Before its HELLO a connection is kTempId |
    // conn; then it takes its peer id: a returning peer its old one when free, a newcomer its connection
    // number when free and not in a ring a returning peer reported, else the next unused number.
    static constexpr uint64_t kTempId = uint64_t(1) << 62;
    uint64_t internal(uint64_t conn) const {
        auto it = by_conn_.find(conn);
        return it == by_conn_.end() ? kTempId | conn : it->second;
    }
    Actions external(Actions out);  // actions with connection ids; forgets the ids of removed peers
    uint64_t choose_id(uint64_t id, const wire::Returning& back);
    bool admissible(const Conn& c) const {  // a newcomer the next vote could admit
        return c.hello && !c.accepted && c.probed && !c.held && !recovering_.count(c.group);
    }
    // A returning peer whose address passed the probe: held for its group's majority, or a newcomer.
    void on_returning(uint64_t id, Conn& c, double now, Actions& out);
    void try_form(uint32_t group, double now, Actions& out);
    void send_verdicts(uint64_t id, const std::vector<uint64_t>& in_doubt, Actions& out);
    // The fence on a master that runs a group (recovery.cpp): once a peer of the group said it knows another
    // master, a group whose ring holds no majority of the peers of its last commit (base_) starts nothing, and
    // on_tick gives it up.
    bool fenced(uint32_t group) const;
    void give_up_fenced(Actions& out);
    static bool quorum(const std::set<uint64_t>& back, const std::vector<uint64_t>& known);

    void handle(uint64_t id, Conn& c, uint16_t type, const std::vector<uint8_t>& payload, double now, Actions& out);
    void remove(uint64_t id, const std::string& reason, Actions& out);
    void drop(uint64_t id, const std::string& reason, Actions& out);
    void on_hello(uint64_t id, Conn& c, const std::vector<uint8_t>& payload, double now, Actions& out);
    void on_topo_request(uint64_t id, Conn& c, const std::vector<uint8_t>& payload, double now, Actions& out);
    // The opening every collective of a group shares: the peer may be in no other collective (what: the message
    // it sent, for the error), and peers still waiting in update_topology() come to this collective instead.
    void enter_collective(Conn& c, const char* what, Actions& out);
    void on_op_start(uint64_t id, Conn& c, const std::vector<uint8_t>& payload, double now, Actions& out);
    void on_sync_start(uint64_t id, Conn& c, const std::vector<uint8_t>& payload, double now, Actions& out);
    void on_op_done(uint64_t id, const std::vector<uint8_t>& payload, Actions& out);
    void on_opt_start(uint64_t id, Conn& c, const std::vector<uint8_t>& payload, double now, Actions& out);
    void on_opt_report(uint64_t id, const std::vector<uint8_t>& payload, Actions& out);
    void try_start_opt(uint32_t group, Actions& out);
    void finish_opt(uint32_t group, Actions& out);
    // Ends the group's optimize_topology() with an error on every member (OP_ABORT first when it was probing).
    void fail_opt(uint32_t group, ErrorKind kind, const std::string& reason, Actions& out);
    // A member of the group started another collective while others are in optimize_topology(): both fail.
    void check_opt_conflict(uint32_t group, Actions& out);
    void try_complete_topology(Actions& out);
    // Answers every peer of `group` waiting in update_topology() with the current ring (kind 0), or with an
    // error: the group has moved on to a collective, so no vote can complete for it now.
    void release_topology(uint32_t group, Actions& out);
    void answer_topology(uint64_t id, Conn& c, ErrorKind kind, const std::string& reason, Actions& out);
    bool group_in_collective(uint32_t group, uint64_t except) const;
    void expire_waits(double now, Actions& out);
    void try_start(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, Actions& out);
    void finish_op(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, Actions& out);
    void fail_op(std::map<std::pair<uint32_t, uint64_t>, Op>::iterator it, ErrorKind kind, const std::string& reason,
                 Actions& out);
    // Records an ended collective for monitoring (status.cpp): `ran` says whether it got past its start.
    void observe_end(const Collective& c, std::string what, uint64_t tag, bool ran, uint32_t world,
                     const char* outcome, ErrorKind kind, const std::string& reason);
    void observe_end(const Op& op, const char* outcome, ErrorKind kind, const std::string& reason);
    void observe_sync_end(const Collective& sync, const char* outcome, ErrorKind kind, const std::string& reason);
    void try_start_sync(uint32_t group, Actions& out);
    void fail_pending_sync(uint32_t group, ErrorKind kind, const std::string& reason, Actions& out);
    void finish_sync(std::map<uint64_t, Sync>::iterator it, Actions& out);
    void abort_sync(std::map<uint64_t, Sync>::iterator it, ErrorKind kind, const std::string& reason, Actions& out);
    // The group's ring, computed once per change of membership or order (rings_changed() forgets them all):
    // every operation needs it, and recomputing it per message made the master's work per operation O(N^2).
    const std::vector<uint64_t>& cached_ring(uint32_t group) const;
    void rings_changed() {
        ring_cache_.clear();
        ring_epoch_++;
    }
    bool group_syncing(uint32_t group) const;
    void refuse_outbound_only(uint64_t id, const std::string& why, Actions& out);  // require_inbound  // a sync of the group is collecting or running
    std::vector<wire::PeerInfo> ring_infos(const std::vector<uint64_t>& ids) const;
    uint32_t pending_count() const;
    std::string describe(uint64_t id) const;
    std::string describe_all(const std::vector<uint64_t>& ids) const;
    std::vector<uint64_t> group_missing(uint32_t group, const std::set<uint64_t>& present) const;

    template <class T> void send(Actions& out, uint64_t conn, wire::MsgType type, const T& m) {
        out.push_back(MasterAction{MasterAction::kSend, conn, wire::frame(type, m), {}});
    }

    MasterConfig config_;
    mutable std::map<uint32_t, std::vector<uint64_t>> ring_cache_;  // by group
    uint64_t ring_epoch_ = 1;                                        // OP_GO.ring_epoch of the current rings
    std::map<uint64_t, Conn> conns_;
    std::map<std::pair<uint32_t, uint64_t>, Op> ops_;  // by (group, tag)
    std::map<uint32_t, Sync> syncs_pending_;      // by group: collecting SYNC_START
    std::map<uint64_t, Sync> syncs_running_;      // by sync id: moving state
    std::map<uint32_t, uint64_t> group_revision_;  // revision of the group's last committed sync
    std::map<uint32_t, Optimize> opts_;            // by group
    std::map<std::pair<uint64_t, uint64_t>, Measure> links_;  // (from, to) -> what `to` measured
    std::map<uint32_t, std::vector<uint64_t>> order_;         // a group's solved ring order
    uint64_t next_admitted_ = 1, next_op_id_ = 1;
    MasterStats stats_;
    Observed observed_;
    std::map<uint64_t, uint64_t> by_conn_, conn_of_;  // connection -> peer id and back
    std::vector<std::pair<uint64_t, uint64_t>> forget_;  // removed (peer, connection), forgotten once their
                                                         // actions are out
    double now_ = 0, born_ = -1;                      // the last event's time; the first one's (rejoin_window)
    bool grown_ = false;                              // on_tick saw rejoin_window end
    bool young(double now) const { return born_ < 0 || now - born_ < config_.rejoin_window; }
    std::set<uint64_t> reserved_;                     // ids in the rings returning peers reported
    uint64_t next_fresh_ = 1;                         // above every id given or reported
    std::map<uint32_t, Recovery> recovering_;         // by group
    std::map<uint32_t, std::vector<uint64_t>> base_;  // by group: the peers of its last commit (less those that left)
    std::set<uint32_t> standby_groups_;               // groups a peer of which ever said it knows another master
    std::map<uint64_t, bool> verdicts_;  // operation id -> committed: this master's last ones, and those it resolved
    void remember_verdict(uint64_t op, bool committed) {
        verdicts_[op] = committed;
        if (verdicts_.size() > 65536) verdicts_.erase(verdicts_.begin());  // ids grow: the oldest go
    }
};

}  // namespace pccl
