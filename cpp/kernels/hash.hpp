// The content hash of shared state: 64 bits over the raw bytes of an array.
//
// How this works. The input is read as little-endian 64-bit words, 32 bytes at a time, into four independent
// lanes; each lane absorbs a word as lane = rotl(lane + w·M1, 31)·M2, so the four multiply chains run in
// parallel and the loop is bound by multiplier throughput (several GB/s on one core). The lanes are then
// folded together, the last 0..31 bytes are absorbed one word (and one zero-padded word) at a time, the
// length is mixed in, and a final avalanche (xor-shift-multiply) spreads every input bit over the output.
// It detects accidental differences (a diverged peer, a torn transfer); it is not a cryptographic hash and
// offers no protection against a peer that forges content on purpose. docs/shared_state.md pins test vectors.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pccl {

uint64_t content_hash(const void* data, size_t len);

}  // namespace pccl
