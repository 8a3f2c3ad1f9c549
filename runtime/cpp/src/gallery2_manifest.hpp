// manifest.json of a format-2 gallery folder (docs/gallery.md, written by kidrr.gallery), parsed
// and checked field by field as gallery/layout.py does, without touching any other file.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace kidrr {

constexpr const char* kGallery2Format = "kidrr-gallery/2";
constexpr size_t kGallery2MaxManifestBytes = size_t(64) << 20;
constexpr size_t kGallery2NpyHeaderBytes = 128;  // every segment array's data starts here

struct FileEntry {
    uint64_t bytes = 0;
    std::string sha256;
};

struct Segment2Info {
    std::string name;              // seg-NNNNNN
    size_t rows = 0;
    std::map<std::string, FileEntry> files;  // exactly the segment files of the locals dtype
    bool has_tombstones = false;
    std::string tombstones_file;   // relative to the gallery folder
    size_t tombstones_count = 0;
    FileEntry tombstones;
};

struct Gallery2Manifest {
    std::string bundle_id, locals_dtype;  // fp32 | fp16 | int8
    size_t regions = 0, dim = 0, rows = 0, live = 0;
    std::vector<Segment2Info> segments;
};

// Throws Error(KIDRR_ERR_INPUT) naming `path` and the field on anything malformed.
Gallery2Manifest parse_gallery2_manifest(std::string_view raw, const std::string& path);

// (descr, shape) each segment array must have; names as in docs/gallery.md.
std::vector<std::string> segment_files(const std::string& locals_dtype);
void array_spec(const std::string& name, const Gallery2Manifest& m, size_t rows, std::string& descr, std::vector<size_t>& shape);

}  // namespace kidrr
