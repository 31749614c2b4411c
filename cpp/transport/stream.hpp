// The byte stream under one data connection, as the data link sees it: non-blocking writes of up to four
// parts, non-blocking reads, what to poll for readiness, and a shutdown that wakes the other end. TCP is one
// implementation (tcp_stream.hpp); an in-memory pair with faults at chosen bytes is another (memory.hpp), so
// the algorithms above the link (the ring, the state transfer, the probes) run unchanged over either.
#pragma once
#include <cstddef>
#include <cstdint>
#include <poll.h>
#include <sys/types.h>
#include <sys/uio.h>

namespace pccl {

class ByteStream {
public:
    // What a write or a read did: n > 0 bytes moved; kWouldBlock: nothing can move now; kClosed: the other
    // side closed (reads only); kError: a failure, errno in *err.
    static constexpr ssize_t kWouldBlock = 0, kClosed = -1, kError = -2;
    virtual ~ByteStream() = default;
    virtual ssize_t write(const iovec* parts, int count, int* err) = 0;
    virtual ssize_t read(uint8_t* out, size_t n, int* err) = 0;
    // The descriptor and events to poll while waiting to read and/or write (a readable event fd for the
    // in-memory stream: it may wake a waiter early, never late).
    virtual pollfd readiness(bool read, bool write) const = 0;
    // Both directions, at once: the other end reads the end of the stream, a blocked waiter here wakes.
    virtual void shutdown() = 0;
};

// Whether the other end has closed the stream (what it sent before may still be unread): a connection kept
// from an earlier operation, or waiting at a relay, that is of no use any more.
inline bool closed_by_peer(const ByteStream& s) {
    pollfd p = s.readiness(true, false);
    p.events = POLLRDHUP;
    return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

}  // namespace pccl
