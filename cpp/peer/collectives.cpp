// The collectives beside all-reduce: broadcast, all_gather, reduce_scatter and barrier (communicator.hpp has
// their contract, docs/collectives.md the user's view).
//
// How this works. Each is an operation like an all-reduce: OP_START with a descriptor that names the collective
// (and the broadcast's root), the master's match and OP_GO, the data, and the two-phase end, so deadlines,
// typed errors and "commit on every peer or none" are the all-reduce's. The data moves as the direct
// all-reduce's two steps (direct.hpp) with transfers left out: every peer talks to every other peer over the
// slot's striped connections, and every byte is copied verbatim or reduced once, by its chunk's owner, so all
// peers end bitwise identical. A barrier moves no data: the agreement and the commit are the barrier.
#include <algorithm>
#include <cstring>

#include "kernels/reduce.hpp"
#include "peer/communicator.hpp"

namespace pccl {

namespace {

// Rows along the first axis (a flat array: its elements), and elements per row.
void rows_of(uint64_t count, const std::vector<uint64_t>& shape, uint64_t* rows, uint64_t* row_elems) {
    *rows = shape.empty() ? count : shape[0];
    *row_elems = *rows && count ? count / *rows : 1;
}

// Quantized all_gather and reduce_scatter move opaque bytes: each chunk quantized on its own (all_gather: a
// peer's input; reduce_scatter: chunk c of every peer's input, so the owner can decode it alone). The plan's
// units are bytes, chunk c's are [bounds[c], bounds[c+1]); elements: chunk c holds elems[c] from first[c].
struct QuantizedChunks {
    std::vector<size_t> first, elems, bounds;
};

QuantizedChunks quantized_chunks(const RingPlan& elements, const QuantConfig& quant) {
    QuantizedChunks q;
    q.bounds.push_back(0);
    for (uint32_t c = 0; c < elements.world; c++) {
        size_t f, n;
        elements.region(c, 0, &f, &n);
        q.first.push_back(f);
        q.elems.push_back(n);
        q.bounds.push_back(q.bounds.back() + quantized_bytes(n, quant));
    }
    return q;
}

}  // namespace

OpInfo Communicator::collective(OpKind kind, const void* input, void* output, uint64_t count, uint64_t output_count,
                                DType dtype, ReduceOp op, uint64_t root, uint64_t tag, const CallOptions& options,
                                const Allocator& allocate, const QuantConfig& quant_arg) {
    if (kind == OpKind::kAllReduce || uint8_t(kind) >= kOpKindCount)
        throw CoreError(ErrorKind::kInvalidArgument, "collective(): broadcast, all_gather, reduce_scatter or barrier");
    if (kind != OpKind::kReduceScatter) op = ReduceOp::kSum;  // unused; one value so descriptors compare alike
    if (kind == OpKind::kBarrier) count = output_count = 0;
    QuantConfig quant = quant_arg;
    quant.direct = quant.enabled();  // every collective here moves chunks directly: one descriptor for it
    if (quant.enabled() && kind != OpKind::kAllGather && kind != OpKind::kReduceScatter)
        throw CoreError(ErrorKind::kInvalidArgument, "only all_gather and reduce_scatter (and all_reduce) quantize");
    check_call(dtype, op, quant, input, output, options);
    if ((kind == OpKind::kAllGather || kind == OpKind::kReduceScatter) && count && input == output)
        throw CoreError(ErrorKind::kInvalidArgument, std::string(op_kind_name(kind)) + " cannot run in place");
    uint64_t rows, row_elems;
    rows_of(count, options.shape, &rows, &row_elems);
    if (kind == OpKind::kReduceScatter && rows * row_elems != count)
        throw CoreError(ErrorKind::kInvalidArgument, "reduce_scatter: the shape does not hold `count` elements");
    require_accepted();
    InFlightCall in_flight(this, tag);
    const double t0 = net::now_seconds();
    wire::OpDesc desc = descriptor_of(count, dtype, op, quant, options);
    desc.collective = uint8_t(kind);
    desc.root = kind == OpKind::kBroadcast ? root : 0;
    uint64_t gen = 0;
    const auto go = start_op(tag, desc, options.timeout, &gen);
    const uint32_t world = uint32_t(go.ring.size()), rank = rank_in(go.ring);
    const size_t esize = dtype_size(dtype);

    // The chunks in elements (a stripe-less plan); the plan the stripes run moves elements, or quantized bytes.
    RingPlan chunks;
    chunks.units = kind == OpKind::kAllGather ? world * count : count;
    chunks.row_units = kind == OpKind::kAllGather ? std::max<uint64_t>(count, 1)
                                                  : kind == OpKind::kReduceScatter ? row_elems : 1;
    chunks.world = world;
    size_t mine_first, mine_len;
    chunks.region(rank, 0, &mine_first, &mine_len);
    RingPlan plan = chunks;
    plan.unit_bytes = plan.last_unit_bytes = esize;
    QuantizedChunks qc;
    if (quant.enabled()) {
        qc = quantized_chunks(chunks, quant);
        plan.units = qc.bounds.back();
        plan.unit_bytes = plan.last_unit_bytes = 1;
        plan.row_units = 1;
        plan.bounds = qc.bounds;
    }
    const uint64_t wanted = kind == OpKind::kAllGather ? chunks.units : kind == OpKind::kReduceScatter ? mine_len : count;

    if (!output && allocate && kind != OpKind::kBarrier) {
        output = wanted ? allocate(wanted * esize) : nullptr;
        output_count = wanted;
    }
    OpControl ctl(go.op_id);
    const std::shared_ptr<SlotResources> held = slot_resources(go.slot);
    SlotResources& res = *held;
    track(ctl);
    std::unique_lock<std::mutex> slot_lock(res.mu);
    DirectWork work;
    work.kind = kind;
    work.root = rank_in_ids(go.ring, root);
    work.chunk_only = kind == OpKind::kReduceScatter;
    const bool is_root = kind == OpKind::kBroadcast && work.root == rank;
    // In place (a broadcast's non-root), the result waits in the slot's scratch until the commit. Quantized, the
    // bytes move through scratch: all_gather's whole result, reduce_scatter's contribution (our chunk aside).
    const bool in_place = kind == OpKind::kBroadcast && output == input && count && !is_root;
    auto* out = static_cast<uint8_t*>(output);
    uint8_t* result = in_place ? res.scratch_for(count * esize, 0) : out;
    const auto* in = static_cast<const uint8_t*>(input);
    const uint8_t* sent = in;  // what step 0 sends from
    OpInfo info;
    if (output_count != wanted) {
        ctl.fail(ErrorKind::kPeerLost, std::string(op_kind_name(kind)) + " over " + std::to_string(world) +
                                           " peers gives this peer " + std::to_string(wanted) +
                                           " elements but its output holds " + std::to_string(output_count) +
                                           ": the group changed since the output was sized; retry");
    } else {
        if (quant.enabled() && kind == OpKind::kAllGather) {
            result = res.scratch_for(plan.units, 0);
            quantize(in, dtype, count, quant, result + qc.bounds[rank]);
        } else if (quant.enabled()) {
            uint8_t* mine = res.scratch_for(plan.units, 2);
            for (uint32_t c = 0; c < world; c++)
                if (c != rank) quantize(in + qc.first[c] * esize, dtype, qc.elems[c], quant, mine + qc.bounds[c]);
            sent = mine;
            work.collect = true;
        } else if (kind == OpKind::kAllGather && count) {
            std::memcpy(result + mine_first * esize, in, count * esize);
        } else if (kind == OpKind::kReduceScatter) {
            work.reduce = [=](uint8_t* acc, const uint8_t* const* received, size_t first, size_t n) {
                std::memcpy(acc, in + first * esize, n * esize);
                for (uint32_t k = 0; k + 1 < world; k++) reduce_into(dtype, op, acc, received[k], n);
            };
        }
        if (is_root && result != in && count) std::memcpy(result, in, count * esize);
        info = run_ring(plan, go, RingWork{}, kind == OpKind::kAllGather ? result : sent, result, ctl, res, &work);
    }
    untrack(ctl);
    ErrorKind failed_kind;
    std::string why;
    if (!ctl.failed(&failed_kind, &why) && quant.enabled()) {
        if (kind == OpKind::kAllGather) {  // every row decoded from the same bytes on every peer, ours too
            res.workers.run(std::min<uint32_t>(world, 4), [&](uint32_t w) {
                for (uint32_t r = w; r < world; r += std::min<uint32_t>(world, 4))
                    dequantize(result + qc.bounds[r], count, quant, dtype, out + r * count * esize, 1);
            });
        } else if (mine_len) {  // our exact chunk, then each sender's decoded in ring order from our successor
            std::memcpy(out, in + mine_first * esize, mine_len * esize);
            const uint8_t* inbox = res.scratch_for(0, 3);
            uint8_t* decoded = res.scratch_for(mine_len * esize, 1);
            const size_t stride = direct_inbox_bytes(plan);  // the largest chunk: the same for any stripes
            for (uint32_t k = 0; k + 1 < world; k++) {
                dequantize(inbox + k * stride, mine_len, quant, dtype, decoded, 1);
                reduce_into(dtype, ReduceOp::kSum, out, decoded, mine_len);
            }
        }
    }
    if (op == ReduceOp::kAvg && mine_len && !ctl.failed(&failed_kind, &why))
        finalize_avg(dtype, kind == OpKind::kReduceScatter ? out : result, mine_len, world);
    settle(ctl, go.slot, gen);
    if (in_place) res.workers.copy(output, result, count * esize, std::max<uint32_t>(info.stripes, 2));
    info.seconds = net::now_seconds() - t0;
    return info;
}

uint32_t Communicator::rank_in_ids(const std::vector<wire::PeerInfo>& ring, uint64_t id) {
    auto it = std::find_if(ring.begin(), ring.end(), [id](const wire::PeerInfo& p) { return p.id == id; });
    return uint32_t(it - ring.begin());
}

}  // namespace pccl
