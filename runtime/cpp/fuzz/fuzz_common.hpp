// Shared by the libFuzzer harnesses: run one parser on the input; a kidrr::Error is the expected
// refusal of a bad file, anything else (another exception, a sanitizer report) is a finding.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "error.hpp"

namespace kidrr_fuzz {

// The bundle identity and embed size the gallery harness checks files against; the seed
// galleries (fuzz/corpus/gallery) carry the same.
constexpr const char* kIdentity = "4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4f1c0ffee4";
constexpr size_t kEmbedSize = 4;

inline std::string_view bytes(const uint8_t* data, size_t size) { return {reinterpret_cast<const char*>(data), size}; }

template <class Fn>
void refusing(Fn&& fn) {
    try {
        fn();
    } catch (const kidrr::Error&) {
        // a typed refusal, as the C ABI reports it: fine
    }
}

}  // namespace kidrr_fuzz
