// The helper tests/test_cpp_runtime.py drives: it prints what the C++ side computes so Python can
// compare it with kidrr.tokenizer and the Python runtime. Captions travel hex-encoded, one per line,
// so newlines, tabs and any bytes survive the trip.
//   kidrr_tool tokens FILE                      -> per line: "OK <hex token>..." or "ERR <status>"
//   kidrr_tool ids VOCAB MAXLEN FILE            -> per line: "OK <id>..." or "ERR <status>"
//                                                 (VOCAB: vocab.json or a WordPiece tokenizer.json)
//   kidrr_tool tokenize BUNDLE FILE             -> the same through kidrr_tokenize on an opened bundle
//   kidrr_tool score BUNDLE FEATURES.npy FILE   -> n lines of m scores (%.9g)
//   kidrr_tool search BUNDLE GALLERY CAPTION K SHORTLIST -> "<image> <score>" per hit
//   kidrr_tool sha256 FILE
//   kidrr_tool features BUNDLE IMAGE.jpg PIXELS_OUT  -> "H W R F" then R*F features; the decoded RGB8
//                                                       bytes go to PIXELS_OUT (libjpeg-turbo, islow DCT)
//   kidrr_tool identity MANIFEST.json          -> the bundle identity the C runtime computes
//   kidrr_tool half VALUES.npy OUT             -> OUT: float_to_half of every float32 (uint16 LE);
//                                                 a refused value: "ERR <index> <message>", exit 1
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <jpeglib.h>

#include "error.hpp"
#include "gallery2_writer.hpp"
#include "json.hpp"
#include "manifest.hpp"
#include "kidrr.h"
#include "npy.hpp"
#include "sha256.hpp"
#include "tokenizer.hpp"

namespace {

std::string unhex(const std::string& h) {
    std::string out;
    for (size_t i = 0; i + 1 < h.size(); i += 2) out.push_back(char(std::stoi(h.substr(i, 2), nullptr, 16)));
    return out;
}
std::string hex(const std::string& s) {
    static const char* d = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) { out.push_back(d[c >> 4]); out.push_back(d[c & 15]); }
    return out;
}
std::vector<std::string> read_captions(const char* path) {
    std::ifstream in(path);
    if (!in) { std::fprintf(stderr, "cannot read %s\n", path); std::exit(2); }
    std::vector<std::string> out;
    std::string line;
    while (std::getline(in, line)) out.push_back(unhex(line));
    return out;
}
// JPEG -> RGB8 with libjpeg-turbo's defaults (JDCT_ISLOW, fancy upsampling), as Pillow decodes it
// (docs/images.md). Errors exit with a message (libjpeg's error_exit would abort otherwise).
struct JpegError {
    jpeg_error_mgr mgr;
    jmp_buf jump;
};
bool decode_jpeg(const char* path, std::vector<uint8_t>& rgb, size_t& height, size_t& width) {
    FILE* f = std::fopen(path, "rb");
    if (!f) return false;
    jpeg_decompress_struct info;
    JpegError err;
    info.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = [](j_common_ptr c) { longjmp(reinterpret_cast<JpegError*>(c->err)->jump, 1); };
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&info);
        std::fclose(f);
        return false;
    }
    jpeg_create_decompress(&info);
    jpeg_stdio_src(&info, f);
    jpeg_read_header(&info, TRUE);
    info.out_color_space = JCS_RGB;
    info.dct_method = JDCT_ISLOW;
    info.do_fancy_upsampling = TRUE;
    jpeg_start_decompress(&info);
    width = info.output_width;
    height = info.output_height;
    rgb.resize(height * width * 3);
    while (info.output_scanline < info.output_height) {
        JSAMPROW row = rgb.data() + size_t(info.output_scanline) * width * 3;
        jpeg_read_scanlines(&info, &row, 1);
    }
    jpeg_finish_decompress(&info);
    jpeg_destroy_decompress(&info);
    std::fclose(f);
    return true;
}

int die(const char* what) {
    std::fprintf(stderr, "%s failed: %s\n", what, kidrr_last_error());
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) { std::fprintf(stderr, "usage: see the comment at the top of kidrr_tool.cpp\n"); return 2; }
    const std::string cmd = argv[1];
    if (cmd == "half" && argc == 4) {
        const kidrr::NpyArray values = kidrr::read_npy(argv[2]);
        if (values.descr != "<f4") { std::fprintf(stderr, "%s is not float32\n", argv[2]); return 2; }
        std::vector<uint16_t> bits(values.count());
        for (size_t i = 0; i < bits.size(); ++i) {
            try {
                bits[i] = kidrr::float_to_half(values.floats()[i]);
            } catch (const kidrr::Error& e) {
                std::printf("ERR %zu %s\n", i, e.what());
                return 1;
            }
        }
        std::ofstream(argv[3], std::ios::binary).write(reinterpret_cast<const char*>(bits.data()), std::streamsize(bits.size() * 2));
        return 0;
    }
    if (cmd == "tokens") {
        for (const std::string& c : read_captions(argv[2])) {
            try {
                std::string line = "OK";
                for (const std::string& t : kidrr::tokenize(c)) line += " " + hex(t);
                std::printf("%s\n", line.c_str());
            } catch (const kidrr::Error& e) {
                std::printf("ERR %s\n", kidrr_status_name(e.code));
            }
        }
        return 0;
    }
    if ((cmd == "ids" && argc == 5) || (cmd == "tokenize" && argc == 4)) {
        kidrr_vocab* vocab = nullptr;
        kidrr_bundle* bundle = nullptr;
        if (cmd == "ids" && kidrr_vocab_open(argv[2], std::strtoul(argv[3], nullptr, 10), &vocab) != KIDRR_OK) return die("kidrr_vocab_open");
        if (cmd == "tokenize" && kidrr_open(argv[2], nullptr, &bundle) != KIDRR_OK) return die("kidrr_open");
        auto encode = [&](const std::string& c, std::vector<int64_t>& ids, size_t& n) {
            return vocab ? kidrr_vocab_encode(vocab, c.c_str(), ids.data(), ids.size(), &n)
                         : kidrr_tokenize(bundle, c.c_str(), ids.data(), ids.size(), &n);
        };
        for (const std::string& c : read_captions(argv[argc - 1])) {
            size_t n = 0;
            std::vector<int64_t> ids(8);
            kidrr_status st = encode(c, ids, n);
            if (st == KIDRR_ERR_INVALID_ARGUMENT && n > ids.size()) {  // too small: retry with the size it asked for
                ids.resize(n);
                st = encode(c, ids, n);
            }
            if (st != KIDRR_OK) { std::printf("ERR %s\n", kidrr_status_name(st)); continue; }
            std::string line = "OK";
            for (size_t i = 0; i < n; ++i) line += " " + std::to_string(ids[i]);
            std::printf("%s\n", line.c_str());
        }
        kidrr_vocab_free(vocab);
        kidrr_close(bundle);
        return 0;
    }
    if (cmd == "kernels" && argc == 3) {
        kidrr_bundle* b = nullptr;
        if (kidrr_open(argv[2], nullptr, &b) != KIDRR_OK) return die("kidrr_open");
        std::printf("%s\n", kidrr_bundle_kernels(b));
        kidrr_close(b);
        return 0;
    }
    if (cmd == "score" && argc == 5) {
        kidrr_bundle* b = nullptr;
        kidrr_images* imgs = nullptr;
        kidrr_captions* caps = nullptr;
        if (kidrr_open(argv[2], nullptr, &b) != KIDRR_OK) return die("kidrr_open");
        if (kidrr_gallery_load(b, argv[3], &imgs) != KIDRR_OK) return die("kidrr_gallery_load");
        std::vector<std::string> text = read_captions(argv[4]);
        std::vector<const char*> ptrs;
        for (const auto& t : text) ptrs.push_back(t.c_str());
        if (kidrr_encode_captions(b, ptrs.data(), ptrs.size(), &caps) != KIDRR_OK) return die("kidrr_encode_captions");
        const size_t n = kidrr_images_count(imgs), m = kidrr_captions_count(caps);
        std::vector<float> scores(n * m);
        if (kidrr_score(b, imgs, caps, scores.data(), scores.size()) != KIDRR_OK) return die("kidrr_score");
        for (size_t i = 0; i < n; ++i) {
            for (size_t j = 0; j < m; ++j) std::printf("%s%.9g", j ? " " : "", scores[i * m + j]);
            std::printf("\n");
        }
        kidrr_captions_free(caps);
        kidrr_images_free(imgs);
        kidrr_close(b);
        return 0;
    }
    if (cmd == "search" && argc == 7) {
        kidrr_bundle* b = nullptr;
        kidrr_images* gallery = nullptr;
        if (kidrr_open(argv[2], nullptr, &b) != KIDRR_OK) return die("kidrr_open");
        if (kidrr_gallery_load(b, argv[3], &gallery) != KIDRR_OK) return die("kidrr_gallery_load");
        const size_t k = std::strtoul(argv[5], nullptr, 10), shortlist = std::strtoul(argv[6], nullptr, 10);
        std::vector<kidrr_hit> hits(k ? k : 1);
        size_t n = 0;
        if (kidrr_search(b, gallery, argv[4], k, shortlist, hits.data(), &n) != KIDRR_OK) return die("kidrr_search");
        for (size_t t = 0; t < n; ++t) std::printf("%zu %.9g\n", hits[t].image, hits[t].score);
        kidrr_images_free(gallery);
        kidrr_close(b);
        return 0;
    }
    if (cmd == "features" && argc == 5) {
        std::vector<uint8_t> rgb;
        size_t h = 0, w = 0;
        if (!decode_jpeg(argv[3], rgb, h, w)) { std::fprintf(stderr, "cannot decode %s as JPEG\n", argv[3]); return 1; }
        FILE* out = std::fopen(argv[4], "wb");
        if (!out || std::fwrite(rgb.data(), 1, rgb.size(), out) != rgb.size()) { std::fprintf(stderr, "cannot write %s\n", argv[4]); return 1; }
        std::fclose(out);
        kidrr_bundle* b = nullptr;
        if (kidrr_open(argv[2], nullptr, &b) != KIDRR_OK) return die("kidrr_open");
        kidrr_bundle_info info;
        kidrr_bundle_get_info(b, &info);
        std::vector<float> feats(1 << 22);
        size_t regions = 0;
        // A row stride wider than the row (padding bytes) exercises the packing copy.
        const size_t stride = 3 * w + 5;
        std::vector<uint8_t> strided(h * stride, 0xAB);
        for (size_t y = 0; y < h; ++y) std::memcpy(strided.data() + y * stride, rgb.data() + y * 3 * w, 3 * w);
        if (kidrr_extract_features(b, strided.data(), h, w, stride, feats.data(), feats.size(), &regions) != KIDRR_OK)
            return die("kidrr_extract_features");
        std::printf("%zu %zu %zu %zu\n", h, w, regions, info.feature_size);
        for (size_t i = 0; i < regions * info.feature_size; ++i) std::printf("%s%.9g", i ? " " : "", feats[i]);
        std::printf("\n");
        kidrr_close(b);
        return 0;
    }
    if (cmd == "identity") {
        try {
            const std::string text = kidrr::identity_text(kidrr::parse_json(kidrr::read_file_bytes(argv[2]), argv[2]));
            kidrr::Sha256 h;
            h.update(text.data(), text.size());
            std::printf("%s\n", h.hex_digest().c_str());
        } catch (const kidrr::Error& e) {
            std::fprintf(stderr, "%s\n", e.what());
            return 1;
        }
        return 0;
    }
    if (cmd == "sha256") {
        std::printf("%s\n", kidrr::sha256_file(argv[2]).c_str());
        return 0;
    }
    std::fprintf(stderr, "unknown command or wrong arguments: %s\n", cmd.c_str());
    return 2;
}
