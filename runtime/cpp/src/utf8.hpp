// UTF-8 helpers: strict validation (as Python's decoder: no overlongs, no surrogates, <= U+10FFFF).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kidrr {

bool valid_utf8(std::string_view s);
// The code points of s, or false (out untouched past the valid prefix) if s is not valid UTF-8.
bool decode_utf8(std::string_view s, std::vector<uint32_t>& out);
void append_utf8(std::string& out, unsigned code_point);

}  // namespace kidrr
