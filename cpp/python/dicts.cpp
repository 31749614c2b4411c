#include "python/dicts.hpp"

#include <pybind11/stl.h>

#include "wire/wire.hpp"

namespace py = pybind11;

namespace pccl {

using wire::MsgType;

namespace {

const std::vector<std::pair<MsgType, const char*>>& names() {
    static const std::vector<std::pair<MsgType, const char*>> n = {
        {MsgType::kHello, "hello"}, {MsgType::kWelcome, "welcome"}, {MsgType::kHeartbeat, "heartbeat"},
        {MsgType::kHeartbeatAck, "heartbeat_ack"}, {MsgType::kTopoRequest, "topo_request"},
        {MsgType::kTopoResult, "topo_result"}, {MsgType::kOpStart, "op_start"}, {MsgType::kOpGo, "op_go"},
        {MsgType::kOpReject, "op_reject"}, {MsgType::kOpDone, "op_done"}, {MsgType::kOpCommit, "op_commit"},
        {MsgType::kOpAbort, "op_abort"}, {MsgType::kPendingRequest, "pending_request"},
        {MsgType::kPendingReply, "pending_reply"}, {MsgType::kLeave, "leave"}, {MsgType::kKicked, "kicked"},
        {MsgType::kSyncStart, "sync_start"}, {MsgType::kSyncPlan, "sync_plan"},
        {MsgType::kOptStart, "opt_start"}, {MsgType::kOptPlan, "opt_plan"}, {MsgType::kOptReport, "opt_report"},
        {MsgType::kPeerHello, "peer_hello"}, {MsgType::kData, "data"},
        {MsgType::kAuthHello, "auth_hello"}, {MsgType::kAuthChallenge, "auth_challenge"},
        {MsgType::kAuthProof, "auth_proof"}, {MsgType::kAuthRefused, "auth_refused"},
    };
    return n;
}

wire::Bytes32 bytes32(const py::dict& d, const char* key) {
    wire::Bytes32 out{};
    if (!d.contains(key)) return out;
    const std::string b = d[key].cast<std::string>();
    if (b.size() != out.size()) throw py::value_error(std::string(key) + " must be 32 bytes");
    std::copy(b.begin(), b.end(), out.begin());
    return out;
}

py::bytes py_bytes(const wire::Bytes32& b) { return py::bytes(reinterpret_cast<const char*>(b.data()), b.size()); }

template <class T> T get(const py::dict& d, const char* key, T fallback) {
    return d.contains(key) ? d[key].cast<T>() : fallback;
}

py::list ring_list(const std::vector<wire::PeerInfo>& ring) {
    py::list l;
    for (const auto& p : ring) l.append(py::dict(py::arg("id") = p.id, py::arg("host") = p.host, py::arg("port") = p.port));
    return l;
}

std::vector<wire::PeerInfo> ring_of(const py::dict& d) {
    std::vector<wire::PeerInfo> ring;
    if (!d.contains("ring")) return ring;
    for (auto item : d["ring"].cast<py::list>()) {
        auto p = item.cast<py::dict>();
        ring.push_back(wire::PeerInfo{get<uint64_t>(p, "id", 0), get<std::string>(p, "host", ""), get<uint16_t>(p, "port", 0)});
    }
    return ring;
}

wire::OpDesc desc_of(const py::dict& d) {
    wire::OpDesc m{get<uint64_t>(d, "count", 0), get<uint8_t>(d, "dtype", 0), get<uint8_t>(d, "op", 0),
                   get<uint8_t>(d, "quant", 0),  get<uint32_t>(d, "qblock", 0), get<uint8_t>(d, "qround", 0),
                   get<uint32_t>(d, "qseed", 0)};
    m.shape = get<std::vector<uint64_t>>(d, "shape", {m.count});
    m.structure = get<uint64_t>(d, "structure", 0);
    m.structure_text = get<std::string>(d, "structure_text", "");
    return m;
}

template <class T> std::vector<uint8_t> bytes_of(const T& m) {
    wire::Writer w;
    wire::encode(w, m);
    return std::move(w.bytes());
}

}  // namespace

wire::SyncStart sync_start_of(const py::dict& d) {
    wire::SyncStart m{get<uint64_t>(d, "revision", 0), get<uint8_t>(d, "strategy", 0), get<uint32_t>(d, "timeout_ms", 0),
                      get<uint32_t>(d, "min_world", 0), {}};
    if (d.contains("entries"))
        for (auto item : d["entries"].cast<py::list>()) {
            auto e = item.cast<py::dict>();
            m.entries.push_back(wire::StateEntry{get<std::string>(e, "name", ""), get<uint8_t>(e, "dtype", 0),
                                                 get<std::vector<uint64_t>>(e, "shape", {}), get<uint64_t>(e, "nbytes", 0),
                                                 get<uint64_t>(e, "hash", 0), get<uint8_t>(e, "tolerate", 0)});
        }
    return m;
}

py::dict sync_start_dict(const wire::SyncStart& m) {
    py::list entries;
    for (const auto& e : m.entries)
        entries.append(py::dict(py::arg("name") = e.name, py::arg("dtype") = e.dtype, py::arg("shape") = e.shape,
                                py::arg("nbytes") = e.nbytes, py::arg("hash") = e.hash, py::arg("tolerate") = e.tolerate));
    return py::dict(py::arg("revision") = m.revision, py::arg("strategy") = m.strategy, py::arg("timeout_ms") = m.timeout_ms,
                    py::arg("min_world") = m.min_world, py::arg("entries") = entries);
}

wire::SyncPlan sync_plan_of(const py::dict& d) {
    wire::SyncPlan m;
    m.sync_id = get<uint64_t>(d, "sync_id", 0);
    m.ok = get<uint8_t>(d, "ok", 1);
    m.kind = get<uint8_t>(d, "kind", 0);
    m.reason = get<std::string>(d, "reason", "");
    m.revision = get<uint64_t>(d, "revision", 0);
    m.commit_now = get<uint8_t>(d, "commit_now", 0);
    m.fetch = get<std::vector<uint32_t>>(d, "fetch", {});
    m.expect = get<std::vector<uint64_t>>(d, "expect", {});
    if (d.contains("sends"))
        for (auto item : d["sends"].cast<py::list>()) {
            auto s = item.cast<py::dict>();
            auto to = s["to"].cast<py::dict>();
            m.sends.push_back(wire::SyncSend{
                wire::PeerInfo{get<uint64_t>(to, "id", 0), get<std::string>(to, "host", ""), get<uint16_t>(to, "port", 0)},
                get<std::vector<uint32_t>>(s, "fetch", {}), get<uint64_t>(s, "begin", 0), get<uint64_t>(s, "end", 0),
                get<uint32_t>(s, "stripes", 1)});
        }
    if (d.contains("recvs"))
        for (auto item : d["recvs"].cast<py::list>()) {
            auto r = item.cast<py::dict>();
            m.recvs.push_back(wire::SyncRecv{get<uint64_t>(r, "from", 0), get<uint64_t>(r, "begin", 0),
                                             get<uint64_t>(r, "end", 0), get<uint32_t>(r, "stripes", 1)});
        }
    return m;
}

py::dict sync_plan_dict(const wire::SyncPlan& m) {
    py::dict d;
    d["sync_id"] = m.sync_id; d["ok"] = m.ok; d["kind"] = m.kind; d["reason"] = m.reason; d["revision"] = m.revision;
    d["commit_now"] = m.commit_now; d["fetch"] = m.fetch; d["expect"] = m.expect;
    py::list sends, recvs;
    for (const auto& s : m.sends)
        sends.append(py::dict(py::arg("to") = py::dict(py::arg("id") = s.to.id, py::arg("host") = s.to.host,
                                                       py::arg("port") = s.to.port),
                              py::arg("fetch") = s.fetch, py::arg("begin") = s.begin, py::arg("end") = s.end,
                              py::arg("stripes") = s.stripes));
    for (const auto& r : m.recvs)
        recvs.append(py::dict(py::arg("from") = r.from, py::arg("begin") = r.begin, py::arg("end") = r.end,
                              py::arg("stripes") = r.stripes));
    d["sends"] = sends;
    d["recvs"] = recvs;
    return d;
}

std::string frame_type_name(uint16_t type) {
    for (const auto& [t, n] : names())
        if (uint16_t(t) == type) return n;
    return "unknown_" + std::to_string(type);
}

std::pair<uint16_t, std::vector<uint8_t>> frame_from_dict(const std::string& type, const py::dict& d) {
    MsgType t{};
    bool found = false;
    for (const auto& [code, n] : names())
        if (type == n) { t = code; found = true; }
    if (!found) throw py::value_error("unknown message type '" + type + "'");
    switch (t) {
        case MsgType::kHello:
            return {uint16_t(t), bytes_of(wire::Hello{get<uint32_t>(d, "group", 0), get<uint32_t>(d, "connections", 1),
                                                      get<std::string>(d, "host", "127.0.0.1"), get<uint16_t>(d, "port", 0)})};
        case MsgType::kWelcome: return {uint16_t(t), bytes_of(wire::Welcome{get<uint64_t>(d, "peer_id", 0)})};
        case MsgType::kHeartbeat: case MsgType::kLeave: return {uint16_t(t), {}};
        case MsgType::kHeartbeatAck: return {uint16_t(t), bytes_of(wire::HeartbeatAck{get<uint32_t>(d, "pending", 0)})};
        case MsgType::kOptPlan: {
            wire::OptPlan m{get<uint64_t>(d, "opt_id", 0), get<uint64_t>(d, "seq", 0), get<uint32_t>(d, "probe_ms", 0), {}};
            if (d.contains("rounds"))
                for (auto item : d["rounds"].cast<py::list>()) {
                    auto r = item.cast<py::dict>();
                    auto to = r["send_to"].cast<py::dict>();
                    m.rounds.push_back({wire::PeerInfo{get<uint64_t>(to, "id", 0), get<std::string>(to, "host", ""),
                                                       get<uint16_t>(to, "port", 0)},
                                        get<uint64_t>(r, "recv_from", 0)});
                }
            return {uint16_t(t), bytes_of(m)};
        }
        case MsgType::kOptReport: {
            wire::OptReport m{get<uint64_t>(d, "opt_id", 0), {}};
            if (d.contains("links"))
                for (auto item : d["links"].cast<py::list>()) {
                    auto l = item.cast<py::dict>();
                    m.links.push_back({get<uint64_t>(l, "from", 0), get<uint64_t>(l, "to", 0), get<uint64_t>(l, "bandwidth", 0),
                                       get<uint32_t>(l, "rtt_us", 0)});
                }
            return {uint16_t(t), bytes_of(m)};
        }
        case MsgType::kTopoRequest: case MsgType::kPendingRequest: case MsgType::kOptStart:
            return {uint16_t(t), bytes_of(wire::TopoRequest{get<uint64_t>(d, "seq", 0), get<uint32_t>(d, "timeout_ms", 0),
                                                            get<uint32_t>(d, "min_world", 0)})};
        case MsgType::kTopoResult:
            return {uint16_t(t), bytes_of(wire::TopoResult{get<uint64_t>(d, "seq", 0), get<uint32_t>(d, "world_size", 0),
                                                           get<uint32_t>(d, "pending", 0), ring_of(d),
                                                           get<uint8_t>(d, "kind", 0), get<std::string>(d, "reason", "")})};
        case MsgType::kOpStart:
            return {uint16_t(t), bytes_of(wire::OpStart{get<uint64_t>(d, "tag", 0), desc_of(d), get<uint32_t>(d, "timeout_ms", 0),
                                                        get<uint32_t>(d, "min_world", 0)})};
        case MsgType::kOpGo:
            return {uint16_t(t), bytes_of(wire::OpGo{get<uint64_t>(d, "tag", 0), get<uint64_t>(d, "op_id", 0),
                                                     get<uint32_t>(d, "stripes", 1), ring_of(d), get<uint32_t>(d, "slot", 0),
                                                     get<uint64_t>(d, "ring_epoch", 0)})};
        case MsgType::kOpReject:
            return {uint16_t(t), bytes_of(wire::OpReject{get<uint64_t>(d, "tag", 0), get<uint8_t>(d, "kind", 0),
                                                         get<std::string>(d, "reason", "")})};
        case MsgType::kOpDone:
            return {uint16_t(t), bytes_of(wire::OpDone{get<uint64_t>(d, "op_id", 0), get<uint8_t>(d, "ok", 1),
                                                       get<uint8_t>(d, "kind", 0), get<std::string>(d, "reason", "")})};
        case MsgType::kOpCommit: return {uint16_t(t), bytes_of(wire::OpCommit{get<uint64_t>(d, "op_id", 0)})};
        case MsgType::kOpAbort:
            return {uint16_t(t), bytes_of(wire::OpAbort{get<uint64_t>(d, "op_id", 0), get<uint8_t>(d, "kind", 0),
                                                        get<std::string>(d, "reason", "")})};
        case MsgType::kPendingReply: return {uint16_t(t), bytes_of(wire::PendingReply{get<uint32_t>(d, "pending", 0)})};
        case MsgType::kKicked: return {uint16_t(t), bytes_of(wire::Kicked{get<std::string>(d, "reason", "")})};
        case MsgType::kSyncStart: return {uint16_t(t), bytes_of(sync_start_of(d))};
        case MsgType::kSyncPlan: return {uint16_t(t), bytes_of(sync_plan_of(d))};
        case MsgType::kPeerHello:
            return {uint16_t(t), bytes_of(wire::PeerHello{get<uint64_t>(d, "from", 0), get<uint64_t>(d, "to", 0),
                                                          get<uint32_t>(d, "index", 0), get<uint32_t>(d, "slot", 0)})};
        case MsgType::kAuthHello: return {uint16_t(t), bytes_of(wire::AuthHello{get<uint8_t>(d, "context", 0), bytes32(d, "nonce")})};
        case MsgType::kAuthChallenge:
            return {uint16_t(t), bytes_of(wire::AuthChallenge{bytes32(d, "nonce"), get<uint8_t>(d, "encrypt", 0), bytes32(d, "mac")})};
        case MsgType::kAuthProof: return {uint16_t(t), bytes_of(wire::AuthProof{bytes32(d, "mac")})};
        case MsgType::kAuthRefused: return {uint16_t(t), bytes_of(wire::AuthRefused{get<std::string>(d, "reason", "")})};
        case MsgType::kData: {
            auto b = bytes_of(wire::DataHeader{get<uint64_t>(d, "op_id", 0), get<uint32_t>(d, "step", 0),
                                               get<uint32_t>(d, "stripe", 0), get<uint64_t>(d, "offset", 0)});
            std::string body = d.contains("payload") ? d["payload"].cast<std::string>() : std::string();
            b.insert(b.end(), body.begin(), body.end());
            return {uint16_t(t), b};
        }
    }
    throw py::value_error("unknown message type");
}

py::dict dict_from_frame(uint16_t type, const std::vector<uint8_t>& p) {
    using wire::decode_payload;
    py::dict d;
    switch (MsgType(type)) {
        case MsgType::kHello: {
            auto m = decode_payload<wire::Hello>(p);
            d["group"] = m.group; d["connections"] = m.connections; d["host"] = m.host; d["port"] = m.port;
            break;
        }
        case MsgType::kWelcome: d["peer_id"] = decode_payload<wire::Welcome>(p).peer_id; break;
        case MsgType::kHeartbeat: case MsgType::kLeave:
            if (!p.empty()) throw CoreError(ErrorKind::kProtocol, "malformed frame: payload on an empty message");
            break;
        case MsgType::kHeartbeatAck: d["pending"] = decode_payload<wire::HeartbeatAck>(p).pending; break;
        case MsgType::kOptPlan: {
            auto m = decode_payload<wire::OptPlan>(p);
            d["opt_id"] = m.opt_id; d["seq"] = m.seq; d["probe_ms"] = m.probe_ms;
            py::list rounds;
            for (const auto& r : m.rounds)
                rounds.append(py::dict(py::arg("send_to") = ring_list({r.send_to})[0], py::arg("recv_from") = r.recv_from));
            d["rounds"] = rounds;
            break;
        }
        case MsgType::kOptReport: {
            auto m = decode_payload<wire::OptReport>(p);
            d["opt_id"] = m.opt_id;
            py::list links;
            for (const auto& l : m.links)
                links.append(py::dict(py::arg("from") = l.from, py::arg("to") = l.to, py::arg("bandwidth") = l.bandwidth,
                                      py::arg("rtt_us") = l.rtt_us));
            d["links"] = links;
            break;
        }
        case MsgType::kTopoRequest: case MsgType::kPendingRequest: case MsgType::kOptStart: {
            auto m = decode_payload<wire::TopoRequest>(p);
            d["seq"] = m.seq; d["timeout_ms"] = m.timeout_ms; d["min_world"] = m.min_world;
            break;
        }
        case MsgType::kTopoResult: {
            auto m = decode_payload<wire::TopoResult>(p);
            d["seq"] = m.seq; d["world_size"] = m.world_size; d["pending"] = m.pending; d["ring"] = ring_list(m.ring);
            d["kind"] = m.kind; d["reason"] = m.reason;
            break;
        }
        case MsgType::kOpStart: {
            auto m = decode_payload<wire::OpStart>(p);
            d["tag"] = m.tag; d["count"] = m.desc.count; d["dtype"] = m.desc.dtype; d["op"] = m.desc.op; d["quant"] = m.desc.quant;
            d["qblock"] = m.desc.qblock; d["qround"] = m.desc.qround; d["qseed"] = m.desc.qseed; d["shape"] = m.desc.shape;
            d["structure"] = m.desc.structure; d["structure_text"] = m.desc.structure_text;
            d["timeout_ms"] = m.timeout_ms; d["min_world"] = m.min_world;
            break;
        }
        case MsgType::kOpGo: {
            auto m = decode_payload<wire::OpGo>(p);
            d["tag"] = m.tag; d["op_id"] = m.op_id; d["stripes"] = m.stripes; d["ring"] = ring_list(m.ring); d["slot"] = m.slot;
            d["ring_epoch"] = m.ring_epoch;
            break;
        }
        case MsgType::kOpReject: {
            auto m = decode_payload<wire::OpReject>(p);
            d["tag"] = m.tag; d["kind"] = m.kind; d["reason"] = m.reason;
            break;
        }
        case MsgType::kOpDone: {
            auto m = decode_payload<wire::OpDone>(p);
            d["op_id"] = m.op_id; d["ok"] = m.ok; d["kind"] = m.kind; d["reason"] = m.reason;
            break;
        }
        case MsgType::kOpCommit: d["op_id"] = decode_payload<wire::OpCommit>(p).op_id; break;
        case MsgType::kOpAbort: {
            auto m = decode_payload<wire::OpAbort>(p);
            d["op_id"] = m.op_id; d["kind"] = m.kind; d["reason"] = m.reason;
            break;
        }
        case MsgType::kPendingReply: d["pending"] = decode_payload<wire::PendingReply>(p).pending; break;
        case MsgType::kKicked: d["reason"] = decode_payload<wire::Kicked>(p).reason; break;
        case MsgType::kSyncStart: d = sync_start_dict(decode_payload<wire::SyncStart>(p)); break;
        case MsgType::kSyncPlan: d = sync_plan_dict(decode_payload<wire::SyncPlan>(p)); break;
        case MsgType::kPeerHello: {
            auto m = decode_payload<wire::PeerHello>(p);
            d["from"] = m.from; d["to"] = m.to; d["index"] = m.index; d["slot"] = m.slot;
            break;
        }
        case MsgType::kData: {
            wire::Reader r(p.data(), p.size());
            auto m = wire::decode<wire::DataHeader>(r);
            d["op_id"] = m.op_id; d["step"] = m.step; d["stripe"] = m.stripe; d["offset"] = m.offset;
            d["payload"] = py::bytes(reinterpret_cast<const char*>(p.data() + wire::kDataHeaderSize), p.size() - wire::kDataHeaderSize);
            break;
        }
        case MsgType::kAuthHello: {
            auto m = decode_payload<wire::AuthHello>(p);
            d["context"] = m.context; d["nonce"] = py_bytes(m.nonce);
            break;
        }
        case MsgType::kAuthChallenge: {
            auto m = decode_payload<wire::AuthChallenge>(p);
            d["nonce"] = py_bytes(m.nonce); d["encrypt"] = m.encrypt; d["mac"] = py_bytes(m.mac);
            break;
        }
        case MsgType::kAuthProof: d["mac"] = py_bytes(decode_payload<wire::AuthProof>(p).mac); break;
        case MsgType::kAuthRefused: d["reason"] = decode_payload<wire::AuthRefused>(p).reason; break;
        default: throw CoreError(ErrorKind::kProtocol, "malformed frame: unknown message type " + std::to_string(type));
    }
    return d;
}

py::dict master_stats_dict(const MasterStats& s) {
    py::dict d;
    d["peers_accepted"] = s.peers_accepted;
    d["ops_committed"] = s.ops_committed;
    d["ops_aborted"] = s.ops_aborted;
    d["ops_rejected"] = s.ops_rejected;
    d["evictions"] = s.evictions;
    d["dropped_connections"] = s.dropped_connections;
    d["topology_updates"] = s.topology_updates;
    d["syncs_committed"] = s.syncs_committed;
    d["syncs_aborted"] = s.syncs_aborted;
    d["syncs_refused"] = s.syncs_refused;
    d["optimizations"] = s.optimizations;
    d["links_probed"] = s.links_probed;
    d["links_known"] = s.links_known;
    d["cpu_seconds"] = s.cpu_seconds;
    d["recent_drops"] = s.recent_drops;
    return d;
}

}  // namespace pccl
