#include "bundle.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <sstream>

#include "checked.hpp"
#include "error.hpp"
#include "manifest.hpp"
#include "npy.hpp"
#include "sha256.hpp"
#include "wordpiece.hpp"

namespace kidrr {

namespace {

bool is_dir(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
bool is_file(const std::string& p) {
    struct stat st;
    return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// manifest.json is a few KB: a huge one is not ours, and is refused before it is read.
constexpr size_t kMaxManifestBytes = size_t(64) << 20;

std::string read_file(const std::string& path) { return read_file_bytes(path, kMaxManifestBytes, KIDRR_ERR_BUNDLE); }

// Shapes here come from sizes already checked by the callers; the byte count is checked again.
size_t byte_count(const std::string& name, const std::vector<int64_t>& shape, size_t item) {
    size_t count = item;
    for (int64_t d : shape) count = mul_size(count, size_t(d), "input " + name);
    return count;
}
InputTensor f32(const std::string& name, const float* data, std::vector<int64_t> shape) {
    const size_t bytes = byte_count(name, shape, sizeof(float));
    return {name, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, std::move(shape), data, bytes};
}
InputTensor u8(const std::string& name, const uint8_t* data, std::vector<int64_t> shape) {
    const size_t bytes = byte_count(name, shape, 1);
    return {name, ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, std::move(shape), data, bytes};
}
InputTensor i64(const std::string& name, const int64_t* data, std::vector<int64_t> shape) {
    const size_t bytes = byte_count(name, shape, sizeof(int64_t));
    return {name, ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, std::move(shape), data, bytes};
}

// Finite input can still overflow inside an encoder (features of 3e38): a NaN/Inf output would
// give NaN scores and a silently wrong ranking, so every graph output is checked (one cheap pass).
void require_finite(const FloatTensor& t, const std::string& graph, const std::string& hint) {
    for (float v : t.data)
        if (!std::isfinite(v))
            throw Error(KIDRR_ERR_INPUT, graph + " produced NaN or infinite values from finite input (" + hint + ")");
}

void expect_shape(const FloatTensor& t, const std::vector<int64_t>& shape, const std::string& what) {
    if (t.shape != shape) {
        std::string got, want;
        for (int64_t d : t.shape) got += std::to_string(d) + ",";
        for (int64_t d : shape) want += std::to_string(d) + ",";
        throw Error(KIDRR_ERR_BUNDLE, what + " has shape (" + got + ") but (" + want + ") was expected; the bundle's graph disagrees with its manifest");
    }
}

constexpr size_t kEncodeBatch = 64;

}  // namespace

Bundle::Bundle(const std::string& folder, const Options& options)
    : folder_(folder), tile_images_(options.tile_images), tile_captions_(options.tile_captions) {
    if (!is_dir(folder)) throw Error(KIDRR_ERR_BUNDLE, "bundle folder " + folder + " does not exist; export one with `kidrr export onnx`");
    const std::string manifest_path = folder + "/manifest.json";
    if (!is_file(manifest_path))
        throw Error(KIDRR_ERR_BUNDLE, manifest_path + " is missing: " + folder + " is not a kidrr bundle (re-export it)");
    const std::string raw = read_file(manifest_path);
    const Manifest m = parse_manifest(raw, manifest_path);
    {
        Sha256 h;
        h.update(m.identity_text.data(), m.identity_text.size());
        identity_ = h.hex_digest();  // the identity the Python runtime tags galleries with (kidrr/identity.py)
    }
    feature_size_ = m.feature_size;
    embed_size_ = m.embed_size;
    max_caption_len_ = m.max_caption_len;
    precision_ = m.precision;

    // Every file the manifest vouches for: the three graphs and `files` (the vocabulary or tokenizer.json at least).
    for (const auto& [rel, expected] : m.files) {
        const std::string full = folder + "/" + rel;
        if (!is_file(full)) throw Error(KIDRR_ERR_BUNDLE, "bundle file " + rel + " is missing from " + folder + "; re-export the bundle");
        std::string actual = sha256_file(full);
        if (actual != expected)
            throw Error(KIDRR_ERR_BUNDLE, "bundle file " + rel + " does not match its sha256 in manifest.json (expected " +
                                              expected.substr(0, 12) + "..., found " + actual.substr(0, 12) +
                                              "...): it was edited or corrupted after export; re-export the bundle");
    }
    const std::string tok_path = folder + "/" + m.tokenizer_file;
    if (m.tokenizer_kind == TokenizerKind::wordpiece)
        tokenizer_ = std::make_unique<WordPiece>(WordPiece::load(tok_path));
    else
        tokenizer_ = std::make_unique<Vocabulary>(Vocabulary::load(tok_path));
    if (m.vocab_size != 0 && m.vocab_size != tokenizer_->size())
        throw Error(KIDRR_ERR_BUNDLE, "bundle file " + m.tokenizer_file + " has " + std::to_string(tokenizer_->size()) +
                                          " words but the manifest says vocab_size " + std::to_string(m.vocab_size) + "; re-export the bundle");
    image_io_ = {m.image_encoder.inputs, m.image_encoder.outputs};
    text_io_ = {m.text_encoder.inputs, m.text_encoder.outputs};
    sim_io_ = {m.similarity.inputs, m.similarity.outputs};

    ort_ = OrtRuntime::acquire(options.ort_library);
    image_encoder_ = std::make_unique<Session>(ort_, folder + "/" + m.image_encoder.file, options.intra_op_threads);
    text_encoder_ = std::make_unique<Session>(ort_, folder + "/" + m.text_encoder.file, options.intra_op_threads);
    // The fused kernels serve the fp32 similarity graph (the other precisions' ops take other inputs).
    similarity_ = std::make_unique<Session>(ort_, folder + "/" + m.similarity.file, options.intra_op_threads,
                                            precision_ == "fp32" ? find_ops_library() : "");
    if (m.has_image) {
        pre_io_ = {m.preprocess.inputs, m.preprocess.outputs};
        backbone_io_ = {m.backbone.inputs, m.backbone.outputs};
        image_regions_ = m.image_regions;
        max_pixels_ = m.max_pixels;
        preprocess_ = std::make_unique<Session>(ort_, folder + "/" + m.preprocess.file, options.intra_op_threads);
        backbone_ = std::make_unique<Session>(ort_, folder + "/" + m.backbone.file, options.intra_op_threads);
    }
}

std::vector<float> Bundle::extract_features(const uint8_t* rgb, size_t height, size_t width, size_t stride) const {
    if (!preprocess_)
        throw Error(KIDRR_ERR_BUNDLE, "this bundle has no preprocessing/backbone graphs (its model was trained on precomputed "
                                      "features); export a model trained on kidrr features output to encode pixels");
    if (height == 0 || width == 0) throw Error(KIDRR_ERR_INPUT, "an image must be at least 1 x 1 pixels");
    const size_t row = mul_size(width, 3, "image row");
    if (stride < row) throw Error(KIDRR_ERR_INVALID_ARGUMENT, "stride (" + std::to_string(stride) + ") is less than 3 x width (" + std::to_string(row) + ")");
    const size_t pixels = mul_size(height, width, "image size");
    if (pixels > max_pixels_)
        throw Error(KIDRR_ERR_INPUT, "image of " + std::to_string(width) + " x " + std::to_string(height) + " pixels is larger than the bundle's max_pixels " +
                                         std::to_string(max_pixels_) + "; downscale it first");
    // The graph takes a packed (H, W, 3) buffer: copy strided rows (docs/images.md).
    std::vector<uint8_t> packed;
    const uint8_t* data = rgb;
    if (stride != row) {
        packed.resize(mul_size(height, row, "image"));
        for (size_t y = 0; y < height; ++y) std::copy_n(rgb + y * stride, row, packed.data() + y * row);
        data = packed.data();
    }
    auto pre = preprocess_->run({u8(pre_io_.inputs[0], data, {to_dim(height, "height"), to_dim(width, "width"), 3})}, pre_io_.outputs);
    if (pre[0].shape.size() != 4 || pre[0].shape[0] != 1 || pre[0].shape[1] != 3)
        throw Error(KIDRR_ERR_BUNDLE, "preprocess.onnx output is not (1, 3, S, S); the bundle's graph disagrees with docs/images.md");
    require_finite(pre[0], "the preprocessing graph", "the bundle's graph may be corrupt; re-export it");
    auto feats = backbone_->run({f32(backbone_io_.inputs[0], pre[0].data.data(), pre[0].shape)}, backbone_io_.outputs);
    expect_shape(feats[0], {1, int64_t(image_regions_), int64_t(feature_size_)}, "backbone output " + backbone_io_.outputs[0]);
    require_finite(feats[0], "the backbone", "the bundle's graph may be corrupt; re-export it");
    return std::move(feats[0].data);
}

EncodedImages Bundle::encode_images(const float* features, size_t n, size_t regions, size_t feature_size) const {
    if (feature_size != feature_size_)
        throw Error(KIDRR_ERR_INPUT, "image features have size " + std::to_string(feature_size) + " but this bundle's model takes " +
                                         std::to_string(feature_size_) + "; use features from the same extractor the model was trained on");
    // Every count below derives from these, checked once: n * R * F floats in, n * R * D out.
    const size_t per_image = product({regions, feature_size}, "image features (n, R, F)");
    const size_t total = mul_size(n, per_image, "image features (n, R, F)");
    const size_t out_locals = product({n, regions, embed_size_}, "encoded image locals (n, R, D)");
    if (regions > size_t(INT32_MAX) || n > size_t(INT32_MAX))
        throw Error(KIDRR_ERR_INPUT, "too many images or regions in one call; encode in batches");
    for (size_t i = 0; i < total; ++i)
        if (!std::isfinite(features[i]))
            throw Error(KIDRR_ERR_INPUT, "image " + std::to_string(i / per_image) + " has a NaN or infinite feature; clean the features");
    EncodedImages out;
    out.n = n; out.regions = regions; out.dim = embed_size_; out.bundle_id = identity_;
    out.locals.resize(out_locals);
    out.globals.resize(n * embed_size_);  // <= out_locals: cannot overflow
    for (size_t i = 0; i < n; i += kEncodeBatch) {
        const int64_t b = int64_t(std::min(kEncodeBatch, n - i));
        auto res = image_encoder_->run({f32(image_io_.inputs[0], features + i * per_image, {b, int64_t(regions), int64_t(feature_size)})},
                                       image_io_.outputs);
        expect_shape(res[0], {b, int64_t(regions), int64_t(embed_size_)}, "image_encoder output " + image_io_.outputs[0]);
        expect_shape(res[1], {b, int64_t(embed_size_)}, "image_encoder output " + image_io_.outputs[1]);
        const char* hint = "the features are too large for the model; scale them as at training";
        require_finite(res[0], "the image encoder", hint);
        require_finite(res[1], "the image encoder", hint);
        std::copy(res[0].data.begin(), res[0].data.end(), out.locals.begin() + i * regions * embed_size_);
        std::copy(res[1].data.begin(), res[1].data.end(), out.globals.begin() + i * embed_size_);
    }
    return out;
}

EncodedCaptions Bundle::encode_captions(const std::vector<std::string>& captions) const {
    std::vector<std::vector<int64_t>> ids(captions.size());
    for (size_t j = 0; j < captions.size(); ++j) {
        try {
            ids[j] = tokenizer_->encode(captions[j], max_caption_len_);
            // As the Python runtime: a caption of unknown words only would get a meaningless score.
            const int64_t unk = tokenizer_->unk_id();
            if (std::all_of(ids[j].begin() + 1, ids[j].end() - 1, [unk](int64_t t) { return t == unk; }))
                throw Error(KIDRR_ERR_INPUT, "has no word the model knows (all tokens are unknown: <unk> or [UNK]); its score "
                                             "would mean nothing. Rephrase it with common words");
        } catch (const Error& e) {
            throw Error(e.code, "caption " + std::to_string(j) + ": " + e.what());
        }
    }
    EncodedCaptions out;
    out.m = captions.size(); out.dim = embed_size_;
    for (const auto& x : ids) { out.lengths.push_back(int64_t(x.size())); out.width = std::max(out.width, x.size()); }
    out.locals.assign(out.m * out.width * embed_size_, 0.0f);
    out.globals.resize(out.m * embed_size_);
    for (size_t j = 0; j < out.m; j += kEncodeBatch) {
        const size_t b = std::min(kEncodeBatch, out.m - j);
        size_t width = 0;
        for (size_t k = j; k < j + b; ++k) width = std::max(width, ids[k].size());
        std::vector<int64_t> padded(b * width, kPadId);
        for (size_t k = 0; k < b; ++k) std::copy(ids[j + k].begin(), ids[j + k].end(), padded.begin() + k * width);
        auto res = text_encoder_->run({i64(text_io_.inputs[0], padded.data(), {int64_t(b), int64_t(width)}),
                                       i64(text_io_.inputs[1], out.lengths.data() + j, {int64_t(b)})},
                                      text_io_.outputs);
        expect_shape(res[0], {int64_t(b), int64_t(width), int64_t(embed_size_)}, "text_encoder output " + text_io_.outputs[0]);
        expect_shape(res[1], {int64_t(b), int64_t(embed_size_)}, "text_encoder output " + text_io_.outputs[1]);
        require_finite(res[0], "the text encoder", "the bundle's weights may be corrupt; re-export it");
        require_finite(res[1], "the text encoder", "the bundle's weights may be corrupt; re-export it");
        for (size_t k = 0; k < b; ++k)
            std::copy_n(res[0].data.begin() + k * width * embed_size_, width * embed_size_,
                        out.locals.begin() + (j + k) * out.width * embed_size_);
        std::copy(res[1].data.begin(), res[1].data.end(), out.globals.begin() + j * embed_size_);
    }
    return out;
}

void Bundle::score_tile(const float* img_locals, const float* img_globals, size_t ni, size_t regions,
                        const EncodedCaptions& caps, size_t j0, size_t mj, float* out, size_t out_stride) const {
    // Cut the caption tile to its own longest caption: padding costs time in every pair.
    size_t width = 0;
    for (size_t k = j0; k < j0 + mj; ++k) width = std::max(width, size_t(caps.lengths[k]));
    const size_t d = embed_size_;
    std::vector<float> cap_locals(mj * width * d);
    for (size_t k = 0; k < mj; ++k)
        std::copy_n(caps.locals.begin() + (j0 + k) * caps.width * d, width * d, cap_locals.begin() + k * width * d);
    auto res = similarity_->run({f32(sim_io_.inputs[0], img_locals, {int64_t(ni), int64_t(regions), int64_t(d)}),
                                 f32(sim_io_.inputs[1], img_globals, {int64_t(ni), int64_t(d)}),
                                 f32(sim_io_.inputs[2], cap_locals.data(), {int64_t(mj), int64_t(width), int64_t(d)}),
                                 f32(sim_io_.inputs[3], caps.globals.data() + j0 * d, {int64_t(mj), int64_t(d)}),
                                 i64(sim_io_.inputs[4], caps.lengths.data() + j0, {int64_t(mj)})},
                                sim_io_.outputs);
    expect_shape(res[0], {int64_t(ni), int64_t(mj)}, "similarity output " + sim_io_.outputs[0]);
    require_finite(res[0], "the similarity graph", "from a gallery whose values are too large; rebuild it from clean features");
    for (size_t i = 0; i < ni; ++i) std::copy_n(res[0].data.begin() + i * mj, mj, out + i * out_stride + j0);
}

void Bundle::score(const EncodedImages& images, const EncodedCaptions& captions, float* out) const {
    if (images.dim != embed_size_ || captions.dim != embed_size_)
        throw Error(KIDRR_ERR_INPUT, "images or captions were encoded by a bundle with another embed size");
    if (images.bundle_id != identity_)
        throw Error(KIDRR_ERR_INPUT, "the images were encoded by another bundle (" + images.bundle_id.substr(0, 12) +
                                         "...), not this one; re-encode them with this bundle");
    const size_t d = embed_size_, r = images.regions;
    if (images.locals.size() != images.n * r * d || images.globals.size() != images.n * d ||
        captions.globals.size() != captions.m * d || captions.lengths.size() != captions.m)
        throw Error(KIDRR_ERR_INTERNAL, "encoded images or captions are inconsistent with their sizes");
    // Few captions (a search): keep the tile's pair count by taking more images per call, since
    // per-call overhead dominates small tiles.
    const size_t tile_images = tile_images_ * tile_captions_ / std::max<size_t>(1, std::min(tile_captions_, captions.m));
    for (size_t i = 0; i < images.n; i += tile_images) {
        const size_t ni = std::min(tile_images, images.n - i);
        for (size_t j = 0; j < captions.m; j += tile_captions_)
            score_tile(images.locals.data() + i * r * d, images.globals.data() + i * d, ni, r, captions, j,
                       std::min(tile_captions_, captions.m - j), out + i * captions.m, captions.m);
    }
}

std::vector<Hit> Bundle::search(const EncodedImages& gallery, const std::string& caption, size_t k, size_t shortlist) const {
    return search(MemoryImages(gallery), caption, k, shortlist);
}

std::vector<Hit> Bundle::search(const ImageSource& gallery, const std::string& caption, size_t k, size_t shortlist) const {
    if (k == 0) throw Error(KIDRR_ERR_INVALID_ARGUMENT, "k must be at least 1");
    if (shortlist != 0 && shortlist < k)
        throw Error(KIDRR_ERR_INVALID_ARGUMENT, "shortlist (" + std::to_string(shortlist) + ") must be 0 (exact) or >= k (" + std::to_string(k) + ")");
    const size_t n = gallery.live();
    if (n == 0) throw Error(KIDRR_ERR_INPUT, "the gallery is empty; encode at least one image first");
    if (k > n)
        throw Error(KIDRR_ERR_INPUT, "k (" + std::to_string(k) + ") is larger than the gallery (" + std::to_string(n) +
                                         " images); ask for at most that many");
    if (gallery.dim() != embed_size_) throw Error(KIDRR_ERR_INPUT, "the gallery was encoded by a bundle with another embed size");
    if (gallery.bundle_id() != identity_)
        throw Error(KIDRR_ERR_INPUT, "the gallery was encoded by another bundle (" + gallery.bundle_id().substr(0, 12) +
                                         "...), not this one; re-encode it with this bundle");
    EncodedCaptions query = encode_captions({caption});
    const size_t d = embed_size_;
    std::vector<size_t> rows;     // candidates, ascending
    if (shortlist == 0 || shortlist >= n) {
        rows = gallery.live_rows(0, gallery.rows());
    } else {
        // Stage 1: the dot product of the l2-normalised globals over every live row, read a block
        // at a time; stage 2: the full score of the best `shortlist`. A non-finite product (a
        // damaged global) is refused, as the Python reader and the exact search refuse it: sorted
        // last, it would silently leave that item out of every answer.
        constexpr size_t kBlock = 4096;
        std::vector<float> block;
        std::vector<std::pair<float, size_t>> cosine;
        cosine.reserve(n);
        for (size_t b0 = 0; b0 < gallery.rows(); b0 += kBlock) {
            const size_t bn = std::min(kBlock, gallery.rows() - b0);
            block.resize(bn * d);
            gallery.read_globals(b0, bn, block.data());
            for (size_t r : gallery.live_rows(b0, b0 + bn)) {
                const float* g = block.data() + (r - b0) * d;
                float s = 0;
                for (size_t t = 0; t < d; ++t) s += g[t] * query.globals[t];
                if (!std::isfinite(s))
                    throw Error(KIDRR_ERR_INPUT, "a gallery global vector holds NaN or inf (row " + std::to_string(r) +
                                                     "); run `kidrr gallery verify`, restore or rebuild the gallery");
                cosine.emplace_back(s, r);
            }
        }
        std::partial_sort(cosine.begin(), cosine.begin() + shortlist, cosine.end(), [](const auto& a, const auto& b) {
            return a.first > b.first || (a.first == b.first && a.second < b.second);
        });
        for (size_t t = 0; t < shortlist; ++t) rows.push_back(cosine[t].second);
        std::sort(rows.begin(), rows.end());  // ascending reads: kinder to the page cache
    }
    // Score the candidates a tile at a time: only a tile's locals are ever in memory.
    const size_t tile = tile_images_ * tile_captions_;
    std::vector<float> scores(rows.size());
    for (size_t t0 = 0; t0 < rows.size(); t0 += tile) {
        const std::vector<size_t> part(rows.begin() + t0, rows.begin() + std::min(rows.size(), t0 + tile));
        score(gallery.gather(part), query, scores.data() + t0);
    }
    std::vector<size_t> order(scores.size());
    std::iota(order.begin(), order.end(), size_t(0));
    const size_t top = std::min(k, order.size());
    std::partial_sort(order.begin(), order.begin() + top, order.end(), [&](size_t a, size_t b) {
        return scores[a] > scores[b] || (scores[a] == scores[b] && rows[a] < rows[b]);
    });
    std::vector<Hit> hits;
    for (size_t t = 0; t < top; ++t) hits.push_back({rows[order[t]], scores[order[t]]});
    return hits;
}

}  // namespace kidrr
