// Recording what the master decided, for monitoring (observed.hpp has the overview).
#include "master/observed.hpp"

#include <algorithm>

namespace pccl {

void Histogram::add(double v) {
    counts[size_t(std::lower_bound(bounds.begin(), bounds.end(), v) - bounds.begin())]++;
    sum += v;
    count++;
}

void Observed::ended(OpRecord r) {
    if (r.reason.size() > kReasonChars) r.reason = r.reason.substr(0, kReasonChars) + "...";
    if (r.outcome == "aborted") aborted_by_cause[r.cause]++;
    if (r.outcome == "rejected") rejected_by_cause[r.cause]++;
    if (r.outcome != "rejected" && r.what != "sync_shared_state") {  // an operation ran: how long, how large
        op_seconds.add(std::max(0.0, r.ended - r.started));
        op_bytes.add(double(r.bytes));
    }
    recent.push_back(std::move(r));
    if (recent.size() > kRecent) recent.pop_front();
}

}  // namespace pccl
