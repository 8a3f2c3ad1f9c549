// The kidrr-basic/1 caption tokenizer, byte for byte the rules of kidrr/tokenizer.py
// (written down in docs/tokenizer.md), and the interface the bundle's caption tokenizers share
// (this one, and the WordPiece tokenizer of wordpiece.hpp).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace kidrr {

constexpr const char* kTokenizerRules = "kidrr-basic/1";
constexpr const char* kVocabFormat = "kidrr-vocab/1";
constexpr int64_t kPadId = 0, kStartId = 1, kEndId = 2, kUnkId = 3;

// Throws Error(KIDRR_ERR_INPUT) if text is not valid UTF-8.
std::vector<std::string> tokenize(const std::string& text);

// Captions -> the ids the bundle's text encoder takes. Immutable once built: thread-safe to share.
class CaptionTokenizer {
public:
    virtual ~CaptionTokenizer() = default;
    // Start id, piece ids, end id. Throws Error(KIDRR_ERR_INPUT) on invalid UTF-8, a caption with no
    // piece, or more than max_len ids (0: no limit).
    virtual std::vector<int64_t> encode(const std::string& caption, size_t max_len) const = 0;
    virtual size_t size() const = 0;       // vocabulary entries
    virtual int64_t unk_id() const = 0;    // the id of an unknown word
};

// A vocabulary file: kidrr's vocab.json (format kidrr-vocab/1), or a Hugging Face tokenizer.json
// holding a BERT WordPiece tokenizer. Throws Error(KIDRR_ERR_BUNDLE) on anything else.
std::unique_ptr<CaptionTokenizer> load_tokenizer_file(const std::string& path);

// A tokenizer file's bytes (at most 64 MiB, refused before reading beyond); Error(KIDRR_ERR_BUNDLE).
std::string read_tokenizer_file(const std::string& path);

// The first 60 bytes of a caption, not cutting a character in half (for messages).
std::string caption_preview(const std::string& caption);

class Vocabulary : public CaptionTokenizer {
public:
    // Reads vocab.json; throws Error(KIDRR_ERR_BUNDLE) on a bad file.
    static Vocabulary load(const std::string& path);
    // The same from the file's bytes (`what` names it in messages).
    static Vocabulary parse(std::string_view json, const std::string& what);
    static Vocabulary from_json(const nlohmann::json& doc, const std::string& what);
    // <start> ids <end>; throws Error(KIDRR_ERR_INPUT) if empty after tokenising or longer than
    // max_len (0: no limit).
    std::vector<int64_t> encode(const std::string& caption, size_t max_len) const override;
    size_t size() const override { return words_.size(); }
    int64_t unk_id() const override { return kUnkId; }

private:
    std::vector<std::string> words_;
    std::unordered_map<std::string, int64_t> index_;
};

}  // namespace kidrr
