// A gallery file written by the Python runtime (runtime/gallery.py: Gallery.save, an np.savez
// archive tagged kidrr-gallery/1 and with the encoding bundle's identity), checked as the Python
// loader checks it, and more: CRC-32 of every member (npy.cpp), the tags, dtypes and shapes, the
// bundle identity, and every value finite (a NaN row would otherwise be ranked among the hits).
#pragma once
#include <string>
#include <string_view>

#include "encoded.hpp"

namespace kidrr {

constexpr const char* kGalleryFormat = "kidrr-gallery/1";

// `bytes` is the .npz file; `what` names it in messages. Throws Error(KIDRR_ERR_INPUT) on a bad
// file, Error(KIDRR_ERR_BUNDLE) if another bundle (identity) encoded it.
EncodedImages parse_gallery_npz(std::string_view bytes, const std::string& what, const std::string& bundle_identity,
                                size_t embed_size);

}  // namespace kidrr
