#include "transport/net.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace pccl::net {

double now_seconds() {
    return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

Address parse_address(const std::string& text) {
    auto colon = text.rfind(':');
    if (colon == std::string::npos || colon == 0 || colon + 1 == text.size())
        throw CoreError(ErrorKind::kInvalidArgument, "address '" + text + "' is not of the form host:port");
    Address a;
    a.host = text.substr(0, colon);
    if (a.host.size() > 2 && a.host.front() == '[' && a.host.back() == ']') a.host = a.host.substr(1, a.host.size() - 2);
    const std::string port = text.substr(colon + 1);
    char* end = nullptr;
    long p = std::strtol(port.c_str(), &end, 10);
    if (*end != '\0' || p < 0 || p > 65535)
        throw CoreError(ErrorKind::kInvalidArgument, "address '" + text + "' has a bad port");
    a.port = uint16_t(p);
    return a;
}

static addrinfo* resolve(const std::string& host, uint16_t port, bool passive) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (passive) hints.ai_flags = AI_PASSIVE;
    addrinfo* res = nullptr;
    int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0 || res == nullptr)
        throw CoreError(ErrorKind::kInvalidArgument, "cannot resolve '" + host + "': " + gai_strerror(rc));
    return res;
}

void set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void set_buffers(int fd, int bytes) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
}

void set_nonblocking(int fd, bool on) {
    int flags = fcntl(fd, F_GETFL, 0);
    fcntl(fd, F_SETFL, on ? (flags | O_NONBLOCK) : (flags & ~O_NONBLOCK));
}

void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
}

std::string peer_name(int fd) {
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
    char host[INET6_ADDRSTRLEN] = "?";
    uint16_t port = 0;
    if (ss.ss_family == AF_INET) {
        auto* in = reinterpret_cast<sockaddr_in*>(&ss);
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        auto* in = reinterpret_cast<sockaddr_in6*>(&ss);
        inet_ntop(AF_INET6, &in->sin6_addr, host, sizeof(host));
        port = ntohs(in->sin6_port);
    }
    return std::string(host) + ":" + std::to_string(port);
}

int listen_on(const std::string& host, uint16_t port, uint16_t* bound_port) {
    addrinfo* res = resolve(host, port, true);
    int fd = -1;
    int last_err = 0;
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
        fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) { last_err = errno; continue; }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (::bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && ::listen(fd, 256) == 0) break;
        last_err = errno;
        close_fd(fd);
    }
    freeaddrinfo(res);
    if (fd < 0)
        throw CoreError(ErrorKind::kNetwork, errno_text("cannot listen on " + host + ":" + std::to_string(port), last_err));
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    *bound_port = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                           : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    set_nonblocking(fd, true);
    return fd;
}

int connect_to(const Address& addr, double timeout_s, const std::string& source, int cancel) {
    addrinfo* src = source.empty() ? nullptr : resolve(source, 0, false);
    addrinfo* res = nullptr;
    try {
        res = resolve(addr.host, addr.port, false);
    } catch (...) {
        if (src != nullptr) freeaddrinfo(src);
        throw;
    }
    int last_err = ETIMEDOUT;
    int fd = -1;
    const double deadline = now_seconds() + timeout_s;
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
        fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) { last_err = errno; continue; }
        if (src != nullptr && src->ai_family == ai->ai_family && ::bind(fd, src->ai_addr, src->ai_addrlen) != 0) {
            last_err = errno;
            close_fd(fd);
            continue;
        }
        set_nonblocking(fd, true);
        int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            pollfd p[2] = {{fd, POLLOUT, 0}, {cancel, POLLIN, 0}};
            int wait_ms = int(std::max(0.0, deadline - now_seconds()) * 1000);
            rc = ::poll(p, 2, wait_ms);  // a negative cancel is ignored
            if (rc > 0 && (p[1].revents & POLLIN)) {
                close_fd(fd);
                freeaddrinfo(res);
                if (src != nullptr) freeaddrinfo(src);
                throw CoreError(ErrorKind::kNetwork, "connecting to " + addr.str() + " was cancelled (closing)");
            }
            if (rc > 0) {
                int err = 0;
                socklen_t len = sizeof(err);
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                rc = err == 0 ? 0 : -1;
                if (err != 0) errno = err;
            } else {
                rc = -1;
                errno = ETIMEDOUT;
            }
        }
        if (rc == 0) break;
        last_err = errno;
        close_fd(fd);
    }
    freeaddrinfo(res);
    if (src != nullptr) freeaddrinfo(src);
    if (fd < 0) throw CoreError(ErrorKind::kNetwork, errno_text("cannot connect to " + addr.str(), last_err));
    set_nonblocking(fd, false);
    set_nodelay(fd);
    return fd;
}

int accept_on(int listen_fd, std::string* peer_text) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) return -1;
    set_nodelay(fd);
    if (peer_text) *peer_text = peer_name(fd);
    return fd;
}

bool send_all(int fd, const void* data, size_t len, int* err) {
    const auto* p = static_cast<const uint8_t*>(data);
    while (len > 0) {
        ssize_t n = ::send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                pollfd pfd{fd, POLLOUT, 0};
                ::poll(&pfd, 1, 100);
                continue;
            }
            *err = errno;
            return false;
        }
        p += n;
        len -= size_t(n);
    }
    return true;
}

int recv_exact(int fd, void* data, size_t len, double deadline, int* err, int stop_fd) {
    auto* p = static_cast<uint8_t*>(data);
    while (len > 0) {
        double left = deadline - now_seconds();
        if (left <= 0) return -2;
        pollfd pfds[2] = {{fd, POLLIN, 0}, {stop_fd, POLLIN, 0}};
        int rc = ::poll(pfds, stop_fd >= 0 ? 2 : 1, int(std::min(left, 0.2) * 1000) + 1);
        if (rc < 0 && errno != EINTR) { *err = errno; return -1; }
        if (stop_fd >= 0 && (pfds[1].revents & POLLIN)) return -3;
        if (rc <= 0 || !(pfds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t n = ::recv(fd, p, len, MSG_DONTWAIT);
        if (n == 0) return 0;
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
            *err = errno;
            return -1;
        }
        p += n;
        len -= size_t(n);
    }
    return 1;
}

bool FrameReader::fill(int fd, std::string* reason) {
    uint8_t tmp[65536];
    for (;;) {
        ssize_t n = ::recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT);
        if (n == 0) { *reason = "connection closed by the other side"; return false; }
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
            *reason = errno_text("recv failed", errno);
            return false;
        }
        if (!feed(tmp, size_t(n))) return true;
        if (size_t(n) < sizeof(tmp)) return true;
    }
}

bool FrameReader::feed(const uint8_t* data, size_t n) {
    buf_.insert(buf_.end(), data, data + n);
    // Validate the header as soon as it is complete, so a huge length prefix is refused before we buffer it.
    if (!have_header_ && buf_.size() >= wire::kHeaderSize) take_header();
    return !(have_header_ && buf_.size() > wire::kHeaderSize + header_.length + wire::kMaxControlPayload);
}

void FrameReader::take_header() {
    header_ = wire::decode_header(buf_.data());
    if (header_.type == uint16_t(wire::MsgType::kData) && !data_)
        throw CoreError(ErrorKind::kProtocol, "a DATA frame on a connection that carries none");
    if (header_.length > max_payload_)
        throw CoreError(ErrorKind::kProtocol, "a frame of " + std::to_string(header_.length) +
                                                  " bytes, over this connection's limit of " + std::to_string(max_payload_));
    have_header_ = true;
}

bool FrameReader::next(wire::Header* header, std::vector<uint8_t>* payload) {
    if (!have_header_) {
        if (buf_.size() < wire::kHeaderSize) return false;
        take_header();
    }
    const size_t total = wire::kHeaderSize + header_.length + (rx_ ? crypto::kTagBytes : 0);
    if (buf_.size() < total) return false;
    if (rx_ && !rx_->open(buf_.data(), wire::kHeaderSize, buf_.data() + wire::kHeaderSize, header_.length,
                          buf_.data() + wire::kHeaderSize + header_.length))
        throw CoreError(ErrorKind::kProtocol, "a frame failed its integrity check (bytes changed in flight)");
    *header = header_;
    payload->assign(buf_.begin() + wire::kHeaderSize, buf_.begin() + long(wire::kHeaderSize + header_.length));
    buf_.erase(buf_.begin(), buf_.begin() + long(total));
    have_header_ = false;
    if (buf_.size() >= wire::kHeaderSize) take_header();
    return true;
}

Wakeup::Wakeup() {
    if (::pipe2(fds_, O_CLOEXEC | O_NONBLOCK) != 0) throw CoreError(ErrorKind::kNetwork, errno_text("pipe", errno));
}
Wakeup::~Wakeup() {
    close_fd(fds_[0]);
    close_fd(fds_[1]);
}
void Wakeup::signal() {
    uint8_t b = 1;
    [[maybe_unused]] ssize_t n = ::write(fds_[1], &b, 1);
}
void Wakeup::drain() {
    uint8_t tmp[64];
    while (::read(fds_[0], tmp, sizeof(tmp)) > 0) {}
}

}  // namespace pccl::net
