// Cryptographic primitives of authenticated runs, all from OpenSSL's libcrypto (nothing here is hand-written
// cryptography): random nonces, HMAC-SHA-256, HKDF-SHA-256, and AEAD frame sealing (AES-256-GCM when the run
// encrypts, ChaCha20-Poly1305 as a MAC when it only authenticates). docs/security.md says how they fit together.
//
// How sealing works. Each direction of an authenticated connection has its own 32-byte key (derived in the
// handshake, handshake.hpp) and a 64-bit counter of the records sent in that direction. A record is sealed
// under the nonce (4 zero bytes, counter little-endian): its clear part (a frame header) is authenticated as
// additional data; its body is encrypted with AES-256-GCM when the run encrypts, else authenticated as
// additional data too, with ChaCha20-Poly1305 (a Poly1305 MAC under a per-record key). The 16-byte tag follows
// the record. The receiver opens records in the same order
// with its own counter, so a changed, dropped, reordered or replayed record fails its tag.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;

namespace pccl::crypto {

constexpr size_t kKeyBytes = 32;
constexpr size_t kNonceBytes = 32;  // handshake nonces
constexpr size_t kMacBytes = 32;    // HMAC-SHA-256
constexpr size_t kTagBytes = 16;    // AEAD tag (GCM or Poly1305)

using Key = std::array<uint8_t, kKeyBytes>;
using Mac = std::array<uint8_t, kMacBytes>;

void random_bytes(uint8_t* out, size_t n);  // OpenSSL's CSPRNG; throws on failure
Mac hmac_sha256(const Key& key, const std::vector<uint8_t>& message);
// HKDF-SHA-256 (RFC 5869) of len bytes.
std::vector<uint8_t> hkdf_sha256(const uint8_t* ikm, size_t ikm_len, const std::vector<uint8_t>& salt,
                                 const std::string& info, size_t len);
bool equal(const uint8_t* a, const uint8_t* b, size_t n);  // constant time

// One direction of a connection, sending side.
class Sealer {
public:
    Sealer(const Key& key, bool encrypt);
    ~Sealer();
    Sealer(const Sealer&) = delete;
    Sealer& operator=(const Sealer&) = delete;
    bool encrypts() const { return encrypt_; }
    // Seals one record: `clear` is authenticated only; `body` is encrypted into `out` (which may equal body)
    // when encrypting, else authenticated and `out` is unused. Writes the tag.
    void seal(const uint8_t* clear, size_t clear_len, const uint8_t* body, size_t len, uint8_t* out,
              uint8_t tag[kTagBytes]);

private:
    EVP_CIPHER_CTX* ctx_;
    bool encrypt_;
    uint64_t counter_ = 0;
};

// One direction of a connection, receiving side.
class Opener {
public:
    Opener(const Key& key, bool encrypt);
    ~Opener();
    Opener(const Opener&) = delete;
    Opener& operator=(const Opener&) = delete;
    bool decrypts() const { return encrypt_; }
    // Checks one record and decrypts its body in place; false when the tag does not match (the body is then
    // not to be used, and the connection must be dropped: the counters no longer agree).
    bool open(const uint8_t* clear, size_t clear_len, uint8_t* body, size_t len, const uint8_t tag[kTagBytes]);

private:
    EVP_CIPHER_CTX* ctx_;
    bool encrypt_;
    uint64_t counter_ = 0;
};

}  // namespace pccl::crypto
