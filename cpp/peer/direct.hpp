// The direct all-reduce of quantized operations: every partial sum is quantized once, whatever the world size.
//
// How this works. The array's units (quantized blocks) are cut into `world` chunks and stripes exactly as the
// ring cuts them (RingPlan::region); chunk c belongs to the peer at position c of the ring order. Each stripe
// j is an independent all-reduce over connection j to every other peer, in two steps:
//
//   step 0, scatter: this peer sends stripe j of chunk p of its quantized contribution straight to peer p, for
//     every p, and receives stripe j of its own chunk from every other peer into an inbox per sender;
//   the owner's sum: as soon as a run of units has arrived from every sender, the owner adds, in float32, its
//     own contribution and the senders' decoded units in ring order from its successor, and quantizes the sum
//     once (DirectWork::reduce) into the result;
//   step 1, gather: the owner sends its final units to every other peer as soon as they are summed, and stores
//     the others' final units verbatim as they arrive.
//
// Every peer sends and receives (world-1)/world of the array per step, the ring's bytes, over world-1
// connections per stripe instead of one; an element's error no longer grows with the number of peers, because
// no partial sum is re-quantized on its way round. All peers end with the owners' bytes: bitwise identical.
//
// Pieces, headers (op id, step, stripe, offset), leftovers of aborted operations, the progress deadline and
// failure reporting are the ring's (ring.hpp): only which bytes go where differs.
//
// The other collectives are the same two steps with some transfers left out (docs/collectives.md):
//   reduce_scatter: step 0 and the owner's sum; the result is the owner's chunk alone;
//   all_gather: step 1 alone; each peer's chunk of the result is its own input, final from the start;
//   broadcast: in step 0 only the root sends (chunk p straight into peer p's result), and in step 1 every peer
//     sends its chunk to every peer but the root, which has them all: the root uploads 2(world-1)/world of the
//     array and the others (world-2)/world, instead of the root sending world-1 copies.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "peer/ring.hpp"

namespace pccl {

// The owner's sum over `n_units` units from global unit `first_unit`: `received` holds world-1 pointers, one
// per sender in summation order (ring order from the owner's successor), each at that unit's bytes; the sum
// goes to `out`.
using OwnerSum = std::function<void(uint8_t* out, const uint8_t* const* received, size_t first_unit, size_t n_units)>;

struct DirectWork {
    OpKind kind = OpKind::kAllReduce;  // all_reduce, reduce_scatter, all_gather or broadcast
    uint32_t root = 0;  // broadcast: the root's position in the ring order
    bool chunk_only = false;  // `result` holds this peer's chunk alone (reduce_scatter)
    bool collect = false;     // reduce_scatter without `reduce`: step 0 only fills the inbox, summed after the run
    UnitWork encode;   // host path: quantizes our own units into `mine` just before they leave (else empty)
    OwnerSum reduce;   // the owner's sum (all_reduce and reduce_scatter)
    UnitWork finish;   // host path: decodes final units as soon as they are final (else empty)
};

struct DirectLinks {
    LinkSource* pool = nullptr;
    uint32_t slot = 0;
    std::vector<wire::PeerInfo> peers;  // the whole group in ring order (this peer at plan.rank)
    double connect_timeout = 10.0;
    double progress_timeout = 30.0;
};

// Bytes the owner keeps per sender for one operation: its largest chunk (the inbox of each sender).
size_t direct_inbox_bytes(const RingPlan& plan);

// Runs stripe j. `mine`: our quantized contribution (filled by work.encode on the host path), or what step 0
// sends (the broadcast's root: its input); `inbox`: (world-1) * direct_inbox_bytes(plan) bytes of scratch for
// all_reduce and reduce_scatter (else unused; sender k's bytes of our chunk start at (k-1) * that, in summation
// order); `result`: the whole result (all_gather: this peer's chunk already
// in place; broadcast's root: the whole input), or this peer's chunk alone with work.chunk_only.
void run_direct_stripe(const RingPlan& plan, uint32_t j, const DirectWork& work, uint8_t* mine, uint8_t* inbox,
                       uint8_t* result, const DirectLinks& links, OpControl& ctl, StripeBytes* bytes);

}  // namespace pccl
