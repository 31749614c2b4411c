// One peer's handle on the job: its link to the master (HELLO, heartbeats, votes, operation agreement and
// commit), its connection pool, and the all-reduce entry point. communicator.cpp holds the link, membership and
// the two-phase end; all_reduce.cpp the life of an all-reduce; state_sync.cpp the shared-state sync.
//
// Many all-reduces may run at once (from different threads, with distinct tags); the master gives each running
// one a connection slot of its own, so they never share a connection.
//
// Life of an all-reduce:
//   1. OP_START(tag, descriptor, timeout, min_world) to the master; wait for OP_GO (ring, op id, stripes) or
//      OP_REJECT (different descriptors, too few peers, or the others did not start within the timeout).
//   2. Run the stripes of the ring (ring.hpp; quantized operations: direct.hpp) into a result buffer; the
//      caller's input is never written.
//   3. OP_DONE(ok) to the master; wait for OP_COMMIT (publish the result into the caller's output) or OP_ABORT
//      (a peer failed somewhere: clear the pool and raise a retryable PeerLost error).
// A local failure reports OP_DONE(failed) and raises at once. The master link thread routes OP_ABORT, KICKED
// and a lost master to the running operation through its stop pipe, so no wait outlives its deadline.
//
// Interrupts and close. Every wait of a call made from Python's main thread checks for Ctrl-C every 100 ms
// (error.hpp). Interrupted while data moves, the operation fails here, is reported to the master as a lost
// peer (the others get a retryable error) and the call raises once the master has aborted it: the communicator
// stays usable. Interrupted while waiting for the master or the other peers (to start a collective, to be
// admitted), the communicator leaves the job, since its request cannot be taken back; later calls say so.
// close() never waits for operations in flight: it stops them (they raise CommunicatorStateError) and leaves.
//
// A lost master (peer/rejoin.cpp, docs/master.md). When the master link breaks or goes silent after this peer
// was admitted, the link thread keeps the peer's identity, group, ring and shared-state revision and dials the
// master addresses in order, with backoff, for master_grace seconds; it says HELLO with what it knows
// (HELLO.back) and is back once the new master admits it (TOPO_RESULT seq 0). Meanwhile: operations that had not
// reported done fail at once with kPeerLost (no master can have committed them); those reported done and
// waiting for a verdict stay in doubt and get it from the new master; waits for the old master's answers fail
// with kPeerLost; calls that need the master while it is away wait until it is back and then raise kPeerLost,
// except update_topology() and pending_peers(), which go on (the README loop's `continue` goes there). A master
// of an older epoch than the last one is never used, nor one that let this peer go (KICKED elsewhere: the
// fence). Past master_grace every call raises kMasterUnreachable naming the addresses tried.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/dtype.hpp"
#include "transport/net.hpp"
#include "transport/pool.hpp"
#include "kernels/quant.hpp"
#include "peer/direct.hpp"
#include "peer/ring.hpp"
#include "base/workers.hpp"

namespace pccl {

struct CommConfig {
    std::string master;              // host:port, or a comma-separated list: the primary, then standbys
    uint32_t peer_group = 0;
    uint32_t connections = 4;        // k connections to the ring successor
    std::string listen = "0.0.0.0:0";  // data port (port 0: the OS chooses); empty: none (it dials every connection)
    std::string advertise;           // host[:port] others should dial; default: our address toward the master
    double connect_timeout = 10.0;   // TCP connects and the master's WELCOME
    double heartbeat_interval = 0.5;
    double master_timeout = 10.0;    // silence from the master before it counts as unreachable
    double master_grace = 60.0;      // how long a lost master is looked for (this address, then the next) (0: not)
    double data_timeout = 30.0;      // no byte of progress on a data connection for this long fails the op
    size_t piece_bytes = 1 << 20;   // frame size of what this peer sends (a multiple of 64 bytes)
    double op_timeout = 1800;        // default bound on waiting for the others to start a collective (0: none)
    uint32_t min_world = 1;          // collectives with fewer peers in the group fail with kTooFewPeers
    std::optional<crypto::Key> key;  // a run with a secret: the key derived from it (handshake.hpp)
};

// Per call: what the master compares beyond count/dtype/op/quantization, and how long to wait for the others.
struct CallOptions {
    std::vector<uint64_t> shape;   // the caller's array shape (empty: one dimension of `count`)
    uint64_t structure = 0;        // a pytree's structure fingerprint (0: a single array)
    std::string structure_text;    // its readable summary, for mismatch messages
    double timeout = -1;           // seconds to wait for the others to start; negative: CommConfig::op_timeout
};

// Memory for a result whose size only the operation's group decides (all_gather, reduce_scatter).
using Allocator = std::function<uint8_t*(size_t bytes)>;

struct OpInfo {
    uint64_t op_id = 0;
    uint32_t world_size = 0;
    uint32_t rank = 0;  // this peer's position in the operation's ring order
    std::vector<uint64_t> peers;  // the operation's peers in ring order (all_gather's rows come in this order)
    uint32_t stripes = 0;
    uint64_t bytes_sent = 0;
    uint64_t bytes_received = 0;
    double seconds = 0;
};

// What a shared-state sync did on this peer (state_sync.cpp).
struct SyncOutcome {
    uint64_t sync_id = 0;
    uint64_t revision = 0;                          // the group's revision after the sync
    std::vector<uint32_t> fetched;                  // entries received, by index
    std::vector<std::shared_ptr<uint8_t>> buffers;  // their new bytes (64-byte aligned), published only on commit
    uint64_t bytes_sent = 0, bytes_received = 0;    // state payload bytes
    std::map<uint64_t, uint64_t> sent_to, received_from;  // payload bytes per peer
    uint32_t world_size = 0;
    double seconds = 0;
};

class Communicator {
public:
    explicit Communicator(CommConfig config);
    ~Communicator();

    // Joins the job: waits for WELCOME, then for admission (the others' next update_topology()). A negative
    // timeout waits for admission without a bound (the master's liveness still bounds it).
    void connect(double admission_timeout);
    // A negative timeout: CommConfig::op_timeout. Raises kTimeout naming the peers that did not come.
    void update_topology(double timeout = -1);
    // A collective of the group: probes the links the master has not measured, and every peer takes the ring
    // order the master solves for (docs/topology.md). Returns the number of links this peer measured.
    uint32_t optimize_topology(double timeout = -1);
    // Peer ids of this peer's group in ring order, as of the last topology result or operation (a lost peer
    // leaves the ring of the next operation).
    std::vector<uint64_t> ring_ids() const {
        std::lock_guard<std::mutex> g(mu_);
        std::vector<uint64_t> ids;
        for (const auto& p : ring_) ids.push_back(p.id);
        return ids;
    }
    uint32_t pending_peers();
    // Plain: input/output hold `count` elements of dtype (output may be input: in place). Quantized
    // (quant.enabled()): input/output are separate buffers of quantized_bytes(count, quant) bytes already
    // quantized (the device path), op is sum or avg, and the caller dequantizes (dividing by world_size for avg).
    OpInfo all_reduce(const void* input, void* output, uint64_t count, DType dtype, ReduceOp op, uint64_t tag,
                      const QuantConfig& quant = {}, const CallOptions& options = {});
    // The quantized host path: x and out hold `count` elements of a floating dtype (out may be x: in place).
    // The stripes' threads encode our own chunk as it leaves, add x exactly on every hop, and decode final
    // blocks into out as they arrive (divided by the world size for avg); the blocks live in the slot's scratch.
    OpInfo all_reduce_quantized(const void* x, void* out, uint64_t count, DType dtype, ReduceOp op, uint64_t tag,
                                const QuantConfig& quant, const CallOptions& options = {});
    // The other collectives (collectives.cpp, docs/collectives.md), with all-reduce's contract: matched
    // descriptors, deadlines, commit on every peer or none. `count` elements of `input` per peer; `output`
    // holds `output_count` elements, which must be what the operation's group gives (else every peer fails
    // with a retryable kPeerLost: the group changed since the caller sized it):
    //   broadcast: count; the root (a peer id) sends its input, the others' input is unused (may be null);
    //     output may be input (in place: written only on commit).
    //   all_gather: world * count, this peer's input at row `rank` (OpInfo::peers says whose each row is).
    //   reduce_scatter: chunk `rank` of the reduced array, cut along the first axis of options.shape as
    //     numpy.array_split cuts it (a flat array: elements); op as for all_reduce.
    //   barrier: no data (count 0); returns once every peer of the group has called it.
    // With `allocate` and no output, the result goes to allocate(bytes), called once the group is known.
    // all_gather and reduce_scatter of floating dtypes may quantize (sum and avg): each chunk is quantized on its
    // own, as it is sent; all_gather's rows are all decoded from the bytes sent (this peer's too), so every peer
    // holds the same result; reduce_scatter's owner adds its exact chunk to the others' decoded ones.
    OpInfo collective(OpKind kind, const void* input, void* output, uint64_t count, uint64_t output_count, DType dtype,
                      ReduceOp op, uint64_t root, uint64_t tag, const CallOptions& options = {},
                      const Allocator& allocate = {}, const QuantConfig& quant = {});
    // Collective shared-state sync (docs/shared_state.md): `entries` in name order with their hashes, `data` the
    // bytes of each (read while holders send). Throws for a refused peer or a failed sync; nothing is written.
    SyncOutcome sync_state(const std::vector<wire::StateEntry>& entries, const std::vector<const uint8_t*>& data,
                           uint64_t revision, uint8_t strategy, double timeout = -1);
    void close();  // graceful leave; operations in flight fail at once (see the top of this file)
    // Leaves the job after an interrupt in a wait that cannot be taken back; later calls raise `why`.
    void abandon(const std::string& why);

    uint64_t peer_id() const { return peer_id_; }
    // Master links lost so far, and the acknowledgment that the caller has seen a collective fail since the loss
    // numbered `generation` (rejoin.cpp): from then on collectives go to the master again.
    uint64_t master_generation() const { return generation_; }
    void acknowledge_loss(uint64_t generation);
    uint32_t world_size() const { return world_size_; }
    uint32_t group_world_size() const { return group_world_size_; }
    // This peer's position in its group's ring order, as of the last topology result or operation.
    uint32_t group_rank() const { return group_rank_; }
    bool connected() const { return state_ == State::kAccepted; }
    std::string data_address() const {
        std::lock_guard<std::mutex> g(mu_);
        return advertised_.host + ":" + std::to_string(advertised_.port);
    }
    uint16_t data_port() const { return data_port_; }  // the port this peer listens on (0 before connect)
    std::vector<ConnStat> connection_stats() const { return pool_.stats(); }
    // Peers behind NAT (docs/nat.md): whether others can dial this peer (as the master found at admission), the
    // connections it opened through a relay (as either end; via_master: the master's), and what it relayed.
    bool inbound() const;
    uint64_t relayed_connections() const { return pool_.relayed(); }
    uint64_t master_relayed_connections() const { return pool_.master_relayed(); }
    RelayStats relay_stats() const { return pool_.relay_stats(); }
    uint64_t dropped_data_connections() const { return pool_.dropped(); }

private:
    enum class State { kNew, kJoining, kAccepted, kBroken, kClosed };
    struct Frame {
        uint16_t type;
        std::vector<uint8_t> payload;
    };
    // What a frame to the master is for. Both return the generation of the master link the frame went out on.
    // While the master is lost they wait for it to come back (up to master_grace), then raise kPeerLost (the
    // others may have moved on), except for kVote and kQuery (update_topology(), pending_peers(): where the
    // README loop resumes), which send the frame. After a loss, a kStart (a new collective) raises kPeerLost
    // until the caller has seen one fail, or voted (resume_pending_).
    enum class Send { kReport, kStart, kVote, kQuery };
    template <class T> uint64_t send_master(wire::MsgType type, const T& m, Send how = Send::kReport);
    uint64_t send_raw(const std::vector<uint8_t>& bytes, Send how = Send::kReport);
    void require_quiet(const char* call);
    static bool is_topo_result(const Frame& f, uint64_t seq);  // the TOPO_RESULT answering request `seq`
    bool send_sealed(std::vector<uint8_t> frame, int* err);  // with send_mu_ held; seals in a run with a secret
    void link_loop();
    // One master connection's life (link_loop): heartbeats, frames to the inbox. Returns when it ends: true with
    // *kind / *why when it broke, false when the communicator closes.
    bool run_link(ErrorKind* kind, std::string* why);
    // peer/rejoin.cpp: a lost master looked for until master_grace, connected and greeted with HELLO.back.
    // False when the communicator closes or the grace ran out (then it is broken).
    bool rejoin(const std::string& why);
    int dial_master(const std::string& address, double deadline, auth::Channel* channel);  // TCP + handshake
    wire::Returning returning_report() const;  // mu_ held
    // A frame that only matters while rejoining (WELCOME, the admission); true when it was consumed.
    bool rejoin_frame(uint16_t type, const std::vector<uint8_t>& payload, ErrorKind* kind, std::string* why, bool* end);
    void mark_broken(ErrorKind kind, const std::string& why);
    void require_accepted() const;
    uint32_t timeout_ms(double timeout) const;  // a call's timeout (negative: op_timeout) on the wire
    // The error a call raises once the communicator is broken or closed; mu_ held.
    CoreError unusable_error() const;
    // Waits for the first queued frame accepted by `match`, removing it; throws when the link breaks or the
    // deadline (steady seconds, negative: none) passes.
    // gen: the generation of the link the request went out on; a master lost since raises kPeerLost (kAnyGen:
    // the wait outlives a lost master, for verdicts on operations in doubt).
    static constexpr uint64_t kAnyGen = ~uint64_t(0);
    template <class Match> Frame wait_frame(Match match, double deadline, const char* what, uint64_t gen = kAnyGen);
    CoreError master_lost_error(const char* what) const;  // mu_ held
    CoreError resume_error() const;                       // mu_ held: a collective before update_topology()
    void apply_topology(const wire::TopoResult& r);
    void set_ring(const std::vector<wire::PeerInfo>& ring);  // the group's ring, its size, our place in it
    // The two-phase end of an operation or a sync: OP_DONE with the local outcome (ctl's failure, if any), then
    // the master's verdict. Returns on OP_COMMIT; on OP_ABORT (or a local failure) clears the slot's
    // connections and throws the verdict's error, the same on every peer.
    // gen: the master link the operation started on (generation_ when its request was sent).
    void settle(OpControl& ctl, uint32_t slot, uint64_t gen, uint64_t sync_revision = kNotSync);
    static constexpr uint64_t kNotSync = ~uint64_t(0);
    // The steps of an all-reduce (communicator.cpp): OP_START and the wait for OP_GO; the slot's resources; the
    // stripes of the ring into `result`.
    struct SlotResources;
    wire::OpGo start_op(uint64_t tag, const wire::OpDesc& desc, double timeout, uint64_t* gen);
    // An OP_GO as it arrives (on the master link's thread, in order, mu_ held): the master sends a ring once
    // per epoch, and the OP_GOs that carry only that epoch get it filled in here.
    std::vector<uint8_t> complete_go(const std::vector<uint8_t>& payload);
    std::shared_ptr<SlotResources> slot_resources(uint32_t slot);
    // The ring, or the direct all-reduce when `direct` is set (quantized operations; peer/direct.hpp).
    OpInfo run_ring(RingPlan plan, const wire::OpGo& go, const RingWork& work, const void* input, uint8_t* result,
                    OpControl& ctl, SlotResources& res, const DirectWork* direct);
    // Shared by all collectives (all_reduce.cpp): the arguments refused before anything is sent, the descriptor,
    // this peer's position in a ring (ring.size() if absent).
    static void check_call(DType dtype, ReduceOp op, const QuantConfig& quant, const void* input, const void* output,
                           const CallOptions& options);
    static wire::OpDesc descriptor_of(uint64_t count, DType dtype, ReduceOp op, const QuantConfig& quant,
                                      const CallOptions& options);
    uint32_t rank_in(const std::vector<wire::PeerInfo>& ring) const;
    static uint32_t rank_in_ids(const std::vector<wire::PeerInfo>& ring, uint64_t id);  // ring.size() if absent
    // Both all-reduces: `exact` set means the quantized host path (input unused).
    OpInfo reduce(const void* input, void* output, uint64_t count, DType dtype, ReduceOp op, uint64_t tag,
                  const QuantConfig& quant, const void* exact, const CallOptions& options);
    // Registers an all-reduce call (its tag, the in-flight count) for as long as it lives.
    class InFlightCall {
    public:
        InFlightCall(Communicator* c, uint64_t tag);
        ~InFlightCall();
        InFlightCall(const InFlightCall&) = delete;
        InFlightCall& operator=(const InFlightCall&) = delete;

    private:
        Communicator* c_;
        uint64_t tag_;
    };
    // Registers a running operation or sync so that OP_ABORT, KICKED and a lost master stop it (also one that
    // arrived before it was registered); untrack() when its data phase is over.
    void track(OpControl& ctl);
    void untrack(const OpControl& ctl);

    CommConfig cfg_;
    ConnPool pool_;
    int master_fd_ = -1;
    auth::Channel master_channel_;  // sealing of the master link in a run with a secret
    wire::PeerInfo advertised_;  // guarded by mu_ (written once, in connect())
    std::atomic<uint16_t> data_port_{0};  // read by other threads (a relay following this peer) during connect()
    std::atomic<uint64_t> peer_id_{0};
    std::atomic<uint32_t> world_size_{0}, group_world_size_{0}, group_rank_{0};
    std::atomic<State> state_{State::kNew};
    std::vector<wire::PeerInfo> ring_;  // guarded by mu_
    uint64_t topo_seq_ = 0, next_tag_ = 1;

    std::mutex send_mu_;
    mutable std::mutex mu_;  // guards inbox_, broken_*, active_
    std::condition_variable cv_;
    std::deque<Frame> inbox_;
    ErrorKind broken_kind_ = ErrorKind::kMasterUnreachable;
    std::string broken_why_;
    std::string closed_why_ = "the communicator is closed";
    std::map<uint64_t, OpControl*> active_;  // running operations by op id, stopped on OP_ABORT / KICKED / lost master
    // Per connection slot (one running operation each): threads for stripes 1..k-1, and two scratch buffers
    // (the result of in-place operations; the quantized host path's blocks and its in-place result), kept
    // because fresh pages cost a fault each on first touch. close() lets them go: at once for idle slots, at the
    // end of the operation for a slot in use (each operation holds its slot's).
    struct SlotResources {
        std::mutex mu;  // held by the operation using the slot, until it has copied its result out
        Workers workers;
        struct Scratch {
            std::unique_ptr<uint8_t[]> data;
            size_t bytes = 0;
        } scratch[4];  // the result, the decoded result, our quantized contribution, the direct inboxes
        uint8_t* scratch_for(size_t bytes, int which);  // grown on demand, kept between operations
    };
    std::map<uint32_t, std::shared_ptr<SlotResources>> slots_;  // guarded by mu_
    std::vector<wire::PeerInfo> go_ring_;  // the ring of the last OP_GO that carried one (guarded by mu_)
    uint64_t go_ring_epoch_ = 0;
    std::atomic<uint32_t> in_flight_{0};     // all_reduce calls between OP_START and their end
    bool syncing_ = false;                   // inside sync_state(); guarded by mu_
    std::set<uint64_t> tags_in_flight_;      // guarded by mu_
    std::atomic<bool> link_running_{false};
    net::Wakeup link_wake_;
    std::thread link_thread_;

    // A lost master (rejoin.cpp). The addresses, the epoch of the master this peer was last admitted by.
    std::vector<std::string> masters_;
    std::string master_now_;                     // the address of the master in use (guarded by mu_)
    std::atomic<uint64_t> epoch_{0};
    std::atomic<uint64_t> generation_{0};        // master links lost so far
    std::atomic<bool> away_{false};              // lost, not yet readmitted
    // A loss the caller has not seen a collective fail for yet (guarded by mu_). Peers of a group lose the master
    // at different calls of a step: one got an operation's commit before the loss and went on to the next
    // collective, which failed; another gets the commit afterwards as the new master's verdict. That one's next
    // collective must fail too, or it would be a call ahead of the first (which redoes the step or the call):
    // collectives raise kPeerLost until the caller acknowledges one (the package does when the error reaches
    // the user's code: pccl_arrays/core_calls.py) or votes.
    bool resume_pending_ = false;
    bool rejoining_ = false;                     // link thread only: HELLO sent to a new master, not admitted
    bool welcomed_ = false;                      // link thread only: ... and its WELCOME came
    size_t next_try_ = 0;                        // link thread only: the address the next search starts at
    bool silent_ = false;                        // link thread only: the last link ended in silence
    bool fenced_out_ = false;                    // link thread only: ... or its master gave the group up
    double grace_end_ = 0;                       // link thread only: when the search gives up
    std::string lost_why_;                       // guarded by mu_: what ended the last master link
    std::map<std::string, std::string> tried_;   // link thread only: address -> the last failure
    std::set<std::string> stale_;                // link thread only: masters older than the last, or that let go
    net::FrameReader reader_;                    // the current master link's
    struct Doubt {
        uint64_t sync_revision = kNotSync;       // a sync: the revision it commits
    };
    std::map<uint64_t, Doubt> doubts_;           // reported done, no verdict yet (guarded by mu_)
    std::deque<uint64_t> committed_;             // the last committed operation and sync ids (guarded by mu_)
    uint64_t revision_ = 0;                      // the last committed shared-state revision (guarded by mu_)
    bool synced_ = false;                        // holds the group's state (a sync committed here)
    void note_commit(uint64_t op_id);            // mu_ held
};

template <class Match>
inline Communicator::Frame Communicator::wait_frame(Match match, double deadline, const char* what, uint64_t gen) {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
        for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
            if (match(*it)) {
                Frame f = std::move(*it);
                inbox_.erase(it);
                return f;
            }
        }
        if (state_ == State::kBroken || state_ == State::kClosed) throw unusable_error();
        if (gen != kAnyGen && generation_ != gen) throw master_lost_error(what);
        const double now = net::now_seconds();
        if (deadline >= 0 && now >= deadline) throw CoreError(ErrorKind::kTimeout, std::string("timed out waiting for ") + what);
        if (interrupt_requested()) {
            lk.unlock();
            const std::string why = std::string("interrupted (KeyboardInterrupt) while waiting for ") + what;
            abandon(why);
            throw CoreError(ErrorKind::kInterrupted, why + "; this communicator left the job");
        }
        cv_.wait_for(lk, std::chrono::milliseconds(100));
    }
}

template <class T> inline uint64_t Communicator::send_master(wire::MsgType type, const T& m, Send how) {
    return send_raw(wire::frame(type, m), how);
}

}  // namespace pccl
