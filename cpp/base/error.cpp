#include "base/error.hpp"

#include <chrono>
#include <cstring>

namespace pccl {

const char* error_kind_name(ErrorKind kind) {
    switch (kind) {
        case ErrorKind::kInvalidArgument: return "invalid_argument";
        case ErrorKind::kPeerLost: return "peer_lost";
        case ErrorKind::kTooFewPeers: return "too_few_peers";
        case ErrorKind::kMasterUnreachable: return "master_unreachable";
        case ErrorKind::kProtocol: return "protocol";
        case ErrorKind::kMismatch: return "mismatch";
        case ErrorKind::kEvicted: return "evicted";
        case ErrorKind::kState: return "state";
        case ErrorKind::kNetwork: return "network";
        case ErrorKind::kTimeout: return "timeout";
        case ErrorKind::kSharedState: return "shared_state";
        case ErrorKind::kInterrupted: return "interrupted";
        case ErrorKind::kAuthentication: return "authentication";
    }
    return "unknown";
}

thread_local InterruptCheck t_interrupt_check = nullptr;

bool interrupt_requested() {  // at most every 20 ms: each check takes the GIL for a moment
    if (t_interrupt_check == nullptr) return false;
    thread_local std::chrono::steady_clock::time_point next{};
    const auto now = std::chrono::steady_clock::now();
    if (now < next) return false;
    next = now + std::chrono::milliseconds(20);
    return t_interrupt_check();
}

void throw_if_interrupted(const char* during) {
    if (interrupt_requested()) throw CoreError(ErrorKind::kInterrupted, std::string("interrupted ") + during);
}

std::string errno_text(const std::string& what, int err) {
    return what + " (" + std::strerror(err) + ", errno " + std::to_string(err) + ")";
}

}  // namespace pccl
