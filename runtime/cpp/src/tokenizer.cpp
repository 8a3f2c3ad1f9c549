#include "tokenizer.hpp"

#include <fstream>
#include <sstream>

#include "error.hpp"
#include "json.hpp"
#include "npy.hpp"
#include "utf8.hpp"
#include "wordpiece.hpp"

namespace kidrr {

namespace {
// Byte-wise is exact: in valid UTF-8 every byte of a non-ASCII code point is >= 0x80, and those
// are all word characters, so a multi-byte character is never split.
inline bool is_word_byte(unsigned char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c >= 0x80; }
inline bool is_space_byte(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

// 64 MiB holds millions of words: anything larger is refused before it is read.
constexpr size_t kMaxVocabBytes = size_t(64) << 20;
}  // namespace

std::string read_tokenizer_file(const std::string& path) {
    try {
        return read_file_bytes(path, kMaxVocabBytes, KIDRR_ERR_BUNDLE);
    } catch (const Error& e) {
        throw Error(KIDRR_ERR_BUNDLE, "vocabulary file " + path + " is missing, unreadable or too large (" + e.what() + ")");
    }
}

std::string caption_preview(const std::string& s) {
    std::string p = s.substr(0, 60);
    while (!p.empty() && !valid_utf8(p)) p.pop_back();  // do not cut a character in half
    return p;
}

std::unique_ptr<CaptionTokenizer> load_tokenizer_file(const std::string& path) {
    const Json doc = parse_json(read_tokenizer_file(path), path);
    // tokenizer.json files have a "model" record; kidrr's vocab.json never does.
    if (member(doc, "model")) return std::make_unique<WordPiece>(WordPiece::from_json(doc, path));
    return std::make_unique<Vocabulary>(Vocabulary::from_json(doc, path));
}

std::vector<std::string> tokenize(const std::string& text) {
    if (!valid_utf8(text)) throw Error(KIDRR_ERR_INPUT, "caption is not valid UTF-8; pass UTF-8 text");
    std::vector<std::string> tokens;
    std::string word;
    for (char raw : text) {
        unsigned char c = static_cast<unsigned char>(raw);
        if (c >= 'A' && c <= 'Z') c = static_cast<unsigned char>(c + 32);  // ASCII-only lowering
        if (is_word_byte(c)) { word.push_back(char(c)); continue; }
        if (!word.empty()) { tokens.push_back(word); word.clear(); }
        if (!is_space_byte(c)) tokens.emplace_back(1, char(c));
    }
    if (!word.empty()) tokens.push_back(word);
    return tokens;
}

Vocabulary Vocabulary::load(const std::string& path) { return parse(read_tokenizer_file(path), path); }

Vocabulary Vocabulary::parse(std::string_view json, const std::string& path) { return from_json(parse_json(json, path), path); }

Vocabulary Vocabulary::from_json(const Json& doc, const std::string& path) {
    const Json* format = member(doc, "format");
    const Json* rules = member(doc, "tokenizer");
    const Json* words = member(doc, "words");
    if (!format || !format->is_string() || *format != kVocabFormat || !rules || !rules->is_string() || *rules != kTokenizerRules)
        throw Error(KIDRR_ERR_BUNDLE, path + ": vocabulary format/tokenizer unknown; expected " +
                                          std::string(kVocabFormat) + " / " + kTokenizerRules);
    if (!words || !words->is_array()) throw Error(KIDRR_ERR_BUNDLE, path + ": 'words' must be a list");
    Vocabulary v;
    const char* specials[] = {"<pad>", "<start>", "<end>", "<unk>"};
    v.words_.reserve(words->size());
    for (const Json& w : *words) {
        if (!w.is_string()) throw Error(KIDRR_ERR_BUNDLE, path + ": every word must be a string");
        const std::string& text = w.get_ref<const std::string&>();
        size_t id = v.words_.size();
        if (id < 4 && text != specials[id])
            throw Error(KIDRR_ERR_BUNDLE, path + ": vocabulary must start with <pad> <start> <end> <unk>");
        if (!v.index_.emplace(text, int64_t(id)).second)
            throw Error(KIDRR_ERR_BUNDLE, path + ": vocabulary holds the duplicate word '" + caption_preview(text) + "'");
        v.words_.push_back(text);
    }
    if (v.words_.size() < 4) throw Error(KIDRR_ERR_BUNDLE, path + ": vocabulary must start with <pad> <start> <end> <unk>");
    return v;
}

std::vector<int64_t> Vocabulary::encode(const std::string& caption, size_t max_len) const {
    std::vector<std::string> tokens = tokenize(caption);
    if (tokens.empty())
        throw Error(KIDRR_ERR_INPUT, "caption '" + caption_preview(caption) + "' is empty after tokenisation; give at least one word");
    std::vector<int64_t> ids;
    ids.reserve(tokens.size() + 2);
    ids.push_back(kStartId);
    for (const std::string& t : tokens) {
        auto it = index_.find(t);
        ids.push_back(it == index_.end() ? kUnkId : it->second);
    }
    ids.push_back(kEndId);
    if (max_len != 0 && ids.size() > max_len)
        throw Error(KIDRR_ERR_INPUT, "caption has " + std::to_string(ids.size()) +
                                         " tokens (with <start>/<end>), more than the model's max_caption_len " +
                                         std::to_string(max_len) + "; shorten it");
    return ids;
}

}  // namespace kidrr
