// SHA-256 through OpenSSL's libcrypto (EVP interface), used to check bundle files against
// manifest.json and to compute a bundle's identity (the sha256 of manifest.cpp's identity_text).
#pragma once
#include <cstddef>
#include <string>

typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace kidrr {

class Sha256 {
public:
    Sha256();
    ~Sha256();
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;
    void update(const void* data, size_t len);
    std::string hex_digest();  // finishes the hash; call once

private:
    EVP_MD_CTX* ctx_;
};

// Lower-case hex sha256 of a file; throws kidrr::Error(KIDRR_ERR_BUNDLE) if it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace kidrr
