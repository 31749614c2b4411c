// The life of one all-reduce on a peer (communicator.hpp has the overview): the arguments checked, the units
// the ring moves, the descriptor every peer must announce alike, OP_START and the wait for OP_GO, the slot's
// resources, the stripes of the ring (or of the direct all-reduce, for quantized operations that ask for it),
// and the two-phase end (settle, in communicator.cpp, shared with syncs).
#include <algorithm>
#include <cstring>

#include "peer/communicator.hpp"
#include "peer/direct.hpp"
#include "kernels/reduce.hpp"

namespace pccl {

using wire::MsgType;

// The ring's work for one operation (RingWork). Plain: element-wise folds. Quantized blocks from a device:
// each hop decodes, adds our own decoded blocks and re-quantizes. The quantized host path (`exact` is the
// caller's array): our own chunk is encoded as it leaves, each hop adds our exact input, and final blocks are
// decoded into `decoded` (divided by `divide_by` for avg) on the stripes' threads.
static RingWork make_work(DType dtype, ReduceOp op, const QuantConfig& quant, uint64_t count, uint64_t op_id,
                          const void* exact, void* decoded, uint32_t divide_by) {
    RingWork work;
    if (!quant.enabled()) {
        work.fold = [dtype, op](uint8_t* acc, const uint8_t* own, size_t, size_t n, uint32_t) { reduce_into(dtype, op, acc, own, n); };
        return work;
    }
    if (!exact) {
        work.fold = [=](uint8_t* acc, const uint8_t* own, size_t first, size_t n, uint32_t step) {
            reduce_hop(acc, own, first, n, count, quant, op_id, step);
        };
        return work;
    }
    const auto* x = static_cast<const uint8_t*>(exact);
    const size_t stride = size_t(quant.block) * dtype_size(dtype);
    work.fold = [=](uint8_t* acc, const uint8_t*, size_t first, size_t n, uint32_t step) {
        reduce_hop_exact(acc, x + first * stride, dtype, first, n, count, quant, op_id, step);
    };
    work.encode = [=](uint8_t* units, size_t first, size_t n) { quantize_blocks(x, dtype, first, n, count, quant, units); };
    work.finish = [=](uint8_t* units, size_t first, size_t n) {
        dequantize_blocks(units, first, n, count, quant, dtype, decoded, divide_by);
    };
    return work;
}

// The direct all-reduce's work (peer/direct.hpp): the host path's encode and finish as for the ring, and the
// owner's sum of its own contribution (exact on the host path, the quantized input on the device path) and the
// world - 1 senders' units.
static DirectWork make_direct_work(const RingWork& ring, DType dtype, const QuantConfig& quant, uint64_t count,
                                   uint64_t op_id, const void* exact, const void* input, uint32_t world) {
    DirectWork work;
    work.encode = ring.encode;
    work.finish = ring.finish;
    const auto* x = static_cast<const uint8_t*>(exact);
    const auto* q = static_cast<const uint8_t*>(input);
    const size_t stride = size_t(quant.block) * dtype_size(dtype), unit = quant_block_bytes(quant, quant.block);
    work.reduce = [=](uint8_t* out, const uint8_t* const* received, size_t first, size_t n) {
        reduce_owner(out, received, world - 1, x ? nullptr : q + first * unit, x ? x + first * stride : nullptr, dtype,
                     first, n, count, quant, op_id);
    };
    return work;
}

// Arguments the core refuses before anything is sent (also for the other collectives: collectives.cpp).
void Communicator::check_call(DType dtype, ReduceOp op, const QuantConfig& quant, const void* input,
                              const void* output, const CallOptions& options) {
    if (options.shape.size() > wire::kMaxDims)
        throw CoreError(ErrorKind::kInvalidArgument, "at most " + std::to_string(wire::kMaxDims) + " dimensions");
    if (options.structure_text.size() > wire::kMaxString)
        throw CoreError(ErrorKind::kInvalidArgument, "the structure summary is longer than 4096 bytes");
    if (uint8_t(dtype) >= kDTypeCount) throw CoreError(ErrorKind::kInvalidArgument, "unknown dtype code");
    if (uint8_t(op) >= kReduceOpCount) throw CoreError(ErrorKind::kInvalidArgument, "unknown reduce op code");
    if (op == ReduceOp::kAvg && !dtype_is_float(dtype))
        throw CoreError(ErrorKind::kInvalidArgument,
                        std::string("avg is defined for floating dtypes only, not ") + dtype_name(dtype) + "; use sum");
    if (!quant.enabled()) return;
    check_quant_config(quant);
    if (!dtype_is_float(dtype) || (op != ReduceOp::kSum && op != ReduceOp::kAvg))
        throw CoreError(ErrorKind::kInvalidArgument, "quantized all-reduce is for sum and avg of floating dtypes");
    if (input == output && input) throw CoreError(ErrorKind::kInvalidArgument, "quantized buffers must be distinct");
}

// What the ring moves: elements, or whole quantized blocks.
static RingPlan ring_units(uint64_t count, DType dtype, const QuantConfig& quant) {
    RingPlan plan;
    if (quant.enabled()) {
        plan.units = quant_blocks(count, quant.block);
        plan.unit_bytes = quant_block_bytes(quant, quant.block);
        plan.last_unit_bytes = quant_block_bytes(quant, count % quant.block ? count % quant.block : quant.block);
    } else {
        plan.units = count;
        plan.unit_bytes = plan.last_unit_bytes = dtype_size(dtype);
    }
    return plan;
}

// What every peer of the operation must announce identically.
wire::OpDesc Communicator::descriptor_of(uint64_t count, DType dtype, ReduceOp op, const QuantConfig& quant,
                                         const CallOptions& options) {
    wire::OpDesc desc;
    desc.count = count;
    desc.dtype = uint8_t(dtype);
    desc.op = uint8_t(op);
    desc.quant = uint8_t(quant.kind);
    if (quant.enabled()) {
        desc.qblock = quant.block;
        desc.qround = uint8_t(quant.rounding);
        desc.qseed = quant.seed;
        desc.qrotate = quant.rotate ? 1 : 0;
        desc.qreduce = quant.direct ? 1 : 0;
    }
    desc.shape = options.shape.empty() ? std::vector<uint64_t>{count} : options.shape;
    desc.structure = options.structure;
    desc.structure_text = options.structure_text;
    return desc;
}

Communicator::InFlightCall::InFlightCall(Communicator* c, uint64_t tag) : c_(c), tag_(tag) {
    std::lock_guard<std::mutex> g(c_->mu_);
    if (c_->syncing_) throw CoreError(ErrorKind::kState, "a collective while sync_shared_state() runs on this peer");
    if (!c_->tags_in_flight_.insert(tag).second)
        throw CoreError(ErrorKind::kInvalidArgument,
                        "tag " + std::to_string(tag) + " is already in flight on this communicator: use distinct tags");
    c_->in_flight_++;
}

Communicator::InFlightCall::~InFlightCall() {
    std::lock_guard<std::mutex> g(c_->mu_);
    c_->tags_in_flight_.erase(tag_);
    c_->in_flight_--;
    c_->cv_.notify_all();
}

wire::OpGo Communicator::start_op(uint64_t tag, const wire::OpDesc& desc, double timeout, uint64_t* gen) {
    const uint32_t ms = timeout_ms(timeout);
    *gen = send_master(MsgType::kOpStart, wire::OpStart{tag, desc, ms, cfg_.min_world}, Send::kStart);
    Frame f = wait_frame(
        [tag](const Frame& f) {
            if (f.type == uint16_t(MsgType::kOpGo)) return wire::decode_payload<wire::OpGo>(f.payload).tag == tag;
            if (f.type == uint16_t(MsgType::kOpReject)) return wire::decode_payload<wire::OpReject>(f.payload).tag == tag;
            return false;
        },
        ms ? net::now_seconds() + ms / 1000.0 + cfg_.master_timeout : -1, "the other peers to start the collective", *gen);
    if (f.type == uint16_t(MsgType::kOpReject)) {
        auto r = wire::decode_payload<wire::OpReject>(f.payload);
        throw CoreError(ErrorKind(r.kind), r.reason);
    }
    auto go = wire::decode_payload<wire::OpGo>(f.payload);
    set_ring(go.ring);
    return go;
}

std::vector<uint8_t> Communicator::complete_go(const std::vector<uint8_t>& payload) {
    auto go = wire::decode_payload<wire::OpGo>(payload);
    if (!go.ring.empty()) {
        go_ring_ = go.ring;
        go_ring_epoch_ = go.ring_epoch;
        return payload;
    }
    if (go.ring_epoch != go_ring_epoch_ || go_ring_.empty())
        throw CoreError(ErrorKind::kProtocol, "OP_GO without a ring for ring epoch " + std::to_string(go.ring_epoch) +
                                                  " (this peer has " + std::to_string(go_ring_epoch_) + ")");
    go.ring = go_ring_;
    wire::Writer w;
    wire::encode(w, go);
    return std::move(w.bytes());
}

std::shared_ptr<Communicator::SlotResources> Communicator::slot_resources(uint32_t slot) {
    std::lock_guard<std::mutex> g(mu_);
    auto& r = slots_[slot];
    if (!r) r = std::make_shared<SlotResources>();
    return r;
}

uint8_t* Communicator::SlotResources::scratch_for(size_t bytes, int which) {
    Scratch& s = scratch[which];
    if (s.bytes < bytes) {
        s.data.reset(new uint8_t[bytes]);
        s.bytes = bytes;
    }
    return s.data.get();
}

OpInfo Communicator::run_ring(RingPlan plan, const wire::OpGo& go, const RingWork& work, const void* input,
                              uint8_t* result, OpControl& ctl, SlotResources& res, const DirectWork* direct) {
    const uint32_t world = uint32_t(go.ring.size());
    const uint32_t rank = rank_in(go.ring);
    if (rank == world) throw CoreError(ErrorKind::kProtocol, "the master started an operation without this peer");
    const size_t total_bytes = plan.byte_len(0, plan.units);
    OpInfo info;
    info.op_id = go.op_id;
    info.world_size = world;
    info.rank = rank;
    for (const auto& p : go.ring) info.peers.push_back(p.id);
    info.stripes = stripes_for(total_bytes, go.stripes);
    if (world == 1) {
        if (work.encode && plan.units) {
            work.encode(result, 0, plan.units);
            work.finish(result, 0, plan.units);
        } else if (total_bytes && result != input) {
            std::memcpy(result, input, total_bytes);
        }
        return info;
    }
    plan.world = world;
    plan.rank = rank;
    plan.stripes = info.stripes;
    plan.piece_bytes = cfg_.piece_bytes;
    std::vector<StripeBytes> bytes(info.stripes);
    const auto* in = static_cast<const uint8_t*>(input);
    if (direct) {
        DirectLinks links{&pool_, go.slot, go.ring, cfg_.connect_timeout, cfg_.data_timeout};
        // Our quantized contribution: encoded as it leaves on the host path, the caller's bytes on the device path.
        uint8_t* mine = direct->encode ? res.scratch_for(total_bytes, 2) : const_cast<uint8_t*>(in);
        uint8_t* inbox = direct->reduce || direct->collect ? res.scratch_for((world - 1) * direct_inbox_bytes(plan), 3)
                                                           : nullptr;
        res.workers.run(info.stripes, [&](uint32_t j) {
            run_direct_stripe(plan, j, *direct, mine, inbox, result, links, ctl, &bytes[j]);
        });
    } else {
        RingLinks links{&pool_, go.slot, go.ring[(rank + 1) % world], go.ring[(rank + world - 1) % world],
                        cfg_.connect_timeout, cfg_.data_timeout};
        res.workers.run(info.stripes, [&](uint32_t j) { run_stripe(plan, j, work, in, result, links, ctl, &bytes[j]); });
    }
    for (const auto& b : bytes) {
        info.bytes_sent += b.sent;
        info.bytes_received += b.received;
    }
    return info;
}

uint32_t Communicator::rank_in(const std::vector<wire::PeerInfo>& ring) const {
    auto me = std::find_if(ring.begin(), ring.end(), [this](const wire::PeerInfo& p) { return p.id == peer_id_; });
    return uint32_t(me - ring.begin());
}

OpInfo Communicator::all_reduce(const void* input, void* output, uint64_t count, DType dtype, ReduceOp op, uint64_t tag,
                                const QuantConfig& quant, const CallOptions& options) {
    return reduce(input, output, count, dtype, op, tag, quant, nullptr, options);
}

OpInfo Communicator::all_reduce_quantized(const void* x, void* out, uint64_t count, DType dtype, ReduceOp op,
                                          uint64_t tag, const QuantConfig& quant, const CallOptions& options) {
    if (!quant.enabled()) throw CoreError(ErrorKind::kInvalidArgument, "all_reduce_quantized needs a quantization");
    return reduce(nullptr, out, count, dtype, op, tag, quant, x, options);
}

OpInfo Communicator::reduce(const void* input, void* output, uint64_t count, DType dtype, ReduceOp op, uint64_t tag,
                            const QuantConfig& quant, const void* exact, const CallOptions& options) {
    check_call(dtype, op, quant, input, output, options);
    require_accepted();
    InFlightCall in_flight(this, tag);
    const double t0 = net::now_seconds();
    const RingPlan plan = ring_units(count, dtype, quant);
    const size_t total_bytes = plan.byte_len(0, plan.units);
    const size_t out_bytes = exact ? count * dtype_size(dtype) : total_bytes;
    uint64_t gen = 0;
    const auto go = start_op(tag, descriptor_of(count, dtype, op, quant, options), options.timeout, &gen);

    OpControl ctl(go.op_id);
    const std::shared_ptr<SlotResources> held = slot_resources(go.slot);  // outlives a close() meanwhile
    SlotResources& res = *held;
    track(ctl);
    // The master may hand this slot to our next operation as soon as it commits this one, while we still copy
    // the result out of the slot's scratch: the next one waits here for that copy.
    std::unique_lock<std::mutex> slot_lock(res.mu);
    // In place, the input stays intact until the commit: the result goes to the slot's scratch first. The
    // quantized host path keeps its blocks in scratch and decodes them into the output (or, in place, into
    // a second scratch).
    const bool in_place = output == (exact ? exact : input) && out_bytes;
    uint8_t* result = static_cast<uint8_t*>(output);  // where the ring's units land
    void* decoded = nullptr;                          // where the quantized host path decodes them
    if (exact) {
        result = res.scratch_for(total_bytes, 0);
        decoded = in_place ? res.scratch_for(out_bytes, 1) : output;
    } else if (in_place) {
        result = res.scratch_for(total_bytes, 0);
    }
    const uint32_t divide_by = op == ReduceOp::kAvg && exact ? uint32_t(go.ring.size()) : 1;
    const RingWork work = make_work(dtype, op, quant, count, go.op_id, exact, decoded, divide_by);
    const bool direct = quant.enabled() && quant.direct;
    const DirectWork direct_work = direct ? make_direct_work(work, dtype, quant, count, go.op_id, exact, input,
                                                             uint32_t(go.ring.size()))
                                          : DirectWork{};
    OpInfo info = run_ring(plan, go, work, exact ? result : input, result, ctl, res, direct ? &direct_work : nullptr);
    untrack(ctl);
    ErrorKind kind;
    std::string why;
    if (op == ReduceOp::kAvg && count && !quant.enabled() && !ctl.failed(&kind, &why))
        finalize_avg(dtype, result, count, info.world_size);
    settle(ctl, go.slot, gen);
    if (in_place)  // the commit copies on the stripes' threads too
        res.workers.copy(output, exact ? decoded : result, out_bytes, std::max<uint32_t>(info.stripes, 2));
    info.seconds = net::now_seconds() - t0;
    return info;
}

}  // namespace pccl
