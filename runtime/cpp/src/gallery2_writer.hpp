// Writing a new format-2 gallery folder (docs/gallery.md) from encoded images: one segment, fp32
// locals, ids checked as kidrr.gallery checks them. The folder appears all at once (staged under a
// .tmp- name beside it, fsynced, renamed); an existing path is never touched. kidrr.gallery's
// GalleryWriter can append to it later.
#pragma once
#include <string>
#include <vector>

#include "encoded.hpp"

namespace kidrr {

// Error(KIDRR_ERR_INPUT) on bad ids or an existing folder; nothing is left behind on failure.
void write_gallery2(const EncodedImages& images, const std::vector<std::string>& ids, const std::string& folder);

}  // namespace kidrr
