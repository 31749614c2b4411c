// The master's own work per all-reduce, without sockets: a MasterState with n admitted peers, driven through
// `ops` all-reduces (n OP_STARTs, n OP_DONEs each) after one untimed first. Returns the time and the bytes of
// the frames it answers with, per operation; benchmarks/scale.py fits them against N (they must grow no faster than linearly).
#include <pybind11/pybind11.h>

#include <chrono>

#include "python/module_common.hpp"
#include "master/state.hpp"

namespace py = pybind11;

namespace pccl {

namespace {
std::vector<uint8_t> payload_of(const std::vector<uint8_t>& frame) {
    return std::vector<uint8_t>(frame.begin() + wire::kHeaderSize, frame.end());
}

template <class T> std::vector<uint8_t> payload(wire::MsgType type, const T& m) { return payload_of(wire::frame(type, m)); }

py::dict master_cost(uint32_t n, uint32_t ops) {
    MasterConfig cfg;
    cfg.probe_addresses = false;
    cfg.peer_timeout = 1e9;
    cfg.rejoin_window = 0;  // a fresh run: its first peer is admitted at once
    MasterState m(cfg);
    const double now = 1;
    for (uint64_t i = 1; i <= n; i++) {  // admitted one by one, each by a vote of everyone (the newcomer included)
        m.on_connect(i, "10.0.0.1:1", now);
        m.on_frame(i, uint16_t(wire::MsgType::kHello),
                   payload(wire::MsgType::kHello, wire::Hello{0, 1, "10.0.0." + std::to_string(i), uint16_t(9000 + i)}), now);
        for (uint64_t j = 1; j <= i; j++)
            m.on_frame(j, uint16_t(wire::MsgType::kTopoRequest), payload(wire::MsgType::kTopoRequest, wire::TopoRequest{i, 0, 0}), now);
    }
    if (m.stats().peers_accepted != n) throw CoreError(ErrorKind::kState, "master_cost: not every peer was admitted");
    size_t bytes = 0;
    uint64_t op_id = 0;
    auto t0 = std::chrono::steady_clock::now();
    for (uint32_t k = 0; k <= ops; k++) {
        if (k == 1) {  // the first operation, untimed: it carries the ring to every peer once (a new epoch)
            bytes = 0;
            t0 = std::chrono::steady_clock::now();
        }
        wire::OpStart s;
        s.tag = k;
        s.desc.count = 1024;
        s.desc.shape = {1024};
        const auto start = payload(wire::MsgType::kOpStart, s);
        for (uint64_t i = 1; i <= n; i++)
            for (const auto& a : m.on_frame(i, uint16_t(wire::MsgType::kOpStart), start, now)) {
                bytes += a.frame.size();
                if (wire::decode_header(a.frame.data()).type == uint16_t(wire::MsgType::kOpGo))
                    op_id = wire::decode_payload<wire::OpGo>(payload_of(a.frame)).op_id;
            }
        const auto done = payload(wire::MsgType::kOpDone, wire::OpDone{op_id, 1, 0, ""});
        for (uint64_t i = 1; i <= n; i++)
            for (const auto& a : m.on_frame(i, uint16_t(wire::MsgType::kOpDone), done, now)) bytes += a.frame.size();
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (m.stats().ops_committed != ops + 1) throw CoreError(ErrorKind::kState, "master_cost: an operation did not commit");
    py::dict d;
    d["seconds_per_op"] = s / ops;
    d["bytes_per_op"] = double(bytes) / ops;
    return d;
}
}  // namespace

void bind_master_cost(py::module_& m) {
    m.def("master_cost", &master_cost, py::arg("peers"), py::arg("ops"),
          "The master's time and answer bytes per all-reduce of `peers` peers, without sockets (benchmarks/scale.py).");
}

}  // namespace pccl
