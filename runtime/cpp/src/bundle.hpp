// An opened, verified bundle (docs/bundle.md): manifest checks, the vocabulary, three ORT sessions,
// and the retrieval operations over them. Immutable after construction, so thread-safe to share.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "encoded.hpp"
#include "image_source.hpp"
#include "ort.hpp"
#include "tokenizer.hpp"

namespace kidrr {

struct GraphIo {
    std::vector<std::string> inputs, outputs;
};

struct Hit {
    size_t image;
    float score;
};

class Bundle {
public:
    struct Options {
        std::string ort_library;
        int intra_op_threads = 0;
        size_t tile_images = 32, tile_captions = 8;
    };
    Bundle(const std::string& folder, const Options& options);

    EncodedImages encode_images(const float* features, size_t n, size_t regions, size_t feature_size) const;
    EncodedCaptions encode_captions(const std::vector<std::string>& captions) const;
    // Photos in (docs/images.md): RGB8 pixels, rows `stride` bytes apart, through preprocess.onnx
    // and backbone.onnx -> features (R x F floats). Error(KIDRR_ERR_BUNDLE) if the bundle has no
    // image graphs.
    std::vector<float> extract_features(const uint8_t* rgb, size_t height, size_t width, size_t stride) const;
    bool has_image_graphs() const { return static_cast<bool>(preprocess_); }
    size_t image_regions() const { return image_regions_; }
    // (n, m) row-major into out.
    void score(const EncodedImages& images, const EncodedCaptions& captions, float* out) const;
    std::vector<Hit> search(const EncodedImages& gallery, const std::string& caption, size_t k, size_t shortlist) const;
    // Any source (a memory-mapped format-2 gallery): hits name its rows; removed rows never appear.
    std::vector<Hit> search(const ImageSource& gallery, const std::string& caption, size_t k, size_t shortlist) const;
    std::vector<int64_t> tokenize(const std::string& caption) const { return tokenizer_->encode(caption, max_caption_len_); }

    size_t feature_size() const { return feature_size_; }
    size_t embed_size() const { return embed_size_; }
    size_t max_caption_len() const { return max_caption_len_; }
    size_t vocab_size() const { return tokenizer_->size(); }
    const std::string& precision() const { return precision_; }
    const std::string& kernels() const { return similarity_->kernels(); }
    const std::string& identity() const { return identity_; }
    const OrtRuntime& ort() const { return *ort_; }

private:
    // Score one tile: images [i0, i0+ni) of `images` (contiguous) against the given caption rows.
    void score_tile(const float* img_locals, const float* img_globals, size_t ni, size_t regions,
                    const EncodedCaptions& caps, size_t j0, size_t mj, float* out, size_t out_stride) const;

    std::string folder_, precision_, identity_;
    size_t feature_size_ = 0, embed_size_ = 0, max_caption_len_ = 0;
    size_t tile_images_, tile_captions_;
    std::unique_ptr<const CaptionTokenizer> tokenizer_;  // kidrr-basic/1 + vocab.json, or WordPiece
    std::shared_ptr<OrtRuntime> ort_;
    std::unique_ptr<Session> image_encoder_, text_encoder_, similarity_;
    std::unique_ptr<Session> preprocess_, backbone_;  // only in bundles with an `image` record
    GraphIo image_io_, text_io_, sim_io_, pre_io_, backbone_io_;
    size_t image_regions_ = 0;
    uint64_t max_pixels_ = 0;
};

}  // namespace kidrr
