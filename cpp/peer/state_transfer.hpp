// Moving shared-state bytes from holders to the peers that fetch them.
//
// How this works. A receiver's stream is the concatenation of the entries it fetches, in the order of its plan.
// The master gives every holder a contiguous range [begin, end) of that stream (state_election.hpp); both ends
// cut the range into the same stripes (stripes_for, as the ring does) and stripe j travels over pooled
// connection (kStateSlot, j) from the holder to the receiver. Frames are DATA frames whose header carries
// (sync id, step 0, stripe j, stream offset); a piece never crosses an entry's end, so the receiver checks
// each header against what it expects next and copies the payload straight into the entry's buffer.
//
// Failure. Every wait polls the sync's stop pipe (OpControl) and has a progress deadline. A connection that
// ends, or shows bytes of another sync, before it delivered a byte of this one is a leftover of an aborted
// sync: the receiver drops it and waits for the holder's fresh connection, as the ring does. Frames are written
// and read by the data link (data_link.hpp), every wait is transport/wait.hpp's.
#pragma once
#include <atomic>
#include <cstdint>
#include <vector>

#include "transport/link.hpp"
#include "transport/op_control.hpp"

namespace pccl {

constexpr uint32_t kStateSlot = 0xFFFF0000u;  // the pool slot of state transfers (operations use small slots)

// Entries of one receiver's stream: where each one's bytes are, and how many.
struct Stream {
    std::vector<uint8_t*> data;
    std::vector<uint64_t> sizes;
};

// Stripe j of [begin, end) cut into `stripes` near-equal contiguous parts.
void stripe_range(uint64_t begin, uint64_t end, uint32_t stripes, uint32_t j, uint64_t* b, uint64_t* e);

struct TransferLink {
    LinkSource* pool = nullptr;  // the TCP pool, or an in-memory network in tests
    wire::PeerInfo peer;  // the receiver (sending) or the holder (receiving; only the id matters)
    uint32_t stripe = 0;
    double connect_timeout = 10.0;
    double progress_timeout = 30.0;
    size_t piece_bytes = 1 << 20;
};

// Sends stream bytes [begin, end) (one stripe) to link.peer; on failure calls ctl.fail and returns.
void send_stream(const Stream& s, uint64_t begin, uint64_t end, const TransferLink& link, OpControl& ctl,
                 std::atomic<uint64_t>* bytes);
// Receives stream bytes [begin, end) (one stripe) from link.peer into the stream's buffers.
void recv_stream(const Stream& s, uint64_t begin, uint64_t end, const TransferLink& link, OpControl& ctl,
                 std::atomic<uint64_t>* bytes);

}  // namespace pccl
