#include "wordpiece.hpp"

#include <algorithm>
#include <climits>

#include "error.hpp"
#include "json.hpp"
#include "unicode_tables.hpp"
#include "utf8.hpp"

namespace kidrr {

namespace {

namespace u = unicode;

constexpr size_t kMaxAddedTokens = 1024, kMaxAddedBytes = 1024;

[[noreturn]] void refuse(const std::string& what, const std::string& why) {
    throw Error(KIDRR_ERR_BUNDLE, what + ": " + why +
                                      "; the C runtime reads BERT WordPiece tokenizers only (BertNormalizer, BertPreTokenizer, "
                                      "WordPiece, [CLS] $A [SEP]): re-export the bundle with one");
}

const Json& record(const Json& doc, const char* key, const char* type, const std::string& what) {
    const Json* r = member(doc, key);
    if (!r || !r->is_object()) refuse(what, std::string("'") + key + "' is missing or not an object");
    const Json* t = member(*r, "type");
    if (!t || !t->is_string() || *t != type)
        refuse(what, std::string(key) + " is '" + (t && t->is_string() ? t->get<std::string>() : "?") + "', not " + type);
    return *r;
}

bool flag(const Json& r, const char* key, const std::string& what) {
    const Json* v = member(r, key);
    if (!v || !v->is_boolean()) refuse(what, std::string("normalizer.") + key + " is missing or not true/false");
    return v->get<bool>();
}

int64_t token_id(const Json* v, const std::string& field, const std::string& what) {
    if (!v || !v->is_number_unsigned() || v->get<uint64_t>() > uint64_t(INT32_MAX))
        refuse(what, field + " is not a token id (an integer in [0, 2^31))");
    return v->get<int64_t>();
}

// The single id of a special token of the TemplateProcessing record.
int64_t special_id(const Json& proc, const Json& piece, const std::string& what) {
    const Json* st = member(piece, "SpecialToken");
    const Json* name = st ? member(*st, "id") : nullptr;
    if (!name || !name->is_string()) refuse(what, "post_processor.single is not [CLS] $A [SEP]");
    const Json* specials = member(proc, "special_tokens");
    const Json* entry = specials ? member(*specials, name->get_ref<const std::string&>().c_str()) : nullptr;
    const Json* ids = entry ? member(*entry, "ids") : nullptr;
    if (!ids || !ids->is_array() || ids->size() != 1)
        refuse(what, "post_processor.special_tokens has no single id for " + name->get<std::string>());
    return token_id(&(*ids)[0], "post_processor.special_tokens ids", what);
}

uint8_t lookup(const u::Range* table, size_t n, uint32_t cp) {
    const u::Range* end = table + n;
    const u::Range* r = std::upper_bound(table, end, cp, [](uint32_t c, const u::Range& x) { return c < x.first; });
    return r != table && cp <= (r - 1)->last ? (r - 1)->value : 0;
}
inline uint8_t flags(uint32_t cp) { return lookup(u::kFlags, u::kFlagsCount, cp); }
inline uint8_t combining_class(uint32_t cp) { return lookup(u::kCombiningClass, u::kCombiningClassCount, cp); }

const u::Mapping* mapping(const u::Mapping* table, size_t n, uint32_t cp) {
    const u::Mapping* end = table + n;
    const u::Mapping* m = std::lower_bound(table, end, cp, [](const u::Mapping& x, uint32_t c) { return x.cp < c; });
    return m != end && m->cp == cp ? m : nullptr;
}

inline bool continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

}  // namespace

WordPiece WordPiece::parse(std::string_view json, const std::string& what) { return from_json(parse_json(json, what), what); }

WordPiece WordPiece::from_json(const Json& doc, const std::string& what) {
    if (!doc.is_object()) refuse(what, "not a JSON object");
    WordPiece w;
    const Json& norm = record(doc, "normalizer", "BertNormalizer", what);
    w.clean_text_ = flag(norm, "clean_text", what);
    w.chinese_chars_ = flag(norm, "handle_chinese_chars", what);
    w.lowercase_ = flag(norm, "lowercase", what);
    const Json* strip = member(norm, "strip_accents");
    if (strip && !strip->is_null() && !strip->is_boolean()) refuse(what, "normalizer.strip_accents is not null/true/false");
    w.strip_accents_ = strip && strip->is_boolean() ? strip->get<bool>() : w.lowercase_;  // null: as lowercase (BERT's rule)
    record(doc, "pre_tokenizer", "BertPreTokenizer", what);

    const Json& model = record(doc, "model", "WordPiece", what);
    const Json* unk = member(model, "unk_token");
    const Json* prefix = member(model, "continuing_subword_prefix");
    const Json* max_chars = member(model, "max_input_chars_per_word");
    const Json* vocab = member(model, "vocab");
    if (!unk || !unk->is_string() || !prefix || !prefix->is_string())
        refuse(what, "model.unk_token or model.continuing_subword_prefix is missing or not a string");
    if (!max_chars || !max_chars->is_number_unsigned()) refuse(what, "model.max_input_chars_per_word is not a non-negative integer");
    if (!vocab || !vocab->is_object() || vocab->empty()) refuse(what, "model.vocab is missing, empty or not an object");
    w.prefix_ = prefix->get<std::string>();
    w.max_word_chars_ = size_t(std::min<uint64_t>(max_chars->get<uint64_t>(), SIZE_MAX / 8));
    w.vocab_.reserve(vocab->size());  // bounded by the file, itself bounded before it was read
    for (const auto& [token, id] : vocab->items()) {
        w.vocab_.emplace(token, token_id(&id, "model.vocab['" + caption_preview(token) + "']", what));
        w.max_token_bytes_ = std::max(w.max_token_bytes_, token.size());
    }
    const auto u_it = w.vocab_.find(unk->get_ref<const std::string&>());
    if (u_it == w.vocab_.end()) refuse(what, "model.unk_token '" + caption_preview(unk->get<std::string>()) + "' is not in model.vocab");
    w.unk_id_ = u_it->second;

    const Json* proc = member(doc, "post_processor");
    const Json* ptype = proc ? member(*proc, "type") : nullptr;
    if (ptype && *ptype == "TemplateProcessing") {
        const Json* single = member(*proc, "single");
        if (!single || !single->is_array() || single->size() != 3) refuse(what, "post_processor.single is not [CLS] $A [SEP]");
        const Json* seq = member((*single)[1], "Sequence");
        const Json* seq_id = seq ? member(*seq, "id") : nullptr;
        if (!seq_id || *seq_id != "A") refuse(what, "post_processor.single is not [CLS] $A [SEP]");
        w.cls_id_ = special_id(*proc, (*single)[0], what);
        w.sep_id_ = special_id(*proc, (*single)[2], what);
    } else if (ptype && *ptype == "BertProcessing") {
        const Json* cls = member(*proc, "cls");
        const Json* sep = member(*proc, "sep");
        if (!cls || !cls->is_array() || cls->size() != 2 || !sep || !sep->is_array() || sep->size() != 2)
            refuse(what, "post_processor cls/sep are not [token, id] pairs");
        w.cls_id_ = token_id(&(*cls)[1], "post_processor.cls", what);
        w.sep_id_ = token_id(&(*sep)[1], "post_processor.sep", what);
    } else {
        refuse(what, "post_processor is '" + (ptype && ptype->is_string() ? ptype->get<std::string>() : std::string("?")) +
                         "', not TemplateProcessing or BertProcessing");
    }

    if (const Json* added = member(doc, "added_tokens"); added && !added->is_null()) {
        if (!added->is_array() || added->size() > kMaxAddedTokens)
            refuse(what, "added_tokens is not a list of at most " + std::to_string(kMaxAddedTokens) + " tokens");
        for (const Json& t : *added) {
            const Json* content = member(t, "content");
            if (!content || !content->is_string() || content->get_ref<const std::string&>().empty() ||
                content->get_ref<const std::string&>().size() > kMaxAddedBytes)
                refuse(what, "an added token's content is missing, empty, longer than 1 KiB or not a string");
            // Matched on the raw text as written; the other matching modes are not implemented.
            for (const char* key : {"normalized", "lstrip", "rstrip", "single_word"}) {
                const Json* v = member(t, key);
                if (v && (!v->is_boolean() || v->get<bool>()))
                    refuse(what, "added token '" + caption_preview(content->get<std::string>()) + "' has " + key + " set");
            }
            const std::string& c = content->get_ref<const std::string&>();
            w.added_.push_back({c, token_id(member(t, "id"), "added token '" + caption_preview(c) + "' id", what)});
            w.added_first_byte_[static_cast<unsigned char>(c[0])] = true;
        }
    }
    return w;
}

void WordPiece::encode_word(const std::string& word, size_t chars, std::vector<int64_t>& ids) const {
    if (chars > max_word_chars_) {
        ids.push_back(unk_id_);
        return;
    }
    // Greedy longest match from the left, as tokenizers' WordPiece: the longest prefix of the rest
    // in the vocabulary (with "##" after the first piece); no match anywhere -> the word is [UNK].
    // Substrings longer than the longest vocabulary entry cannot match, so the search starts there.
    const size_t first = ids.size();
    std::string key;
    size_t start = 0;
    while (start < word.size()) {
        const size_t budget = start == 0 ? max_token_bytes_ : max_token_bytes_ - std::min(max_token_bytes_, prefix_.size());
        size_t end = start + std::min(budget, word.size() - start);
        while (end > start && end < word.size() && continuation(word[end])) --end;
        int64_t found = -1;
        while (end > start) {
            key.assign(start ? prefix_ : std::string());
            key.append(word, start, end - start);
            if (auto it = vocab_.find(key); it != vocab_.end()) {
                found = it->second;
                break;
            }
            do --end;
            while (end > start && continuation(word[end]));
        }
        if (found < 0) {
            ids.resize(first);
            ids.push_back(unk_id_);
            return;
        }
        ids.push_back(found);
        start = end;
    }
}

bool WordPiece::encode_text(const uint32_t* cps, size_t n, std::vector<int64_t>& ids, size_t limit) const {
    // One pass, code point by code point, through the stages of BertNormalizer (clean_text,
    // handle_chinese_chars, strip_accents = NFD then drop nonspacing marks, lowercase) and
    // BertPreTokenizer (split on whitespace, isolate punctuation), in the library's order.
    std::string word;
    size_t word_chars = 0;
    auto finish_word = [&] {
        if (word_chars) encode_word(word, word_chars, ids);
        word.clear();
        word_chars = 0;
    };
    auto pretokenize = [&](uint32_t cp) {
        const uint8_t f = flags(cp);
        if (f & u::kPtSpace) return finish_word();
        if (f & u::kPunct) finish_word();
        if (word_chars <= max_word_chars_) append_utf8(word, cp);  // a longer word is [UNK] whatever it holds
        ++word_chars;
        if (f & u::kPunct) finish_word();
    };
    auto lower = [&](uint32_t cp) {
        if (strip_accents_ && (flags(cp) & u::kMark)) return;
        const u::Mapping* m = lowercase_ ? mapping(u::kLowercase, u::kLowercaseCount, cp) : nullptr;
        if (!m) return pretokenize(cp);
        for (size_t k = 0; k < m->len; ++k) pretokenize(u::kPool[m->offset + k]);
    };
    // NFD: decompose, then put each run of combining marks in canonical order (stable by class).
    std::vector<std::pair<uint8_t, uint32_t>> marks;
    auto flush_marks = [&] {
        std::stable_sort(marks.begin(), marks.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        for (const auto& m : marks) lower(m.second);
        marks.clear();
    };
    auto ordered = [&](uint32_t cp) {
        if (const uint8_t ccc = combining_class(cp)) return marks.emplace_back(ccc, cp), void();
        flush_marks();
        lower(cp);
    };
    auto nfd = [&](uint32_t cp) {
        if (!strip_accents_) return lower(cp);
        constexpr uint32_t s_base = 0xAC00, l_base = 0x1100, v_base = 0x1161, t_base = 0x11A7, t_count = 28, n_count = 21 * 28;
        if (cp >= s_base && cp < s_base + 19 * n_count) {  // Hangul syllables decompose by arithmetic
            const uint32_t s = cp - s_base;
            ordered(l_base + s / n_count);
            ordered(v_base + (s % n_count) / t_count);
            if (s % t_count) ordered(t_base + s % t_count);
        } else if (const u::Mapping* m = mapping(u::kDecomposition, u::kDecompositionCount, cp)) {
            for (size_t k = 0; k < m->len; ++k) ordered(u::kPool[m->offset + k]);
        } else {
            ordered(cp);
        }
    };
    for (size_t i = 0; i < n && ids.size() <= limit; ++i) {
        uint32_t cp = cps[i];
        uint8_t f = flags(cp);
        if (clean_text_ && (f & u::kDrop)) continue;
        if (clean_text_ && (f & u::kSpace)) cp = ' ', f = flags(cp);
        if (chinese_chars_ && (f & u::kCjk)) {
            nfd(' ');
            nfd(cp);
            nfd(' ');
        } else {
            nfd(cp);
        }
    }
    flush_marks();
    finish_word();
    return ids.size() <= limit;
}

std::vector<int64_t> WordPiece::encode(const std::string& caption, size_t max_len) const {
    if (!valid_utf8(caption)) throw Error(KIDRR_ERR_INPUT, "caption is not valid UTF-8; pass UTF-8 text");
    // Pieces between [CLS] and [SEP]; tokenizing stops once there are too many to fit.
    const size_t limit = max_len == 0 ? SIZE_MAX : (max_len < 2 ? 0 : max_len - 2);
    std::vector<int64_t> ids{cls_id_};
    std::vector<uint32_t> cps;
    bool fits = true;
    // Added tokens ([CLS], [SEP], [MASK]... written in the caption) are cut out of the raw text first,
    // leftmost then longest, and stand for their own ids; the text between them is tokenized alone.
    size_t done = 0;
    auto text_until = [&](size_t end) {
        cps.clear();
        decode_utf8(std::string_view(caption).substr(done, end - done), cps);  // valid: checked above
        std::vector<int64_t> pieces;
        fits = fits && encode_text(cps.data(), cps.size(), pieces, limit - std::min(limit, ids.size() - 1)) &&
               ids.size() - 1 + pieces.size() <= limit;
        ids.insert(ids.end(), pieces.begin(), pieces.end());
    };
    for (size_t i = 0; i < caption.size() && fits;) {
        const Added* best = nullptr;
        if (added_first_byte_[static_cast<unsigned char>(caption[i])])
            for (const Added& a : added_)
                if ((!best || a.content.size() > best->content.size()) && caption.compare(i, a.content.size(), a.content) == 0)
                    best = &a;
        if (!best) { ++i; continue; }
        text_until(i);
        if (!fits) break;
        ids.push_back(best->id);
        fits = ids.size() - 1 <= limit;
        i += best->content.size();
        done = i;
    }
    if (fits) text_until(caption.size());
    if (fits && ids.size() == 1)
        throw Error(KIDRR_ERR_INPUT, "caption '" + caption_preview(caption) +
                                         "' is empty after tokenisation (blank, or only characters the tokenizer drops); give at least one word");
    if (!fits)
        throw Error(KIDRR_ERR_INPUT, "caption has more than " + std::to_string(max_len) +
                                         " tokens (with [CLS]/[SEP]), more than the model's max_caption_len " + std::to_string(max_len) +
                                         "; shorten it");
    ids.push_back(sep_id_);
    return ids;
}

}  // namespace kidrr
