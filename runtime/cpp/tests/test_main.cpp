// C++ unit tests: internals (sha256, JSON, UTF-8, tokenizer) and the C ABI's handling of bad input.
//   kidrr_tests                                  internals + the ABI without a bundle
//   kidrr_tests BUNDLE TAMPERED_BUNDLE FEATURE_SIZE   + everything that needs a real bundle
// Prints one line per failed check and exits 1 if any failed. Run under ASan+UBSan too (docs/cpp.md).
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "error.hpp"
#include "json.hpp"
#include "npy.hpp"
#include "kidrr.h"
#include "sha256.hpp"
#include "tokenizer.hpp"
#include "unicode_tables.hpp"
#include "utf8.hpp"
#include "wordpiece.hpp"

namespace {

int g_checks = 0, g_failed = 0;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        ++g_checks;                                                                     \
        if (!(cond)) { ++g_failed; std::printf("FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } \
    } while (0)

// A call that must fail with `code` and leave a non-empty message.
#define CHECK_STATUS(call, code)                                                                  \
    do {                                                                                          \
        kidrr_status st_ = (call);                                                                \
        ++g_checks;                                                                               \
        if (st_ != (code) || std::strlen(kidrr_last_error()) == 0) {                              \
            ++g_failed;                                                                           \
            std::printf("FAIL %s:%d: %s returned %s (%s), wanted %s\n", __FILE__, __LINE__, #call, \
                        kidrr_status_name(st_), kidrr_last_error(), kidrr_status_name(code));     \
        }                                                                                         \
    } while (0)

std::string sha_of(const std::string& s) {
    kidrr::Sha256 h;
    h.update(s.data(), s.size());
    return h.hex_digest();
}

template <class Fn>
kidrr_status error_code_of(Fn&& fn) {
    try { fn(); } catch (const kidrr::Error& e) { return e.code; }
    return KIDRR_OK;
}

void test_sha256() {
    // FIPS 180-4 example vectors.
    CHECK(sha_of("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    CHECK(sha_of("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(sha_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
          "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    kidrr::Sha256 h;  // a million 'a's fed in odd-sized chunks crosses every block boundary case
    std::string chunk(997, 'a');
    size_t left = 1000000;
    while (left) { size_t t = std::min(left, chunk.size()); h.update(chunk.data(), t); left -= t; }
    CHECK(h.hex_digest() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

void test_json() {
    using kidrr::Json;
    Json j = kidrr::parse_json(R"({"a": [1, -2.5e3, true, null], "s": "x\"\\\/\n\u00e9\ud83d\ude00", "o": {}})", "t");
    CHECK(j.is_object() && j["a"].size() == 4);
    CHECK(j["a"][1].get<double>() == -2500.0);
    CHECK(j["s"].get<std::string>() == "x\"\\/\n\xc3\xa9\xf0\x9f\x98\x80");
    CHECK(j["o"].is_object() && kidrr::member(j, "missing") == nullptr && kidrr::member(j["a"], "a") == nullptr);
    for (const char* bad : {"", "{", "[1,]", "{\"a\" 1}", "\"\\ud800\"", "\"\\x\"", "01x", "[1] 2", "\"\x01\"", "\"\xff\"", "NaN"})
        CHECK(error_code_of([&] { kidrr::parse_json(bad, "t"); }) == KIDRR_ERR_BUNDLE);
    std::string deep(200, '[');
    deep += std::string(200, ']');
    CHECK(error_code_of([&] { kidrr::parse_json(deep, "t"); }) == KIDRR_ERR_BUNDLE);  // nesting limit
    CHECK(error_code_of([&] { kidrr::parse_json(std::string(60, '[') + std::string(60, ']'), "t"); }) == KIDRR_OK);
}

// A .npy file: header dict literal (padded as numpy pads it) + data.
std::string npy_bytes(const std::string& descr, const std::string& shape, const std::string& data) {
    std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
    while ((h.size() + 11) % 64) h += ' ';
    h += '\n';
    std::string out = "\x93NUMPY\x01";
    out += '\0';
    out += char(h.size() & 0xff);
    out += char(h.size() >> 8);
    return out + h + data;
}

void test_npy() {
    using kidrr::parse_npy;
    const std::string four_floats(16, '\0');
    kidrr::NpyArray a = parse_npy(npy_bytes("<f4", "(2, 2)", four_floats), "t");
    CHECK(a.shape == (std::vector<size_t>{2, 2}) && a.data.size() == 16);
    CHECK(parse_npy(npy_bytes("<f4", "()", std::string(4, '\0')), "t").shape.empty());
    CHECK(parse_npy(npy_bytes("<f4", "(4,)", four_floats), "t").count() == 4);
    // a product that wraps around to the real byte count must be refused.
    CHECK(error_code_of([&] { parse_npy(npy_bytes("<f4", "(4611686018427387905, 1, 256)", std::string(1024, '\0')), "t"); }) ==
          KIDRR_ERR_INPUT);
    CHECK(error_code_of([&] { parse_npy(npy_bytes("<f4", "(18446744073709551617,)", four_floats), "t"); }) == KIDRR_ERR_INPUT);
    CHECK(error_code_of([&] { parse_npy(npy_bytes("<f4", "(2, -2)", four_floats), "t"); }) == KIDRR_ERR_INPUT);
    CHECK(error_code_of([&] { parse_npy(npy_bytes("<f4", "(2, 3)", four_floats), "t"); }) == KIDRR_ERR_INPUT);   // truncated
    CHECK(error_code_of([&] { parse_npy(npy_bytes("<f4", "(1, 2)", four_floats), "t"); }) == KIDRR_ERR_INPUT);   // trailing bytes
    CHECK(error_code_of([&] { parse_npy(npy_bytes("<f8", "(2,)", four_floats), "t"); }) == KIDRR_ERR_INPUT);
    CHECK(error_code_of([&] { parse_npy(npy_bytes("<U99999999", "()", four_floats), "t"); }) == KIDRR_ERR_INPUT);
    CHECK(error_code_of([&] { parse_npy("\x93NUMPY\x01", "t"); }) == KIDRR_ERR_INPUT);
}

void test_utf8_and_tokenizer() {
    CHECK(kidrr::valid_utf8("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));
    for (const char* bad : {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "\x80"})
        CHECK(!kidrr::valid_utf8(bad));
    using V = std::vector<std::string>;
    CHECK(kidrr::tokenize("A Dog, runs!") == (V{"a", "dog", ",", "runs", "!"}));
    CHECK(kidrr::tokenize("CAF\xc3\x89 \xc3\x89t\xc3\xa9") == (V{"caf\xc3\x89", "\xc3\x89t\xc3\xa9"}));  // only ASCII is lowered
    CHECK(kidrr::tokenize(" \t\n\r\v\f").empty());
    CHECK(kidrr::tokenize("x\x1cy") == (V{"x", "\x1c", "y"}));  // \x1c is not one of the six spaces
    CHECK(error_code_of([] { kidrr::tokenize("\xff"); }) == KIDRR_ERR_INPUT);
}

// A tiny BERT tokenizer.json (the MiniLM one is tested against `tokenizers` from Python).
const char* kTinyWordPiece = R"({
  "added_tokens": [{"id": 4, "content": "[MASK]", "special": true, "normalized": false, "lstrip": false, "rstrip": false, "single_word": false},
                   {"id": 2, "content": "[CLS]", "special": true, "normalized": false}],
  "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
  "pre_tokenizer": {"type": "BertPreTokenizer"},
  "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                     "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
  "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100,
            "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "a": 5, "dog": 6, "##s": 7, "run": 8, "##ning": 9,
                      "cafe": 10, "\u65e5": 11, ",": 12, "\u1100": 13, "##\u1161": 14, "i": 15}}
})";

void test_unicode_tables() {
    namespace u = kidrr::unicode;
    // Binary searches need sorted, disjoint entries: a hand edit of the generated file would break that.
    bool sorted = true;
    for (size_t i = 0; i < u::kFlagsCount; ++i)
        sorted = sorted && u::kFlags[i].first <= u::kFlags[i].last && (i == 0 || u::kFlags[i - 1].last < u::kFlags[i].first);
    for (size_t i = 0; i < u::kCombiningClassCount; ++i)
        sorted = sorted && u::kCombiningClass[i].first <= u::kCombiningClass[i].last &&
                 (i == 0 || u::kCombiningClass[i - 1].last < u::kCombiningClass[i].first);
    for (size_t i = 1; i < u::kDecompositionCount; ++i) sorted = sorted && u::kDecomposition[i - 1].cp < u::kDecomposition[i].cp;
    for (size_t i = 1; i < u::kLowercaseCount; ++i) sorted = sorted && u::kLowercase[i - 1].cp < u::kLowercase[i].cp;
    CHECK(sorted);
}

void test_wordpiece() {
    using Ids = std::vector<int64_t>;
    const kidrr::WordPiece w = kidrr::WordPiece::parse(kTinyWordPiece, "tiny.json");
    CHECK(w.size() == 16 && w.unk_id() == 1);
    CHECK(w.encode("A Dogs, running", 0) == (Ids{2, 5, 6, 7, 12, 8, 9, 3}));
    CHECK(w.encode("CAF\xc3\x89 caf\xc3\xa9", 0) == (Ids{2, 10, 10, 3}));          // accents stripped, lower-cased
    CHECK(w.encode("\xc4\xb0", 0) == (Ids{2, 15, 3}));                           // U+0130 -> i + mark -> i
    CHECK(w.encode("a[MASK]dog [CLS]", 0) == (Ids{2, 5, 4, 6, 2, 3}));           // added tokens in the raw text
    CHECK(w.encode("\xe6\x97\xa5\xe6\x9c\xac", 0) == (Ids{2, 11, 1, 3}));         // CJK: one word each
    CHECK(w.encode("\xea\xb0\x80", 0) == (Ids{2, 13, 14, 3}));                    // Hangul GA -> jamo, pieces
    CHECK(w.encode("dogz", 0) == (Ids{2, 1, 3}));                                 // a word that cannot be pieced: [UNK]
    CHECK(w.encode(std::string(101, 'a'), 0) == (Ids{2, 1, 3}));                  // over max_input_chars_per_word
    CHECK(w.encode("a dog", 4) == (Ids{2, 5, 6, 3}));
    for (const char* bad : {"", " \t\n", "\x01\x7f", "\xcc\x81"})                // nothing left: refused
        CHECK(error_code_of([&] { w.encode(bad, 0); }) == KIDRR_ERR_INPUT);
    CHECK(error_code_of([&] { w.encode("a dog", 3); }) == KIDRR_ERR_INPUT);       // 4 ids > 3
    std::string many;
    for (int i = 0; i < 500000; ++i) many += "a ";
    CHECK(error_code_of([&] { w.encode(many, 8); }) == KIDRR_ERR_INPUT);        // stops once past the limit
    CHECK(w.encode(many, 0).size() == 500002);
    CHECK(w.encode(std::string(200000, 'a'), 8) == (Ids{2, 1, 3}));            // one long word: [UNK], quickly
    CHECK(error_code_of([&] { w.encode("caf\xc3", 0); }) == KIDRR_ERR_INPUT);     // invalid UTF-8
    // Not the BERT kinds, or malformed: typed refusals when loading.
    const std::string tiny = kTinyWordPiece;
    auto replaced = [&](const std::string& from, const std::string& to) {
        std::string t = tiny;
        t.replace(t.find(from), from.size(), to);
        return t;
    };
    for (const std::string& bad : {std::string("[]"), std::string("{}"), replaced("BertNormalizer", "NFKC"),
                                   replaced("BertPreTokenizer", "Whitespace"), replaced("\"WordPiece\"", "\"BPE\""),
                                   replaced("TemplateProcessing", "RobertaProcessing"), replaced("\"ids\": [2]", "\"ids\": [2, 2]"),
                                   replaced("\"unk_token\": \"[UNK]\"", "\"unk_token\": 7"), replaced("\"i\": 15", "\"i\": -1"),
                                   replaced("\"normalized\": false", "\"normalized\": true"), replaced("\"strip_accents\": null", "\"strip_accents\": 1"),
                                   replaced("\"max_input_chars_per_word\": 100", "\"max_input_chars_per_word\": -1")})
        CHECK(error_code_of([&] { kidrr::WordPiece::parse(bad, "bad.json"); }) == KIDRR_ERR_BUNDLE);
}

void test_abi_without_bundle() {
    kidrr_bundle* b = reinterpret_cast<kidrr_bundle*>(0x1);  // must be reset to NULL on failure
    CHECK_STATUS(kidrr_open(nullptr, nullptr, &b), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK(b == nullptr);
    CHECK_STATUS(kidrr_open("", nullptr, &b), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_open("/nonexistent/bundle", nullptr, nullptr), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_open("/nonexistent/bundle", nullptr, &b), KIDRR_ERR_BUNDLE);
    CHECK(std::strstr(kidrr_last_error(), "/nonexistent/bundle") != nullptr);
    CHECK_STATUS(kidrr_open("/tmp", nullptr, &b), KIDRR_ERR_BUNDLE);  // a folder without manifest.json
    kidrr_options bad_opts = {nullptr, -1, 0, 0};
    CHECK_STATUS(kidrr_open("/tmp", &bad_opts, &b), KIDRR_ERR_INVALID_ARGUMENT);

    kidrr_images* imgs = nullptr;
    kidrr_captions* caps = nullptr;
    float f[4] = {0};
    const char* one[] = {"a dog"};
    CHECK_STATUS(kidrr_encode_images(nullptr, f, 1, 1, 4, &imgs), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_encode_images(nullptr, f, 1, 1, 4, nullptr), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_encode_captions(nullptr, one, 1, &caps), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_score(nullptr, nullptr, nullptr, f, 4), KIDRR_ERR_INVALID_ARGUMENT);
    kidrr_hit hit;
    size_t n = 0;
    CHECK_STATUS(kidrr_search(nullptr, nullptr, "a dog", 1, 0, &hit, &n), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_tokenize(nullptr, "a", nullptr, 0, &n), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_gallery_load(nullptr, "x.npz", &imgs), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_images_concat(nullptr, 0, &imgs), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_bundle_get_info(nullptr, nullptr), KIDRR_ERR_INVALID_ARGUMENT);
    kidrr_vocab* v = nullptr;
    CHECK_STATUS(kidrr_vocab_open(nullptr, 0, &v), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_vocab_open("/nonexistent/vocab.json", 0, &v), KIDRR_ERR_BUNDLE);
    CHECK_STATUS(kidrr_vocab_encode(nullptr, "a", nullptr, 0, &n), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK(kidrr_images_count(nullptr) == 0 && kidrr_captions_count(nullptr) == 0);
    kidrr_close(nullptr);
    kidrr_images_free(nullptr);
    kidrr_captions_free(nullptr);
    kidrr_vocab_free(nullptr);
    // Errors are per thread: another thread's failure does not overwrite ours.
    CHECK_STATUS(kidrr_open("/nonexistent/mine", nullptr, &b), KIDRR_ERR_BUNDLE);
    std::thread([] { kidrr_bundle* o = nullptr; kidrr_open("/nonexistent/theirs", nullptr, &o); }).join();
    CHECK(std::strstr(kidrr_last_error(), "/nonexistent/mine") != nullptr);
}

// Captions built from the bundle's own vocabulary, so the tests hold for any bundle (the shipped
// model's vocabulary has no "two" or "cats"): `known` words, and a word that is not in it.
struct Words {
    std::vector<std::string> known;
    std::string unknown;
    std::string caption(size_t first, size_t count) const {
        std::string c;
        for (size_t i = 0; i < count; ++i) c += (i ? " " : "") + known[(first + i) % known.size()];
        return c;
    }
};

Words words_of(const std::string& bundle_dir) {
    Words w;
    std::ifstream in(bundle_dir + "/vocab.json", std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    const kidrr::Json vocab = kidrr::parse_json(ss.str(), "vocab.json");
    std::set<std::string> all;
    for (const auto& word : vocab["words"]) {
        const std::string& t = word.get_ref<const std::string&>();
        all.insert(t);
        // A word of its own (letters/digits), so "w1 w2" tokenises to exactly those words.
        if (all.size() > 4 && kidrr::tokenize(t) == std::vector<std::string>{t} && t.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789") == std::string::npos)
            w.known.push_back(t);
    }
    for (int i = 0; w.unknown.empty() || all.count(w.unknown); ++i) w.unknown = "qzxv" + std::to_string(i);
    return w;
}

void test_abi_with_bundle(const char* bundle_dir, const char* tampered_dir, size_t feature_size) {
    const Words words = words_of(bundle_dir);
    if (words.known.size() < 3) {
        std::printf("FAIL the vocabulary of %s has fewer than 3 plain words to build test captions from\n", bundle_dir);
        ++g_failed;
        return;
    }
    const std::string one_word = words.caption(0, 1), short_caption = words.caption(0, 2);
    kidrr_bundle* b = nullptr;
    CHECK_STATUS(kidrr_open(tampered_dir, nullptr, &b), KIDRR_ERR_BUNDLE);
    CHECK(std::strstr(kidrr_last_error(), "sha256") != nullptr);
    kidrr_options bad_lib = {"/nonexistent/libonnxruntime.so", 0, 0, 0};
    // Only meaningful before ORT is loaded in this process: a wrong path must be a clean error.
    CHECK_STATUS(kidrr_open(bundle_dir, &bad_lib, &b), KIDRR_ERR_BACKEND);
    kidrr_options opts = {nullptr, 1, 3, 2};  // odd tiles so partial tiles are exercised
    if (kidrr_open(bundle_dir, &opts, &b) != KIDRR_OK) {
        std::printf("FAIL cannot open %s: %s\n", bundle_dir, kidrr_last_error());
        ++g_failed;
        return;
    }
    kidrr_bundle_info info;
    CHECK(kidrr_bundle_get_info(b, &info) == KIDRR_OK && info.feature_size == feature_size && info.embed_size > 0);

    const size_t n = 7, R = 3, F = feature_size;
    std::vector<float> feats(n * R * F);
    for (size_t i = 0; i < feats.size(); ++i) feats[i] = float(std::sin(0.37 * double(i)));
    kidrr_images* imgs = nullptr;
    CHECK_STATUS(kidrr_encode_images(b, feats.data(), n, R, F + 1, &imgs), KIDRR_ERR_INPUT);
    CHECK(std::strstr(kidrr_last_error(), "size") != nullptr);
    CHECK_STATUS(kidrr_encode_images(b, nullptr, n, R, F, &imgs), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_encode_images(b, feats.data(), 0, R, F, &imgs), KIDRR_ERR_INVALID_ARGUMENT);
    std::vector<float> nan_feats = feats;
    nan_feats[5] = std::nanf("");
    CHECK_STATUS(kidrr_encode_images(b, nan_feats.data(), n, R, F, &imgs), KIDRR_ERR_INPUT);
    CHECK(kidrr_encode_images(b, feats.data(), n, R, F, &imgs) == KIDRR_OK && kidrr_images_count(imgs) == n);
    // Search by a stored item checks its arguments before touching the gallery.
    kidrr_hit like_hits[2];
    size_t like_n = 0;
    CHECK_STATUS(kidrr_gallery_search_like_id(nullptr, "a", 2, like_hits, &like_n), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK(std::strcmp(kidrr_status_name(KIDRR_ERR_UNKNOWN_ITEM), "KIDRR_ERR_UNKNOWN_ITEM") == 0);
    // Gallery writing refuses a locals dtype it does not write, before creating anything.
    const char* gallery_ids[] = {"a", "b", "c", "d", "e", "f", "g"};
    CHECK_STATUS(kidrr_gallery_write_dtype(b, imgs, gallery_ids, n, "/nonexistent-kidrr-test/g", "int8"), KIDRR_ERR_INPUT);
    CHECK(std::strstr(kidrr_last_error(), "fp32 or fp16") != nullptr);
    CHECK_STATUS(kidrr_gallery_write_dtype(b, imgs, gallery_ids, n, "/nonexistent-kidrr-test/g", nullptr),
                 KIDRR_ERR_INVALID_ARGUMENT);
    // finite input that overflows inside the encoder is an error, not NaN scores.
    kidrr_images* huge_imgs = nullptr;
    std::vector<float> huge(n * R * F, 3e38f);
    CHECK_STATUS(kidrr_encode_images(b, huge.data(), n, R, F, &huge_imgs), KIDRR_ERR_INPUT);
    CHECK(huge_imgs == nullptr && std::strstr(kidrr_last_error(), "from finite input") != nullptr);
    // Sizes whose product overflows size_t are refused before anything is read or allocated.
    CHECK_STATUS(kidrr_encode_images(b, feats.data(), SIZE_MAX / 2, 3, F, &huge_imgs), KIDRR_ERR_INPUT);
    CHECK_STATUS(kidrr_encode_images(b, feats.data(), 2, SIZE_MAX / F + 1, F, &huge_imgs), KIDRR_ERR_INPUT);

    kidrr_captions* caps = nullptr;
    const char* empty[] = {short_caption.c_str(), " \t\n "};
    CHECK_STATUS(kidrr_encode_captions(b, empty, 2, &caps), KIDRR_ERR_INPUT);
    CHECK(std::strstr(kidrr_last_error(), "caption 1") != nullptr);
    const char* blank[] = {""};
    CHECK_STATUS(kidrr_encode_captions(b, blank, 1, &caps), KIDRR_ERR_INPUT);
    const char* with_null[] = {short_caption.c_str(), nullptr};
    CHECK_STATUS(kidrr_encode_captions(b, with_null, 2, &caps), KIDRR_ERR_INVALID_ARGUMENT);
    std::string long_caption;
    for (size_t w = 0; w < info.max_caption_len; ++w) long_caption += one_word + " ";
    const char* too_long[] = {long_caption.c_str()};
    CHECK_STATUS(kidrr_encode_captions(b, too_long, 1, &caps), KIDRR_ERR_INPUT);
    const std::string unknown_caption = words.unknown + " " + words.unknown;
    const char* all_unknown[] = {unknown_caption.c_str()};
    CHECK_STATUS(kidrr_encode_captions(b, all_unknown, 1, &caps), KIDRR_ERR_INPUT);
    CHECK(std::strstr(kidrr_last_error(), "<unk>") != nullptr);
    const std::string bad_utf8_caption = one_word + " \xff " + one_word;
    const char* bad_utf8[] = {bad_utf8_caption.c_str()};
    CHECK_STATUS(kidrr_encode_captions(b, bad_utf8, 1, &caps), KIDRR_ERR_INPUT);
    // Lengths 5, 2, 7 and 1 (and the unknown word inside one): tiles mix caption lengths.
    const std::string c0 = words.caption(0, 5), c1 = words.caption(1, 2), c2 = words.caption(2, 3) + " " + words.unknown + " " + words.caption(0, 3),
                      c3 = one_word;
    const char* good[] = {c0.c_str(), c1.c_str(), c2.c_str(), c3.c_str()};
    CHECK(kidrr_encode_captions(b, good, 4, &caps) == KIDRR_OK && kidrr_captions_count(caps) == 4);

    std::vector<float> scores(n * 4, -1.0f);
    CHECK_STATUS(kidrr_score(b, imgs, caps, scores.data(), n * 4 - 1), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK(kidrr_score(b, imgs, caps, scores.data(), scores.size()) == KIDRR_OK);
    bool finite = true;
    for (float s : scores) finite = finite && std::isfinite(s);
    CHECK(finite);

    // Search: exact top-1 is the argmax of the exact scores of caption 0; two-stage with a
    // shortlist of the whole gallery equals exact.
    std::vector<kidrr_hit> hits(n);
    size_t got = 0;
    CHECK(kidrr_search(b, imgs, good[0], n, 0, hits.data(), &got) == KIDRR_OK && got == n);
    size_t best = 0;
    for (size_t i = 1; i < n; ++i) if (scores[i * 4] > scores[best * 4]) best = i;
    CHECK(hits[0].image == best && std::fabs(hits[0].score - scores[best * 4]) < 1e-6f);
    for (size_t t = 1; t < got; ++t) CHECK(hits[t - 1].score >= hits[t].score);
    std::vector<kidrr_hit> two(n);
    size_t got2 = 0;
    CHECK(kidrr_search(b, imgs, good[0], 2, 3, two.data(), &got2) == KIDRR_OK && got2 == 2);
    CHECK_STATUS(kidrr_search(b, imgs, good[0], 3, 2, two.data(), &got2), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_search(b, imgs, good[0], 0, 0, two.data(), &got2), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(kidrr_search(b, imgs, "", 1, 0, two.data(), &got2), KIDRR_ERR_INPUT);
    std::vector<kidrr_hit> many(n + 1);
    CHECK_STATUS(kidrr_search(b, imgs, good[0], n + 1, 0, many.data(), &got2), KIDRR_ERR_INPUT);

    int64_t ids[2];
    size_t n_ids = 0;
    const std::string three = words.caption(0, 3);
    CHECK_STATUS(kidrr_tokenize(b, three.c_str(), ids, 2, &n_ids), KIDRR_ERR_INVALID_ARGUMENT);
    CHECK(n_ids == 5);

    // Gallery files: wrong extension, missing file.
    kidrr_images* g2 = nullptr;
    CHECK_STATUS(kidrr_gallery_load(b, "/nonexistent/g.npz", &g2), KIDRR_ERR_INPUT);
    CHECK_STATUS(kidrr_gallery_load(b, "/nonexistent/g.txt", &g2), KIDRR_ERR_INPUT);

    // Thread-safety: concurrent searches on one bundle and gallery give the single-thread answer.
    std::atomic<int> mismatches{0};
    std::vector<std::thread> pool;
    for (int t = 0; t < 4; ++t)
        pool.emplace_back([&] {
            for (int r = 0; r < 3; ++r) {
                std::vector<kidrr_hit> h(n);
                size_t k = 0;
                if (kidrr_search(b, imgs, good[0], n, 0, h.data(), &k) != KIDRR_OK || k != n) { ++mismatches; continue; }
                for (size_t i = 0; i < n; ++i)
                    if (h[i].image != hits[i].image || h[i].score != hits[i].score) {
                        std::printf("thread result %zu: image %zu score %.9g, serial: image %zu score %.9g\n", i, h[i].image,
                                    double(h[i].score), hits[i].image, double(hits[i].score));
                        ++mismatches;
                    }
            }
        });
    for (auto& th : pool) th.join();
    CHECK(mismatches.load() == 0);

    kidrr_captions_free(caps);
    kidrr_images_free(imgs);
    kidrr_close(b);
}

}  // namespace

int main(int argc, char** argv) {
    test_sha256();
    test_json();
    test_npy();
    test_utf8_and_tokenizer();
    test_unicode_tables();
    test_wordpiece();
    test_abi_without_bundle();
    if (argc == 4) test_abi_with_bundle(argv[1], argv[2], std::strtoul(argv[3], nullptr, 10));
    std::printf("%d checks, %d failed%s\n", g_checks, g_failed, argc == 4 ? "" : " (no bundle given: bundle tests not run)");
    return g_failed ? 1 : 0;
}
