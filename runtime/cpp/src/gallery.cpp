#include "gallery.hpp"

#include <cmath>

#include "checked.hpp"
#include "error.hpp"
#include "npy.hpp"

namespace kidrr {

namespace {

// Index of the first non-finite value, or size if all are finite.
size_t first_non_finite(const float* v, size_t size) {
    for (size_t i = 0; i < size; ++i)
        if (!std::isfinite(v[i])) return i;
    return size;
}

}  // namespace

EncodedImages parse_gallery_npz(std::string_view bytes, const std::string& what, const std::string& bundle_identity,
                                size_t embed_size) {
    auto z = parse_npz(bytes, what);
    for (const char* key : {"format", "bundle_id", "locals", "globals"})
        if (!z.count(key)) throw Error(KIDRR_ERR_INPUT, what + " has no '" + key + "' array: not a kidrr gallery file");
    const std::string format = z["format"].unicode_scalar();
    if (format != kGalleryFormat)
        throw Error(KIDRR_ERR_INPUT, what + ": gallery format '" + format + "' is not " + kGalleryFormat + "; rebuild it");
    const std::string tag = z["bundle_id"].unicode_scalar();
    if (tag != bundle_identity)
        throw Error(KIDRR_ERR_BUNDLE, "gallery " + what + " was encoded by another bundle (" + tag.substr(0, 12) + "...), not this one (" +
                                          bundle_identity.substr(0, 12) + "...); re-encode the images with this bundle");
    NpyArray& loc = z["locals"];
    NpyArray& glo = z["globals"];
    if (loc.descr != "<f4" || glo.descr != "<f4" || loc.shape.size() != 3 || glo.shape.size() != 2 ||
        loc.shape[0] != glo.shape[0] || loc.shape[1] == 0 || loc.shape[2] != embed_size || glo.shape[1] != embed_size)
        throw Error(KIDRR_ERR_INPUT, what + ": locals/globals must be float32 (n, R, D) and (n, D) with R >= 1 and D = " +
                                         std::to_string(embed_size) + " (this bundle's embed size)");
    EncodedImages e;
    e.n = loc.shape[0]; e.regions = loc.shape[1]; e.dim = loc.shape[2]; e.bundle_id = tag;
    const size_t n_loc = product(loc.shape, what), n_glo = product(glo.shape, what);
    const size_t per_image = product({e.regions, e.dim}, what);
    if (size_t bad = first_non_finite(loc.floats(), n_loc); bad != n_loc)
        throw Error(KIDRR_ERR_INPUT, what + ": image " + std::to_string(bad / per_image) +
                                         " has a NaN or infinite local feature; rebuild the gallery from clean features");
    if (size_t bad = first_non_finite(glo.floats(), n_glo); bad != n_glo)
        throw Error(KIDRR_ERR_INPUT, what + ": image " + std::to_string(bad / e.dim) +
                                         " has a NaN or infinite global feature; rebuild the gallery from clean features");
    e.locals.assign(loc.floats(), loc.floats() + n_loc);
    e.globals.assign(glo.floats(), glo.floats() + n_glo);
    return e;
}

}  // namespace kidrr
