// The runtime module, pccl_arrays._core: only what the package itself calls. Converts types, releases the GIL
// around every blocking call (Ctrl-C still reaches it) and maps the core's error kinds to the exception classes
// of pccl_arrays.errors. No Python object crosses into core threads. Arguments are keywords, and their
// defaults are the core's config structs' (CommConfig, MasterConfig): written once. What exists only for tests
// and tools is the second module, pccl_arrays._core_testing (test_seams.cpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <openssl/crypto.h>

#include "peer/communicator.hpp"
#include "transport/handshake.hpp"
#include "python/module_common.hpp"
#include "python/schema_dicts.hpp"
#include "python/dlpack.hpp"
#include "kernels/hash.hpp"
#include "base/log.hpp"
#include "master/server.hpp"
#include "master/state.hpp"
#include "kernels/quant.hpp"
#include "kernels/reduce.hpp"
#include "planning/state_election.hpp"

namespace py = pybind11;
using namespace pccl;

namespace {

// Ctrl-C during a blocking call. Python's C signal handler only sets a flag; the core's waits call this (on
// the main thread only: no other thread runs signal handlers) so that the Python handler runs and its
// exception (KeyboardInterrupt) is kept until the core has cleaned up and the call returns.
unsigned long g_main_thread = 0;
thread_local PyObject *t_pending_type = nullptr, *t_pending_value = nullptr, *t_pending_tb = nullptr;

bool python_interrupt_check() {
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() == 0) return false;
    PyErr_Fetch(&t_pending_type, &t_pending_value, &t_pending_tb);
    return true;
}

// Held around every blocking call: enables the check on the main thread, for the call's duration.
struct InterruptScope {
    InterruptCheck saved = t_interrupt_check;
    InterruptScope() {
        if (PyThread_get_thread_ident() == g_main_thread) t_interrupt_check = &python_interrupt_check;
    }
    ~InterruptScope() { t_interrupt_check = saved; }
};

// The run key of a secret (bytes; None: no secret). The secret's copy here is wiped once the key is derived.
std::optional<crypto::Key> run_key(const std::optional<py::bytes>& secret) {
    if (!secret) return std::nullopt;
    std::string bytes = *secret;
    if (bytes.empty()) throw CoreError(ErrorKind::kInvalidArgument, "the secret is empty");
    const auto key = auth::derive_run_key(bytes);
    OPENSSL_cleanse(bytes.data(), bytes.size());
    return key;
}

// Runs a blocking core call without the GIL, interruptible by Ctrl-C.
template <class F> auto blocking(F&& f) {
    InterruptScope scope;
    py::gil_scoped_release release;
    return f();
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    const CommConfig kComm;
    m.doc() = "C++ core of pccl_arrays: master, peers, striped ring all-reduce";

    register_core_errors([] {
        if (!t_pending_type) return false;
        PyErr_Restore(t_pending_type, t_pending_value, t_pending_tb);
        t_pending_type = t_pending_value = t_pending_tb = nullptr;
        return true;
    });

    g_main_thread = py::module_::import("threading").attr("main_thread")().attr("ident").cast<unsigned long>();

    py::class_<MasterServer>(m, "MasterServer")
        .def(py::init([](const std::string& listen, double peer_timeout, double handshake_timeout,
                         const std::optional<py::bytes>& secret, bool encrypt, double rejoin_window, bool require_inbound) {
                 MasterConfig config{peer_timeout, handshake_timeout};
                 config.rejoin_window = rejoin_window;
                 config.require_inbound = require_inbound;
                 return new MasterServer(listen, config, AuthConfig{run_key(secret), encrypt});
             }),
             py::kw_only(), py::arg("listen"), py::arg("peer_timeout") = MasterConfig{}.peer_timeout,
             py::arg("handshake_timeout") = MasterConfig{}.handshake_timeout, py::arg("secret") = py::none(),
             py::arg("encrypt") = false, py::arg("rejoin_window") = MasterConfig{}.rejoin_window,
             py::arg("require_inbound") = MasterConfig{}.require_inbound)
        .def_property_readonly("epoch", &MasterServer::epoch)
        .def("start", &MasterServer::start, py::call_guard<py::gil_scoped_release>())
        .def("stop", &MasterServer::stop, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("address", &MasterServer::address)
        .def_property_readonly("running", &MasterServer::running)
        .def("stats", [](const MasterServer& s) { return master_stats_dict(s.stats()); })
        .def("status", [](const MasterServer& s) {
            MasterStatus st;
            {
                py::gil_scoped_release release;
                st = s.status();
            }
            return master_status_dict(st);
        })
        .def("links", [](const MasterServer& s) { return links_list(s.links()); });

    m.def("quantization_residual", [](uintptr_t input, uintptr_t output, size_t count, uint8_t dtype, uint8_t qkind,
                                      uint32_t qblock, uint32_t qseed, bool qrotate) {
        const QuantConfig q{QuantKind(qkind), qblock, Rounding::kNearest, qseed, qrotate};
        check_quant_config(q);
        py::gil_scoped_release release;
        quantization_residual(reinterpret_cast<const void*>(input), DType(dtype), count, q, reinterpret_cast<void*>(output));
    }, py::kw_only(), py::arg("input_ptr"), py::arg("output_ptr"), py::arg("count"), py::arg("dtype"), py::arg("qkind"),
       py::arg("qblock"), py::arg("qseed") = 0, py::arg("qrotate") = false,
       "What quantizing the input loses, x - D(Q(x)), into output (error feedback; docs/quantization.md).");
    m.def("content_hash", [](uintptr_t data, size_t n) {
        py::gil_scoped_release release;
        return content_hash(reinterpret_cast<const void*>(data), n);
    }, py::arg("data_ptr"), py::arg("nbytes"), "The 64-bit content hash of shared state (docs/shared_state.md).");

    m.attr("PROTOCOL_VERSION") = wire::kVersion;

    // The one table of codes the wire and the core use; the Python package reads its names from here.
    {
        py::dict codes, dtypes, ops, errors_by_name;
        for (uint8_t c = 0; c < kDTypeCount; c++) dtypes[dtype_name(DType(c))] = c;
        for (uint8_t c = 0; c < kReduceOpCount; c++) ops[op_name(ReduceOp(c))] = c;
        for (uint8_t c = 1; c <= uint8_t(ErrorKind::kAuthentication); c++) errors_by_name[error_kind_name(ErrorKind(c))] = c;
        codes["dtype"] = dtypes;
        codes["op"] = ops;
        codes["quant_kind"] = py::dict(py::arg("none") = uint8_t(QuantKind::kNone), py::arg("minmax") = uint8_t(QuantKind::kMinMax),
                                       py::arg("zeropoint") = uint8_t(QuantKind::kZeroPoint),
                                       py::arg("minmax4") = uint8_t(QuantKind::kMinMax4));
        codes["rounding"] = py::dict(py::arg("nearest") = uint8_t(Rounding::kNearest),
                                     py::arg("stochastic") = uint8_t(Rounding::kStochastic));
        codes["sync_strategy"] = py::dict(py::arg("enforce_popular") = uint8_t(wire::SyncStrategy::kEnforcePopular),
                                          py::arg("receive_only") = uint8_t(wire::SyncStrategy::kReceiveOnly),
                                          py::arg("send_only") = uint8_t(wire::SyncStrategy::kSendOnly));
        codes["error_kind"] = errors_by_name;
        m.attr("CODES") = codes;
        const MasterConfig master;
        const CommConfig comm;
        m.attr("DEFAULTS") = py::dict(
            py::arg("peer_timeout") = master.peer_timeout, py::arg("handshake_timeout") = master.handshake_timeout,
            py::arg("rejoin_window") = master.rejoin_window,
            py::arg("connections") = comm.connections, py::arg("connect_timeout") = comm.connect_timeout,
            py::arg("heartbeat_interval") = comm.heartbeat_interval, py::arg("master_timeout") = comm.master_timeout,
            py::arg("master_grace") = comm.master_grace, py::arg("data_timeout") = comm.data_timeout, py::arg("piece_bytes") = comm.piece_bytes,
            py::arg("op_timeout") = comm.op_timeout);
    }

    // The core's log lines, for pccl_arrays.log's drain thread (the only caller).
    m.def("log_attach_drain", &log_attach_drain);
    m.def("log_take", [](double timeout) { return blocking([&] { return log_take(timeout); }); }, py::arg("timeout"));
    m.def("log_level", &log_level);
    py::class_<OpInfo>(m, "OpInfo")
        .def_readonly("op_id", &OpInfo::op_id)
        .def_readonly("world_size", &OpInfo::world_size)
        .def_readonly("rank", &OpInfo::rank)
        .def_readonly("peers", &OpInfo::peers)
        .def_readonly("stripes", &OpInfo::stripes)
        .def_readonly("bytes_sent", &OpInfo::bytes_sent)
        .def_readonly("bytes_received", &OpInfo::bytes_received)
        .def_readonly("seconds", &OpInfo::seconds);

    py::class_<Communicator>(m, "Communicator")
        .def(py::init([](const std::string& master, uint32_t group, uint32_t connections, const std::string& listen,
                         const std::string& advertise, double connect_timeout, double heartbeat_interval,
                         double master_timeout, double master_grace, double data_timeout, size_t piece_bytes,
                         double op_timeout, uint32_t min_world, const std::optional<py::bytes>& secret) {
                 CommConfig c;
                 c.key = run_key(secret);
                 c.master = master;
                 c.peer_group = group;
                 c.connections = connections;
                 c.listen = listen;
                 c.advertise = advertise;
                 c.connect_timeout = connect_timeout;
                 c.heartbeat_interval = heartbeat_interval;
                 c.master_timeout = master_timeout;
                 c.master_grace = master_grace;
                 c.data_timeout = data_timeout;
                 c.piece_bytes = piece_bytes;
                 c.op_timeout = op_timeout;
                 c.min_world = min_world;
                 return new Communicator(c);
             }),
             py::kw_only(), py::arg("master"), py::arg("peer_group") = kComm.peer_group,
             py::arg("connections") = kComm.connections, py::arg("listen") = kComm.listen,
             py::arg("advertise") = kComm.advertise, py::arg("connect_timeout") = kComm.connect_timeout,
             py::arg("heartbeat_interval") = kComm.heartbeat_interval, py::arg("master_timeout") = kComm.master_timeout,
             py::arg("master_grace") = kComm.master_grace, py::arg("data_timeout") = kComm.data_timeout, py::arg("piece_bytes") = kComm.piece_bytes,
             py::arg("op_timeout") = kComm.op_timeout, py::arg("min_world") = kComm.min_world,
             py::arg("secret") = py::none())
        .def("connect", [](Communicator& c, double t) { blocking([&] { c.connect(t); }); }, py::arg("admission_timeout"))
        .def("update_topology", [](Communicator& c, double t) { blocking([&] { c.update_topology(t); }); },
             py::arg("timeout") = -1.0)
        .def("optimize_topology", [](Communicator& c, double t) { return blocking([&] { return c.optimize_topology(t); }); },
             py::arg("timeout") = -1.0)
        .def("pending_peers", [](Communicator& c) { return blocking([&] { return c.pending_peers(); }); })
        .def("all_reduce",
             [](Communicator& c, uintptr_t input, uintptr_t output, uint64_t count, uint8_t dtype, uint8_t op, uint64_t tag,
                uint8_t qkind, uint32_t qblock, uint8_t qround, uint32_t qseed, bool qrotate, bool qdirect,
                bool host_quantized, std::vector<uint64_t> shape, uint64_t structure, std::string structure_text,
                double timeout) {
                 QuantConfig q{QuantKind(qkind), qblock, Rounding(qround), qseed, qrotate, qdirect};
                 CallOptions o{std::move(shape), structure, std::move(structure_text), timeout};
                 const auto* in = reinterpret_cast<const void*>(input);
                 auto* out = reinterpret_cast<void*>(output);
                 return blocking([&] {
                     return host_quantized ? c.all_reduce_quantized(in, out, count, DType(dtype), ReduceOp(op), tag, q, o)
                                           : c.all_reduce(in, out, count, DType(dtype), ReduceOp(op), tag, q, o);
                 });
             },
             py::kw_only(), py::arg("input_ptr"), py::arg("output_ptr"), py::arg("count"), py::arg("dtype"), py::arg("op"), py::arg("tag"),
             py::arg("qkind") = 0, py::arg("qblock") = 0, py::arg("qround") = 0, py::arg("qseed") = 0,
             py::arg("qrotate") = false, py::arg("qdirect") = false, py::arg("host_quantized") = false, py::arg("shape") = std::vector<uint64_t>{}, py::arg("structure") = 0,
             py::arg("structure_text") = "", py::arg("timeout") = -1.0,
             "Plain, or quantized: host_quantized takes arrays of the dtype and quantizes on the stripes' threads; "
             "otherwise input and output are quantized bytes (the device path).")
        .def("collective",
             [](Communicator& c, uint8_t kind, uintptr_t input, uintptr_t output, uint64_t count, uint64_t output_count,
                uint8_t dtype, uint8_t op, uint64_t root, uint64_t tag, std::vector<uint64_t> shape, double timeout,
                std::shared_ptr<dl::BufferPool> pool, uint8_t qkind, uint32_t qblock, uint8_t qround, uint32_t qseed,
                bool qrotate, bool qdirect) {
                 CallOptions o{std::move(shape), 0, "", timeout};
                 const QuantConfig q{QuantKind(qkind), qblock, Rounding(qround), qseed, qrotate, qdirect};
                 // No output: the core sizes the result from the operation's group, in memory from the pool.
                 std::shared_ptr<uint8_t> held;
                 size_t held_bytes = 0;
                 auto allocate = [&](size_t bytes) {
                     held = pool ? pool->take(bytes) : dl::aligned_block(bytes);
                     held_bytes = bytes;
                     return held.get();
                 };
                 OpInfo info = blocking([&] {
                     return c.collective(OpKind(kind), reinterpret_cast<const void*>(input), reinterpret_cast<void*>(output),
                                         count, output_count, DType(dtype), ReduceOp(op), root, tag, o,
                                         output ? Allocator{} : Allocator(allocate), q);
                 });
                 py::object buffer = py::none();
                 if (!output && kind != uint8_t(OpKind::kBarrier)) {
                     const size_t elements = held_bytes / dtype_size(DType(dtype));
                     if (!held) held = dl::aligned_block(64);  // an empty result
                     buffer = py::cast(std::make_shared<dl::HostBuffer>(std::vector<int64_t>{int64_t(elements)}, int(dtype),
                                                                        held, held_bytes));
                 }
                 return py::make_tuple(info, buffer);
             },
             py::kw_only(), py::arg("kind"), py::arg("input_ptr"), py::arg("output_ptr"), py::arg("count"),
             py::arg("output_count"), py::arg("dtype"), py::arg("op") = 0, py::arg("root") = 0, py::arg("tag"),
             py::arg("shape") = std::vector<uint64_t>{}, py::arg("timeout") = -1.0, py::arg("pool") = nullptr,
             py::arg("qkind") = 0, py::arg("qblock") = 0, py::arg("qround") = 0, py::arg("qseed") = 0,
             py::arg("qrotate") = false, py::arg("qdirect") = false,
             "broadcast (kind 1), all_gather (2), reduce_scatter (3) or barrier (4); see communicator.hpp. Returns "
             "(info, None), or with output_ptr 0 (info, a flat HostBuffer holding the result, from `pool`).")
        .def("sync_state",
             [](Communicator& c, const py::list& entries, const std::vector<uintptr_t>& ptrs, uint64_t revision,
                uint8_t strategy, double timeout) {
                 std::vector<wire::StateEntry> es;
                 std::vector<const uint8_t*> data;
                 for (auto item : entries) es.push_back(pydict::from_dict<wire::StateEntry>(item.cast<py::dict>()));
                 for (uintptr_t p : ptrs) data.push_back(reinterpret_cast<const uint8_t*>(p));
                 SyncOutcome o = blocking([&] { return c.sync_state(es, data, revision, strategy, timeout); });
                 py::list buffers;
                 for (size_t k = 0; k < o.fetched.size(); k++) {
                     const auto& e = es[o.fetched[k]];
                     std::vector<int64_t> shape(e.shape.begin(), e.shape.end());
                     buffers.append(std::make_shared<dl::HostBuffer>(shape, int(e.dtype), o.buffers[k], size_t(e.nbytes)));
                 }
                 py::dict d;
                 d["sync_id"] = o.sync_id; d["revision"] = o.revision; d["fetched"] = o.fetched; d["buffers"] = buffers;
                 d["bytes_sent"] = o.bytes_sent; d["bytes_received"] = o.bytes_received; d["sent_to"] = o.sent_to;
                 d["received_from"] = o.received_from; d["world_size"] = o.world_size; d["seconds"] = o.seconds;
                 return d;
             },
             py::kw_only(), py::arg("entries"), py::arg("data_ptrs"), py::arg("revision"), py::arg("strategy"),
             py::arg("timeout") = -1.0)
        .def("close", &Communicator::close, py::call_guard<py::gil_scoped_release>())
        .def("abandon", &Communicator::abandon, py::arg("why"), py::call_guard<py::gil_scoped_release>(),
             "Leaves the job because of an interrupt the core did not see; later calls raise `why`.")
        .def_property_readonly("peer_id", &Communicator::peer_id)
        .def_property_readonly("world_size", &Communicator::world_size)
        .def_property_readonly("group_world_size", &Communicator::group_world_size)
        .def_property_readonly("group_rank", &Communicator::group_rank)
        .def("ring_ids", &Communicator::ring_ids)
        .def_property_readonly("connected", &Communicator::connected)
        .def_property_readonly("data_address", &Communicator::data_address)
        .def_property_readonly("data_port", &Communicator::data_port)
        .def_property_readonly("dropped_data_connections", &Communicator::dropped_data_connections)
        .def("connection_stats", [](const Communicator& c) {
            py::list out;
            for (const auto& s : c.connection_stats()) {
                py::dict d;
                d["peer"] = s.peer;
                d["slot"] = s.slot;
                d["index"] = s.index;
                d["direction"] = s.outgoing ? "send" : "recv";
                d["bytes"] = s.bytes;
                out.append(d);
            }
            return out;
        })
        .def_property_readonly("inbound", &Communicator::inbound)
        .def_property_readonly("master_generation", &Communicator::master_generation)
        .def("acknowledge_loss", &Communicator::acknowledge_loss, py::arg("generation"),
             "The caller has seen a collective fail since master loss number `generation`: collectives go on.")
        .def("relay_stats", [](const Communicator& c) {
            const auto r = c.relay_stats();
            py::dict d;
            d["inbound"] = c.inbound();
            d["relayed_connections"] = c.relayed_connections();
            d["via_master"] = c.master_relayed_connections();
            d["relay_pipes"] = r.pipes;
            d["relay_open"] = r.open;
            d["relay_bytes"] = r.bytes;
            d["relay_unmatched"] = r.unmatched;
            return d;
        });

    // DLPack: capsules in (zero-copy views of producers' memory), core-owned buffers out.
    py::class_<dl::View>(m, "DLView")
        .def_static("from_capsule", &dl::View::from_capsule, py::arg("capsule"),
                    "Takes over an unused DLPack capsule (legacy or versioned).")
        .def_property_readonly("data", &dl::View::data)
        .def_property_readonly("shape", &dl::View::shape)
        .def_property_readonly("strides", &dl::View::strides)
        .def_property_readonly("dtype_name", &dl::View::dtype_name)
        .def_property_readonly("dtype_code", &dl::View::dtype_code)
        .def_property_readonly("itemsize", &dl::View::itemsize)
        .def_property_readonly("size", &dl::View::size)
        .def_property_readonly("compact", &dl::View::compact)
        .def_property_readonly("readonly", &dl::View::readonly)
        .def_property_readonly("versioned", &dl::View::versioned)
        .def_property_readonly("device", &dl::View::device);

    py::class_<dl::BufferPool, std::shared_ptr<dl::BufferPool>>(m, "BufferPool",
                                                                "Recycled host memory for new results (buffer_pool.hpp).")
        .def(py::init([](size_t max_bytes) { return std::make_shared<dl::BufferPool>(max_bytes); }), py::arg("max_bytes"))
        .def("release", &dl::BufferPool::release, "Frees the memory held; later returns are freed too.")
        .def("stats", [](const dl::BufferPool& p) {
            auto s = p.stats();
            py::dict d;
            d["held_bytes"] = s.held_bytes;
            d["max_bytes"] = s.max_bytes;
            d["reused"] = s.reused;
            d["allocated"] = s.allocated;
            return d;
        });

    py::class_<dl::HostBuffer, std::shared_ptr<dl::HostBuffer>>(m, "HostBuffer")
        .def(py::init([](std::vector<int64_t> shape, int dtype_code, std::shared_ptr<dl::BufferPool> pool) {
                 return std::make_shared<dl::HostBuffer>(std::move(shape), dtype_code, pool.get());
             }),
             py::arg("shape"), py::arg("dtype_code"), py::arg("pool") = nullptr)
        .def_property_readonly("data", &dl::HostBuffer::data)
        .def_property_readonly("nbytes", &dl::HostBuffer::nbytes)
        .def_property_readonly("shape", &dl::HostBuffer::shape)
        .def_property_readonly("dtype_code", &dl::HostBuffer::dtype_code)
        .def_static("alias", &dl::HostBuffer::alias, py::arg("other"), py::arg("dtype_code"))
        .def_static("reshaped", &dl::HostBuffer::reshaped, py::arg("other"), py::arg("shape"))
        .def("__dlpack__",
             [](dl::HostBuffer& b, py::object stream, py::object max_version, py::object dl_device, py::object copy) {
                 (void)stream;
                 if (!dl_device.is_none() && dl_device.cast<std::pair<int, int>>() != std::make_pair(int(dl::kCPU), 0))
                     throw py::buffer_error("a host buffer can only be exported to the CPU");
                 if (!copy.is_none() && copy.cast<bool>())
                     throw py::buffer_error("copy=True is not supported; the buffer is exported as it is");
                 bool versioned = !max_version.is_none() && max_version.cast<std::pair<int, int>>().first >= 1;
                 return b.export_capsule(versioned);
             },
             py::kw_only(), py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
             py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
        .def("__dlpack_device__", [](const dl::HostBuffer&) { return std::make_pair(int(dl::kCPU), 0); });

    m.def("memcpy", [](uintptr_t dst, uintptr_t src, size_t n) {
        py::gil_scoped_release release;
        if (n) std::memcpy(reinterpret_cast<void*>(dst), reinterpret_cast<const void*>(src), n);
    }, py::arg("dst_ptr"), py::arg("src_ptr"), py::arg("nbytes"), "Copies bytes between host buffers (packing pytrees).");
}
