#include "utf8.hpp"

namespace kidrr {

namespace {
// The code point starting at s[i] (advancing i), or UINT32_MAX if the bytes there are not valid UTF-8.
uint32_t next_code_point(std::string_view s, size_t& i) {
    const size_t n = s.size();
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) { ++i; return c; }
    size_t len;
    uint32_t cp, min;
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; min = 0x800; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; min = 0x10000; }
    else return UINT32_MAX;
    if (i + len > n) return UINT32_MAX;
    for (size_t k = 1; k < len; ++k) {
        unsigned char cc = static_cast<unsigned char>(s[i + k]);
        if ((cc & 0xC0) != 0x80) return UINT32_MAX;
        cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000)) return UINT32_MAX;
    i += len;
    return cp;
}
}  // namespace

bool valid_utf8(std::string_view s) {
    for (size_t i = 0; i < s.size();)
        if (next_code_point(s, i) == UINT32_MAX) return false;
    return true;
}

bool decode_utf8(std::string_view s, std::vector<uint32_t>& out) {
    out.reserve(out.size() + s.size());
    for (size_t i = 0; i < s.size();) {
        const uint32_t cp = next_code_point(s, i);
        if (cp == UINT32_MAX) return false;
        out.push_back(cp);
    }
    return true;
}

void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
        out.push_back(char(cp));
    } else if (cp < 0x800) {
        out.push_back(char(0xC0 | (cp >> 6)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(char(0xE0 | (cp >> 12)));
        out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(char(0xF0 | (cp >> 18)));
        out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(char(0x80 | (cp & 0x3F)));
    }
}

}  // namespace kidrr
