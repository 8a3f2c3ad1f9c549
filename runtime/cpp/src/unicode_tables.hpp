// Per-code-point tables of the BERT WordPiece tokenizer (src/wordpiece.cpp), generated into
// unicode_tables.cpp by scripts/gen_unicode_tables.py from the `tokenizers` library itself.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kidrr::unicode {

// Flag bits (kFlags ranges).
enum : uint8_t {
    kDrop = 1,      // BertNormalizer clean_text removes it (NUL, U+FFFD, controls, format, unassigned, private use)
    kSpace = 2,     // clean_text turns it into a space (whitespace other than the space itself)
    kCjk = 4,       // handle_chinese_chars puts spaces around it
    kMark = 8,      // a nonspacing mark: strip_accents drops it after NFD
    kPtSpace = 16,  // BertPreTokenizer splits on it and drops it (Rust char::is_whitespace)
    kPunct = 32,    // BertPreTokenizer isolates it (ASCII punctuation or a Unicode P* category)
};

struct Range {
    uint32_t first, last;
    uint8_t value;
};
struct Mapping {
    uint32_t cp;
    uint16_t offset;  // into kPool
    uint8_t len;
};

extern const char* const kTablesSource;
extern const Range kFlags[];
extern const size_t kFlagsCount;
extern const Range kCombiningClass[];
extern const size_t kCombiningClassCount;
extern const uint32_t kPool[];
extern const Mapping kDecomposition[];  // NFD of every decomposable code point but Hangul syllables
extern const size_t kDecompositionCount;
extern const Mapping kLowercase[];  // Rust char::to_lowercase where it changes the code point
extern const size_t kLowercaseCount;

}  // namespace kidrr::unicode
