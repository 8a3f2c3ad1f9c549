// What a search reads images from: an in-memory set (EncodedImages: a .npz gallery, or encoded
// features) or a memory-mapped format-2 gallery folder (disk_gallery.hpp). Rows are numbered
// 0..rows()-1; some may be removed (tombstones) and are never returned.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "encoded.hpp"

namespace kidrr {

class ImageSource {
public:
    virtual ~ImageSource() = default;
    virtual size_t rows() const = 0;  // removed rows included
    virtual size_t live() const = 0;
    virtual size_t regions() const = 0;
    virtual size_t dim() const = 0;
    virtual const std::string& bundle_id() const = 0;
    // Live rows of [begin, end), ascending.
    virtual std::vector<size_t> live_rows(size_t begin, size_t end) const = 0;
    // float32 globals (n x D) of rows [begin, begin + n).
    virtual void read_globals(size_t begin, size_t n, float* out) const = 0;
    // float32 locals and globals of the given rows; Error(KIDRR_ERR_INPUT) if a value is not finite.
    virtual EncodedImages gather(const std::vector<size_t>& rows) const = 0;
};

// An EncodedImages seen as a source (every row live).
class MemoryImages : public ImageSource {
public:
    explicit MemoryImages(const EncodedImages& images) : images_(images) {}
    size_t rows() const override { return images_.n; }
    size_t live() const override { return images_.n; }
    size_t regions() const override { return images_.regions; }
    size_t dim() const override { return images_.dim; }
    const std::string& bundle_id() const override { return images_.bundle_id; }
    std::vector<size_t> live_rows(size_t begin, size_t end) const override;
    void read_globals(size_t begin, size_t n, float* out) const override;
    EncodedImages gather(const std::vector<size_t>& rows) const override;

private:
    const EncodedImages& images_;
};

}  // namespace kidrr
