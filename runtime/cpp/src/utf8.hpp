// UTF-8 helpers: strict validation (as Python's decoder: no overlongs, no surrogates, <= U+10FFFF).
#pragma once
#include <string>

namespace kidrr {

bool valid_utf8(const std::string& s);
void append_utf8(std::string& out, unsigned code_point);

}  // namespace kidrr
