// libFuzzer harness: vocab.json, then the tokenizer and encoder on the same bytes as a caption.
#include "fuzz_common.hpp"
#include "tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(kidrr_fuzz::bytes(data, size));
    kidrr_fuzz::refusing([&] {
        kidrr::Vocabulary v = kidrr::Vocabulary::parse(text, "vocab.json");
        kidrr_fuzz::refusing([&] { v.encode("a dog runs on the grass", 12); });
        kidrr_fuzz::refusing([&] { v.encode(text, 0); });
    });
    kidrr_fuzz::refusing([&] { kidrr::tokenize(text); });
    return 0;
}
