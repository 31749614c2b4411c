// What the master records for the person watching a run (docs/monitoring.md): operations started, committed,
// aborted and rejected (by cause), histograms of their durations and sizes, the last operations and syncs, and
// per group the shared-state revision and what its syncs moved.
//
// How it works: MasterState calls these as it decides (an OP_GO sent, a commit, an abort, a sync committed), so
// the record costs O(1) per collective (a histogram bucket is found by a binary search over ~16 bounds, the list
// of recent operations is a bounded deque). Readers take a copy under the server's lock (MasterServer::status())
// and never touch the live one.
#pragma once
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

namespace pccl {

// Prometheus-style: counts[i] is the number of observations <= bounds[i] that were > bounds[i-1]; the last
// count is above every bound (+Inf). Cumulated by the exporter.
struct Histogram {
    std::vector<double> bounds;
    std::vector<uint64_t> counts;
    double sum = 0;
    uint64_t count = 0;
    explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
    void add(double v);
};

// One collective as it ended. what: "all_reduce", "broadcast", ..., "sync_shared_state".
struct OpRecord {
    uint64_t id = 0;  // 0: rejected before it ran
    uint32_t group = 0;
    uint64_t tag = 0;
    std::string what;
    std::string outcome;  // "committed", "aborted" (it ran), "rejected" (it never ran)
    std::string cause;    // error_kind_name() of an abort or rejection, "" when committed
    std::string reason;   // the message every peer got (cut to kReasonChars)
    double started = 0;   // master clock (steady seconds): OP_GO, or the first start for a rejection
    double ended = 0;
    uint64_t bytes = 0;   // the array's bytes (count x dtype), or the state bytes a sync moved
    uint32_t world = 0;
};

struct GroupObserved {
    uint64_t syncs = 0, sync_bytes = 0;  // committed syncs and the state bytes they moved
    double last_sync_at = -1;            // master clock; negative: none yet
    uint64_t last_sync_bytes = 0, last_sync_revision = 0;
};

struct Observed {
    static constexpr size_t kRecent = 64;
    static constexpr size_t kReasonChars = 300;
    uint64_t ops_started = 0, admissions = 0, leaves = 0;
    std::map<std::string, uint64_t> aborted_by_cause, rejected_by_cause;
    // Operations that ran (syncs have their own counters: their size is the state they moved, per group).
    Histogram op_seconds{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}};
    Histogram op_bytes{{1 << 10, 1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26, 1 << 28,
                        1 << 30, double(1ull << 32)}};
    std::deque<OpRecord> recent;  // newest last
    std::map<uint32_t, GroupObserved> groups;
    // An operation or sync ended: counted by outcome (and cause), measured when it ran, kept among the recent.
    void ended(OpRecord r);
};

}  // namespace pccl
