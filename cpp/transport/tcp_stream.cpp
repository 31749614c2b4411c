#include "transport/tcp_stream.hpp"

#include <cerrno>
#include <sys/socket.h>

#include "transport/net.hpp"

namespace pccl {

TcpStream::~TcpStream() { net::close_fd(fd_); }

ssize_t TcpStream::write(const iovec* parts, int count, int* err) {
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(parts);
    msg.msg_iovlen = size_t(count);
    const ssize_t n = ::sendmsg(fd_, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n >= 0) return n;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return kWouldBlock;
    *err = errno;
    return kError;
}

ssize_t TcpStream::read(uint8_t* out, size_t n, int* err) {
    const ssize_t got = ::recv(fd_, out, n, MSG_DONTWAIT);
    if (got > 0) return got;
    if (got == 0) return kClosed;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return kWouldBlock;
    *err = errno;
    return kError;
}

pollfd TcpStream::readiness(bool read, bool write) const {
    return {fd_, short((read ? POLLIN : 0) | (write ? POLLOUT : 0)), 0};
}

void TcpStream::shutdown() { ::shutdown(fd_, SHUT_RDWR); }

}  // namespace pccl
