// libFuzzer harness: a gallery .npz as the C ABI loads it (kidrr_gallery_load): archive, tags,
// bundle identity, dtypes, shapes, finite values. Then every loaded value is read once.
#include "fuzz_common.hpp"
#include "gallery.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    kidrr_fuzz::refusing([&] {
        kidrr::EncodedImages g = kidrr::parse_gallery_npz(kidrr_fuzz::bytes(data, size), "g.npz", kidrr_fuzz::kIdentity,
                                                          kidrr_fuzz::kEmbedSize);
        if (g.locals.size() != g.n * g.regions * g.dim || g.globals.size() != g.n * g.dim) __builtin_trap();
    });
    return 0;
}
