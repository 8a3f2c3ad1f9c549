// Encoded images and captions: what the encoders produce and the similarity graph consumes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kidrr {

struct EncodedImages {
    size_t n = 0, regions = 0, dim = 0;
    std::vector<float> locals;   // (n, R, D)
    std::vector<float> globals;  // (n, D)
    std::string bundle_id;       // sha256 of the manifest of the bundle that encoded them
};

struct EncodedCaptions {
    size_t m = 0, width = 0, dim = 0;  // width: longest caption (tokens incl. <start>/<end>)
    std::vector<float> locals;         // (m, width, D), zero past each length
    std::vector<float> globals;        // (m, D)
    std::vector<int64_t> lengths;      // (m,)
};

}  // namespace kidrr
