// Operation control: what the threads of one running operation (the stripes of an all-reduce, the transfers of
// a sync, the probes of optimize_topology()) share. The first failure is kept and every later one dropped, so
// every waiter reports the root cause; fail() also sets the stop flag and wakes every poll that watches
// wake_fd(), so a blocked stripe stops at once instead of at its next deadline.
#pragma once
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "base/error.hpp"
#include "transport/net.hpp"

namespace pccl {

class OpControl {
public:
    explicit OpControl(uint64_t op_id) : op_id_(op_id) {}
    uint64_t op_id() const { return op_id_; }
    void fail(ErrorKind kind, const std::string& message);
    bool stopped() const { return stopped_; }
    bool failed(ErrorKind* kind, std::string* message);
    int wake_fd() const { return wake_.fd(); }

private:
    uint64_t op_id_;
    std::atomic<bool> stopped_{false};
    std::mutex mu_;
    bool failed_ = false;
    ErrorKind kind_ = ErrorKind::kPeerLost;
    std::string message_;
    net::Wakeup wake_;
};

}  // namespace pccl
