// JSON documents (manifest.json, vocab.json), parsed by nlohmann-json (Debian's nlohmann-json3-dev,
// fetched at build time like the ONNX Runtime headers): strict RFC 8259, invalid UTF-8 refused.
#pragma once
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace kidrr {

using Json = nlohmann::json;

// Throws kidrr::Error(KIDRR_ERR_BUNDLE) naming `what` on malformed input or nesting deeper than 64.
Json parse_json(std::string_view data, const std::string& what);

// Member `key` of an object, or nullptr when `j` is not an object or has no such member.
const Json* member(const Json& j, const char* key);

}  // namespace kidrr
