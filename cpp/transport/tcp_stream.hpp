// A data connection's byte stream over a TCP socket (stream.hpp): sendmsg/recv with MSG_DONTWAIT, never SIGPIPE.
#pragma once
#include "transport/stream.hpp"

namespace pccl {

class TcpStream final : public ByteStream {
public:
    explicit TcpStream(int fd) : fd_(fd) {}  // takes the socket (closed with the stream)
    ~TcpStream() override;
    TcpStream(const TcpStream&) = delete;
    TcpStream& operator=(const TcpStream&) = delete;
    ssize_t write(const iovec* parts, int count, int* err) override;
    ssize_t read(uint8_t* out, size_t n, int* err) override;
    pollfd readiness(bool read, bool write) const override;
    void shutdown() override;
    int fd() const { return fd_; }
    int release() {  // hands the socket over: the stream no longer closes it
        const int fd = fd_;
        fd_ = -1;
        return fd;
    }

private:
    int fd_;
};

}  // namespace pccl
