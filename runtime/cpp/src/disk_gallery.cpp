#include "disk_gallery.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "checked.hpp"
#include "error.hpp"
#include "npy.hpp"
#include "sha256.hpp"
#include "utf8.hpp"

namespace kidrr {

namespace {

constexpr int kOpenTries = 5;  // a writer may switch the manifest while we open (gallery/reader.py)

[[noreturn]] void damaged(const std::string& what, const std::string& why) {
    throw Error(KIDRR_ERR_INPUT, what + ": " + why + "; the gallery is damaged (run `kidrr gallery verify`, restore it or rebuild it)");
}

bool read_manifest(const std::string& folder, std::string& raw) {
    try {
        raw = read_file_bytes(folder + "/manifest.json", kGallery2MaxManifestBytes, KIDRR_ERR_INPUT, true);
        return true;
    } catch (const Error&) {
        return false;
    }
}

// IEEE half -> float, exactly (every half is a float).
float half_to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (mant << 13);              // inf / NaN
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);      // normal: rebias 15 -> 127
    } else if (mant == 0) {
        bits = sign;                                            // +-0
    } else {                                                    // subnormal: normalise
        uint32_t e = 113, m = mant;
        while (!(m & 0x400)) { m <<= 1; --e; }
        bits = sign | (e << 23) | ((m & 0x3FF) << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// A segment array: exists, has the manifest's size, our fixed 128-byte v1.0 header, the dtype and
// shape the manifest promises, and exactly that many bytes of data. Returns its map.
std::unique_ptr<MappedFile> map_array(const std::string& path, const std::string& descr, const std::vector<size_t>& shape,
                                      uint64_t expect_bytes) {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) throw Error(KIDRR_ERR_INPUT, path + " is missing although the manifest lists it");
    auto map = std::make_unique<MappedFile>(path, true);
    const std::string_view b = map->bytes();
    if (b.size() < kGallery2NpyHeaderBytes || b.compare(0, 8, std::string_view("\x93NUMPY\x01\x00", 8)) != 0 ||
        (static_cast<unsigned char>(b[8]) | static_cast<unsigned char>(b[9]) << 8) != kGallery2NpyHeaderBytes - 10)
        damaged(path, "does not start with a kidrr .npy header (v1.0, 128 bytes)");
    const NpyHeader h = parse_npy_header(b.substr(0, kGallery2NpyHeaderBytes), path);
    if (h.descr != descr || h.shape != shape) {
        std::string want;
        for (size_t d : shape) want += std::to_string(d) + ",";
        damaged(path, "holds " + h.descr + " of another shape than the manifest's " + descr + " (" + want + ")");
    }
    if (b.size() != add_size(kGallery2NpyHeaderBytes, h.data_bytes, path) || b.size() != expect_bytes)
        damaged(path, "is " + std::to_string(b.size()) + " bytes, its header and the manifest need " +
                          std::to_string(kGallery2NpyHeaderBytes + h.data_bytes) + " (truncated?)");
    return map;
}

}  // namespace

DiskGallery::DiskGallery(const std::string& folder, const std::string& bundle_identity, size_t embed_size) : folder_(folder) {
    struct stat st;
    if (::stat(folder.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        throw Error(KIDRR_ERR_INPUT, "gallery folder " + folder + " does not exist");
    for (int attempt = 1;; ++attempt) {
        std::string raw;
        try {
            raw = read_file_bytes(folder + "/manifest.json", kGallery2MaxManifestBytes, KIDRR_ERR_INPUT, true);
        } catch (const Error& e) {
            throw Error(KIDRR_ERR_INPUT, folder + " is not a kidrr gallery (" + e.what() + ")");
        }
        manifest_ = parse_gallery2_manifest(raw, folder + "/manifest.json");
        if (manifest_.bundle_id != bundle_identity)
            throw Error(KIDRR_ERR_BUNDLE, "gallery " + folder + " was encoded by another bundle (" + manifest_.bundle_id.substr(0, 12) +
                                              "...), not this one (" + bundle_identity.substr(0, 12) +
                                              "...); re-encode the images with this bundle into a new gallery");
        if (manifest_.dim != embed_size)
            throw Error(KIDRR_ERR_INPUT, "gallery " + folder + " holds " + std::to_string(manifest_.dim) +
                                             "-d vectors but the model's embedding is " + std::to_string(embed_size) +
                                             "-d; it was not encoded by this model");
        try {
            open_once(raw);
            return;
        } catch (const Error&) {
            // A compaction may have removed files of the snapshot we read: retry on a new manifest.
            std::string now;
            if (attempt < kOpenTries && read_manifest(folder, now) && now != raw) continue;
            throw;
        }
    }
}

void DiskGallery::open_once(const std::string&) {
    segments_.clear();
    size_t start = 0;
    for (const Segment2Info& info : manifest_.segments) {
        Segment seg;
        seg.start = start;
        seg.rows = info.rows;
        const std::string dir = folder_ + "/" + info.name;
        struct stat st;
        if (::lstat(dir.c_str(), &st) != 0) throw Error(KIDRR_ERR_INPUT, dir + " is missing although the manifest lists it");
        if (!S_ISDIR(st.st_mode))  // a link to a folder elsewhere would serve files the gallery does not hold
            damaged(dir, S_ISLNK(st.st_mode) ? "is a symbolic link, not a folder" : "is not a folder");
        for (const std::string& name : segment_files(manifest_.locals_dtype)) {
            const std::string path = dir + "/" + name;
            const uint64_t expect = info.files.at(name).bytes;
            if (name == "ids.utf8") {
                seg.maps.push_back(std::make_unique<MappedFile>(path, true));
                seg.id_bytes = seg.maps.back()->bytes();
                if (seg.id_bytes.size() != expect || seg.id_bytes.size() < info.rows)
                    damaged(path, "is " + std::to_string(seg.id_bytes.size()) + " bytes, the manifest says " + std::to_string(expect));
                continue;
            }
            std::string descr;
            std::vector<size_t> shape;
            array_spec(name, manifest_, info.rows, descr, shape);
            seg.maps.push_back(map_array(path, descr, shape, expect));
            const void* data = seg.maps.back()->bytes().data() + kGallery2NpyHeaderBytes;  // page-aligned + 128
            if (name == "globals.npy") seg.globals = static_cast<const float*>(data);
            else if (name == "locals.npy") seg.locals = data;
            else if (name == "scales.npy") seg.scales = static_cast<const float*>(data);
            else if (name == "id_offsets.npy") seg.id_offsets = static_cast<const int64_t*>(data);
        }
        if (seg.id_offsets[0] != 0 || uint64_t(seg.id_offsets[info.rows]) != seg.id_bytes.size())
            damaged(dir, "id offsets do not span ids.utf8");
        if (info.has_tombstones) {
            const std::string path = folder_ + "/" + info.tombstones_file;
            auto map = map_array(path, "<i8", {info.tombstones_count}, info.tombstones.bytes);
            Sha256 h;
            h.update(map->bytes().data(), map->size());
            if (h.hex_digest() != info.tombstones.sha256) damaged(path, "does not match its sha256 in the manifest");
            const int64_t* dead = reinterpret_cast<const int64_t*>(map->bytes().data() + kGallery2NpyHeaderBytes);
            for (size_t i = 0; i < info.tombstones_count; ++i) {
                if (dead[i] < 0 || uint64_t(dead[i]) >= info.rows || (i && dead[i] <= dead[i - 1]))
                    damaged(path, "tombstones must be sorted unique rows in 0.." + std::to_string(info.rows - 1));
                seg.dead.push_back(size_t(dead[i]));
            }
        }
        start += info.rows;
        segments_.push_back(std::move(seg));
    }
}

const DiskGallery::Segment& DiskGallery::segment_of(size_t row) const {
    if (row >= manifest_.rows) throw Error(KIDRR_ERR_INVALID_ARGUMENT, "row " + std::to_string(row) + " is not in the gallery");
    auto it = std::upper_bound(segments_.begin(), segments_.end(), row, [](size_t r, const Segment& s) { return r < s.start; });
    return *(it - 1);
}

std::vector<size_t> DiskGallery::live_rows(size_t begin, size_t end) const {
    std::vector<size_t> out;
    end = std::min(end, manifest_.rows);
    for (const Segment& s : segments_) {
        const size_t b = std::max(begin, s.start), e = std::min(end, s.start + s.rows);
        for (size_t r = b; r < e; ++r)
            if (!std::binary_search(s.dead.begin(), s.dead.end(), r - s.start)) out.push_back(r);
    }
    return out;
}

void DiskGallery::read_globals(size_t begin, size_t n, float* out) const {
    const size_t d = manifest_.dim;
    while (n > 0) {
        const Segment& s = segment_of(begin);
        const size_t take = std::min(n, s.start + s.rows - begin);
        std::copy_n(s.globals + (begin - s.start) * d, take * d, out);
        out += take * d; begin += take; n -= take;
    }
}

// Ask the kernel for a row's pages now (MADV_WILLNEED): asked for every row first, the cold reads
// overlap instead of faulting in one page after another (gallery/reader.py does the same; 100 cold
// rows of a 25 GB gallery, measured there: 17-31 ms against 1.2-2.2 s). Advice only: errors are ignored.
static void prefetch(const void* base, size_t row_bytes, size_t row) {
    static const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    const uintptr_t at = reinterpret_cast<uintptr_t>(base) + row * row_bytes, start = at - at % page;
    ::madvise(reinterpret_cast<void*>(start), at + row_bytes - start, MADV_WILLNEED);
}

EncodedImages DiskGallery::gather(const std::vector<size_t>& rows) const {
    const size_t r = manifest_.regions, d = manifest_.dim, per = r * d;
    EncodedImages out;
    out.n = rows.size(); out.regions = r; out.dim = d; out.bundle_id = manifest_.bundle_id;
    out.locals.resize(product({rows.size(), r, d}, "gathered locals"));
    out.globals.resize(rows.size() * d);
    const size_t item_bytes = per * (manifest_.locals_dtype == "fp32" ? 4 : manifest_.locals_dtype == "fp16" ? 2 : 1);
    for (size_t row : rows) {
        const Segment& s = segment_of(row);
        prefetch(s.locals, item_bytes, row - s.start);
        prefetch(s.globals, d * sizeof(float), row - s.start);
        if (s.scales) prefetch(s.scales, r * sizeof(float), row - s.start);
    }
    for (size_t k = 0; k < rows.size(); ++k) {
        const Segment& s = segment_of(rows[k]);
        const size_t i = rows[k] - s.start;
        float* loc = out.locals.data() + k * per;
        std::copy_n(s.globals + i * d, d, out.globals.data() + k * d);
        if (manifest_.locals_dtype == "fp32") {
            std::copy_n(static_cast<const float*>(s.locals) + i * per, per, loc);
        } else if (manifest_.locals_dtype == "fp16") {
            const uint16_t* h = static_cast<const uint16_t*>(s.locals) + i * per;
            for (size_t t = 0; t < per; ++t) loc[t] = half_to_float(h[t]);
        } else {  // int8: value = q * scale of its (item, region), in float32 as numpy computes it
            const int8_t* q = static_cast<const int8_t*>(s.locals) + i * per;
            for (size_t g = 0; g < r; ++g) {
                const float scale = s.scales[i * r + g];
                for (size_t t = 0; t < d; ++t) loc[g * d + t] = float(q[g * d + t]) * scale;
            }
        }
    }
    for (float v : out.locals)
        if (!std::isfinite(v)) damaged("gallery " + folder_, "a stored local vector holds NaN or inf");
    for (float v : out.globals)
        if (!std::isfinite(v)) damaged("gallery " + folder_, "a stored global vector holds NaN or inf");
    return out;
}

std::string_view DiskGallery::id(size_t row) const {
    const Segment& s = segment_of(row);
    const size_t i = row - s.start;
    const int64_t a = s.id_offsets[i], b = s.id_offsets[i + 1];
    if (!(0 <= a && a < b && uint64_t(b) <= s.id_bytes.size()) || b - a > 4096)
        damaged(folder_, "id offsets of row " + std::to_string(row) + " are out of range");
    const std::string_view id = s.id_bytes.substr(size_t(a), size_t(b - a));
    if (!valid_utf8(std::string(id))) damaged(folder_, "id of row " + std::to_string(row) + " is not UTF-8");
    return id;
}

bool DiskGallery::find(std::string_view wanted, size_t& row) const {
    for (const Segment& s : segments_) {
        for (size_t i = 0; i < s.rows; ++i) {
            const int64_t a = s.id_offsets[i], b = s.id_offsets[i + 1];
            if (!(0 <= a && a < b && uint64_t(b) <= s.id_bytes.size()))
                damaged(folder_, "id offsets of row " + std::to_string(s.start + i) + " are out of range");
            if (size_t(b - a) != wanted.size() || s.id_bytes.compare(size_t(a), size_t(b - a), wanted) != 0) continue;
            if (std::binary_search(s.dead.begin(), s.dead.end(), i)) continue;  // removed: not an item any more
            row = s.start + i;
            return true;
        }
    }
    return false;
}

}  // namespace kidrr
