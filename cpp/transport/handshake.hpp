// The handshake of an authenticated run: mutual proof of the run's secret, and fresh keys for the connection.
// It is the first exchange on every connection of a run with a secret, to the master and between peers.
//
// How this works (docs/security.md has the reasons). Both sides hold K, a 32-byte key derived from the secret
// with HKDF-SHA-256; the secret itself is not kept.
//   client -> server  AUTH_HELLO      context (1 master link, 2 data connection), Nc (32 random bytes)
//   server -> client  AUTH_CHALLENGE  Ns (32 random bytes), encrypt flag, HMAC(K, "server" | context | Nc | Ns | flag)
//   client -> server  AUTH_PROOF      HMAC(K, "client" | context | Nc | Ns | flag)
// Each side checks the other's HMAC before acting on anything else; the labels keep a server's answer from
// serving as a client's proof, and the server's fresh Ns makes a recorded handshake useless later. The keys of
// the connection, one per direction, are HKDF-SHA-256(K, salt Nc | Ns, info naming context, flag and
// direction), and every later frame is sealed with them (crypto.hpp). The encrypt flag is the master's policy:
// it is covered by both HMACs, and a client that knows the run's policy refuses a server offering another.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "crypto/crypto.hpp"
#include "wire/wire.hpp"

namespace pccl::auth {

enum Context : uint8_t { kMasterLink = 1, kDataLink = 2 };

// The key every party of a run derives from its secret (bytes of any length; an empty secret is no secret).
crypto::Key derive_run_key(const std::string& secret);

// The sealing state of one authenticated connection.
struct Channel {
    std::unique_ptr<crypto::Sealer> tx;
    std::unique_ptr<crypto::Opener> rx;
    bool encrypt = false;
};

class Client {
public:
    Client(const crypto::Key& key, Context context);
    wire::AuthHello hello() const { return {uint8_t(context_), nc_}; }
    // Checks the server's challenge (and, when given, that its policy is `expect_encrypt`); returns the proof.
    // Throws CoreError(kAuthentication) naming `server` when the check fails.
    wire::AuthProof answer(const wire::AuthChallenge& c, std::optional<bool> expect_encrypt, const std::string& server);
    Channel channel() const;  // after answer()

private:
    crypto::Key key_;
    Context context_;
    wire::Bytes32 nc_{}, ns_{};
    bool encrypt_ = false;
};

class Server {
public:
    Server(const crypto::Key& key, Context context, bool encrypt);
    // Throws CoreError(kAuthentication) when the hello is for another kind of connection.
    wire::AuthChallenge challenge(const wire::AuthHello& h);
    // Throws CoreError(kAuthentication) when the proof does not match.
    void verify(const wire::AuthProof& p);
    Channel channel() const;  // after verify()

private:
    crypto::Key key_;
    Context context_;
    bool encrypt_;
    wire::Bytes32 nc_{}, ns_{};
};

// The client's side over a blocking socket, bounded by `deadline` (steady seconds): AUTH_HELLO, the server's
// AUTH_CHALLENGE (or AUTH_REFUSED: an AuthenticationError with its reason), AUTH_PROOF. Reads exactly the
// server's frames, never more.
Channel client_handshake(int fd, const crypto::Key& key, Context context, std::optional<bool> expect_encrypt,
                         double deadline, const std::string& server);

// Seals a whole frame (header authenticated, payload sealed in place, tag appended).
void seal_frame(std::vector<uint8_t>& frame, crypto::Sealer& tx);

}  // namespace pccl::auth
