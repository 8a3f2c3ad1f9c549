// libFuzzer harness: the WordPiece tokenizer. The input is tokenized as a caption by a fixed tiny
// BERT tokenizer (all of the normalizer's Unicode tables and the added-token split), and parsed as a
// tokenizer.json which, if accepted, tokenizes a caption and the input itself.
#include "fuzz_common.hpp"
#include "wordpiece.hpp"

namespace {

// fuzz/corpus/wordpiece/tokenizer.json, compacted (make_corpus.py writes it).
const char* kTiny = R"({"added_tokens": [
 {"id": 0, "content": "[PAD]", "special": true, "normalized": false}, {"id": 1, "content": "[UNK]", "special": true, "normalized": false},
 {"id": 2, "content": "[CLS]", "special": true, "normalized": false}, {"id": 3, "content": "[SEP]", "special": true, "normalized": false},
 {"id": 4, "content": "[MASK]", "special": true, "normalized": false}],
 "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
 "pre_tokenizer": {"type": "BertPreTokenizer"},
 "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
  {"SpecialToken": {"id": "[SEP]", "type_id": 0}}], "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
  "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
 "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
  "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5, "dog": 6, "##s": 7, "run": 8, "##ning": 9, "cafe": 10,
   "\u65e5": 11, ",": 12, "\u1100": 13, "##\u1161": 14, "i": 15, "\u03c3": 16, "##\u03b1": 17, "x\ud834\udd6e\ud834\udd6d": 18}}})";

const kidrr::WordPiece& tiny() {
    static const kidrr::WordPiece w = kidrr::WordPiece::parse(kTiny, "tiny tokenizer.json");
    return w;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string text(kidrr_fuzz::bytes(data, size));
    kidrr_fuzz::refusing([&] { tiny().encode(text, 0); });
    kidrr_fuzz::refusing([&] { tiny().encode(text, 16); });
    kidrr_fuzz::refusing([&] {
        const kidrr::WordPiece w = kidrr::WordPiece::parse(text, "tokenizer.json");
        kidrr_fuzz::refusing([&] { w.encode("A Dogs, running [MASK] caf\xc3\xa9", 0); });
        kidrr_fuzz::refusing([&] { w.encode(text, 64); });
    });
    return 0;
}
