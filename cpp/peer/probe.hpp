// A peer's part of optimize_topology(): the probes of its OPT_PLAN, and what it measured as a receiver.
//
// How this works. The plan is a list of rounds; in each, this peer may send one probe (to `send_to`) and
// receive one (from `recv_from`), both on pooled connections of the run's probe slot, indexed by the round (so a
// faster peer's connection for a later round waits in the pool until its receiver gets there). The receiver
// paces a round: it sends GO (a tiny DATA piece) on the incoming connection; the sender answers with a tiny
// piece at once (the receiver's round trip: GO out, answer back) and then streams 16 KiB pieces as fast as the
// path takes them. The receiver's estimate is the mean rate since the first data piece; once it has moved by
// less than 3 % over the last 150 ms (after at least 300 ms), or after the plan's probe time, the receiver
// closes the connection, which is the sender's signal to stop. Every wait is bounded and stops when the operation is
// aborted (a member lost: OP_ABORT of the optimize id). Probe bytes go through the data link, so a run with a
// secret probes on authenticated, sealed connections like any other.
#pragma once
#include <cstdint>
#include <vector>

#include "transport/link.hpp"
#include "transport/op_control.hpp"
#include "wire/wire.hpp"

namespace pccl {

// Each optimize_topology() run probes on a pool slot of its own (0xFFFE0000 + the low 16 bits of its id), so a
// straggling connection of an aborted run is never taken for one of the retry.
constexpr uint32_t kProbeSlotBase = 0xFFFE0000;
inline uint32_t probe_slot(uint64_t opt_id) { return kProbeSlotBase | uint32_t(opt_id & 0xFFFF); }

struct ProbeSettings {
    double connect_timeout = 10.0;  // per connection, and the slack on waits for the other side
};

// Runs the plan's rounds; returns the measurements of the probes this peer received (to = self). On failure
// the control is failed (retryable kPeerLost) and what was measured so far is returned.
std::vector<wire::LinkMeasure> run_probes(const wire::OptPlan& plan, uint64_t self, LinkSource& pool, OpControl& ctl,
                                          const ProbeSettings& settings);

}  // namespace pccl
