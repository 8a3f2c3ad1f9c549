// A small JSON reader, enough for manifest.json and vocab.json (nothing third-party may be vendored).
// Strict: rejects trailing garbage, bad escapes, invalid UTF-8 in strings, and nesting deeper than 64.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace kidrr {

struct Json {
    enum class Kind { Null, Bool, Number, String, Array, Object };
    Kind kind = Kind::Null;
    bool boolean = false;
    double number = 0.0;
    std::string text;                     // String value, or the literal text of a Number
    std::vector<Json> items;              // Array
    std::map<std::string, Json> fields;   // Object (duplicate keys: the last one wins, as in Python)

    bool is_string() const { return kind == Kind::String; }
    bool is_number() const { return kind == Kind::Number; }
    bool is_object() const { return kind == Kind::Object; }
    bool is_array() const { return kind == Kind::Array; }
    // Member of an object, or nullptr when this is not an object or the key is absent.
    const Json* get(const std::string& key) const;
};

// Throws kidrr::Error (code KIDRR_ERR_BUNDLE) naming `what` on malformed input.
Json parse_json(const std::string& data, const std::string& what);

}  // namespace kidrr
