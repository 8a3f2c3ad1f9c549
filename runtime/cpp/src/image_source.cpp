#include "image_source.hpp"

#include <algorithm>
#include <numeric>

#include "error.hpp"

namespace kidrr {

std::vector<size_t> MemoryImages::live_rows(size_t begin, size_t end) const {
    std::vector<size_t> out(std::min(end, images_.n) - std::min(begin, std::min(end, images_.n)));
    std::iota(out.begin(), out.end(), begin);
    return out;
}

void MemoryImages::read_globals(size_t begin, size_t n, float* out) const {
    if (begin > images_.n || n > images_.n - begin) throw Error(KIDRR_ERR_INTERNAL, "rows out of range");
    std::copy_n(images_.globals.begin() + begin * images_.dim, n * images_.dim, out);
}

EncodedImages MemoryImages::gather(const std::vector<size_t>& rows) const {
    const size_t r = images_.regions, d = images_.dim;
    EncodedImages out;
    out.n = rows.size(); out.regions = r; out.dim = d; out.bundle_id = images_.bundle_id;
    out.locals.resize(rows.size() * r * d);
    out.globals.resize(rows.size() * d);
    for (size_t s = 0; s < rows.size(); ++s) {
        if (rows[s] >= images_.n) throw Error(KIDRR_ERR_INTERNAL, "row out of range");
        std::copy_n(images_.locals.begin() + rows[s] * r * d, r * d, out.locals.begin() + s * r * d);
        std::copy_n(images_.globals.begin() + rows[s] * d, d, out.globals.begin() + s * d);
    }
    return out;
}

}  // namespace kidrr
