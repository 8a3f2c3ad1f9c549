#include "similar.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "error.hpp"

namespace kidrr {

std::vector<Hit> nearest_to_row(const ImageSource& gallery, size_t row, size_t k) {
    const size_t n = gallery.live(), d = gallery.dim();
    if (k == 0 || k > n)
        throw Error(KIDRR_ERR_INPUT, "k must be in 1.." + std::to_string(n) + " (the gallery holds " + std::to_string(n) +
                                         " items), got " + std::to_string(k));
    std::vector<float> query(d);
    gallery.read_globals(row, 1, query.data());
    for (float v : query)
        if (!std::isfinite(v))
            throw Error(KIDRR_ERR_INPUT, "the item's stored global vector holds NaN or inf; run `kidrr gallery verify`, "
                                         "restore or rebuild the gallery");
    // A block of globals at a time: memory stays bounded whatever the gallery's size.
    constexpr size_t kBlock = 4096;
    std::vector<float> block;
    std::vector<std::pair<float, size_t>> sims;
    sims.reserve(n);
    for (size_t b0 = 0; b0 < gallery.rows(); b0 += kBlock) {
        const size_t bn = std::min(kBlock, gallery.rows() - b0);
        block.resize(bn * d);
        gallery.read_globals(b0, bn, block.data());
        for (size_t r : gallery.live_rows(b0, b0 + bn)) {
            if (r == row) continue;
            const float* g = block.data() + (r - b0) * d;
            float s = 0;
            for (size_t t = 0; t < d; ++t) s += g[t] * query[t];
            if (!std::isfinite(s))
                throw Error(KIDRR_ERR_INPUT, "a gallery global vector holds NaN or inf (row " + std::to_string(r) +
                                                 "); run `kidrr gallery verify`, restore or rebuild the gallery");
            sims.emplace_back(s, r);
        }
    }
    const size_t top = std::min(k, sims.size());
    std::partial_sort(sims.begin(), sims.begin() + top, sims.end(), [](const auto& a, const auto& b) {
        return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    std::vector<Hit> hits;
    for (size_t t = 0; t < top; ++t) hits.push_back({sims[t].second, sims[t].first});
    return hits;
}

}  // namespace kidrr
