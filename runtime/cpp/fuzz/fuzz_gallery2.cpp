// libFuzzer harness: the manifest.json of a format-2 gallery folder (every field check of
// gallery2_manifest.cpp), then each segment array's header as the reader parses it.
#include "fuzz_common.hpp"
#include "gallery2_manifest.hpp"
#include "npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view bytes = kidrr_fuzz::bytes(data, size);
    kidrr_fuzz::refusing([&] { kidrr::parse_gallery2_manifest(bytes, "manifest.json"); });
    kidrr_fuzz::refusing([&] { kidrr::parse_npy_header(bytes.substr(0, kidrr::kGallery2NpyHeaderBytes), "globals.npy"); });
    return 0;
}
