#include "transport/greeting.hpp"

#include <cerrno>
#include <sys/socket.h>

#include "transport/net.hpp"
#include "transport/tcp_stream.hpp"

namespace pccl {

namespace {
// Best effort: tells the other side why it is refused (it may be an honest peer with another configuration).
void refuse_with(int fd, const std::string& reason) {
    auto f = wire::frame(wire::MsgType::kAuthRefused, wire::AuthRefused{reason});
    [[maybe_unused]] ssize_t n = ::send(fd, f.data(), f.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}
}  // namespace

Greeting::~Greeting() { net::close_fd(fd_); }

void Greeting::refuse(const std::string& why) {
    why_ = why;
    net::close_fd(fd_);
}

Greeting::Status Greeting::step(const GreetingPolicy& policy, double now) {
    if (fd_ < 0) return kRefused;
    try {
        // The frame's size is known once its header is in (the tag follows a sealed frame).
        wire::Header hdr;
        auto frame_size = [&] {
            hdr = wire::decode_header(buf_);
            if (hdr.length > kMaxGreeting)
                throw CoreError(ErrorKind::kProtocol, "a greeting of " + std::to_string(hdr.length) + " bytes");
            return wire::kHeaderSize + hdr.length + (stage_ == kSealedHello ? crypto::kTagBytes : 0);
        };
        for (;;) {
            size_t want = got_ >= wire::kHeaderSize ? frame_size() : wire::kHeaderSize;
            const ssize_t n = ::recv(fd_, buf_ + got_, want - got_, MSG_DONTWAIT);
            if (n == 0 && got_ == 0 && stage_ == kFirst) {  // connected and closed without a byte: the master's probe
                net::close_fd(fd_);
                return kProbe;
            }
            if (n == 0) throw CoreError(ErrorKind::kNetwork, "closed during the handshake");
            if (n < 0) {
                if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                    throw CoreError(ErrorKind::kNetwork, errno_text("recv", errno));
                if (now > deadline_) throw CoreError(ErrorKind::kTimeout, "no PEER_HELLO within the handshake deadline");
                return kWaiting;
            }
            got_ += size_t(n);
            if (got_ == wire::kHeaderSize) want = frame_size();
            if (got_ < want) continue;
            got_ = 0;
            on_frame(hdr, policy);
            if (conn_) return kGreeted;
        }
    } catch (const CoreError& e) {
        refuse(e.what());
        return kRefused;
    }
}

void Greeting::on_frame(const wire::Header& hdr, const GreetingPolicy& policy) {
    const uint8_t* payload = buf_ + wire::kHeaderSize;
    if (stage_ == kFirst && hdr.type == uint16_t(wire::MsgType::kAuthHello)) {
        if (!policy.key) {
            refuse_with(fd_, "this peer's run has no secret, and the connecting peer has one");
            throw CoreError(ErrorKind::kAuthentication, "a handshake, but this run has no secret");
        }
        if (!policy.policy_known) throw CoreError(ErrorKind::kAuthentication, "a handshake before this peer was admitted");
        server_ = std::make_unique<auth::Server>(*policy.key, auth::kDataLink, policy.encrypt);
        auto challenge = wire::frame(wire::MsgType::kAuthChallenge,
                                     server_->challenge(wire::decode_payload<wire::AuthHello>({payload, payload + hdr.length})));
        int err = 0;
        if (!net::send_all(fd_, challenge.data(), challenge.size(), &err)) throw CoreError(ErrorKind::kNetwork, errno_text("send", err));
        stage_ = kProof;
        return;
    }
    if (stage_ == kProof) {
        if (hdr.type != uint16_t(wire::MsgType::kAuthProof))
            throw CoreError(ErrorKind::kAuthentication, "expected AUTH_PROOF, got type " + std::to_string(hdr.type));
        server_->verify(wire::decode_payload<wire::AuthProof>({payload, payload + hdr.length}));
        channel_ = server_->channel();
        stage_ = kSealedHello;
        return;
    }
    if (hdr.type != uint16_t(wire::MsgType::kPeerHello) || hdr.length != kHelloBytes)
        throw CoreError(ErrorKind::kProtocol, "expected PEER_HELLO, got type " + std::to_string(hdr.type));
    if (stage_ == kFirst && policy.key) {
        refuse_with(fd_, "this peer's run requires its secret");
        throw CoreError(ErrorKind::kAuthentication, "a connection without the run's secret");
    }
    uint8_t* body = buf_ + wire::kHeaderSize;
    if (stage_ == kSealedHello && !channel_.rx->open(buf_, wire::kHeaderSize, body, kHelloBytes, body + kHelloBytes))
        throw CoreError(ErrorKind::kAuthentication, "a sealed PEER_HELLO failed its integrity check");
    wire::Reader r(body, kHelloBytes);
    hello_ = wire::decode<wire::PeerHello>(r);
    const bool relay = hello_.mode == kRelayOpen || hello_.mode == kRelayAccept;
    if (!relay && hello_.to != policy.self)
        throw CoreError(ErrorKind::kProtocol, "PEER_HELLO for peer " + std::to_string(hello_.to) + ", this is peer " +
                                                  std::to_string(policy.self));
    if (relay && (!policy.relays || hello_.from == hello_.to || hello_.from == 0 || hello_.to == 0))
        throw CoreError(ErrorKind::kProtocol, policy.relays ? "a relay request between peer " + std::to_string(hello_.from) +
                                                                  " and peer " + std::to_string(hello_.to)
                                                            : "a relay request, and this port relays nothing");
    conn_ = std::make_shared<Conn>();
    conn_->stream = std::make_unique<TcpStream>(fd_);
    fd_ = -1;  // owned by the connection now
    conn_->peer = hello_.from;
    conn_->slot = hello_.slot;
    conn_->index = hello_.index;
    conn_->outgoing = hello_.mode == kCall;  // a call: the connection this peer would have opened to `from`
    conn_->channel = std::move(channel_);
}

}  // namespace pccl
