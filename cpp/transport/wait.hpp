// The one wait of the data plane, and whole pieces on top of it. How this works: every blocking moment of the
// ring, the state transfer and the probes is wait_for(), one poll over the operation's stop pipe and the
// readiness of the connections the caller names (stream.hpp). It returns when one of them may progress, the
// operation stops (OpControl::fail wakes it at once), or timeout_ms passes; the caller then retries its
// non-blocking pumps and applies its own progress deadline. A Ctrl-C is seen here and in interrupted(): on the
// thread that called into the core (the only one where the interrupt check is set) it fails the operation with
// kInterrupted, so every stripe stops and the caller gets KeyboardInterrupt.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>

#include "transport/data_link.hpp"
#include "transport/link.hpp"
#include "transport/op_control.hpp"

namespace pccl {

struct Want {
    const Conn* conn;  // null: nothing to wait for on this entry
    bool read = false;
    bool write = false;
};

// Waits as described above; false once the operation has stopped.
bool wait_for(OpControl& ctl, std::initializer_list<Want> wants, int timeout_ms);
bool wait_for(OpControl& ctl, const Want* wants, size_t count, int timeout_ms);
// Fails the operation with kInterrupted when a Ctrl-C is pending on this thread; true when it did.
bool interrupted(OpControl& ctl);

// Sends one whole piece on c: kSent, or why not (kFailed: a stream error, errno in *err; kTimedOut: no byte moved
// for progress_s, or the deadline (steady seconds) passed; kStopped: the operation stopped). *moved: bytes written.
enum class PieceResult { kSent, kFailed, kTimedOut, kStopped };
constexpr double kNever = std::numeric_limits<double>::infinity();  // no such bound
PieceResult send_whole(Conn& c, const wire::DataHeader& header, const uint8_t* data, size_t len, OpControl& ctl,
                       double progress_s, double deadline, int* err, size_t* moved = nullptr);
// Receives one whole piece on c into buf (at most cap bytes): its length, or -1 (the connection failed or
// closed, a bad or oversized frame, the deadline passed, or the operation stopped).
int64_t recv_whole(Conn& c, PieceReceiver& rx, uint8_t* buf, size_t cap, OpControl& ctl, double deadline);

}  // namespace pccl
