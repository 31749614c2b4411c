// Striped, pipelined ring all-reduce.
//
// How this works. The ring has `world` peers; this peer sits at position `rank`, receives from its predecessor
// and sends to its successor. The array of `count` elements is cut into `world` chunks, and every chunk into
// `stripes` regions, one per pooled connection. Because the reduction is element-wise, stripe j of every
// chunk forms an independent ring all-reduce that runs over connection j alone, so one operation keeps all k
// connections busy at once (PCCL runs one operation per connection; we stripe).
//
// The ring moves units (an element, or a quantized block: RingPlan) and folds with a callback, so the plain
// and the quantized all-reduce share this code.
//
// Each stripe takes 2(world-1) steps. Reduce-scatter, steps s = 0..world-2: send chunk (rank-s) and receive
// chunk (rank-s-1), folding our own input into what arrives: result = op(received, input). After it, this peer
// owns chunk (rank+1) fully reduced. All-gather, steps s = 0..world-2: send chunk (rank+1-s) and receive chunk
// (rank-s), storing the bytes verbatim. Every chunk is therefore reduced once, by one chain of peers, and then
// copied: all peers end with bitwise-identical results.
//
// Pipelining. Regions travel as pieces (frames of at most piece_bytes). A piece of step s may leave as soon as
// the same bytes of step s-1 have arrived and been reduced, so receiving, reducing and sending overlap. Each
// piece carries (op id, step, stripe, offset): bytes of an aborted operation are recognised, never reduced.
// Pieces are written and read by the data link (data_link.hpp) on connections of a LinkSource (link.hpp), and
// every wait is transport/wait.hpp's; this file decides which bytes and when.
//
// Failure. Every wait polls the operation's stop pipe and has a progress deadline. The first failure of any
// stripe stops the others and is reported once (OpControl). The input is never written; results land in
// `result` and are published by the caller only after the master's commit.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "base/dtype.hpp"
#include "transport/op_control.hpp"
#include "transport/link.hpp"

namespace pccl {

// Stripes of an operation: as many as the connections allow, but none carries less than this, so small
// operations stay on one connection (no thread hand-offs) while large ones use all of them. Both ends compute
// the same number from the count, so it is part of the protocol (docs/protocol.md).
constexpr size_t kMinStripeBytes = 256 << 10;
uint32_t stripes_for(size_t bytes, uint32_t connections);

// What the ring moves: `units` units of `unit_bytes` bytes each, except the last, which has
// `last_unit_bytes`. A plain array's unit is one element; a quantized array's unit is one block (header and
// codes), so chunks and stripes always hold whole blocks.
struct RingPlan {
    size_t units = 0;
    size_t unit_bytes = 1;
    size_t last_unit_bytes = 1;
    uint32_t world = 1;
    uint32_t rank = 0;
    uint32_t stripes = 1;
    size_t piece_bytes = 1 << 20;  // this sender's frames; the receiver accepts any size
    // Chunks hold whole rows of this many units (all_gather: a peer's whole input; reduce_scatter: a row of the
    // array's first axis), cut as numpy.array_split cuts rows; stripes still cut chunks by units.
    size_t row_units = 1;
    // Or explicit chunk boundaries: chunk c is units [bounds[c], bounds[c+1]) (world + 1 entries; the quantized
    // reduce_scatter's chunks, each quantized on its own).
    std::vector<size_t> bounds;

    uint32_t steps() const { return 2 * (world - 1); }
    // [begin, begin+len) in units of chunk c's stripe j.
    void region(uint32_t c, uint32_t j, size_t* begin, size_t* len) const;
    size_t byte_offset(size_t unit) const { return unit * unit_bytes; }
    size_t byte_len(size_t begin, size_t len) const {
        if (len == 0) return 0;
        return begin + len == units ? (len - 1) * unit_bytes + last_unit_bytes : len * unit_bytes;
    }
    uint32_t send_chunk(uint32_t step) const;
    uint32_t recv_chunk(uint32_t step) const;
    bool reducing(uint32_t step) const { return step + 1 < world; }
};

struct RingLinks {
    LinkSource* pool = nullptr;  // the TCP pool, or an in-memory network in tests
    uint32_t slot = 0;
    wire::PeerInfo next;
    wire::PeerInfo prev;
    double connect_timeout = 10.0;
    double progress_timeout = 30.0;
};

struct StripeBytes {
    uint64_t sent = 0;
    uint64_t received = 0;
};

// Folds our own contribution into received units on a reduce-scatter step: acc = op(acc, own) over
// `n_units` units starting at global unit `first_unit` (acc and own point at that unit's bytes).
using Fold = std::function<void(uint8_t* acc, const uint8_t* own, size_t first_unit, size_t n_units, uint32_t step)>;

// Work on units beside the fold, for the quantized host path (both empty otherwise), done on the stripe's own
// thread so it overlaps the network: `encode` writes the units a step-0 piece sends into `result` just before
// the piece leaves (this peer's own chunk, quantized from its exact input: the only units it sends that no hop
// produced); `finish` gets units as soon as they hold the final result (after the last reduce-scatter fold,
// and every all-gather piece), to decode them into the caller's output.
using UnitWork = std::function<void(uint8_t* units, size_t first_unit, size_t n_units)>;
struct RingWork {
    Fold fold;
    UnitWork encode, finish;
};

// Runs stripe j of the operation to completion, or returns early after ctl.fail() / ctl.stopped().
void run_stripe(const RingPlan& plan, uint32_t j, const RingWork& work, const uint8_t* input, uint8_t* result,
                const RingLinks& links, OpControl& ctl, StripeBytes* bytes);

}  // namespace pccl
