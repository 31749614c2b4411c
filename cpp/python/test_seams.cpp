// pccl_arrays._core_testing, the test module: seams for tests and benchmarks, never imported by the package.
// The master's decisions and the shared-state election as pure functions driven from Python with a fake clock,
// frames encoded and decoded through dicts made from the message schema (schema_dicts.hpp) and the schema
// itself, the ring-order solver, the reduction and quantization kernels on raw buffers, sealed frames, the
// master's cost per operation (master_cost.cpp), and a log line on demand.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <set>

#include "python/module_common.hpp"
#include "python/schema_dicts.hpp"
#include "transport/handshake.hpp"
#include "transport/net.hpp"
#include "transport/relay.hpp"
#include "base/log.hpp"
#include "master/state.hpp"
#include "kernels/quant.hpp"
#include "kernels/reduce.hpp"
#include "planning/ring_order.hpp"
#include "planning/state_election.hpp"

namespace py = pybind11;

namespace pccl {

namespace {
py::list actions_list(const std::vector<MasterAction>& actions) {
    py::list out;
    for (const auto& a : actions) {
        if (a.kind == MasterAction::kClose) {
            out.append(py::make_tuple("close", a.conn, a.reason));
            continue;
        }
        if (a.kind == MasterAction::kProbe) {
            out.append(py::make_tuple("probe", a.conn, a.probe.host + ":" + std::to_string(a.probe.port)));
            continue;
        }
        wire::Header h = wire::decode_header(a.frame.data());
        std::vector<uint8_t> payload(a.frame.begin() + wire::kHeaderSize, a.frame.end());
        out.append(py::make_tuple("send", a.conn, pydict::type_name(h.type), pydict::dict_from_frame(h.type, payload)));
    }
    return out;
}

std::vector<uint8_t> bytes_of(const py::bytes& b) {
    std::string s = b;
    return std::vector<uint8_t>(s.begin(), s.end());
}
}  // namespace

void bind_master_cost(py::module_& m);  // master_cost.cpp

}  // namespace pccl

using namespace pccl;

PYBIND11_MODULE(_core_testing, m) {
    m.doc() = "Test seams of pccl_arrays' core: for tests and benchmarks only";
    register_core_errors(nullptr);
    bind_master_cost(m);
    m.attr("PROTOCOL_VERSION") = wire::kVersion;
    m.def("relay_tap", [](size_t record, int64_t flip_at) { set_relay_tap(record, flip_at); }, py::arg("record") = 0,
          py::arg("flip_at") = -1,
          "Every relay of this process keeps the first `record` bytes of each pipe's opening direction, and flips "
          "the byte at `flip_at` of the next one once (transport/relay.hpp; record 0 and flip_at -1: off).");
    m.def("relay_recorded", [] {
        const auto b = relay_recorded();
        return py::bytes(reinterpret_cast<const char*>(b.data()), b.size());
    }, "What relay_tap kept.");
    m.def("schema", &pydict::schema, "Every message and record as declared once in cpp/wire/messages.hpp.");
    // The master's pure decision logic, for tests with a fake clock. Frames are given and returned as
    // (type name, dict) pairs (schema_dicts.hpp).
    py::class_<MasterState>(m, "MasterState")
        .def(py::init([](double peer_timeout, double handshake_timeout, bool probe_addresses, uint64_t epoch,
                         double rejoin_window, bool require_inbound) {
                 MasterConfig config{peer_timeout, handshake_timeout, probe_addresses, epoch, rejoin_window};
                 config.require_inbound = require_inbound;
                 return new MasterState(config);
             }),
             py::arg("peer_timeout") = 10.0, py::arg("handshake_timeout") = 5.0, py::arg("probe_addresses") = false,
             py::arg("epoch") = 0, py::arg("rejoin_window") = 0.0, py::arg("require_inbound") = false)
        .def("on_probe_result", [](MasterState& s, uint64_t conn, bool reachable, const std::string& reason, double now) {
            return actions_list(s.on_probe_result(conn, reachable, reason, now));
        }, py::arg("conn"), py::arg("reachable"), py::arg("reason"), py::arg("now"))
        .def("on_connect", [](MasterState& s, uint64_t conn, const std::string& addr, double now) {
            return actions_list(s.on_connect(conn, addr, now));
        }, py::arg("conn"), py::arg("addr"), py::arg("now"))
        .def("on_message", [](MasterState& s, uint64_t conn, const std::string& type, const py::dict& fields, double now) {
            auto [code, payload] = pydict::frame_from_dict(type, fields);
            return actions_list(s.on_frame(conn, code, payload, now));
        }, py::arg("conn"), py::arg("type"), py::arg("fields"), py::arg("now"))
        .def("on_disconnect", [](MasterState& s, uint64_t conn, const std::string& reason, double now) {
            return actions_list(s.on_disconnect(conn, reason, now));
        }, py::arg("conn"), py::arg("reason"), py::arg("now"))
        .def("on_tick", [](MasterState& s, double now) { return actions_list(s.on_tick(now)); }, py::arg("now"))
        .def("stats", [](const MasterState& s) { return master_stats_dict(s.stats()); });

    // The election of a shared-state sync as a pure function, for tests of its rules.
    m.def("elect_state", [](const py::list& peers, py::object group_revision) {
        std::vector<SyncPeer> in;
        for (auto item : peers) {
            auto p = item.cast<py::dict>();
            SyncPeer s;
            s.id = p["id"].cast<uint64_t>();
            s.seniority = p.contains("seniority") ? p["seniority"].cast<uint64_t>() : s.id;
            s.synced = p.contains("synced") && p["synced"].cast<bool>();
            s.connections = p.contains("connections") ? p["connections"].cast<uint32_t>() : 1;
            s.info = wire::PeerInfo{s.id, "127.0.0.1", uint16_t(1000 + s.id)};
            py::dict start;  // the peer's SYNC_START: its dict without the election's own keys
            static const std::set<std::string> own = {"id", "seniority", "synced", "connections"};
            for (auto item : p)
                if (!own.count(item.first.cast<std::string>())) start[item.first] = item.second;
            s.start = pydict::from_dict<wire::SyncStart>(start);
            in.push_back(std::move(s));
        }
        std::optional<uint64_t> rev;
        if (!group_revision.is_none()) rev = group_revision.cast<uint64_t>();
        SyncDecision d = elect_state(in, rev);
        py::dict plans;
        for (const auto& [id, plan] : d.plans) plans[py::int_(id)] = pydict::to_dict(plan);
        return py::dict(py::arg("revision") = d.revision, py::arg("members") = d.members, py::arg("moves") = d.moves,
                        py::arg("plans") = plans);
    }, py::arg("peers"), py::arg("group_revision") = py::none());

    // Both ends of one sealed connection, from an in-memory handshake: seal() as the client, open() as the
    // server's frame reader (frames out, or ProtocolError). For the sealing and parsing tests.
    struct SealedPipe {
        auth::Channel client, server;
        net::FrameReader reader;
    };
    py::class_<SealedPipe>(m, "SealedPipe")
        .def(py::init([](const py::bytes& secret, bool encrypt) {
            const auto key = auth::derive_run_key(std::string(secret));
            auth::Client c(key, auth::kMasterLink);
            auth::Server s(key, auth::kMasterLink, encrypt);
            s.verify(c.answer(s.challenge(c.hello()), encrypt, "test"));
            auto* p = new SealedPipe{c.channel(), s.channel(), {}};
            p->reader.seal_with(p->server.rx.get());
            return p;
        }), py::arg("secret"), py::arg("encrypt"))
        .def("seal", [](SealedPipe& p, const py::bytes& frame) {
            auto bytes = bytes_of(frame);
            if (bytes.size() < wire::kHeaderSize) throw py::value_error("shorter than a frame header");
            auth::seal_frame(bytes, *p.client.tx);
            return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
        })
        .def("open", [](SealedPipe& p, const py::bytes& data) {
            auto bytes = bytes_of(data);
            p.reader.feed(bytes.data(), bytes.size());
            py::list out;
            wire::Header h;
            std::vector<uint8_t> payload;
            while (p.reader.next(&h, &payload)) out.append(py::make_tuple(pydict::type_name(h.type), pydict::dict_from_frame(h.type, payload)));
            return out;
        });

    // The ring-order solver (ring_order.hpp), on a matrix given as lists of rows.
    auto matrix = [](const std::vector<std::vector<double>>& bw, const std::vector<std::vector<double>>& lat) {
        topology::LinkMatrix mx;
        mx.n = bw.size();
        for (size_t i = 0; i < mx.n; i++) {
            if (bw[i].size() != mx.n || lat.size() != mx.n || lat[i].size() != mx.n)
                throw CoreError(ErrorKind::kInvalidArgument, "bandwidth and latency must be n x n");
            mx.bandwidth.insert(mx.bandwidth.end(), bw[i].begin(), bw[i].end());
            mx.latency.insert(mx.latency.end(), lat[i].begin(), lat[i].end());
        }
        return mx;
    };
    m.def("ring_score", [matrix](const std::vector<std::vector<double>>& bw, const std::vector<std::vector<double>>& lat,
                                 const std::vector<uint32_t>& order) {
        const auto s = topology::score(matrix(bw, lat), order);
        return py::make_tuple(s.bottleneck, s.at_bottleneck, s.latency);
    }, py::arg("bandwidth"), py::arg("latency"), py::arg("order"));
    m.def("solve_ring_exact", [matrix](const std::vector<std::vector<double>>& bw, const std::vector<std::vector<double>>& lat) {
        const auto mx = matrix(bw, lat);
        py::gil_scoped_release release;
        return topology::solve_exact(mx);
    }, py::arg("bandwidth"), py::arg("latency"));
    m.def("solve_ring_heuristic", [matrix](const std::vector<std::vector<double>>& bw, const std::vector<std::vector<double>>& lat,
                                           const std::vector<uint32_t>& admission) {
        const auto mx = matrix(bw, lat);
        py::gil_scoped_release release;
        return topology::solve_heuristic(mx, admission);
    }, py::arg("bandwidth"), py::arg("latency"), py::arg("admission"));
    m.def("best_ring", [matrix](const std::vector<std::vector<double>>& bw, const std::vector<std::vector<double>>& lat,
                                const std::vector<uint32_t>& admission) {
        const auto mx = matrix(bw, lat);
        py::gil_scoped_release release;
        return topology::best_ring(mx, admission);
    }, py::arg("bandwidth"), py::arg("latency"), py::arg("admission"));

    m.def("encode_frame", [](const std::string& type, const py::dict& fields) {
        auto [code, payload] = pydict::frame_from_dict(type, fields);
        std::vector<uint8_t> out(wire::kHeaderSize);
        wire::encode_header(out.data(), code, uint32_t(payload.size()));
        out.insert(out.end(), payload.begin(), payload.end());
        return py::bytes(reinterpret_cast<const char*>(out.data()), out.size());
    }, py::arg("type"), py::arg("fields"), "Header + payload of one message, for tests and tools.");
    m.def("decode_frame", [](const py::bytes& frame) {
        auto bytes = bytes_of(frame);
        if (bytes.size() < wire::kHeaderSize) throw CoreError(ErrorKind::kProtocol, "malformed frame: shorter than a header");
        wire::Header h = wire::decode_header(bytes.data());
        if (bytes.size() != wire::kHeaderSize + h.length)
            throw CoreError(ErrorKind::kProtocol, "malformed frame: length field does not match the bytes");
        std::vector<uint8_t> payload(bytes.begin() + wire::kHeaderSize, bytes.end());
        return py::make_tuple(pydict::type_name(h.type), pydict::dict_from_frame(h.type, payload));
    }, py::arg("frame"), "Decodes one whole frame; raises ProtocolError on anything malformed.");

    m.def("log_for_tests", [](int level, const std::string& text) {
        if (level == 0) log_debug(text); else if (level == 1) log_info(text); else if (level == 2) log_warn(text);
        else log_error(text);
    }, py::arg("level"), py::arg("text"), "Emits one core log line (tests of the logging bridge).");


    m.def("reduce_hop", [](uintptr_t acc, uintptr_t own, size_t first_block, size_t n_blocks, size_t n, uint8_t kind,
                           uint32_t block, uint8_t rounding, uint32_t seed, uint64_t op_id, uint32_t step, bool rotate) {
        QuantConfig q{QuantKind(kind), block, Rounding(rounding), seed, rotate};
        check_quant_config(q);
        py::gil_scoped_release release;
        reduce_hop(reinterpret_cast<uint8_t*>(acc), reinterpret_cast<const uint8_t*>(own), first_block, n_blocks, n, q,
                   op_id, step);
    }, py::arg("acc_ptr"), py::arg("own_ptr"), py::arg("first_block"), py::arg("n_blocks"), py::arg("n"), py::arg("kind"),
       py::arg("block"), py::arg("rounding") = 0, py::arg("seed") = 0, py::arg("op_id") = 0, py::arg("step") = 0,
       py::arg("rotate") = false, "One ring hop over whole blocks: acc = Q(D(acc) + D(own)).");
    m.def("reduce_hop_exact", [](uintptr_t acc, uintptr_t own_x, uint8_t dtype, size_t first_block, size_t n_blocks,
                                 size_t n, uint8_t kind, uint32_t block, uint8_t rounding, uint32_t seed, uint64_t op_id,
                                 uint32_t step, bool rotate) {
        QuantConfig q{QuantKind(kind), block, Rounding(rounding), seed, rotate};
        check_quant_config(q);
        py::gil_scoped_release release;
        reduce_hop_exact(reinterpret_cast<uint8_t*>(acc), reinterpret_cast<const void*>(own_x), DType(dtype), first_block,
                         n_blocks, n, q, op_id, step);
    }, py::arg("acc_ptr"), py::arg("own_ptr"), py::arg("dtype"), py::arg("first_block"), py::arg("n_blocks"), py::arg("n"),
       py::arg("kind"), py::arg("block"), py::arg("rounding") = 0, py::arg("seed") = 0, py::arg("op_id") = 0,
       py::arg("step") = 0, py::arg("rotate") = false,
       "One ring hop adding our own unquantized values: acc = Q(D(acc) + R(float32(own))).");

    m.def("reduce_owner", [](uintptr_t out, const std::vector<uintptr_t>& received, uintptr_t own_q, uintptr_t own_x,
                             uint8_t dtype, size_t first_block, size_t n_blocks, size_t n, uint8_t kind, uint32_t block,
                             uint8_t rounding, uint32_t seed, uint64_t op_id, bool rotate) {
        QuantConfig q{QuantKind(kind), block, Rounding(rounding), seed, rotate};
        check_quant_config(q);
        std::vector<const uint8_t*> from;
        for (uintptr_t p : received) from.push_back(reinterpret_cast<const uint8_t*>(p));
        py::gil_scoped_release release;
        reduce_owner(reinterpret_cast<uint8_t*>(out), from.data(), from.size(), reinterpret_cast<const uint8_t*>(own_q),
                     reinterpret_cast<const void*>(own_x), DType(dtype), first_block, n_blocks, n, q, op_id);
    }, py::arg("out_ptr"), py::arg("received_ptrs"), py::arg("own_q_ptr"), py::arg("own_x_ptr"), py::arg("dtype"),
       py::arg("first_block"), py::arg("n_blocks"), py::arg("n"), py::arg("kind"), py::arg("block"),
       py::arg("rounding") = 0, py::arg("seed") = 0, py::arg("op_id") = 0, py::arg("rotate") = false,
       "The direct all-reduce's owner sum: Q(own + D(received[0]) + ...), own exact (own_x) or decoded (own_q).");

    // Reduction kernels on raw buffers, so tests can hold them to NumPy element by element.
    m.def("reduce_into", [](uintptr_t acc, uintptr_t local, size_t n, uint8_t dtype, uint8_t op) {
        reduce_into(DType(dtype), ReduceOp(op), reinterpret_cast<void*>(acc), reinterpret_cast<const void*>(local), n);
    }, py::arg("acc_ptr"), py::arg("local_ptr"), py::arg("n"), py::arg("dtype"), py::arg("op"));
    m.def("finalize_avg", [](uintptr_t buf, size_t n, uint8_t dtype, uint32_t world) {
        finalize_avg(DType(dtype), reinterpret_cast<void*>(buf), n, world);
    }, py::arg("ptr"), py::arg("n"), py::arg("dtype"), py::arg("world"));

    // Quantization kernels (docs/quantization.md) on raw host buffers.
    m.def("quantized_bytes", [](size_t n, uint32_t block, uint8_t kind) {
        return quantized_bytes(n, QuantConfig{QuantKind(kind), block});
    }, py::arg("n"), py::arg("block"), py::arg("kind") = uint8_t(QuantKind::kMinMax));
    m.def("quantize", [](uintptr_t x, uint8_t dtype, size_t n, uint8_t kind, uint32_t block, uintptr_t out, bool rotate,
                         uint32_t seed) {
        QuantConfig q{QuantKind(kind), block, Rounding::kNearest, seed, rotate};
        py::gil_scoped_release release;
        quantize(reinterpret_cast<const void*>(x), DType(dtype), n, q, reinterpret_cast<uint8_t*>(out));
    }, py::arg("x_ptr"), py::arg("dtype"), py::arg("n"), py::arg("kind"), py::arg("block"), py::arg("out_ptr"),
       py::arg("rotate") = false, py::arg("seed") = 0);
    m.def("dequantize", [](uintptr_t qb, size_t n, uint8_t kind, uint32_t block, uint8_t dtype, uintptr_t out,
                           uint32_t divide_by, bool rotate, uint32_t seed) {
        QuantConfig q{QuantKind(kind), block, Rounding::kNearest, seed, rotate};
        py::gil_scoped_release release;
        dequantize(reinterpret_cast<const uint8_t*>(qb), n, q, DType(dtype), reinterpret_cast<void*>(out), divide_by);
    }, py::arg("q_ptr"), py::arg("n"), py::arg("kind"), py::arg("block"), py::arg("dtype"), py::arg("out_ptr"),
       py::arg("divide_by") = 1, py::arg("rotate") = false, py::arg("seed") = 0);
}
