// libFuzzer harness: manifest.json (nlohmann-json + every field check of manifest.cpp).
#include "fuzz_common.hpp"
#include "manifest.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    kidrr_fuzz::refusing([&] { kidrr::parse_manifest(kidrr_fuzz::bytes(data, size), "manifest.json"); });
    return 0;
}
