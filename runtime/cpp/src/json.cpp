#include "json.hpp"

#include "error.hpp"

namespace kidrr {

namespace {
constexpr int kMaxDepth = 64;  // no kidrr file nests deeper than 4; bound the work a crafted one can ask for
}

Json parse_json(std::string_view data, const std::string& what) {
    try {
        return Json::parse(data, [&](int depth, Json::parse_event_t, Json&) {
            if (depth > kMaxDepth)
                throw Error(KIDRR_ERR_BUNDLE, what + " is not valid kidrr JSON: nesting deeper than " + std::to_string(kMaxDepth));
            return true;
        });
    } catch (const Json::exception& e) {
        // e.what() is "[json.exception.parse_error.101] parse error at line 1, column 2: ...".
        throw Error(KIDRR_ERR_BUNDLE, what + " is not valid JSON (" + e.what() + "); re-export it");
    }
}

const Json* member(const Json& j, const char* key) {
    if (!j.is_object()) return nullptr;
    auto it = j.find(key);
    return it == j.end() ? nullptr : &*it;
}

}  // namespace kidrr
