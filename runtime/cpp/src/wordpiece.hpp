// The BERT WordPiece caption tokenizer of MiniLM bundles (docs/tokenizer.md): a Hugging Face
// tokenizer.json read and applied as the `tokenizers` library does with truncation and padding off:
// added (special) tokens split out of the raw text, BertNormalizer, BertPreTokenizer, WordPiece,
// then [CLS] ... [SEP]. Only those kinds are accepted; anything else is refused when loading.
// The Unicode data comes from tables generated from `tokenizers` itself (unicode_tables.hpp).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "tokenizer.hpp"

namespace kidrr {

class WordPiece : public CaptionTokenizer {
public:
    // Throws Error(KIDRR_ERR_BUNDLE) naming `what` and the record that is not the BERT kind.
    static WordPiece load(const std::string& path) { return parse(read_tokenizer_file(path), path); }
    static WordPiece parse(std::string_view json, const std::string& what);
    static WordPiece from_json(const nlohmann::json& doc, const std::string& what);

    // [CLS] pieces [SEP]. Error(KIDRR_ERR_INPUT) on invalid UTF-8, on a caption with no piece
    // (empty, blank, or only characters the normalizer drops), or when there would be more than
    // max_len ids (0: no limit; past max_len the rest is not tokenized).
    std::vector<int64_t> encode(const std::string& caption, size_t max_len) const override;
    size_t size() const override { return vocab_.size(); }
    int64_t unk_id() const override { return unk_id_; }

private:
    struct Added {
        std::string content;
        int64_t id;
    };
    // Code points of one stretch of raw text (between added tokens) -> ids appended to `ids`;
    // false once ids holds more than `limit`.
    bool encode_text(const uint32_t* cps, size_t n, std::vector<int64_t>& ids, size_t limit) const;
    void encode_word(const std::string& word, size_t chars, std::vector<int64_t>& ids) const;

    bool clean_text_ = true, chinese_chars_ = true, strip_accents_ = true, lowercase_ = true;
    std::unordered_map<std::string, int64_t> vocab_;
    std::string prefix_;             // continuing_subword_prefix ("##")
    size_t max_word_chars_ = 100;    // max_input_chars_per_word: longer words are [UNK]
    size_t max_token_bytes_ = 0;     // the longest vocabulary entry: no longer substring can match
    int64_t unk_id_ = 0, cls_id_ = 0, sep_id_ = 0;
    std::vector<Added> added_;       // matched in the raw text, leftmost then longest
    bool added_first_byte_[256] = {};
};

}  // namespace kidrr
