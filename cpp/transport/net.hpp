// Small POSIX socket helpers shared by the master and the peers: address parsing, listening on a port the OS
// picks, connecting with a deadline, TCP_NODELAY on every socket (Nagle's algorithm meeting delayed ACKs costs
// 40 ms per small message), and an incremental frame reader for non-blocking sockets.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "crypto/crypto.hpp"
#include "wire/wire.hpp"

namespace pccl::net {

using Clock = std::chrono::steady_clock;
double now_seconds();  // steady clock, for deadlines

struct Address {
    std::string host;
    uint16_t port = 0;
    std::string str() const { return host + ":" + std::to_string(port); }
};
// "host:port" with a numeric or resolvable host; throws kInvalidArgument.
Address parse_address(const std::string& text);

// A listening socket bound to host:port (port 0: the OS chooses); returns the fd and the bound port.
int listen_on(const std::string& host, uint16_t port, uint16_t* bound_port);
// Connects with a deadline; throws CoreError(kNetwork) with errno context. The socket is blocking, NODELAY.
// A non-empty `source` host (a specific address, not a wildcard) is bound as the connection's source address.
// `cancel`: a descriptor that, once readable, ends the wait at once (kNetwork, "cancelled"); -1: none.
int connect_to(const Address& addr, double timeout_s, const std::string& source = "", int cancel = -1);
int accept_on(int listen_fd, std::string* peer_text);  // -1 when nothing to accept; NODELAY set
void set_nonblocking(int fd, bool on);
void set_nodelay(int fd);
void set_buffers(int fd, int bytes);
void close_fd(int& fd);
std::string peer_name(int fd);

// Sends all bytes of a blocking socket; returns false with errno in *err on failure (never raises SIGPIPE).
bool send_all(int fd, const void* data, size_t len, int* err);
// Reads exactly len bytes, waiting at most until deadline (steady seconds); returns 1 done, 0 EOF, -1 error
// (errno in *err), -2 deadline passed. stop_fd (if >= 0) readable also ends the wait with -3.
int recv_exact(int fd, void* data, size_t len, double deadline, int* err, int stop_fd = -1);

// Accumulates bytes from a non-blocking socket and yields whole frames; rejects bad headers at once. Once
// sealed (an authenticated connection after its handshake), every frame is followed by its tag and is
// checked (and decrypted) before it is yielded; a frame that fails is a CoreError(kProtocol).
class FrameReader {
public:
    void seal_with(crypto::Opener* rx) { rx_ = rx; }
    // Reads what is available. Returns false on EOF or socket error (reason set), throws kProtocol on a bad frame.
    bool fill(int fd, std::string* reason);
    // Takes bytes from elsewhere (tests); true while more may be buffered. Throws kProtocol on a bad header.
    bool feed(const uint8_t* data, size_t n);
    // Pops one complete frame if there is one.
    bool next(wire::Header* header, std::vector<uint8_t>* payload);
    bool mid_frame() const { return !buf_.empty(); }
    // What this connection may carry, refused at the header (before a byte of the payload is buffered): payloads
    // up to max_payload bytes (the protocol's own limits still apply), DATA frames only if data is true.
    void limit(uint32_t max_payload, bool data) {
        max_payload_ = max_payload;
        data_ = data;
    }

private:
    void take_header();  // decodes and checks the header at the front of buf_
    std::vector<uint8_t> buf_;
    uint32_t max_payload_ = UINT32_MAX;
    bool data_ = true;
    bool have_header_ = false;
    wire::Header header_;
    crypto::Opener* rx_ = nullptr;
};

// Wakes a poll() from another thread (a pipe whose read end becomes readable).
class Wakeup {
public:
    Wakeup();
    ~Wakeup();
    Wakeup(const Wakeup&) = delete;
    Wakeup& operator=(const Wakeup&) = delete;
    void signal();
    void drain();
    int fd() const { return fds_[0]; }

private:
    int fds_[2] = {-1, -1};
};

}  // namespace pccl::net
