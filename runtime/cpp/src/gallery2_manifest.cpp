#include "gallery2_manifest.hpp"

#include <algorithm>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "checked.hpp"
#include "error.hpp"
#include "json.hpp"

namespace kidrr {

namespace {

[[noreturn]] void bad(const std::string& path, const std::string& what) {
    throw Error(KIDRR_ERR_INPUT, path + ": " + what + "; the manifest is damaged or was edited (restore it, or rebuild the gallery)");
}

// As layout.py's _int: an integer (not a bool, not a float) in [low, high].
uint64_t integer(const Json& doc, const char* key, const std::string& path, uint64_t low, uint64_t high) {
    const Json* v = member(doc, key);
    // JSON's non-negative integers parse as unsigned; negatives, floats and bools are refused.
    const bool ok = v && v->is_number_unsigned() && v->get<uint64_t>() >= low && v->get<uint64_t>() <= high;
    if (!ok) bad(path, std::string("field '") + key + "' must be an integer in " + std::to_string(low) + ".." + std::to_string(high));
    return v->get<uint64_t>();
}

std::string text(const Json& doc, const char* key, const std::string& path, const char* pattern = nullptr) {
    const Json* v = member(doc, key);
    if (!v || !v->is_string()) bad(path, std::string("field '") + key + "' must be a string");
    const std::string& s = v->get_ref<const std::string&>();
    if (pattern && !std::regex_match(s, std::regex(pattern)))
        bad(path, std::string("field '") + key + "' must match " + pattern);
    return s;
}

FileEntry file_entry(const Json& doc, const std::string& path, const std::string& what) {
    if (!doc.is_object()) bad(path, what + " must be an object");
    return {integer(doc, "bytes", path, 0, uint64_t(1) << 50), text(doc, "sha256", path, "[0-9a-f]{64}")};
}

}  // namespace

std::vector<std::string> segment_files(const std::string& locals_dtype) {
    std::vector<std::string> out = {"globals.npy", "locals.npy", "id_offsets.npy", "id_hashes.npy", "ids.utf8"};
    if (locals_dtype == "int8") out.push_back("scales.npy");
    return out;
}

void array_spec(const std::string& name, const Gallery2Manifest& m, size_t rows, std::string& descr, std::vector<size_t>& shape) {
    if (name == "globals.npy") { descr = "<f4"; shape = {rows, m.dim}; }
    else if (name == "locals.npy") { descr = m.locals_dtype == "fp32" ? "<f4" : m.locals_dtype == "fp16" ? "<f2" : "|i1"; shape = {rows, m.regions, m.dim}; }
    else if (name == "scales.npy") { descr = "<f4"; shape = {rows, m.regions}; }
    else if (name == "id_offsets.npy") { descr = "<i8"; shape = {rows + 1}; }
    else if (name == "id_hashes.npy") { descr = "<u8"; shape = {rows, 2}; }
    else throw Error(KIDRR_ERR_INTERNAL, "unknown segment file " + name);
}

Gallery2Manifest parse_gallery2_manifest(std::string_view raw, const std::string& path) {
    if (raw.size() > kGallery2MaxManifestBytes) bad(path, "larger than 64 MiB");
    Json doc;
    try {
        doc = parse_json(raw, path);
    } catch (const Error& e) {
        bad(path, std::string("not valid JSON (") + e.what() + ")");
    }
    if (!doc.is_object()) bad(path, "the manifest must be a JSON object");
    const Json* format = member(doc, "format");
    if (!format || !format->is_string() || *format != kGallery2Format) {
        if (format && format->is_string() && format->get_ref<const std::string&>().rfind("kidrr-gallery/", 0) == 0)
            throw Error(KIDRR_ERR_INPUT, path + ": gallery format '" + format->get<std::string>() + "' is not one this runtime reads (" +
                                             kGallery2Format + "); use the kidrr version that wrote it, or rebuild the gallery");
        bad(path, std::string("'format' is not '") + kGallery2Format + "'");
    }
    Gallery2Manifest m;
    m.bundle_id = text(doc, "bundle_id", path, "[\\x21-\\x7e]{1,128}");
    m.regions = integer(doc, "regions", path, 1, 1 << 20);
    m.dim = integer(doc, "dim", path, 1, 1 << 20);
    m.locals_dtype = text(doc, "locals_dtype", path);
    if (m.locals_dtype != "fp32" && m.locals_dtype != "fp16" && m.locals_dtype != "int8")
        bad(path, "locals_dtype '" + m.locals_dtype + "' is not one of fp16, fp32, int8");
    if (text(doc, "globals_dtype", path) != "fp32") bad(path, "globals_dtype must be 'fp32'");
    integer(doc, "generation", path, 0, uint64_t(1) << 62);
    const Json* ann = member(doc, "ann");
    if (!ann || !ann->is_object()) bad(path, "field 'ann' must be an object");
    const std::string method = text(*ann, "method", path);
    if (method != "ivf" && method != "hnsw") bad(path, "ann.method '" + method + "' is not ivf or hnsw");
    integer(*ann, "min_rows", path, 1, uint64_t(1) << 62);
    const uint64_t next_segment = integer(doc, "next_segment", path, 0, 999999);
    const Json* segs = member(doc, "segments");
    if (!segs || !segs->is_array()) bad(path, "'segments' must be a list");
    std::set<std::string> seen;
    const std::vector<std::string> expected = segment_files(m.locals_dtype);
    for (const Json& s : *segs) {
        Segment2Info info;
        info.name = text(s, "name", path, "seg-[0-9]{6}");
        if (!seen.insert(info.name).second || std::stoul(info.name.substr(4)) >= next_segment)
            bad(path, "segment " + info.name + " is listed twice or not below next_segment");
        info.rows = integer(s, "rows", path, 1, uint64_t(1) << 40);
        const Json* files = member(s, "files");
        if (!files || !files->is_object() || files->size() != expected.size() ||
            !std::all_of(expected.begin(), expected.end(), [&](const std::string& f) { return files->contains(f); }))
            bad(path, "segment " + info.name + " must list exactly the files of a " + m.locals_dtype + " segment");
        for (const std::string& f : expected) info.files[f] = file_entry((*files)[f], path, info.name + "/" + f);
        if (const Json* tomb = member(s, "tombstones"); tomb && !tomb->is_null()) {
            info.has_tombstones = true;
            info.tombstones_file = text(*tomb, "file", path, "seg-[0-9]{6}/tombstones-[0-9]{6}\\.npy");
            info.tombstones_count = integer(*tomb, "count", path, 1, info.rows);
            info.tombstones = file_entry(*tomb, path, info.name + " tombstones");
            if (info.tombstones_file.compare(0, info.name.size() + 1, info.name + "/") != 0)
                bad(path, "segment " + info.name + "'s tombstones live in another segment's folder");
        }
        // An ANN index (faiss) is checked as the Python reader checks it, then ignored: this
        // reader scans the globals exactly (docs/gallery.md allows that).
        if (const Json* a = member(s, "ann"); a && !a->is_null()) {
            const std::string file = text(*a, "file", path, "seg-[0-9]{6}/ann-(ivf|hnsw)\\.faiss");
            const std::string am = text(*a, "method", path);
            const std::string tail = "ann-" + am + ".faiss";
            if (file.compare(0, info.name.size() + 1, info.name + "/") != 0 || (am != "ivf" && am != "hnsw") ||
                file.size() < tail.size() || file.compare(file.size() - tail.size(), tail.size(), tail) != 0)
                bad(path, "segment " + info.name + "'s ANN entry names another segment or method");
            // Exactly the parameters build_index writes for the method, integers in 1..2^30.
            const Json* params = member(*a, "params");
            const std::vector<std::string> keys = am == "ivf" ? std::vector<std::string>{"nlist"}
                                                              : std::vector<std::string>{"M", "efConstruction"};
            bool ok = params && params->is_object() && params->size() == keys.size();
            for (const std::string& k : keys) {
                const Json* v = ok ? member(*params, k.c_str()) : nullptr;
                ok = ok && v && v->is_number_integer() && !v->is_boolean() && v->get<int64_t>() >= 1 &&
                     v->get<int64_t>() <= (int64_t(1) << 30);
            }
            if (!ok) bad(path, "segment " + info.name + "'s ANN entry: " + am + " params must be exactly the integers " +
                                   (am == "ivf" ? "nlist" : "M, efConstruction") + " in 1..1073741824");
            file_entry(*a, path, info.name + " ANN index");
        }
        m.rows = add_size(m.rows, info.rows, path);
        m.live = add_size(m.live, info.rows - info.tombstones_count, path);
        m.segments.push_back(std::move(info));
    }
    // Derived counts are stored for people and C readers; they must agree with the segments.
    const Json* rows = member(doc, "rows");
    const Json* live = member(doc, "live");
    if (!rows || !live || !rows->is_number_unsigned() || !live->is_number_unsigned() || rows->get<uint64_t>() != m.rows ||
        live->get<uint64_t>() != m.live)
        bad(path, "rows/live disagree with the segments (" + std::to_string(m.rows) + "/" + std::to_string(m.live) + ")");
    return m;
}

}  // namespace kidrr
