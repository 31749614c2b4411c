// The master's state machine (master/state.hpp) driven with a fake clock, as tests/helpers/fake_master.py drives
// it from Python: frames in, actions (frames to send, connections to close, addresses to probe) out.
//
// How this works. Master holds a MasterState and the time `now`; msg() frames a message with wire::frame and
// hands its payload to on_frame(), as MasterServer does after decode_header(). Peers are named by their
// connection id, which is also their peer id (WELCOME carries it). sent(actions, type) decodes the frames of
// one type into {connection: message}, checking that no connection gets two; closed() lists the connections
// the master closes. The scenarios: admission by the vote at TOPO_REQUEST, the probe of a newcomer's address,
// agreement on an operation (OP_GO or OP_REJECT for all), commit, eviction after peer_timeout, abort on a failed
// OP_DONE or a lost member, frames before HELLO, and the shared state lost with its last holder.
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "master/state.hpp"
#include "tests/check.hpp"

using namespace pccl;
using wire::MsgType;
using Actions = std::vector<MasterAction>;
using Bytes = std::vector<uint8_t>;

namespace {

std::string host_of(uint64_t conn) { return "10.0.0." + std::to_string(conn); }
wire::PeerInfo info(uint64_t conn) { return wire::PeerInfo{conn, host_of(conn), uint16_t(9000 + conn)}; }
std::vector<wire::PeerInfo> ring_of(std::initializer_list<uint64_t> conns) {
    std::vector<wire::PeerInfo> r;
    for (uint64_t c : conns) r.push_back(info(c));
    return r;
}

wire::OpDesc desc(uint8_t dtype = 10) {
    wire::OpDesc d;
    d.count = 1024;
    d.dtype = dtype;  // float32
    d.op = 0;         // sum
    d.shape = {1024};
    return d;
}

struct Master {
    MasterState state;
    double now = 100.0;
    std::vector<uint64_t> accepted;  // admitted by join(), in admission order

    explicit Master(MasterConfig config = MasterConfig{10.0, 5.0, false, 0, 0.0}) : state(config) {}

    template <class T> Actions msg(uint64_t conn, MsgType type, const T& m) {
        const Bytes f = wire::frame(type, m);
        return state.on_frame(conn, uint16_t(type), Bytes(f.begin() + wire::kHeaderSize, f.end()), now);
    }
    Actions empty(uint64_t conn, MsgType type) { return state.on_frame(conn, uint16_t(type), {}, now); }
    Actions hello(uint64_t conn, uint32_t group = 0, uint32_t connections = 1) {
        CHECK(state.on_connect(conn, host_of(conn) + ":" + std::to_string(50000 + conn), now).empty());
        wire::Hello h;
        h.group = group;
        h.connections = connections;
        h.host = host_of(conn);
        h.port = uint16_t(9000 + conn);
        return msg(conn, MsgType::kHello, h);
    }
    Actions topo_request(uint64_t conn, uint64_t seq) {
        wire::TopoRequest r;
        r.seq = seq;
        return msg(conn, MsgType::kTopoRequest, r);
    }
    Actions op_start(uint64_t conn, uint64_t tag, const wire::OpDesc& d = desc()) {
        wire::OpStart s;
        s.tag = tag;
        s.desc = d;
        return msg(conn, MsgType::kOpStart, s);
    }
    Actions op_done(uint64_t conn, uint64_t op_id, bool ok, ErrorKind kind = ErrorKind(0), const std::string& reason = "") {
        wire::OpDone d;
        d.op_id = op_id;
        d.ok = ok ? 1 : 0;
        d.kind = uint8_t(kind);
        d.reason = reason;
        return msg(conn, MsgType::kOpDone, d);
    }
    Actions tick(double at) {
        now = at;
        return state.on_tick(now);
    }
};

// The frames of one type in the actions, decoded: {connection: message}.
template <class T> std::map<uint64_t, T> sent(const Actions& actions, MsgType type) {
    std::map<uint64_t, T> out;
    for (const auto& a : actions) {
        if (a.kind != MasterAction::kSend) continue;
        const wire::Header h = wire::decode_header(a.frame.data());
        CHECK_EQ(size_t(h.length), a.frame.size() - wire::kHeaderSize);
        if (h.type != uint16_t(type)) continue;
        CHECK(!out.count(a.conn));  // one frame of a type per connection
        out[a.conn] = wire::decode_payload<T>(Bytes(a.frame.begin() + wire::kHeaderSize, a.frame.end()));
    }
    return out;
}

std::vector<uint16_t> types_to(const Actions& actions, uint64_t conn) {
    std::vector<uint16_t> t;
    for (const auto& a : actions)
        if (a.kind == MasterAction::kSend && a.conn == conn) t.push_back(wire::decode_header(a.frame.data()).type);
    return t;
}

std::set<uint64_t> closed(const Actions& actions) {
    std::set<uint64_t> c;
    for (const auto& a : actions)
        if (a.kind == MasterAction::kClose) c.insert(a.conn);
    return c;
}

template <class T> std::set<uint64_t> keys(const std::map<uint64_t, T>& m) {
    std::set<uint64_t> k;
    for (const auto& [conn, v] : m) k.insert(conn);
    return k;
}

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

// Admits peers one by one: each newcomer is admitted at a topology vote of everyone already in.
void join(Master& m, std::initializer_list<uint64_t> conns, uint32_t connections = 1) {
    for (uint64_t c : conns) {
        Actions acts = m.hello(c, 0, connections);
        for (uint64_t a : m.accepted) {
            const Actions more = m.topo_request(a, 1);
            acts.insert(acts.end(), more.begin(), more.end());
        }
        CHECK(sent<wire::TopoResult>(acts, MsgType::kTopoResult).count(c));
        m.accepted.push_back(c);
    }
}

// Every listed peer starts `tag`; returns the op id of the OP_GO they all got.
uint64_t running_op(Master& m, std::initializer_list<uint64_t> conns, uint64_t tag) {
    Actions acts;
    for (uint64_t c : conns) {
        const Actions more = m.op_start(c, tag);
        acts.insert(acts.end(), more.begin(), more.end());
    }
    const auto go = sent<wire::OpGo>(acts, MsgType::kOpGo);
    CHECK_EQ(go.size(), conns.size());
    return go.empty() ? 0 : go.begin()->second.op_id;
}

}  // namespace

// ------------------------------------------------------------------------------------------------ admission

TEST(two_peers_say_hello_and_the_second_is_admitted_at_the_vote) {
    Master m;
    Actions acts = m.hello(1, 0, 4);
    CHECK_EQ(types_to(acts, 1), (std::vector<uint16_t>{uint16_t(MsgType::kWelcome), uint16_t(MsgType::kTopoResult)}));
    CHECK_EQ(sent<wire::Welcome>(acts, MsgType::kWelcome).at(1).peer_id, uint64_t(1));
    const auto first = sent<wire::TopoResult>(acts, MsgType::kTopoResult).at(1);  // nobody to vote: admitted at once
    CHECK_EQ(first.seq, uint64_t(0));
    CHECK_EQ(first.world_size, 1u);
    CHECK(first.ring == ring_of({1}));
    CHECK_EQ(first.kind, 0);

    acts = m.hello(2);
    CHECK_EQ(types_to(acts, 2), (std::vector<uint16_t>{uint16_t(MsgType::kWelcome)}));  // pending
    CHECK_EQ(acts.size(), size_t(1));
    CHECK_EQ(sent<wire::HeartbeatAck>(m.empty(1, MsgType::kHeartbeat), MsgType::kHeartbeatAck).at(1).pending, 1u);
    CHECK_EQ(m.state.stats().peers_accepted, uint64_t(1));

    const auto results = sent<wire::TopoResult>(m.topo_request(1, 5), MsgType::kTopoResult);
    CHECK_EQ(keys(results), (std::set<uint64_t>{1, 2}));
    for (const auto& [conn, r] : results) {
        CHECK_EQ(r.seq, uint64_t(conn == 1 ? 5 : 0));  // the voter's seq; the newcomer's admission is seq 0
        CHECK_EQ(r.world_size, 2u);
        CHECK_EQ(r.pending, 0u);
        CHECK(r.ring == ring_of({1, 2}));  // admission order
        CHECK_EQ(r.kind, 0);
    }
    CHECK_EQ(m.state.stats().peers_accepted, uint64_t(2));
    CHECK(m.state.said_hello(2));
}

TEST(a_newcomer_whose_data_address_is_unreachable_is_admitted_as_outbound_only) {
    Master m(MasterConfig{10.0, 5.0, true, 0, 0.0});
    Actions acts = m.hello(1);
    CHECK_EQ(acts.size(), size_t(2));
    CHECK(acts.size() == 2 && acts[1].kind == MasterAction::kProbe && acts[1].probe == info(1));
    CHECK(sent<wire::TopoResult>(m.state.on_probe_result(1, true, "", m.now), MsgType::kTopoResult).count(1));
    m.accepted.push_back(1);
    m.hello(2);
    CHECK(m.state.on_probe_result(2, false, "connection timed out", m.now).empty());  // admitted at the next vote
    const auto results = sent<wire::TopoResult>(m.topo_request(1, 3), MsgType::kTopoResult);
    CHECK_EQ(keys(results), (std::set<uint64_t>{1, 2}));
    auto behind_nat = info(2);
    behind_nat.inbound = 0;
    for (const auto& [conn, r] : results) {
        CHECK_EQ(r.kind, 0);
        CHECK(r.ring == (std::vector<wire::PeerInfo>{info(1), behind_nat}));
    }
    CHECK_EQ(m.state.outbound_only(), (std::vector<uint64_t>{2}));
}

TEST(with_require_inbound_an_unreachable_newcomer_is_refused_alone) {
    MasterConfig config{10.0, 5.0, true, 0, 0.0};
    config.require_inbound = true;
    Master m(config);
    m.hello(1);
    CHECK(sent<wire::TopoResult>(m.state.on_probe_result(1, true, "", m.now), MsgType::kTopoResult).count(1));
    m.accepted.push_back(1);
    m.hello(2);
    Actions acts = m.state.on_probe_result(2, false, "connection refused", m.now);
    const auto refusal = sent<wire::TopoResult>(acts, MsgType::kTopoResult);
    CHECK_EQ(keys(refusal), (std::set<uint64_t>{2}));
    CHECK_EQ(refusal.at(2).kind, uint8_t(ErrorKind::kNetwork));
    CHECK(contains(refusal.at(2).reason, "10.0.0.2:9002"));
    CHECK(contains(refusal.at(2).reason, "require_inbound"));
    CHECK_EQ(closed(acts), (std::set<uint64_t>{2}));
    CHECK_EQ(m.state.stats().peers_accepted, uint64_t(1));
    // A peer without a data port is refused at its HELLO, without a probe.
    CHECK(m.state.on_connect(3, "10.0.0.3:50003", m.now).empty());
    wire::Hello h;
    h.host = host_of(3);
    acts = m.msg(3, MsgType::kHello, h);
    CHECK(contains(sent<wire::TopoResult>(acts, MsgType::kTopoResult).at(3).reason, "it has no data port"));
    CHECK_EQ(closed(acts), (std::set<uint64_t>{3}));
}

TEST(peers_without_a_data_port_are_not_probed_and_are_kept_apart_in_the_ring) {
    Master m(MasterConfig{10.0, 5.0, true, 0, 0.0});
    // Peers 1-4 accept connections, 5-8 have no data port (HELLO port 0): admitted in order 1, 5, 6, 7, 2, 8, 3, 4.
    for (uint64_t c : {1, 5, 6, 7, 2, 8, 3, 4}) {
        CHECK(m.state.on_connect(c, host_of(c) + ":5000", m.now).empty());
        wire::Hello h;
        h.host = host_of(c);
        h.port = c <= 4 ? uint16_t(9000 + c) : 0;
        Actions acts = m.msg(c, MsgType::kHello, h);
        const auto welcome = sent<wire::Welcome>(acts, MsgType::kWelcome);
        CHECK_EQ(welcome.at(c).peer_id, c);
        bool probed = false;
        for (const auto& a : acts) probed |= a.kind == MasterAction::kProbe;
        CHECK_EQ(probed, c <= 4);
        if (c <= 4) acts = m.state.on_probe_result(c, true, "", m.now);
        for (uint64_t a : m.accepted) {
            const Actions more = m.topo_request(a, 1);
            acts.insert(acts.end(), more.begin(), more.end());
        }
        const auto results = sent<wire::TopoResult>(acts, MsgType::kTopoResult);
        CHECK(results.count(c));
        m.accepted.push_back(c);
        if (c != 4) continue;
        // Four of eight accept no connections: no two of them are neighbours, and the others keep their order.
        std::vector<uint64_t> ids;
        for (const auto& p : results.at(c).ring) {
            ids.push_back(p.id);
            CHECK_EQ(p.inbound, uint8_t(p.id <= 4));
        }
        CHECK_EQ(ids, (std::vector<uint64_t>{1, 5, 2, 6, 3, 7, 4, 8}));
        CHECK_EQ(m.state.relayed_edges(), uint64_t(0));
    }
    CHECK_EQ(m.state.outbound_only(), (std::vector<uint64_t>{5, 6, 7, 8}));
}

TEST(frames_before_hello_close_the_connection) {
    Master m;
    CHECK(m.state.on_connect(7, "1.2.3.4:5", m.now).empty());
    const Actions acts = m.topo_request(7, 1);
    CHECK_EQ(closed(acts), (std::set<uint64_t>{7}));
    CHECK_EQ(m.state.stats().dropped_connections, uint64_t(1));
    CHECK_EQ(m.state.connection_count(), size_t(0));
    CHECK(!m.state.said_hello(7));
}

// ------------------------------------------------------------------------------------------------ operations

TEST(equal_descriptors_get_op_go_and_commit_for_both) {
    Master m;
    join(m, {1}, 4);
    join(m, {2}, 2);
    CHECK(m.op_start(1, 7).empty());  // waits for peer 2
    const Actions acts = m.op_start(2, 7);
    const auto go = sent<wire::OpGo>(acts, MsgType::kOpGo);
    CHECK_EQ(keys(go), (std::set<uint64_t>{1, 2}));
    if (go.size() != 2) return;
    const wire::OpGo& g = go.at(1);
    CHECK_EQ(g.tag, uint64_t(7));
    CHECK(g.op_id >= 1);
    CHECK_EQ(g.stripes, 2u);  // the smallest connection count of the ring
    CHECK(g.ring == ring_of({1, 2}));
    for (const auto& [conn, other] : go) {
        CHECK_EQ(other.op_id, g.op_id);
        CHECK_EQ(other.slot, g.slot);
        CHECK_EQ(other.ring_epoch, g.ring_epoch);
    }
    CHECK(m.op_done(1, g.op_id, true).empty());
    const auto commits = sent<wire::OpCommit>(m.op_done(2, g.op_id, true), MsgType::kOpCommit);
    CHECK_EQ(keys(commits), (std::set<uint64_t>{1, 2}));
    for (const auto& [conn, c] : commits) CHECK_EQ(c.op_id, g.op_id);
    CHECK_EQ(m.state.stats().ops_committed, uint64_t(1));
    CHECK_EQ(running_op(m, {1, 2}, 8), g.op_id + 1);  // both are free again
}

TEST(differing_descriptors_get_op_reject_for_both) {
    Master m;
    join(m, {1, 2});
    CHECK(m.op_start(1, 4).empty());
    const Actions acts = m.op_start(2, 4, desc(11));  // float64 against float32
    CHECK(sent<wire::OpGo>(acts, MsgType::kOpGo).empty());
    const auto rejects = sent<wire::OpReject>(acts, MsgType::kOpReject);
    CHECK_EQ(keys(rejects), (std::set<uint64_t>{1, 2}));
    for (const auto& [conn, r] : rejects) {
        CHECK_EQ(r.tag, uint64_t(4));
        CHECK_EQ(r.kind, uint8_t(ErrorKind::kMismatch));
        CHECK(contains(r.reason, "dtypes differ"));
        CHECK(contains(r.reason, "float32") && contains(r.reason, "float64"));
    }
    CHECK_EQ(m.state.stats().ops_rejected, uint64_t(1));
    CHECK(closed(acts).empty());
    CHECK(running_op(m, {1, 2}, 5) >= 1);  // the next operation runs
}

TEST(a_failed_op_done_aborts_the_operation_for_every_member) {
    Master m;
    join(m, {1, 2, 3});
    const uint64_t op_id = running_op(m, {1, 2, 3}, 1);
    CHECK(m.op_done(1, op_id, true).empty());
    const Actions acts = m.op_done(2, op_id, false, ErrorKind::kTimeout, "recv from peer 3 timed out");
    const auto aborts = sent<wire::OpAbort>(acts, MsgType::kOpAbort);
    CHECK_EQ(keys(aborts), (std::set<uint64_t>{1, 2, 3}));
    for (const auto& [conn, a] : aborts) {
        CHECK_EQ(a.op_id, op_id);
        CHECK_EQ(a.kind, uint8_t(ErrorKind::kTimeout));  // the reporter's kind
        CHECK(contains(a.reason, "recv from peer 3 timed out"));
    }
    CHECK(closed(acts).empty());
    CHECK_EQ(m.state.stats().ops_aborted, uint64_t(1));
    CHECK(m.op_done(3, op_id, true).empty());  // a stale report is ignored
    const uint64_t next = running_op(m, {1, 2, 3}, 2);
    CHECK(next > op_id);
    // A failure without a kind aborts as peer lost.
    const auto again = sent<wire::OpAbort>(m.op_done(3, next, false, ErrorKind(0), "boom"), MsgType::kOpAbort);
    CHECK_EQ(keys(again), (std::set<uint64_t>{1, 2, 3}));
    for (const auto& [conn, a] : again) CHECK_EQ(a.kind, uint8_t(ErrorKind::kPeerLost));
}

TEST(a_member_that_disconnects_mid_operation_aborts_it_for_the_others) {
    Master m;
    join(m, {1, 2, 3});
    const uint64_t op_id = running_op(m, {1, 2, 3}, 1);
    const Actions acts = m.state.on_disconnect(2, "connection reset", m.now);
    CHECK_EQ(closed(acts), (std::set<uint64_t>{2}));
    const auto aborts = sent<wire::OpAbort>(acts, MsgType::kOpAbort);
    CHECK_EQ(keys(aborts), (std::set<uint64_t>{1, 3}));
    for (const auto& [conn, a] : aborts) {
        CHECK_EQ(a.op_id, op_id);
        CHECK_EQ(a.kind, uint8_t(ErrorKind::kPeerLost));
    }
    const auto go = sent<wire::OpGo>(m.op_start(1, 2), MsgType::kOpGo);
    CHECK(go.empty());
    const auto go2 = sent<wire::OpGo>(m.op_start(3, 2), MsgType::kOpGo);
    CHECK_EQ(keys(go2), (std::set<uint64_t>{1, 3}));
    if (go2.count(1)) CHECK(go2.at(1).ring == ring_of({1, 3}));  // a new epoch: the ring comes again
}

// ------------------------------------------------------------------------------------------------ liveness

TEST(a_silent_peer_is_evicted_after_peer_timeout_and_not_before) {
    Master m;  // peer_timeout 10 s
    join(m, {1, 2});
    const double t0 = m.now;
    m.now = t0 + 6;
    CHECK_EQ(keys(sent<wire::HeartbeatAck>(m.empty(1, MsgType::kHeartbeat), MsgType::kHeartbeatAck)),
             (std::set<uint64_t>{1}));
    CHECK(m.tick(t0 + 10.0).empty());  // exactly the deadline: still alive
    const Actions acts = m.tick(t0 + 10.5);
    CHECK_EQ(types_to(acts, 2), (std::vector<uint16_t>{uint16_t(MsgType::kKicked)}));
    CHECK_EQ(closed(acts), (std::set<uint64_t>{2}));
    CHECK(acts.size() >= 2 && acts[0].kind == MasterAction::kSend && acts[1].kind == MasterAction::kClose);  // told first
    const auto kicked = sent<wire::Kicked>(acts, MsgType::kKicked);
    CHECK(kicked.count(2) && contains(kicked.at(2).reason, "evicted"));
    CHECK(types_to(acts, 1).empty());
    CHECK_EQ(m.state.stats().evictions, uint64_t(1));
    CHECK_EQ(m.state.stats().peers_accepted, uint64_t(1));
    const auto r = sent<wire::TopoResult>(m.topo_request(1, 2), MsgType::kTopoResult);
    CHECK(r.count(1) && r.at(1).ring == ring_of({1}));
    CHECK(m.tick(t0 + 16.0).empty());  // peer 1 spoke at t0 + 10.5
    CHECK_EQ(closed(m.tick(t0 + 20.6)), (std::set<uint64_t>{1}));
}

TEST(a_connection_without_hello_is_dropped_after_the_handshake_timeout) {
    Master m;  // handshake_timeout 5 s
    CHECK(m.state.on_connect(9, "1.2.3.4:5", m.now).empty());
    CHECK(m.tick(m.now + 5.0).empty());
    CHECK_EQ(closed(m.tick(m.now + 0.1)), (std::set<uint64_t>{9}));
    CHECK_EQ(m.state.stats().dropped_connections, uint64_t(1));
    CHECK_EQ(m.state.stats().evictions, uint64_t(0));
}

// ------------------------------------------------------------------------------------------------ shared state

TEST(the_state_lost_with_its_last_holder_is_refused_until_a_send_only_peer_offers_it) {
    Master m;
    join(m, {1, 2});
    auto sync_start = [&](uint64_t conn, uint64_t hash, wire::SyncStrategy strategy) {
        wire::SyncStart s;
        s.revision = 3;
        s.strategy = uint8_t(strategy);
        wire::StateEntry e;
        e.name = "w";
        e.dtype = 10;
        e.shape = {100};
        e.nbytes = 400;
        e.hash = hash;
        s.entries = {e};
        return m.msg(conn, MsgType::kSyncStart, s);
    };
    CHECK(sync_start(1, 5, wire::SyncStrategy::kEnforcePopular).empty());
    auto plans = sent<wire::SyncPlan>(sync_start(2, 5, wire::SyncStrategy::kEnforcePopular), MsgType::kSyncPlan);
    CHECK_EQ(keys(plans), (std::set<uint64_t>{1, 2}));
    for (const auto& [conn, p] : plans) {
        CHECK_EQ(p.ok, 1);
        CHECK_EQ(p.commit_now, 1);  // equal state: nothing moves, committed by the plan
        CHECK_EQ(p.revision, uint64_t(3));
    }
    // Both holders go; two newcomers form the group.
    m.state.on_disconnect(1, "gone", m.now);
    m.state.on_disconnect(2, "gone", m.now);
    m.accepted.clear();
    join(m, {3, 4});
    CHECK(sync_start(3, 9, wire::SyncStrategy::kEnforcePopular).empty());
    plans = sent<wire::SyncPlan>(sync_start(4, 9, wire::SyncStrategy::kEnforcePopular), MsgType::kSyncPlan);
    CHECK_EQ(keys(plans), (std::set<uint64_t>{3, 4}));
    for (const auto& [conn, p] : plans) {
        CHECK_EQ(p.ok, 0);
        CHECK_EQ(p.kind, uint8_t(ErrorKind::kSharedState));
        CHECK(contains(p.reason, "shared state is lost"));
        CHECK(contains(p.reason, "revision was 3"));
    }
    // A checkpoint offered send-only wins; the other newcomer fetches it.
    CHECK(sync_start(3, 7, wire::SyncStrategy::kSendOnly).empty());
    const Actions acts = sync_start(4, 9, wire::SyncStrategy::kEnforcePopular);
    plans = sent<wire::SyncPlan>(acts, MsgType::kSyncPlan);
    CHECK_EQ(keys(plans), (std::set<uint64_t>{3, 4}));
    if (plans.size() != 2) return;
    CHECK(plans.at(3).ok && plans.at(4).ok);
    CHECK_EQ(plans.at(3).commit_now, 0);
    CHECK(plans.at(3).fetch.empty());
    CHECK_EQ(plans.at(4).fetch, (std::vector<uint32_t>{0}));
    CHECK_EQ(plans.at(4).expect, (std::vector<uint64_t>{7}));
    CHECK_EQ(plans.at(3).sends.size(), size_t(1));
    CHECK_EQ(plans.at(4).recvs.size(), size_t(1));
    const uint64_t sync_id = plans.at(3).sync_id;
    CHECK_EQ(plans.at(4).sync_id, sync_id);
    CHECK(m.op_done(3, sync_id, true).empty());
    CHECK_EQ(keys(sent<wire::OpCommit>(m.op_done(4, sync_id, true), MsgType::kOpCommit)), (std::set<uint64_t>{3, 4}));
    CHECK_EQ(m.state.stats().syncs_committed, uint64_t(2));
}
