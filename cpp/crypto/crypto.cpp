#include "crypto/crypto.hpp"

#include <cstring>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>

#include "base/error.hpp"

namespace pccl::crypto {

namespace {
[[noreturn]] void fail(const char* what) { throw CoreError(ErrorKind::kNetwork, std::string("OpenSSL: ") + what + " failed"); }

// Processes additional data in pieces below INT_MAX bytes (the EVP interface counts in int).
void aad(EVP_CIPHER_CTX* ctx, const uint8_t* p, size_t n, bool encrypting) {
    while (n) {
        const int k = int(std::min<size_t>(n, 1u << 30));
        int outl = 0;
        const int ok = encrypting ? EVP_EncryptUpdate(ctx, nullptr, &outl, p, k) : EVP_DecryptUpdate(ctx, nullptr, &outl, p, k);
        if (!ok) fail("AEAD additional data");
        p += k;
        n -= size_t(k);
    }
}

void nonce_of(uint64_t counter, uint8_t iv[12]) {
    std::memset(iv, 0, 12);
    for (int i = 0; i < 8; i++) iv[4 + i] = uint8_t(counter >> (8 * i));
}

// The AEAD of a connection: AES-256-GCM when the run encrypts (AES-NI: the fastest encryption here);
// ChaCha20-Poly1305 with the body as additional data when it only authenticates (Poly1305 hashes about 1.5x
// faster than GHASH on current x86).
EVP_CIPHER_CTX* new_aead(const Key& key, bool encrypt, bool encrypting) {
    EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
    if (!ctx) fail("EVP_CIPHER_CTX_new");
    const EVP_CIPHER* cipher = encrypt ? EVP_aes_256_gcm() : EVP_chacha20_poly1305();
    const int ok = encrypting ? EVP_EncryptInit_ex(ctx, cipher, nullptr, key.data(), nullptr)
                              : EVP_DecryptInit_ex(ctx, cipher, nullptr, key.data(), nullptr);
    if (!ok) {
        EVP_CIPHER_CTX_free(ctx);
        fail("AEAD setup");
    }
    return ctx;
}
}  // namespace

void random_bytes(uint8_t* out, size_t n) {
    if (RAND_bytes(out, int(n)) != 1) fail("RAND_bytes");
}

Mac hmac_sha256(const Key& key, const std::vector<uint8_t>& message) {
    Mac mac{};
    unsigned int len = 0;
    if (!HMAC(EVP_sha256(), key.data(), int(key.size()), message.data(), message.size(), mac.data(), &len) ||
        len != mac.size())
        fail("HMAC-SHA-256");
    return mac;
}

std::vector<uint8_t> hkdf_sha256(const uint8_t* ikm, size_t ikm_len, const std::vector<uint8_t>& salt,
                                 const std::string& info, size_t len) {
    std::vector<uint8_t> out(len);
    EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
    if (!kdf) fail("EVP_KDF_fetch(HKDF)");
    EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (!ctx) fail("EVP_KDF_CTX_new");
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(ikm), ikm_len),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, const_cast<uint8_t*>(salt.data()), salt.size()),
        OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, const_cast<char*>(info.data()), info.size()),
        OSSL_PARAM_construct_end()};
    const int ok = EVP_KDF_derive(ctx, out.data(), out.size(), params);
    EVP_KDF_CTX_free(ctx);
    if (ok != 1) fail("HKDF-SHA-256");
    return out;
}

bool equal(const uint8_t* a, const uint8_t* b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

Sealer::Sealer(const Key& key, bool encrypt) : ctx_(new_aead(key, encrypt, true)), encrypt_(encrypt) {}
Sealer::~Sealer() { EVP_CIPHER_CTX_free(ctx_); }

void Sealer::seal(const uint8_t* clear, size_t clear_len, const uint8_t* body, size_t len, uint8_t* out,
                  uint8_t tag[kTagBytes]) {
    uint8_t iv[12];
    nonce_of(counter_++, iv);
    if (!EVP_EncryptInit_ex(ctx_, nullptr, nullptr, nullptr, iv)) fail("AEAD nonce");
    aad(ctx_, clear, clear_len, true);
    if (!encrypt_) {
        aad(ctx_, body, len, true);
    } else {
        while (len) {
            const int k = int(std::min<size_t>(len, 1u << 30));
            int outl = 0;
            if (!EVP_EncryptUpdate(ctx_, out, &outl, body, k)) fail("AEAD encrypt");
            body += k;
            out += k;
            len -= size_t(k);
        }
    }
    int outl = 0;
    if (!EVP_EncryptFinal_ex(ctx_, nullptr, &outl) || !EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_AEAD_GET_TAG, int(kTagBytes), tag))
        fail("AEAD tag");
}

Opener::Opener(const Key& key, bool encrypt) : ctx_(new_aead(key, encrypt, false)), encrypt_(encrypt) {}
Opener::~Opener() { EVP_CIPHER_CTX_free(ctx_); }

bool Opener::open(const uint8_t* clear, size_t clear_len, uint8_t* body, size_t len, const uint8_t tag[kTagBytes]) {
    uint8_t iv[12];
    nonce_of(counter_++, iv);
    if (!EVP_DecryptInit_ex(ctx_, nullptr, nullptr, nullptr, iv)) fail("AEAD nonce");
    aad(ctx_, clear, clear_len, false);
    if (!encrypt_) {
        aad(ctx_, body, len, false);
    } else {
        while (len) {
            const int k = int(std::min<size_t>(len, 1u << 30));
            int outl = 0;
            if (!EVP_DecryptUpdate(ctx_, body, &outl, body, k)) fail("AEAD decrypt");
            body += k;
            len -= size_t(k);
        }
    }
    if (!EVP_CIPHER_CTX_ctrl(ctx_, EVP_CTRL_AEAD_SET_TAG, int(kTagBytes), const_cast<uint8_t*>(tag))) fail("AEAD tag");
    int outl = 0;
    return EVP_DecryptFinal_ex(ctx_, nullptr, &outl) == 1;
}

}  // namespace pccl::crypto
