#include "transport/handshake.hpp"

#include "base/error.hpp"
#include "transport/net.hpp"

namespace pccl::auth {

namespace {
std::vector<uint8_t> transcript(const char* label, Context context, const wire::Bytes32& nc, const wire::Bytes32& ns,
                                bool encrypt) {
    std::vector<uint8_t> t(label, label + std::char_traits<char>::length(label));
    t.push_back(uint8_t(context));
    t.insert(t.end(), nc.begin(), nc.end());
    t.insert(t.end(), ns.begin(), ns.end());
    t.push_back(encrypt ? 1 : 0);
    return t;
}

Channel make_channel(const crypto::Key& key, Context context, const wire::Bytes32& nc, const wire::Bytes32& ns,
                     bool encrypt, bool client) {
    std::vector<uint8_t> salt(nc.begin(), nc.end());
    salt.insert(salt.end(), ns.begin(), ns.end());
    const std::string info = std::string("pccl_arrays v3 connection keys, context ") + std::to_string(int(context)) +
                             (encrypt ? ", encrypted" : ", integrity only");
    const auto okm = crypto::hkdf_sha256(key.data(), key.size(), salt, info, 2 * crypto::kKeyBytes);
    crypto::Key c2s, s2c;
    std::copy(okm.begin(), okm.begin() + crypto::kKeyBytes, c2s.begin());
    std::copy(okm.begin() + crypto::kKeyBytes, okm.end(), s2c.begin());
    Channel ch;
    ch.encrypt = encrypt;
    ch.tx = std::make_unique<crypto::Sealer>(client ? c2s : s2c, encrypt);
    ch.rx = std::make_unique<crypto::Opener>(client ? s2c : c2s, encrypt);
    return ch;
}

const char* context_name(Context c) { return c == kMasterLink ? "the master link" : "a data connection"; }
}  // namespace

crypto::Key derive_run_key(const std::string& secret) {
    const std::string salt = "pccl_arrays run secret";
    const auto okm = crypto::hkdf_sha256(reinterpret_cast<const uint8_t*>(secret.data()), secret.size(),
                                         std::vector<uint8_t>(salt.begin(), salt.end()), "run key v3", crypto::kKeyBytes);
    crypto::Key k;
    std::copy(okm.begin(), okm.end(), k.begin());
    return k;
}

Client::Client(const crypto::Key& key, Context context) : key_(key), context_(context) {
    crypto::random_bytes(nc_.data(), nc_.size());
}

wire::AuthProof Client::answer(const wire::AuthChallenge& c, std::optional<bool> expect_encrypt, const std::string& server) {
    const auto want = crypto::hmac_sha256(key_, transcript("server", context_, nc_, c.nonce, c.encrypt));
    if (!crypto::equal(want.data(), c.mac.data(), want.size()))
        throw CoreError(ErrorKind::kAuthentication,
                        server + " does not prove this run's secret: the secrets differ (or the handshake was tampered with)");
    if (expect_encrypt && *expect_encrypt != bool(c.encrypt))
        throw CoreError(ErrorKind::kAuthentication,
                        server + std::string(" offers ") + (c.encrypt ? "encryption" : "integrity only") +
                            " but the master's policy for this run is " + (*expect_encrypt ? "encryption" : "integrity only"));
    ns_ = c.nonce;
    encrypt_ = c.encrypt;
    return {crypto::hmac_sha256(key_, transcript("client", context_, nc_, ns_, encrypt_))};
}

Channel Client::channel() const { return make_channel(key_, context_, nc_, ns_, encrypt_, true); }

Server::Server(const crypto::Key& key, Context context, bool encrypt) : key_(key), context_(context), encrypt_(encrypt) {}

wire::AuthChallenge Server::challenge(const wire::AuthHello& h) {
    if (h.context != uint8_t(context_))
        throw CoreError(ErrorKind::kAuthentication, std::string("a handshake for another kind of connection (") +
                                                         std::to_string(h.context) + ") on " + context_name(context_));
    nc_ = h.nonce;
    crypto::random_bytes(ns_.data(), ns_.size());
    wire::AuthChallenge c;
    c.nonce = ns_;
    c.encrypt = encrypt_ ? 1 : 0;
    c.mac = crypto::hmac_sha256(key_, transcript("server", context_, nc_, ns_, encrypt_));
    return c;
}

void Server::verify(const wire::AuthProof& p) {
    const auto want = crypto::hmac_sha256(key_, transcript("client", context_, nc_, ns_, encrypt_));
    if (!crypto::equal(want.data(), p.mac.data(), want.size()))
        throw CoreError(ErrorKind::kAuthentication, "its proof does not match: a wrong secret or a replayed handshake");
}

Channel Server::channel() const { return make_channel(key_, context_, nc_, ns_, encrypt_, false); }

namespace {
std::vector<uint8_t> read_frame(int fd, double deadline, const std::string& server, wire::Header* h) {
    uint8_t head[wire::kHeaderSize];
    int err = 0;
    auto fail = [&](int rc) {
        if (rc == 0) return CoreError(ErrorKind::kAuthentication, server + " closed the connection during the handshake");
        if (rc == -2) return CoreError(ErrorKind::kAuthentication, server + " did not answer the handshake in time");
        return CoreError(ErrorKind::kNetwork, errno_text("handshake with " + server, err));
    };
    int rc = net::recv_exact(fd, head, sizeof(head), deadline, &err);
    if (rc != 1) throw fail(rc);
    *h = wire::decode_header(head);
    std::vector<uint8_t> payload(h->length);
    rc = net::recv_exact(fd, payload.data(), payload.size(), deadline, &err);
    if (rc != 1) throw fail(rc);
    return payload;
}
}  // namespace

Channel client_handshake(int fd, const crypto::Key& key, Context context, std::optional<bool> expect_encrypt,
                         double deadline, const std::string& server) {
    Client client(key, context);
    auto hello = wire::frame(wire::MsgType::kAuthHello, client.hello());
    int err = 0;
    if (!net::send_all(fd, hello.data(), hello.size(), &err))
        throw CoreError(ErrorKind::kNetwork, errno_text("handshake with " + server, err));
    wire::Header h;
    auto payload = read_frame(fd, deadline, server, &h);
    if (h.type == uint16_t(wire::MsgType::kAuthRefused))
        throw CoreError(ErrorKind::kAuthentication, server + " refused this peer: " + wire::decode_payload<wire::AuthRefused>(payload).reason);
    if (h.type != uint16_t(wire::MsgType::kAuthChallenge))
        throw CoreError(ErrorKind::kAuthentication, server + " answered the handshake with message type " + std::to_string(h.type) +
                                                        ": it runs without a secret, and this peer has one");
    auto proof = wire::frame(wire::MsgType::kAuthProof,
                             client.answer(wire::decode_payload<wire::AuthChallenge>(payload), expect_encrypt, server));
    if (!net::send_all(fd, proof.data(), proof.size(), &err))
        throw CoreError(ErrorKind::kNetwork, errno_text("handshake with " + server, err));
    return client.channel();
}

void seal_frame(std::vector<uint8_t>& frame, crypto::Sealer& tx) {
    const size_t body = frame.size() - wire::kHeaderSize;
    frame.resize(frame.size() + crypto::kTagBytes);
    uint8_t* p = frame.data();
    tx.seal(p, wire::kHeaderSize, p + wire::kHeaderSize, body, p + wire::kHeaderSize, p + wire::kHeaderSize + body);
}

}  // namespace pccl::auth
