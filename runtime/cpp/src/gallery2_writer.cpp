#include "gallery2_writer.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>

#include "error.hpp"
#include "gallery2_manifest.hpp"
#include "json.hpp"
#include "sha256.hpp"
#include "utf8.hpp"

namespace kidrr {

namespace {

[[noreturn]] void io_error(const std::string& what) { throw Error(KIDRR_ERR_INPUT, what + " (" + std::strerror(errno) + ")"); }

// The fixed 128-byte .npy v1.0 header kidrr.gallery writes (layout.npy_header).
std::string npy_header(const char* descr, const std::vector<size_t>& shape) {
    std::string dims;
    for (size_t d : shape) dims += (dims.empty() ? "" : ", ") + std::to_string(d);
    if (shape.size() == 1) dims += ",";
    std::string text = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
    const size_t body = kGallery2NpyHeaderBytes - 10;
    if (text.size() + 1 > body) throw Error(KIDRR_ERR_INPUT, "shape does not fit a 128-byte .npy header");
    text.resize(body - 1, ' ');
    text += '\n';
    return std::string("\x93NUMPY\x01\x00", 8) + char(body & 0xff) + char(body >> 8) + text;
}

// Writes parts to path (new file), fsyncs it; returns {"bytes", "sha256"}.
Json write_file(const std::string& path, const std::vector<std::pair<const void*, size_t>>& parts) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);  // the umask decides, as any write
    if (fd < 0) io_error("cannot create " + path);
    Sha256 h;
    uint64_t total = 0;
    for (const auto& [data, size] : parts) {
        const char* p = static_cast<const char*>(data);
        size_t left = size;
        while (left > 0) {
            const ssize_t n = ::write(fd, p, left);
            if (n < 0) { if (errno == EINTR) continue; ::close(fd); io_error("cannot write " + path); }
            p += n; left -= size_t(n);
        }
        h.update(data, size);
        total += size;
    }
    if (::fsync(fd) != 0 || ::close(fd) != 0) io_error("cannot write " + path);
    return {{"bytes", total}, {"sha256", h.hex_digest()}};
}

void fsync_dir(const std::string& dir) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) { ::fsync(fd); ::close(fd); }
}

void remove_tree(const std::string& staging, const std::string& seg) {
    for (const char* f : {"globals.npy", "locals.npy", "ids.utf8", "id_offsets.npy", "id_hashes.npy"}) ::unlink((seg + "/" + f).c_str());
    ::rmdir(seg.c_str());
    for (const char* f : {"manifest.json", "writer.lock"}) ::unlink((staging + "/" + f).c_str());
    ::rmdir(staging.c_str());
}

}  // namespace

uint16_t float_to_half(float value) {
    if (!(std::fabs(value) <= 65504.0f))
        throw Error(KIDRR_ERR_INPUT, "a local value (" + std::to_string(value) + ") is not finite or beyond fp16's range "
                                     "(65504); write fp32 locals instead");
    uint32_t x;
    std::memcpy(&x, &value, 4);
    const uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7FFFFF;
    const int exp = int((x >> 23) & 0xFF) - 127 + 15;          // rebias 127 -> 15
    uint32_t kept, rest, half_way;
    if (exp >= 1) {                                             // a normal fp16: drop 13 mantissa bits
        kept = (uint32_t(exp) << 10) | (mant >> 13);
        rest = mant & 0x1FFF;
        half_way = 0x1000;
    } else if (exp >= -10) {                                    // an fp16 subnormal: drop 14 - exp bits
        const uint32_t full = mant | 0x800000;                  // with the implicit leading 1
        const int shift = 14 - exp;
        kept = full >> shift;
        rest = full & ((1u << shift) - 1);
        half_way = 1u << (shift - 1);
    } else {
        return uint16_t(sign);                                  // below half the smallest subnormal: 0
    }
    // Ties to even. A carry out of the mantissa lands in the exponent, which is the right answer.
    if (rest > half_way || (rest == half_way && (kept & 1))) ++kept;
    return uint16_t(sign | kept);
}

void write_gallery2(const EncodedImages& images, const std::vector<std::string>& ids, const std::string& folder,
                    const std::string& locals_dtype) {
    const size_t n = images.n, r = images.regions, d = images.dim;
    if (n == 0) throw Error(KIDRR_ERR_INPUT, "no images to write");
    if (locals_dtype != "fp32" && locals_dtype != "fp16")
        throw Error(KIDRR_ERR_INPUT, "locals dtype must be fp32 or fp16, got '" + locals_dtype + "'");
    std::vector<uint16_t> halves;
    if (locals_dtype == "fp16") {
        halves.reserve(images.locals.size());
        for (float v : images.locals) halves.push_back(float_to_half(v));
    }
    if (ids.size() != n) throw Error(KIDRR_ERR_INPUT, std::to_string(ids.size()) + " ids for " + std::to_string(n) + " images");
    std::set<std::string> seen;
    for (const std::string& id : ids) {
        if (id.empty() || id.size() > 1024 || id.find('\0') != std::string::npos || !valid_utf8(id))
            throw Error(KIDRR_ERR_INPUT, "id '" + id.substr(0, 60) + "' must be non-empty UTF-8 of at most 1024 bytes without NUL");
        if (!seen.insert(id).second) throw Error(KIDRR_ERR_INPUT, "id '" + id.substr(0, 60) + "' appears twice");
    }
    struct stat st;
    if (::lstat(folder.c_str(), &st) == 0)
        throw Error(KIDRR_ERR_INPUT, folder + " already exists; write a new gallery to a new folder (nothing is overwritten)");
    // Ids back to back, their offsets, and the lookup table (hash = first 8 bytes of sha256, LE).
    std::string id_bytes;
    std::vector<int64_t> offsets{0};
    std::vector<std::pair<uint64_t, uint64_t>> hashes;
    for (size_t i = 0; i < n; ++i) {
        id_bytes += ids[i];
        offsets.push_back(int64_t(id_bytes.size()));
        Sha256 h;
        h.update(ids[i].data(), ids[i].size());
        const std::string hex = h.hex_digest();
        uint64_t key = 0;
        for (int b = 7; b >= 0; --b) key = key << 8 | std::strtoull(hex.substr(size_t(2 * b), 2).c_str(), nullptr, 16);
        hashes.emplace_back(key, i);
    }
    std::sort(hashes.begin(), hashes.end());
    static_assert(sizeof(std::pair<uint64_t, uint64_t>) == 16, "id_hashes rows are two uint64");

    const size_t slash = folder.find_last_of('/');
    const std::string parent = slash == std::string::npos ? "." : (slash == 0 ? "/" : folder.substr(0, slash));
    std::string tmpl = parent + "/.tmp-kidrr-gallery-XXXXXX";
    if (!::mkdtemp(&tmpl[0])) io_error("cannot create a staging folder in " + parent);
    const std::string staging = tmpl, seg = staging + "/seg-000000";
    try {
        if (::mkdir(seg.c_str(), 0777) != 0) io_error("cannot create " + seg);
        Json files = Json::object();
        const bool fp16 = locals_dtype == "fp16";
        const std::string gh = npy_header("<f4", {n, d}), lh = npy_header(fp16 ? "<f2" : "<f4", {n, r, d});
        const std::string oh = npy_header("<i8", {n + 1}), hh = npy_header("<u8", {n, 2});
        files["globals.npy"] = write_file(seg + "/globals.npy", {{gh.data(), gh.size()}, {images.globals.data(), images.globals.size() * 4}});
        const std::pair<const void*, size_t> locals = fp16 ? std::pair<const void*, size_t>{halves.data(), halves.size() * 2}
                                                           : std::pair<const void*, size_t>{images.locals.data(), images.locals.size() * 4};
        files["locals.npy"] = write_file(seg + "/locals.npy", {{lh.data(), lh.size()}, locals});
        files["ids.utf8"] = write_file(seg + "/ids.utf8", {{id_bytes.data(), id_bytes.size()}});
        files["id_offsets.npy"] = write_file(seg + "/id_offsets.npy", {{oh.data(), oh.size()}, {offsets.data(), offsets.size() * 8}});
        files["id_hashes.npy"] = write_file(seg + "/id_hashes.npy", {{hh.data(), hh.size()}, {hashes.data(), hashes.size() * 16}});
        fsync_dir(seg);
        Json segment = {{"name", "seg-000000"}, {"rows", n}, {"files", files}, {"tombstones", nullptr}, {"ann", nullptr}};
        Json manifest = {{"format", kGallery2Format}, {"bundle_id", images.bundle_id}, {"generation", 1}, {"regions", r},
                         {"dim", d}, {"globals_dtype", "fp32"}, {"locals_dtype", locals_dtype}, {"rows", n}, {"live", n},
                         {"ann", {{"method", "ivf"}, {"min_rows", 50000}}}, {"next_segment", 1}, {"segments", Json::array({segment})}};
        const std::string text = manifest.dump(1) + "\n";
        write_file(staging + "/writer.lock", {});
        write_file(staging + "/manifest.json", {{text.data(), text.size()}});
        fsync_dir(staging);
        if (::rename(staging.c_str(), folder.c_str()) != 0) io_error("cannot move the new gallery to " + folder);
        fsync_dir(parent);
    } catch (...) {
        remove_tree(staging, seg);  // only what we created
        throw;
    }
}

}  // namespace kidrr
