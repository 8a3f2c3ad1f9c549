#include "npy.hpp"

#include <cstring>
#include <fstream>
#include <sstream>

#include "error.hpp"
#include "utf8.hpp"

namespace kidrr {

namespace {

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Error(KIDRR_ERR_INPUT, "cannot read " + path + "; check the path");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

uint32_t le32(const std::string& b, size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(b[at + i]);
    return v;
}
uint16_t le16(const std::string& b, size_t at) {
    return uint16_t(static_cast<unsigned char>(b[at]) | static_cast<unsigned char>(b[at + 1]) << 8);
}
uint64_t le64(const std::string& b, size_t at) { return uint64_t(le32(b, at)) | uint64_t(le32(b, at + 4)) << 32; }

// The value of 'key' in the header dict literal, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
std::string header_field(const std::string& h, const std::string& key, const std::string& what) {
    size_t at = h.find("'" + key + "'");
    if (at == std::string::npos) throw Error(KIDRR_ERR_INPUT, what + ": .npy header has no '" + key + "'");
    at = h.find(':', at);
    if (at == std::string::npos) throw Error(KIDRR_ERR_INPUT, what + ": bad .npy header");
    ++at;
    while (at < h.size() && h[at] == ' ') ++at;
    size_t end = at;
    if (at < h.size() && h[at] == '(') end = h.find(')', at) + 1;
    else if (at < h.size() && h[at] == '\'') end = h.find('\'', at + 1) + 1;
    else while (end < h.size() && h[end] != ',' && h[end] != '}') ++end;
    if (end == 0 || end > h.size()) throw Error(KIDRR_ERR_INPUT, what + ": bad .npy header");
    return h.substr(at, end - at);
}

}  // namespace

size_t NpyArray::count() const {
    size_t c = 1;
    for (size_t d : shape) c *= d;
    return c;
}

std::string NpyArray::unicode_scalar() const {
    std::string out;
    for (size_t i = 0; i + 4 <= data.size(); i += 4) {
        uint32_t cp = le32(data, i);
        if (cp == 0) break;  // numpy pads short strings with NULs
        append_utf8(out, cp);
    }
    return out;
}

NpyArray parse_npy(const std::string& b, const std::string& what) {
    if (b.size() < 10 || b.compare(0, 6, "\x93NUMPY") != 0) throw Error(KIDRR_ERR_INPUT, what + " is not a .npy array");
    const int major = static_cast<unsigned char>(b[6]);
    size_t header_len, start;
    if (major == 1) { header_len = le16(b, 8); start = 10; }
    else if (major == 2 || major == 3) {
        if (b.size() < 12) throw Error(KIDRR_ERR_INPUT, what + " is truncated");
        header_len = le32(b, 8); start = 12;
    } else throw Error(KIDRR_ERR_INPUT, what + ": .npy version " + std::to_string(major) + " is not supported");
    if (start + header_len > b.size()) throw Error(KIDRR_ERR_INPUT, what + " is truncated");
    const std::string h = b.substr(start, header_len);
    NpyArray a;
    std::string descr = header_field(h, "descr", what);
    if (descr.size() < 2 || descr.front() != '\'') throw Error(KIDRR_ERR_INPUT, what + ": only plain dtypes are supported (got " + descr + ")");
    a.descr = descr.substr(1, descr.size() - 2);
    if (header_field(h, "fortran_order", what) != "False") throw Error(KIDRR_ERR_INPUT, what + ": Fortran-order arrays are not supported; save a C-order array");
    std::string shape = header_field(h, "shape", what);
    for (size_t i = 1; i < shape.size();) {
        if (shape[i] >= '0' && shape[i] <= '9') {
            size_t end = i;
            while (end < shape.size() && shape[end] >= '0' && shape[end] <= '9') ++end;
            a.shape.push_back(std::stoull(shape.substr(i, end - i)));
            i = end;
        } else ++i;
    }
    size_t item;
    if (a.descr == "<f4") item = 4;
    else if (a.descr.rfind("<U", 0) == 0) item = 4 * std::stoul(a.descr.substr(2));
    else throw Error(KIDRR_ERR_INPUT, what + ": dtype " + a.descr + " is not supported (float32 '<f4' only)");
    size_t count = a.count();
    if (item != 0 && count > (b.size() - start - header_len) / item)
        throw Error(KIDRR_ERR_INPUT, what + " is truncated: its header promises more data than the file holds");
    a.data = b.substr(start + header_len, count * item);
    return a;
}

NpyArray read_npy(const std::string& path) { return parse_npy(slurp(path), path); }

std::map<std::string, NpyArray> read_npz(const std::string& path) {
    const std::string z = slurp(path);
    // The end-of-central-directory record is in the last 64 KiB + 22 bytes.
    size_t eocd = std::string::npos;
    for (size_t i = z.size() >= 22 ? z.size() - 22 : std::string::npos; i != std::string::npos; --i) {
        if (le32(z, i) == 0x06054b50) { eocd = i; break; }
        if (i == 0 || z.size() - i > 65557) break;
    }
    if (eocd == std::string::npos) throw Error(KIDRR_ERR_INPUT, path + " is not a .npz (zip) file");
    size_t entries = le16(z, eocd + 10);
    uint64_t cd = le32(z, eocd + 16);
    if (cd == 0xFFFFFFFFu) {  // zip64: the offset is in the zip64 end record, found through its locator
        if (eocd < 20 || le32(z, eocd - 20) != 0x07064b50) throw Error(KIDRR_ERR_INPUT, path + ": bad zip64 archive");
        uint64_t rec = le64(z, eocd - 20 + 8);
        if (rec + 56 > z.size() || le32(z, rec) != 0x06064b50) throw Error(KIDRR_ERR_INPUT, path + ": bad zip64 archive");
        entries = size_t(le64(z, rec + 32));
        cd = le64(z, rec + 48);
    }
    std::map<std::string, NpyArray> out;
    size_t at = size_t(cd);
    for (size_t e = 0; e < entries; ++e) {
        if (at + 46 > z.size() || le32(z, at) != 0x02014b50) throw Error(KIDRR_ERR_INPUT, path + ": corrupt zip directory");
        const uint16_t method = le16(z, at + 10);
        uint64_t csize = le32(z, at + 20), usize = le32(z, at + 24);
        const size_t name_len = le16(z, at + 28), extra_len = le16(z, at + 30), comment_len = le16(z, at + 32);
        uint64_t local = le32(z, at + 42);
        if (at + 46 + name_len + extra_len > z.size()) throw Error(KIDRR_ERR_INPUT, path + ": corrupt zip directory");
        std::string name = z.substr(at + 46, name_len);
        // zip64 extra field: the 0xFFFFFFFF fields, in order usize, csize, offset.
        for (size_t x = at + 46 + name_len; x + 4 <= at + 46 + name_len + extra_len;) {
            uint16_t id = le16(z, x), len = le16(z, x + 2);
            size_t p = x + 4;
            if (id == 0x0001) {
                if (usize == 0xFFFFFFFFu && p + 8 <= x + 4 + len) { usize = le64(z, p); p += 8; }
                if (csize == 0xFFFFFFFFu && p + 8 <= x + 4 + len) { csize = le64(z, p); p += 8; }
                if (local == 0xFFFFFFFFu && p + 8 <= x + 4 + len) { local = le64(z, p); }
            }
            x += 4 + len;
        }
        at += 46 + name_len + extra_len + comment_len;
        if (method != 0)
            throw Error(KIDRR_ERR_INPUT, path + ": member " + name + " is compressed; the C runtime reads np.savez (stored) archives only");
        if (local + 30 > z.size() || le32(z, size_t(local)) != 0x04034b50) throw Error(KIDRR_ERR_INPUT, path + ": corrupt zip member " + name);
        const size_t data = size_t(local) + 30 + le16(z, size_t(local) + 26) + le16(z, size_t(local) + 28);
        if (csize != usize || data + csize > z.size()) throw Error(KIDRR_ERR_INPUT, path + ": corrupt zip member " + name);
        if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
        out[name] = parse_npy(z.substr(data, size_t(csize)), path + ":" + name);
    }
    return out;
}

}  // namespace kidrr
