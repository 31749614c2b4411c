#include "error.hpp"

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
    }
    return "unknown";
}

std::string errno_text(const std::string& what, int err) {
    return what + " (" + std::strerror(err) + ", errno " + std::to_string(err) + ")";
}

}  // namespace pccl
