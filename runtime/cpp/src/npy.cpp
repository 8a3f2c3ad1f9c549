#include "npy.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <memory>

#include <cstring>
#include <fstream>
#include <sstream>

#include "checked.hpp"
#include "error.hpp"
#include "utf8.hpp"

namespace kidrr {

namespace {

[[noreturn]] void bad(const std::string& what, const std::string& why) { throw Error(KIDRR_ERR_INPUT, what + ": " + why); }

// True when [at, at + len) lies inside a buffer of `total` bytes (no overflow possible).
bool fits(uint64_t at, uint64_t len, size_t total) { return at <= total && len <= total - at; }

uint16_t le16(std::string_view b, size_t at) {
    return uint16_t(static_cast<unsigned char>(b[at]) | static_cast<unsigned char>(b[at + 1]) << 8);
}
uint32_t le32(std::string_view b, size_t at) { return uint32_t(le16(b, at)) | uint32_t(le16(b, at + 2)) << 16; }
uint64_t le64(std::string_view b, size_t at) { return uint64_t(le32(b, at)) | uint64_t(le32(b, at + 4)) << 32; }

// The .npy header is a Python dict literal, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// parsed strictly: quoted keys, and values that are a quoted string, True/False or a tuple of
// non-negative integers. Anything else (another literal, a negative or huge dimension) is refused.
struct Header {
    std::map<std::string, std::string> text;  // descr -> "<f4", fortran_order -> "False"
    std::vector<size_t> shape;
    bool has_shape = false;
};

class HeaderParser {
public:
    HeaderParser(std::string_view h, const std::string& what) : h_(h), what_(what) {}
    Header parse() {
        Header out;
        space();
        expect('{');
        for (;;) {
            space();
            if (peek() == '}') { ++at_; break; }
            std::string key = quoted();
            space();
            expect(':');
            space();
            if (key == "shape") {
                out.shape = tuple();
                out.has_shape = true;
            } else if (peek() == '\'') {
                out.text[key] = quoted();
            } else if (h_.compare(at_, 4, "True") == 0) {
                out.text[key] = "True"; at_ += 4;
            } else if (h_.compare(at_, 5, "False") == 0) {
                out.text[key] = "False"; at_ += 5;
            } else {
                fail("unsupported value for '" + key + "'");
            }
            space();
            if (peek() == ',') { ++at_; continue; }
            space();
            expect('}');
            break;
        }
        space();
        if (at_ != h_.size()) fail("text after the header dict");
        return out;
    }

private:
    std::string_view h_;
    const std::string& what_;
    size_t at_ = 0;

    [[noreturn]] void fail(const std::string& why) const { bad(what_, "bad .npy header (" + why + ")"); }
    char peek() const { return at_ < h_.size() ? h_[at_] : '\0'; }
    void space() { while (at_ < h_.size() && (h_[at_] == ' ' || h_[at_] == '\n' || h_[at_] == '\t')) ++at_; }
    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++at_;
    }
    std::string quoted() {
        expect('\'');
        size_t end = h_.find('\'', at_);
        if (end == std::string_view::npos || end - at_ > 64) fail("unterminated or over-long string");
        std::string s(h_.substr(at_, end - at_));
        at_ = end + 1;
        return s;
    }
    std::vector<size_t> tuple() {
        std::vector<size_t> dims;
        expect('(');
        for (;;) {
            space();
            if (peek() == ')') { ++at_; return dims; }
            if (peek() < '0' || peek() > '9') fail("shape must hold non-negative integers");
            uint64_t v = 0;
            while (peek() >= '0' && peek() <= '9') {
                if (__builtin_mul_overflow(v, uint64_t(10), &v) || __builtin_add_overflow(v, uint64_t(h_[at_] - '0'), &v))
                    fail("dimension too large");
                ++at_;
            }
            if (v > uint64_t(SIZE_MAX)) fail("dimension too large");
            dims.push_back(size_t(v));
            if (dims.size() > 32) fail("more than 32 dimensions");
            space();
            if (peek() == ',') { ++at_; continue; }
            space();
            expect(')');
            return dims;
        }
    }
};

}  // namespace

size_t NpyArray::count() const { return product(shape, "array"); }

std::string NpyArray::unicode_scalar() const {
    if (descr.rfind("<U", 0) != 0 || !shape.empty()) throw Error(KIDRR_ERR_INPUT, "expected a unicode scalar, got a " + descr + " array");
    std::string out;
    for (size_t i = 0; i + 4 <= data.size(); i += 4) {
        uint32_t cp = le32(data, i);
        if (cp == 0) break;  // numpy pads short strings with NULs
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) throw Error(KIDRR_ERR_INPUT, "unicode scalar holds an invalid code point");
        append_utf8(out, cp);
    }
    return out;
}

NpyHeader parse_npy_header(std::string_view b, const std::string& what) {
    if (b.size() < 10 || b.compare(0, 6, "\x93NUMPY") != 0) bad(what, "not a .npy array");
    const int major = static_cast<unsigned char>(b[6]);
    size_t header_len, start;
    if (major == 1) {
        header_len = le16(b, 8); start = 10;
    } else if (major == 2 || major == 3) {
        if (b.size() < 12) bad(what, "truncated .npy header");
        header_len = le32(b, 8); start = 12;
    } else {
        bad(what, ".npy version " + std::to_string(major) + " is not supported");
    }
    if (!fits(start, header_len, b.size())) bad(what, "truncated .npy header");
    const Header h = HeaderParser(b.substr(start, header_len), what).parse();
    auto descr = h.text.find("descr");
    auto order = h.text.find("fortran_order");
    if (descr == h.text.end() || order == h.text.end() || !h.has_shape) bad(what, ".npy header needs descr, fortran_order and shape");
    if (order->second != "False") bad(what, "Fortran-order arrays are not supported; save a C-order array");
    NpyHeader out;
    out.descr = descr->second;
    out.shape = h.shape;
    out.data_offset = start + header_len;
    const std::string& d = out.descr;
    if (d == "<f4") out.item_size = 4;
    else if (d == "<f2") out.item_size = 2;
    else if (d == "|i1") out.item_size = 1;
    else if (d == "<i8" || d == "<u8") out.item_size = 8;
    else if (d.size() > 2 && d.size() <= 8 && d.compare(0, 2, "<U") == 0 && d.find_first_not_of("0123456789", 2) == std::string::npos)
        out.item_size = 4 * std::stoul(d.substr(2));  // at most 6 digits: cannot overflow
    else
        bad(what, "dtype " + d + " is not supported");
    out.data_bytes = mul_size(product(out.shape, what), out.item_size, what);
    return out;
}

NpyArray parse_npy(std::string_view b, const std::string& what) {
    const NpyHeader h = parse_npy_header(b, what);
    if (h.descr != "<f4" && h.descr.compare(0, 2, "<U") != 0)
        bad(what, "dtype " + h.descr + " is not supported here (float32 '<f4' only)");
    // The byte count the header promises, overflow-checked, must be exactly what the file holds.
    const size_t held = b.size() - h.data_offset;
    if (h.data_bytes != held)
        bad(what, "its header promises " + std::to_string(h.data_bytes) + " bytes of data but the file holds " + std::to_string(held) +
                      " (truncated or crafted); rebuild it");
    NpyArray a;
    a.descr = h.descr;
    a.shape = h.shape;
    a.data.assign(b.data() + h.data_offset, h.data_bytes);
    return a;
}

int open_regular(const std::string& path, bool no_symlink, kidrr_status code, size_t* size) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | (no_symlink ? O_NOFOLLOW : 0));
    if (fd < 0) {
        if (errno == ELOOP && no_symlink)
            throw Error(code, path + " is a symbolic link; kidrr reads only regular files inside its folders "
                                     "(replace the link with the file itself)");
        throw Error(code, "cannot read " + path + " (" + std::strerror(errno) + ")");
    }
    struct stat st;
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        const bool dir = S_ISDIR(st.st_mode), fifo = S_ISFIFO(st.st_mode);
        ::close(fd);
        throw Error(code, path + " is " + (dir ? "a folder" : fifo ? "a FIFO" : "not a regular file") +
                              ", not a regular file; give the file itself");
    }
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);  // ordinary blocking reads from here on
    *size = size_t(st.st_size);
    return fd;
}

std::string read_file_bytes(const std::string& path, size_t max_bytes, kidrr_status code, bool no_symlink) {
    // A regular file only (a folder, FIFO or device is refused before any read or allocation), its
    // size checked against max_bytes before the buffer is made.
    size_t size = 0;
    const int fd = open_regular(path, no_symlink, code, &size);
    std::unique_ptr<int, void (*)(int*)> closer(new int(fd), [](int* f) { ::close(*f); delete f; });
    if (size > max_bytes)
        throw Error(code, path + " is " + std::to_string(size) + " bytes, more than the " + std::to_string(max_bytes) +
                              " a file of its kind may be; it is not a kidrr file");
    std::string out(size, '\0');
    size_t got = 0;
    while (got < size) {
        const ssize_t r = ::read(fd, &out[got], size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) throw Error(code, "read error on " + path + " (it changed while being read?)");
        got += size_t(r);
    }
    return out;
}

std::map<std::string, NpyArray> parse_npz(std::string_view z, const std::string& what) {
    // The end-of-central-directory record: 22 bytes plus a comment of at most 65535, at the end.
    size_t eocd = std::string_view::npos;
    if (z.size() >= 22) {
        const size_t lowest = z.size() - 22 > 65535 ? z.size() - 22 - 65535 : 0;
        for (size_t i = z.size() - 22 + 1; i-- > lowest;)
            if (le32(z, i) == 0x06054b50) { eocd = i; break; }
    }
    if (eocd == std::string_view::npos) bad(what, "not a .npz (zip) file");
    uint64_t entries = le16(z, eocd + 10);
    uint64_t cd = le32(z, eocd + 16);
    if (cd == 0xFFFFFFFFu || entries == 0xFFFF) {  // zip64: the real values are in the zip64 end record
        if (eocd < 20 || le32(z, eocd - 20) != 0x07064b50) bad(what, "bad zip64 archive");
        const uint64_t rec = le64(z, eocd - 20 + 8);
        if (!fits(rec, 56, z.size()) || le32(z, size_t(rec)) != 0x06064b50) bad(what, "bad zip64 archive");
        entries = le64(z, size_t(rec) + 32);
        cd = le64(z, size_t(rec) + 48);
    }
    std::map<std::string, NpyArray> out;
    uint64_t at = cd;
    for (uint64_t e = 0; e < entries; ++e) {
        if (!fits(at, 46, z.size()) || le32(z, size_t(at)) != 0x02014b50) bad(what, "corrupt zip directory");
        const size_t c = size_t(at);
        const uint16_t flags = le16(z, c + 8), method = le16(z, c + 10);
        const uint32_t crc = le32(z, c + 16);
        uint64_t csize = le32(z, c + 20), usize = le32(z, c + 24);
        const size_t name_len = le16(z, c + 28), extra_len = le16(z, c + 30), comment_len = le16(z, c + 32);
        uint64_t local = le32(z, c + 42);
        if (!fits(c + 46, name_len + extra_len + comment_len, z.size())) bad(what, "corrupt zip directory");
        std::string name(z.substr(c + 46, name_len));
        // zip64 extra field: the 0xFFFFFFFF fields, in order usize, csize, offset.
        const size_t extra_end = c + 46 + name_len + extra_len;
        for (size_t x = c + 46 + name_len; x + 4 <= extra_end;) {
            const uint16_t id = le16(z, x), len = le16(z, x + 2);
            if (len > extra_end - x - 4) bad(what, "corrupt zip extra field in member " + name);
            size_t p = x + 4;
            const size_t end = p + len;
            if (id == 0x0001) {
                if (usize == 0xFFFFFFFFu && p + 8 <= end) { usize = le64(z, p); p += 8; }
                if (csize == 0xFFFFFFFFu && p + 8 <= end) { csize = le64(z, p); p += 8; }
                if (local == 0xFFFFFFFFu && p + 8 <= end) local = le64(z, p);
            }
            x = end;
        }
        at = c + 46 + name_len + extra_len + comment_len;
        if (flags & 0x1) bad(what, "member " + name + " is encrypted");
        if (method != 0)
            bad(what, "member " + name + " is compressed; the C runtime reads np.savez (stored) archives only");
        if (!fits(local, 30, z.size()) || le32(z, size_t(local)) != 0x04034b50) bad(what, "corrupt zip member " + name);
        const size_t l = size_t(local);
        const size_t local_name = le16(z, l + 26), local_extra = le16(z, l + 28);
        if (!fits(l + 30, local_name + local_extra, z.size()) || z.substr(l + 30, local_name) != name)
            bad(what, "zip member " + name + ": its local header disagrees with the directory");
        const size_t data = l + 30 + local_name + local_extra;
        if (csize != usize || !fits(data, csize, z.size())) bad(what, "corrupt zip member " + name + " (sizes)");
        const std::string_view member = z.substr(data, size_t(csize));
        // As Python's zipfile: a member whose bytes do not match its CRC-32 is refused, so one
        // flipped byte cannot silently change the numbers.
        if (crc32_z(0, reinterpret_cast<const Bytef*>(member.data()), member.size()) != crc)
            bad(what, "zip member " + name + " fails its CRC-32 check: the file is corrupted; rebuild it");
        if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npy") == 0) name.resize(name.size() - 4);
        if (out.count(name)) bad(what, "zip holds member " + name + " twice");
        out[name] = parse_npy(member, what + ":" + name);
    }
    return out;
}

}  // namespace kidrr
