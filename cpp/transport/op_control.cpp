#include "transport/op_control.hpp"

namespace pccl {

void OpControl::fail(ErrorKind kind, const std::string& message) {
    {
        std::lock_guard<std::mutex> g(mu_);
        if (!failed_) {
            failed_ = true;
            kind_ = kind;
            message_ = message;
        }
    }
    stopped_ = true;
    wake_.signal();
}

bool OpControl::failed(ErrorKind* kind, std::string* message) {
    std::lock_guard<std::mutex> g(mu_);
    if (failed_) {
        *kind = kind_;
        *message = message_;
    }
    return failed_;
}

}  // namespace pccl
