#include "manifest.hpp"

#include <algorithm>
#include <sstream>

#include "error.hpp"
#include "json.hpp"
#include "tokenizer.hpp"

namespace kidrr {

namespace {

[[noreturn]] void bad(const std::string& path, const std::string& why) {
    throw Error(KIDRR_ERR_BUNDLE, path + ": " + why + "; re-export the bundle");
}

// A manifest path must stay inside the bundle: no absolute paths, no "..", as the Python runtime.
void check_relative(const std::string& rel, const std::string& path) {
    bool outside = rel.empty() || rel[0] == '/' || rel.find('\0') != std::string::npos;
    std::stringstream parts(rel);
    std::string part;
    while (std::getline(parts, part, '/')) outside = outside || part == "..";
    if (outside) throw Error(KIDRR_ERR_BUNDLE, path + " names '" + rel + "', outside the bundle folder; refusing it");
}

const Json& object(const Json& parent, const char* key, const std::string& path) {
    const Json* v = member(parent, key);
    if (!v || !v->is_object()) bad(path, std::string("field ") + key + " is missing or not an object");
    return *v;
}

const std::string& string(const Json& parent, const char* key, const std::string& what, const std::string& path) {
    const Json* v = member(parent, key);
    if (!v || !v->is_string()) bad(path, "field " + what + " is missing or not a string");
    return v->get_ref<const std::string&>();
}

size_t positive_int(const Json* v, const std::string& what, const std::string& path) {
    // Integers only (1.0 is a float in JSON), bounded so later size products stay small.
    constexpr int64_t kMax = 1000000000;
    bool ok = v && v->is_number_integer();
    if (ok) ok = v->is_number_unsigned() ? v->get<uint64_t>() >= 1 && v->get<uint64_t>() <= uint64_t(kMax)
                                         : v->get<int64_t>() >= 1 && v->get<int64_t>() <= kMax;
    if (!ok) bad(path, "field " + what + " is missing or not an integer in [1, 1e9]");
    return size_t(v->get<int64_t>());
}

// Input/output names of a graph as the manifest lists them ({"name": ..., "dtype": ...} objects).
std::vector<std::string> names(const Json& graph, const char* key, size_t expected, const std::string& gname, const std::string& path,
                               bool allow_uint8 = false) {
    const Json* list = member(graph, key);
    if (!list || !list->is_array() || list->size() != expected)
        bad(path, "graph " + gname + " must list " + std::to_string(expected) + " " + key);
    std::vector<std::string> out;
    for (const Json& item : *list) {
        const std::string& name = string(item, "name", "graphs." + gname + "." + key + "[].name", path);
        if (const Json* dtype = member(item, "dtype")) {
            if (!dtype->is_string()) bad(path, "graph " + gname + ": dtype of " + name + " is not a string");
            const std::string& d = dtype->get_ref<const std::string&>();
            if (d != "float32" && d != "int64" && !(allow_uint8 && d == "uint8"))
                bad(path, "graph " + gname + ": " + name + " has dtype " + d + "; the C runtime feeds and reads float32/int64 only");
        }
        out.push_back(name);
    }
    return out;
}

GraphSpec graph(const Json& graphs, const char* name, size_t n_inputs, size_t n_outputs, const std::string& path,
                bool allow_uint8 = false) {
    const Json* entry = member(graphs, name);
    if (!entry || !entry->is_object()) bad(path, std::string("graph '") + name + "' is missing");
    GraphSpec g;
    g.file = string(*entry, "file", std::string("graphs.") + name + ".file", path);
    g.sha256 = string(*entry, "sha256", std::string("graphs.") + name + ".sha256", path);
    g.inputs = names(*entry, "inputs", n_inputs, name, path, allow_uint8);
    g.outputs = names(*entry, "outputs", n_outputs, name, path);
    return g;
}

}  // namespace

std::string identity_text(const Json& m) {
    static const char* const kGraphKeys[] = {"file", "sha256", "opset", "precision", "inputs", "outputs", "kidrr_functions"};
    static const char* const kBundleKeys[] = {"format", "model", "tokenizer", "precision", "files"};
    auto value = [](const Json& obj, const char* key) {
        const Json* v = member(obj, key);
        return v ? *v : Json(nullptr);
    };
    Json core = Json::object();
    for (const char* k : kBundleKeys) core[k] = value(m, k);
    Json graphs = Json::object();
    for (const auto& [name, entry] : m.at("graphs").items()) {
        Json g = Json::object();
        for (const char* k : kGraphKeys) g[k] = value(entry, k);
        graphs[name] = g;
    }
    core["graphs"] = graphs;
    // nlohmann's objects are sorted by key (byte order = code point order for UTF-8, as Python's
    // sort_keys), dump() without indent writes "," and ":" unspaced, ensure_ascii escapes as
    // Python does (lower-case u-escapes, surrogate pairs, DEL escaped), and doubles print shortest round-trip
    // ("0.1", "1e-05", "9.0") as Python's repr.
    return core.dump(-1, ' ', true);
}

Manifest parse_manifest(std::string_view raw, const std::string& path) {
    const Json m = parse_json(raw, path);
    if (!m.is_object()) bad(path, "the manifest is not a JSON object");
    const Json* format = member(m, "format");
    if (!format || !format->is_string() || format->get_ref<const std::string&>() != kBundleFormat)
        throw Error(KIDRR_ERR_BUNDLE, path + ": bundle format '" + (format && format->is_string() ? format->get<std::string>() : "?") +
                                          "' is unknown to this runtime (it reads " + kBundleFormat + "); re-export with a matching kidrr version");
    const Json& model = object(m, "model", path);
    const Json& tok = object(m, "tokenizer", path);
    const Json& graphs = object(m, "graphs", path);
    Manifest out;
    // The tokenizer record: no `kind` is the kidrr-basic/1 rules with a vocab.json; "wordpiece" is
    // a BERT tokenizer.json (MiniLM's text encoder). Each text encoder has its own.
    if (const Json* kind = member(tok, "kind")) {
        if (!kind->is_string() || *kind != "wordpiece")
            throw Error(KIDRR_ERR_BUNDLE, path + ": tokenizer kind '" + (kind->is_string() ? kind->get<std::string>() : "?") +
                                              "' is unknown to this runtime (it reads wordpiece and the kidrr-basic/1 rules); "
                                              "update the runtime or re-export the bundle");
        out.tokenizer_kind = TokenizerKind::wordpiece;
        out.tokenizer_file = string(tok, "file", "tokenizer.file", path);
    } else {
        if (string(tok, "rules", "tokenizer.rules", path) != kTokenizerRules)
            throw Error(KIDRR_ERR_BUNDLE, path + ": tokenizer rules differ from this runtime's " + std::string(kTokenizerRules));
        out.tokenizer_file = "vocab.json";
        if (const Json* v = member(tok, "vocab")) {
            if (!v->is_string()) bad(path, "field tokenizer.vocab is not a string");
            out.tokenizer_file = v->get<std::string>();
        }
    }
    if (const Json* te = member(model, "text_encoder")) {
        if (!te->is_string() || (*te != "bigru" && *te != "minilm-l6"))
            throw Error(KIDRR_ERR_BUNDLE, path + ": text encoder '" + (te->is_string() ? te->get<std::string>() : "?") +
                                              "' is unknown to this runtime (it reads bigru and minilm-l6); update the runtime");
        out.text_encoder_kind = te->get<std::string>();
    }
    if ((out.text_encoder_kind == "minilm-l6") != (out.tokenizer_kind == TokenizerKind::wordpiece))
        bad(path, "text encoder " + out.text_encoder_kind + " does not go with tokenizer " +
                      (out.tokenizer_kind == TokenizerKind::wordpiece ? "wordpiece" : std::string(kTokenizerRules)));
    out.identity_text = identity_text(m);
    out.feature_size = positive_int(member(model, "feature_size"), "model.feature_size", path);
    out.embed_size = positive_int(member(model, "embed_size"), "model.embed_size", path);
    const Json* max_len = member(tok, "max_caption_len");
    out.max_caption_len = positive_int(max_len ? max_len : member(model, "max_caption_len"), "tokenizer.max_caption_len", path);
    if (out.tokenizer_kind == TokenizerKind::wordpiece && out.max_caption_len > kMaxWordPieceCaptionLen)
        bad(path, "tokenizer.max_caption_len " + std::to_string(out.max_caption_len) + " is more than the " +
                      std::to_string(kMaxWordPieceCaptionLen) + " tokens a BERT encoder takes");
    if (const Json* vs = member(model, "vocab_size")) out.vocab_size = positive_int(vs, "model.vocab_size", path);
    out.precision = "fp32";
    if (const Json* p = member(m, "precision")) {
        if (!p->is_string()) bad(path, "field precision is not a string");
        out.precision = p->get<std::string>();
        if (out.precision != "fp32" && out.precision != "fp16" && out.precision != "int8")
            bad(path, "precision '" + out.precision + "' is unknown (fp32, fp16 or int8)");
    }
    out.image_encoder = graph(graphs, "image_encoder", 1, 2, path);
    out.text_encoder = graph(graphs, "text_encoder", 2, 2, path);
    out.similarity = graph(graphs, "similarity", 5, 1, path);
    for (const GraphSpec* g : {&out.image_encoder, &out.text_encoder, &out.similarity}) out.files.emplace_back(g->file, g->sha256);
    if (const Json* image = member(m, "image")) {
        // Photos in: the preprocessing and backbone graphs, named by image.graphs (docs/images.md).
        if (!image->is_object()) bad(path, "field image is not an object");
        const Json& names_of = object(*image, "graphs", path);
        out.has_image = true;
        out.image_regions = positive_int(member(*image, "regions"), "image.regions", path);
        if (positive_int(member(*image, "feature_size"), "image.feature_size", path) != out.feature_size)
            bad(path, "image.feature_size differs from model.feature_size");
        const Json* mp = member(*image, "max_pixels");
        if (!mp || !mp->is_number_unsigned() || mp->get<uint64_t>() < 1) bad(path, "field image.max_pixels is missing or not a positive integer");
        out.max_pixels = mp->get<uint64_t>();
        const std::string pre = string(names_of, "preprocess", "image.graphs.preprocess", path);
        const std::string bb = string(names_of, "backbone", "image.graphs.backbone", path);
        out.preprocess = graph(graphs, pre.c_str(), 1, 1, path, /*allow_uint8=*/true);
        out.backbone = graph(graphs, bb.c_str(), 1, 1, path);
        out.files.emplace_back(out.preprocess.file, out.preprocess.sha256);
        out.files.emplace_back(out.backbone.file, out.backbone.sha256);
    }
    if (const Json* extra = member(m, "files")) {
        if (!extra->is_object()) bad(path, "field files is not an object");
        for (const auto& [rel, sha] : extra->items()) {
            if (!sha.is_string()) bad(path, "files['" + rel + "'] must be a sha256 string");
            out.files.emplace_back(rel, sha.get<std::string>());
        }
    }
    if (std::none_of(out.files.begin(), out.files.end(), [&](const auto& f) { return f.first == out.tokenizer_file; }))
        bad(path, "the " + std::string(out.tokenizer_kind == TokenizerKind::wordpiece ? "tokenizer " : "vocabulary ") +
                      out.tokenizer_file + " has no sha256 under 'files'");
    for (const auto& [rel, sha] : out.files) {
        check_relative(rel, path);
        if (sha.size() != 64 || sha.find_first_not_of("0123456789abcdef") != std::string::npos)
            bad(path, "the sha256 of " + rel + " is not 64 lower-case hex digits");
    }
    return out;
}

}  // namespace kidrr
