// manifest.json of a bundle (docs/bundle.md), parsed and checked without touching any other file:
// format, tokenizer rules, model sizes, precision, the graphs' files, hashes and input/output
// names, and that every path it names stays inside the bundle. The Bundle then checks the files.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kidrr {

constexpr const char* kBundleFormat = "kidrr-bundle/1";

struct GraphSpec {
    std::string file, sha256;
    std::vector<std::string> inputs, outputs;
};

struct Manifest {
    size_t feature_size = 0, embed_size = 0, max_caption_len = 0;
    size_t vocab_size = 0;  // 0: not stated
    std::string precision;  // fp32 | fp16 | int8
    GraphSpec image_encoder, text_encoder, similarity;
    std::string vocab_file;
    // Every file the manifest vouches for, (relative path, sha256): the three graphs, then `files`.
    std::vector<std::pair<std::string, std::string>> files;
};

// Throws Error(KIDRR_ERR_BUNDLE) naming `path` and the field on anything malformed.
Manifest parse_manifest(std::string_view raw, const std::string& path);

}  // namespace kidrr
