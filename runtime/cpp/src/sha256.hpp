// SHA-256 (FIPS 180-4), written here because nothing third-party may be vendored. Used only to
// check bundle files against manifest.json, so speed matters little; it streams the file.
#pragma once
#include <cstdint>
#include <string>

namespace kidrr {

class Sha256 {
public:
    Sha256();
    void update(const void* data, size_t len);
    std::string hex_digest();  // finishes the hash; call once

private:
    void block(const uint8_t* p);
    uint32_t h_[8];
    uint8_t buf_[64];
    size_t buf_len_ = 0;
    uint64_t total_ = 0;
};

// Lower-case hex sha256 of a file; throws kidrr::Error(KIDRR_ERR_BUNDLE) if it cannot be read.
std::string sha256_file(const std::string& path);

}  // namespace kidrr
