// Writing a new format-2 gallery folder (docs/gallery.md) from encoded images: one segment, fp32 or
// fp16 locals (kidrr.gallery's default), ids checked as kidrr.gallery checks them. The folder appears all at once (staged under a
// .tmp- name beside it, fsynced, renamed); an existing path is never touched. kidrr.gallery's
// GalleryWriter can append to it later.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "encoded.hpp"

namespace kidrr {

// Error(KIDRR_ERR_INPUT) on bad ids, a locals_dtype other than "fp32" / "fp16", fp16 locals beyond
// its range, or an existing folder; nothing is left behind on failure.
void write_gallery2(const EncodedImages& images, const std::vector<std::string>& ids, const std::string& folder,
                    const std::string& locals_dtype = "fp32");

// float32 -> float16 bits, rounded to nearest even as numpy's astype(float16) rounds. A value that is
// not finite or beyond fp16's largest (65504) is refused (Error), as kidrr.gallery refuses it, rather
// than stored as inf.
uint16_t float_to_half(float value);

}  // namespace kidrr
