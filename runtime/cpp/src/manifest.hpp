// manifest.json of a bundle (docs/bundle.md), parsed and checked without touching any other file:
// format, tokenizer rules, model sizes, precision, the graphs' files, hashes and input/output
// names, and that every path it names stays inside the bundle. The Bundle then checks the files.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace kidrr {

constexpr const char* kBundleFormat = "kidrr-bundle/1";
// The longest caption (in tokens) a WordPiece (BERT) text encoder takes.
constexpr size_t kMaxWordPieceCaptionLen = 512;

// How captions become ids: the kidrr-basic/1 rules with vocab.json, or BERT WordPiece with a
// tokenizer.json (the `tokenizer.kind` "wordpiece" of MiniLM bundles).
enum class TokenizerKind { basic, wordpiece };

struct GraphSpec {
    std::string file, sha256;
    std::vector<std::string> inputs, outputs;
};

struct Manifest {
    size_t feature_size = 0, embed_size = 0, max_caption_len = 0;
    size_t vocab_size = 0;  // 0: not stated
    std::string precision;  // fp32 | fp16 | int8
    GraphSpec image_encoder, text_encoder, similarity;
    // Photos in (docs/images.md): present when the manifest has an `image` object.
    bool has_image = false;
    GraphSpec preprocess, backbone;  // RGB8 (H, W, 3) -> (1, 3, S, S); (n, 3, S, S) -> (n, R, F)
    size_t image_regions = 0;        // R of the backbone's features
    uint64_t max_pixels = 0;         // H x W refused beyond this
    std::string text_encoder_kind = "bigru";     // model.text_encoder: bigru | minilm-l6
    TokenizerKind tokenizer_kind = TokenizerKind::basic;
    std::string tokenizer_file;                  // vocab.json (basic) or tokenizer.json (wordpiece)
    // Every file the manifest vouches for, (relative path, sha256): the three graphs, then `files`.
    std::vector<std::pair<std::string, std::string>> files;
    // The text a bundle's identity is the sha256 of (kidrr/identity.py bundle_id): the canonical
    // JSON of the fields that change the numbers, so re-exports keep it and galleries stay valid.
    std::string identity_text;
};

// That text for a parsed manifest: {"files","format","graphs" (each graph's number-changing
// keys),"model","precision","tokenizer"} as Python's json.dumps(sort_keys=True,
// separators=(",", ":")) writes it (ASCII only, missing keys as null).
std::string identity_text(const nlohmann::json& manifest);

// Throws Error(KIDRR_ERR_BUNDLE) naming `path` and the field on anything malformed.
Manifest parse_manifest(std::string_view raw, const std::string& path);

}  // namespace kidrr
