// Error values of the core. Every failure inside the core is a CoreError carrying a kind (which maps to one
// Python exception class in pccl_arrays.errors) and a message with context: peer address, syscall, errno,
// byte counts. The first failure of an operation is recorded once and handed to every waiter of it.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace pccl {

enum class ErrorKind : uint8_t {
    kInvalidArgument = 1,  // bad call from the user: ValueError / TypeError at the API
    kPeerLost = 2,         // a peer died, stalled past a deadline, left or its connection broke: retryable
    kTooFewPeers = 3,
    kMasterUnreachable = 4,
    kProtocol = 5,         // a malformed or unexpected frame
    kMismatch = 6,         // peers of a group started different operations
    kEvicted = 7,          // the master removed this peer (it was silent past the deadline)
    kState = 8,            // call made in the wrong state (not connected, closed, ...)
    kNetwork = 9,          // local socket failure that is not attributable to a peer (bind, listen)
    kTimeout = 10,         // a wait the caller bounded ran out
    kSharedState = 11,     // a shared-state sync refused this peer: layout, revision or strategy rules
    kInterrupted = 12,     // the calling thread was interrupted (Ctrl-C): KeyboardInterrupt at the API
    kAuthentication = 13,  // the run's secret is missing on one side or differs: not retryable
};

// The calling thread's interrupt check. The bindings set it, for the duration of a blocking call made from
// Python's main thread, to a function that runs Python's signal handlers and says whether one raised
// (Ctrl-C: KeyboardInterrupt). Everywhere else it is null and interrupt_requested() is false.
using InterruptCheck = bool (*)();
extern thread_local InterruptCheck t_interrupt_check;
bool interrupt_requested();  // calls the check at most every 20 ms
// Throws CoreError(kInterrupted) when interrupt_requested().
void throw_if_interrupted(const char* during);

const char* error_kind_name(ErrorKind kind);

class CoreError : public std::runtime_error {
public:
    CoreError(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
    ErrorKind kind() const { return kind_; }

private:
    ErrorKind kind_;
};

// Formats "what (syscall: strerror(errno))" for socket failures.
std::string errno_text(const std::string& what, int err);

}  // namespace pccl
