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

}  // namespace

OpInfo Communicator::collective(OpKind kind, const void* input, void* output, uint64_t count, uint64_t output_count,
                                DType dtype, ReduceOp op, uint64_t root, uint64_t tag, const CallOptions& options,
                                const Allocator& allocate) {
    if (kind == OpKind::kAllReduce || uint8_t(kind) >= kOpKindCount)
        throw CoreError(ErrorKind::kInvalidArgument, "collective(): broadcast, all_gather, reduce_scatter or barrier");
    if (kind != OpKind::kReduceScatter) op = ReduceOp::kSum;  // unused; one value so descriptors compare alike
    if (kind == OpKind::kBarrier) count = output_count = 0;
    check_call(dtype, op, QuantConfig{}, input, output, options);
    if ((kind == OpKind::kAllGather || kind == OpKind::kReduceScatter) && count && input == output)
        throw CoreError(ErrorKind::kInvalidArgument, std::string(op_kind_name(kind)) + " cannot run in place");
    uint64_t rows, row_elems;
    rows_of(count, options.shape, &rows, &row_elems);
    if (kind == OpKind::kReduceScatter && rows * row_elems != count)
        throw CoreError(ErrorKind::kInvalidArgument, "reduce_scatter: the shape does not hold `count` elements");
    require_accepted();
    InFlightCall in_flight(this, tag);
    const double t0 = net::now_seconds();
    wire::OpDesc desc = descriptor_of(count, dtype, op, QuantConfig{}, options);
    desc.collective = uint8_t(kind);
    desc.root = kind == OpKind::kBroadcast ? root : 0;
    const auto go = start_op(tag, desc, options.timeout);
    const uint32_t world = uint32_t(go.ring.size()), rank = rank_in(go.ring);
    const size_t esize = dtype_size(dtype);

    RingPlan plan;
    plan.units = kind == OpKind::kAllGather ? world * count : count;
    plan.unit_bytes = plan.last_unit_bytes = esize;
    plan.row_units = kind == OpKind::kAllGather ? std::max<uint64_t>(count, 1)
                                                : kind == OpKind::kReduceScatter ? row_elems : 1;
    plan.world = world;
    plan.rank = rank;
    size_t mine_first, mine_len;  // our chunk, whole (one stripe)
    {
        RingPlan whole = plan;
        whole.stripes = 1;
        whole.region(rank, 0, &mine_first, &mine_len);
    }
    const uint64_t wanted = kind == OpKind::kAllGather ? plan.units : kind == OpKind::kReduceScatter ? mine_len : count;

    if (!output && allocate && (kind == OpKind::kAllGather || kind == OpKind::kReduceScatter || kind == OpKind::kBroadcast)) {
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
    // In place (a broadcast's non-root), the result waits in the slot's scratch until the commit.
    const bool in_place = kind == OpKind::kBroadcast && output == input && count && !is_root;
    auto* result = in_place ? res.scratch_for(count * esize, 0) : static_cast<uint8_t*>(output);
    const auto* in = static_cast<const uint8_t*>(input);
    OpInfo info;
    if (output_count != wanted) {
        ctl.fail(ErrorKind::kPeerLost, std::string(op_kind_name(kind)) + " over " + std::to_string(world) +
                                           " peers gives this peer " + std::to_string(wanted) +
                                           " elements but its output holds " + std::to_string(output_count) +
                                           ": the group changed since the output was sized; retry");
    } else {
        if (kind == OpKind::kAllGather && count) std::memcpy(result + mine_first * esize, in, count * esize);
        if (is_root && result != in && count) std::memcpy(result, in, count * esize);
        if (kind == OpKind::kReduceScatter)
            work.reduce = [=](uint8_t* out, const uint8_t* const* received, size_t first, size_t n) {
                std::memcpy(out, in + first * esize, n * esize);
                for (uint32_t k = 0; k + 1 < world; k++) reduce_into(dtype, op, out, received[k], n);
            };
        info = run_ring(plan, go, RingWork{}, kind == OpKind::kAllGather ? result : in, result, ctl, res, &work);
    }
    untrack(ctl);
    ErrorKind failed_kind;
    std::string why;
    if (op == ReduceOp::kAvg && mine_len && !ctl.failed(&failed_kind, &why))
        finalize_avg(dtype, result, mine_len, world);
    settle(ctl, go.slot);
    if (in_place) res.workers.copy(output, result, count * esize, std::max<uint32_t>(info.stripes, 2));
    info.seconds = net::now_seconds() - t0;
    return info;
}

uint32_t Communicator::rank_in_ids(const std::vector<wire::PeerInfo>& ring, uint64_t id) {
    auto it = std::find_if(ring.begin(), ring.end(), [id](const wire::PeerInfo& p) { return p.id == id; });
    return uint32_t(it - ring.begin());
}

}  // namespace pccl
