#include "sha256.hpp"

#include <stdio.h>
#include <unistd.h>

#include <openssl/evp.h>

#include <cstdio>
#include <memory>

#include "error.hpp"
#include "npy.hpp"

namespace kidrr {

namespace {
void check(int ok, const char* what) {
    if (ok != 1) throw Error(KIDRR_ERR_INTERNAL, std::string("OpenSSL ") + what + " failed");
}
}  // namespace

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
    if (!ctx_) throw std::bad_alloc();
    if (EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
        EVP_MD_CTX_free(ctx_);
        throw Error(KIDRR_ERR_INTERNAL, "OpenSSL EVP_DigestInit_ex(sha256) failed");
    }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::update(const void* data, size_t len) { check(EVP_DigestUpdate(ctx_, data, len), "EVP_DigestUpdate"); }

std::string Sha256::hex_digest() {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    check(EVP_DigestFinal_ex(ctx_, md, &len), "EVP_DigestFinal_ex");
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned int i = 0; i < len; ++i) {
        out.push_back(hex[md[i] >> 4]);
        out.push_back(hex[md[i] & 15]);
    }
    return out;
}

std::string sha256_file(const std::string& path) {
    size_t size = 0;  // a regular file only: a FIFO would block the open, a folder the reads
    const int fd = open_regular(path, false, KIDRR_ERR_BUNDLE, &size);
    std::unique_ptr<FILE, int (*)(FILE*)> f(::fdopen(fd, "rb"), &std::fclose);
    if (!f) {
        ::close(fd);
        throw Error(KIDRR_ERR_BUNDLE, "cannot read " + path + " to check its sha256");
    }
    Sha256 h;
    std::unique_ptr<unsigned char[]> buf(new unsigned char[1 << 16]);
    size_t got;
    while ((got = std::fread(buf.get(), 1, 1 << 16, f.get())) > 0) h.update(buf.get(), got);
    if (std::ferror(f.get())) throw Error(KIDRR_ERR_BUNDLE, "read error on " + path);
    return h.hex_digest();
}

}  // namespace kidrr
