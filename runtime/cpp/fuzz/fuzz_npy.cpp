// libFuzzer harness: a .npy array (header dict, dtype, shape, byte count).
#include <cstring>

#include "fuzz_common.hpp"
#include "npy.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    kidrr_fuzz::refusing([&] {
        kidrr::NpyArray a = kidrr::parse_npy(kidrr_fuzz::bytes(data, size), "x.npy");
        // Touch every element the header promised: out-of-bounds reads show up under ASan.
        const size_t count = a.count();
        if (a.descr == "<f4") {
            float sum = 0;
            for (size_t i = 0; i < count; ++i) { float v; std::memcpy(&v, a.data.data() + 4 * i, 4); sum += v; }
            (void)sum;
        } else if (a.shape.empty()) {
            a.unicode_scalar();
        }
    });
    return 0;
}
