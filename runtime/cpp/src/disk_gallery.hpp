// A format-2 gallery folder (docs/gallery.md) opened read-only and memory-mapped, with the checks
// the Python reader (gallery/reader.py) makes: the manifest field by field, the bundle identity and
// D, every segment array's fixed 128-byte .npy header, dtype, shape and size against the manifest,
// the id offsets, the tombstones (sha256, sorted, in range), and finite values on every read.
// Opening reads headers only; searches read the globals they scan and the locals they score.
// Immutable after construction: many threads may search one DiskGallery.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gallery2_manifest.hpp"
#include "image_source.hpp"
#include "mapped_file.hpp"

namespace kidrr {

class DiskGallery : public ImageSource {
public:
    // Error(KIDRR_ERR_INPUT) on a damaged gallery, Error(KIDRR_ERR_BUNDLE) if another bundle encoded it.
    DiskGallery(const std::string& folder, const std::string& bundle_identity, size_t embed_size);

    size_t rows() const override { return manifest_.rows; }
    size_t live() const override { return manifest_.live; }
    size_t regions() const override { return manifest_.regions; }
    size_t dim() const override { return manifest_.dim; }
    const std::string& bundle_id() const override { return manifest_.bundle_id; }
    std::vector<size_t> live_rows(size_t begin, size_t end) const override;
    void read_globals(size_t begin, size_t n, float* out) const override;
    EncodedImages gather(const std::vector<size_t>& rows) const override;
    // The id of a row (UTF-8, checked); Error(KIDRR_ERR_INPUT) if the id table is damaged.
    std::string_view id(size_t row) const;
    // The row of the live item with this id, or false (a linear scan of the id tables).
    bool find(std::string_view id, size_t& row) const;
    const std::string& locals_dtype() const { return manifest_.locals_dtype; }

private:
    struct Segment {
        size_t start = 0, rows = 0;
        std::vector<std::unique_ptr<MappedFile>> maps;  // keeps the pages below alive
        const float* globals = nullptr;                  // (rows, D)
        const void* locals = nullptr;                    // (rows, R, D) fp32 | fp16 | int8
        const float* scales = nullptr;                   // (rows, R) for int8
        const int64_t* id_offsets = nullptr;             // (rows + 1,)
        std::string_view id_bytes;
        std::vector<size_t> dead;                        // sorted removed rows (segment-local)
    };
    void open_once(const std::string& raw_manifest);
    const Segment& segment_of(size_t row) const;

    std::string folder_;
    Gallery2Manifest manifest_;
    std::vector<Segment> segments_;
};

}  // namespace kidrr
