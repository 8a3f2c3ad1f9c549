// The kidrr-basic/1 caption tokenizer, byte for byte the rules of kidrr/tokenizer.py
// (written down in docs/tokenizer.md).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kidrr {

constexpr const char* kTokenizerRules = "kidrr-basic/1";
constexpr const char* kVocabFormat = "kidrr-vocab/1";
constexpr int64_t kPadId = 0, kStartId = 1, kEndId = 2, kUnkId = 3;

// Throws Error(KIDRR_ERR_INPUT) if text is not valid UTF-8.
std::vector<std::string> tokenize(const std::string& text);

class Vocabulary {
public:
    // Reads vocab.json; throws Error(KIDRR_ERR_BUNDLE) on a bad file.
    static Vocabulary load(const std::string& path);
    // The same from the file's bytes (`what` names it in messages).
    static Vocabulary parse(std::string_view json, const std::string& what);
    // <start> ids <end>; throws Error(KIDRR_ERR_INPUT) if empty after tokenising or longer than
    // max_len (0: no limit).
    std::vector<int64_t> encode(const std::string& caption, size_t max_len) const;
    size_t size() const { return words_.size(); }

private:
    std::vector<std::string> words_;
    std::unordered_map<std::string, int64_t> index_;
};

}  // namespace kidrr
