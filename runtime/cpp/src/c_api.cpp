// The C boundary: argument checks, exceptions -> status codes + a per-thread message.
#include <sys/stat.h>

#include <cstring>
#include <new>
#include <string>

#include "bundle.hpp"
#include "checked.hpp"
#include "disk_gallery.hpp"
#include "error.hpp"
#include "gallery.hpp"
#include "gallery2_writer.hpp"
#include "kidrr.h"
#include "npy.hpp"
#include "similar.hpp"

struct kidrr_bundle {
    std::unique_ptr<kidrr::Bundle> impl;
};
struct kidrr_images {
    kidrr::EncodedImages data;
};
struct kidrr_captions {
    kidrr::EncodedCaptions data;
};
struct kidrr_gallery {
    std::unique_ptr<kidrr::DiskGallery> impl;
};
struct kidrr_vocab {
    std::unique_ptr<kidrr::CaptionTokenizer> tokenizer;
    size_t max_len;
};

namespace {

thread_local std::string t_last_error;
constexpr size_t kMaxItemIdBytes = 4096;  // the reader's bound on one stored id: longer names no item

kidrr_status fail(kidrr_status code, const std::string& message) {
    try {
        t_last_error = message;
    } catch (...) {
        // keep the previous message rather than throw across the C boundary
    }
    return code;
}

// Runs fn, mapping every exception to a status; fn returns nothing and writes outputs itself.
template <class Fn>
kidrr_status guarded(const char* where, Fn&& fn) {
    try {
        fn();
        return KIDRR_OK;
    } catch (const kidrr::Error& e) {
        return fail(e.code, std::string(where) + ": " + e.what());
    } catch (const std::bad_alloc&) {
        return fail(KIDRR_ERR_OUT_OF_MEMORY, std::string(where) + ": out of memory; use smaller batches");
    } catch (const std::exception& e) {
        return fail(KIDRR_ERR_INTERNAL, std::string(where) + ": internal error: " + e.what());
    } catch (...) {
        return fail(KIDRR_ERR_INTERNAL, std::string(where) + ": unknown internal error");
    }
}

#define REQUIRE(cond, msg) \
    if (!(cond)) throw kidrr::Error(KIDRR_ERR_INVALID_ARGUMENT, msg)

void write_ids(const std::vector<int64_t>& ids, int64_t* out, size_t capacity, size_t* n_ids) {
    *n_ids = ids.size();
    if (ids.size() > capacity)
        throw kidrr::Error(KIDRR_ERR_INVALID_ARGUMENT, "ids buffer holds " + std::to_string(capacity) + " but " +
                                                           std::to_string(ids.size()) + " are needed; *n_ids says how many");
    std::memcpy(out, ids.data(), ids.size() * sizeof(int64_t));
}

bool ends_with(const std::string& s, const char* suffix) {
    size_t n = std::strlen(suffix);
    return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

extern "C" {

const char* kidrr_last_error(void) { return t_last_error.c_str(); }

const char* kidrr_status_name(kidrr_status status) {
    switch (status) {
        case KIDRR_OK: return "KIDRR_OK";
        case KIDRR_ERR_INVALID_ARGUMENT: return "KIDRR_ERR_INVALID_ARGUMENT";
        case KIDRR_ERR_INPUT: return "KIDRR_ERR_INPUT";
        case KIDRR_ERR_BUNDLE: return "KIDRR_ERR_BUNDLE";
        case KIDRR_ERR_BACKEND: return "KIDRR_ERR_BACKEND";
        case KIDRR_ERR_OUT_OF_MEMORY: return "KIDRR_ERR_OUT_OF_MEMORY";
        case KIDRR_ERR_INTERNAL: return "KIDRR_ERR_INTERNAL";
        case KIDRR_ERR_UNKNOWN_ITEM: return "KIDRR_ERR_UNKNOWN_ITEM";
    }
    return "KIDRR_ERR_UNKNOWN";
}

kidrr_status kidrr_open(const char* bundle_dir, const kidrr_options* options, kidrr_bundle** out) {
    return guarded("kidrr_open", [&] {
        REQUIRE(out, "out must not be NULL");
        *out = nullptr;
        REQUIRE(bundle_dir && *bundle_dir, "bundle_dir must be a folder path, got NULL or empty");
        kidrr::Bundle::Options o;
        if (options) {
            REQUIRE(options->intra_op_threads >= 0 && options->tile_images >= 0 && options->tile_captions >= 0,
                    "intra_op_threads, tile_images and tile_captions must be >= 0 (0: default)");
            if (options->ort_library) o.ort_library = options->ort_library;
            o.intra_op_threads = options->intra_op_threads;
            if (options->tile_images > 0) o.tile_images = size_t(options->tile_images);
            if (options->tile_captions > 0) o.tile_captions = size_t(options->tile_captions);
        }
        auto b = std::make_unique<kidrr_bundle>();
        b->impl = std::make_unique<kidrr::Bundle>(bundle_dir, o);
        *out = b.release();
    });
}

void kidrr_close(kidrr_bundle* bundle) { delete bundle; }

kidrr_status kidrr_bundle_get_info(const kidrr_bundle* bundle, kidrr_bundle_info* out) {
    return guarded("kidrr_bundle_get_info", [&] {
        REQUIRE(bundle && out, "bundle and out must not be NULL");
        const kidrr::Bundle& b = *bundle->impl;
        *out = {b.feature_size(), b.embed_size(), b.max_caption_len(), b.vocab_size(), b.precision().c_str(),
                b.ort().version().c_str()};
    });
}

const char* kidrr_bundle_kernels(const kidrr_bundle* bundle) {
    return bundle ? bundle->impl->kernels().c_str() : "";
}

kidrr_status kidrr_encode_images(const kidrr_bundle* bundle, const float* features, size_t n, size_t regions,
                                 size_t feature_size, kidrr_images** out) {
    return guarded("kidrr_encode_images", [&] {
        REQUIRE(out, "out must not be NULL");
        *out = nullptr;
        REQUIRE(bundle, "bundle must not be NULL");
        REQUIRE(features, "features must not be NULL");
        REQUIRE(n > 0 && regions > 0, "n and regions must be at least 1");
        auto img = std::make_unique<kidrr_images>();
        img->data = bundle->impl->encode_images(features, n, regions, feature_size);
        *out = img.release();
    });
}

kidrr_status kidrr_encode_captions(const kidrr_bundle* bundle, const char* const* captions, size_t m, kidrr_captions** out) {
    return guarded("kidrr_encode_captions", [&] {
        REQUIRE(out, "out must not be NULL");
        *out = nullptr;
        REQUIRE(bundle, "bundle must not be NULL");
        REQUIRE(captions, "captions must not be NULL");
        REQUIRE(m > 0, "m must be at least 1");
        std::vector<std::string> text;
        for (size_t j = 0; j < m; ++j) {
            REQUIRE(captions[j], "caption " + std::to_string(j) + " is NULL");
            text.emplace_back(captions[j]);
        }
        auto caps = std::make_unique<kidrr_captions>();
        caps->data = bundle->impl->encode_captions(text);
        *out = caps.release();
    });
}

void kidrr_images_free(kidrr_images* images) { delete images; }
void kidrr_captions_free(kidrr_captions* captions) { delete captions; }
size_t kidrr_images_count(const kidrr_images* images) { return images ? images->data.n : 0; }
size_t kidrr_captions_count(const kidrr_captions* captions) { return captions ? captions->data.m : 0; }

kidrr_status kidrr_images_concat(const kidrr_images* const* parts, size_t count, kidrr_images** out) {
    return guarded("kidrr_images_concat", [&] {
        REQUIRE(out, "out must not be NULL");
        *out = nullptr;
        REQUIRE(parts && count > 0, "parts must hold at least one image set");
        auto img = std::make_unique<kidrr_images>();
        kidrr::EncodedImages& all = img->data;
        for (size_t p = 0; p < count; ++p) {
            REQUIRE(parts[p], "part " + std::to_string(p) + " is NULL");
            const kidrr::EncodedImages& part = parts[p]->data;
            if (p == 0) { all.regions = part.regions; all.dim = part.dim; all.bundle_id = part.bundle_id; }
            if (part.regions != all.regions || part.dim != all.dim || part.bundle_id != all.bundle_id)
                throw kidrr::Error(KIDRR_ERR_INPUT, "part " + std::to_string(p) + " has another region count or bundle than part 0");
            all.n += part.n;
            all.locals.insert(all.locals.end(), part.locals.begin(), part.locals.end());
            all.globals.insert(all.globals.end(), part.globals.begin(), part.globals.end());
        }
        *out = img.release();
    });
}

kidrr_status kidrr_images_globals(const kidrr_images* images, const float** data, size_t* n, size_t* d) {
    return guarded("kidrr_images_globals", [&] {
        REQUIRE(images && data && n && d, "images, data, n and d must not be NULL");
        *data = images->data.globals.data();
        *n = images->data.n;
        *d = images->data.dim;
    });
}

kidrr_status kidrr_gallery_load(const kidrr_bundle* bundle, const char* path, kidrr_images** out) {
    return guarded("kidrr_gallery_load", [&] {
        REQUIRE(out, "out must not be NULL");
        *out = nullptr;
        REQUIRE(bundle && path, "bundle and path must not be NULL");
        const kidrr::Bundle& b = *bundle->impl;
        const std::string p(path);
        struct stat st;
        if (::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
            throw kidrr::Error(KIDRR_ERR_INPUT, p + " is a folder, not a gallery file; a format-2 gallery folder opens "
                                                    "with kidrr_gallery_open");
        auto img = std::make_unique<kidrr_images>();
        if (ends_with(p, ".npy")) {
            kidrr::NpyArray a = kidrr::read_npy(p);
            if (a.descr != "<f4" || a.shape.size() != 3 || a.count() == 0)
                throw kidrr::Error(KIDRR_ERR_INPUT, p + ": features must be a non-empty float32 array (n, R, F)");
            img->data = b.encode_images(a.floats(), a.shape[0], a.shape[1], a.shape[2]);
        } else if (ends_with(p, ".npz")) {
            img->data = kidrr::parse_gallery_npz(kidrr::read_file_bytes(p), p, b.identity(), b.embed_size());
        } else {
            throw kidrr::Error(KIDRR_ERR_INPUT, p + ": a gallery must be a .npz from the Python runtime or a .npy of features");
        }
        *out = img.release();
    });
}

kidrr_status kidrr_score(const kidrr_bundle* bundle, const kidrr_images* images, const kidrr_captions* captions,
                         float* out_scores, size_t out_len) {
    return guarded("kidrr_score", [&] {
        REQUIRE(bundle && images && captions && out_scores, "bundle, images, captions and out_scores must not be NULL");
        const size_t need = kidrr::mul_size(images->data.n, captions->data.m, "n x m scores", KIDRR_ERR_INVALID_ARGUMENT);
        REQUIRE(out_len >= need, "out_scores holds " + std::to_string(out_len) + " floats but n*m = " + std::to_string(need) + " are needed");
        bundle->impl->score(images->data, captions->data, out_scores);
    });
}

kidrr_status kidrr_search(const kidrr_bundle* bundle, const kidrr_images* gallery, const char* caption, size_t k,
                          size_t shortlist, kidrr_hit* hits, size_t* n_hits) {
    return guarded("kidrr_search", [&] {
        REQUIRE(bundle && gallery && caption && hits && n_hits, "bundle, gallery, caption, hits and n_hits must not be NULL");
        auto found = bundle->impl->search(gallery->data, caption, k, shortlist);
        for (size_t t = 0; t < found.size(); ++t) hits[t] = {found[t].image, found[t].score};
        *n_hits = found.size();
    });
}

kidrr_status kidrr_extract_features(const kidrr_bundle* bundle, const uint8_t* rgb, size_t height, size_t width, size_t stride,
                                    float* out, size_t out_len, size_t* regions) {
    return guarded("kidrr_extract_features", [&] {
        REQUIRE(bundle && rgb && out && regions, "bundle, rgb, out and regions must not be NULL");
        const kidrr::Bundle& b = *bundle->impl;
        const size_t need = kidrr::mul_size(b.image_regions(), b.feature_size(), "features", KIDRR_ERR_INVALID_ARGUMENT);
        *regions = b.image_regions();
        REQUIRE(b.has_image_graphs() == false || out_len >= need,
                "out holds " + std::to_string(out_len) + " floats but R x F = " + std::to_string(need) + " are needed");
        const std::vector<float> f = b.extract_features(rgb, height, width, stride);
        std::copy(f.begin(), f.end(), out);
    });
}

kidrr_status kidrr_encode_pixels(const kidrr_bundle* bundle, const uint8_t* const* rgb, const size_t* heights, const size_t* widths,
                                 const size_t* strides, size_t n, kidrr_images** out) {
    return guarded("kidrr_encode_pixels", [&] {
        REQUIRE(out, "out must not be NULL");
        *out = nullptr;
        REQUIRE(bundle && rgb && heights && widths && strides, "bundle, rgb, heights, widths and strides must not be NULL");
        REQUIRE(n > 0, "n must be at least 1");
        const kidrr::Bundle& b = *bundle->impl;
        std::vector<float> features;
        for (size_t i = 0; i < n; ++i) {
            REQUIRE(rgb[i], "image " + std::to_string(i) + " is NULL");
            try {
                const std::vector<float> f = b.extract_features(rgb[i], heights[i], widths[i], strides[i]);
                features.insert(features.end(), f.begin(), f.end());
            } catch (const kidrr::Error& e) {
                throw kidrr::Error(e.code, "image " + std::to_string(i) + ": " + e.what());
            }
        }
        auto img = std::make_unique<kidrr_images>();
        img->data = b.encode_images(features.data(), n, b.image_regions(), b.feature_size());
        *out = img.release();
    });
}

kidrr_status kidrr_gallery_open(const kidrr_bundle* bundle, const char* folder, kidrr_gallery** out) {
    return guarded("kidrr_gallery_open", [&] {
        REQUIRE(out, "out must not be NULL");
        *out = nullptr;
        REQUIRE(bundle && folder, "bundle and folder must not be NULL");
        auto g = std::make_unique<kidrr_gallery>();
        g->impl = std::make_unique<kidrr::DiskGallery>(folder, bundle->impl->identity(), bundle->impl->embed_size());
        *out = g.release();
    });
}

void kidrr_gallery_close(kidrr_gallery* gallery) { delete gallery; }
size_t kidrr_gallery_count(const kidrr_gallery* gallery) { return gallery ? gallery->impl->live() : 0; }

kidrr_status kidrr_gallery_search(const kidrr_bundle* bundle, const kidrr_gallery* gallery, const char* caption, size_t k,
                                  size_t shortlist, kidrr_hit* hits, size_t* n_hits) {
    return guarded("kidrr_gallery_search", [&] {
        REQUIRE(bundle && gallery && caption && hits && n_hits, "bundle, gallery, caption, hits and n_hits must not be NULL");
        auto found = bundle->impl->search(*gallery->impl, caption, k, shortlist);
        for (size_t t = 0; t < found.size(); ++t) hits[t] = {found[t].image, found[t].score};
        *n_hits = found.size();
    });
}

kidrr_status kidrr_gallery_search_like_id(const kidrr_gallery* gallery, const char* id, size_t k, kidrr_hit* hits,
                                          size_t* n_hits) {
    return guarded("kidrr_gallery_search_like_id", [&] {
        REQUIRE(gallery && id && hits && n_hits, "gallery, id, hits and n_hits must not be NULL");
        const std::string_view wanted(id, ::strnlen(id, kMaxItemIdBytes + 1));
        size_t row = 0;
        if (wanted.size() > kMaxItemIdBytes || !gallery->impl->find(wanted, row)) {
            const std::string shown(wanted.substr(0, 200));
            throw kidrr::Error(KIDRR_ERR_UNKNOWN_ITEM, "no item '" + shown + "' in this gallery (removed, or never added); "
                                                       "list its ids with `kidrr gallery info --ids`");
        }
        const auto found = kidrr::nearest_to_row(*gallery->impl, row, k);
        for (size_t t = 0; t < found.size(); ++t) hits[t] = {found[t].image, found[t].score};
        *n_hits = found.size();
    });
}

kidrr_status kidrr_gallery_write(const kidrr_bundle* bundle, const kidrr_images* images, const char* const* ids, size_t n,
                                 const char* folder) {
    return kidrr_gallery_write_dtype(bundle, images, ids, n, folder, "fp32");
}

kidrr_status kidrr_gallery_write_dtype(const kidrr_bundle* bundle, const kidrr_images* images, const char* const* ids,
                                       size_t n, const char* folder, const char* locals_dtype) {
    return guarded("kidrr_gallery_write", [&] {
        REQUIRE(bundle && images && ids && folder && *folder && locals_dtype,
                "bundle, images, ids, folder and locals_dtype must not be NULL or empty");
        REQUIRE(n == images->data.n, std::to_string(n) + " ids for " + std::to_string(images->data.n) + " images");
        if (images->data.bundle_id != bundle->impl->identity())
            throw kidrr::Error(KIDRR_ERR_INPUT, "the images were encoded by another bundle; encode them with this one");
        std::vector<std::string> names;
        for (size_t i = 0; i < n; ++i) {
            REQUIRE(ids[i], "id " + std::to_string(i) + " is NULL");
            names.emplace_back(ids[i]);
        }
        kidrr::write_gallery2(images->data, names, folder, locals_dtype);
    });
}

kidrr_status kidrr_gallery_id(const kidrr_gallery* gallery, size_t row, const char** id, size_t* len) {
    return guarded("kidrr_gallery_id", [&] {
        REQUIRE(gallery && id && len, "gallery, id and len must not be NULL");
        const std::string_view v = gallery->impl->id(row);
        *id = v.data();
        *len = v.size();
    });
}

kidrr_status kidrr_tokenize(const kidrr_bundle* bundle, const char* caption, int64_t* ids, size_t capacity, size_t* n_ids) {
    return guarded("kidrr_tokenize", [&] {
        REQUIRE(bundle && caption && n_ids, "bundle, caption and n_ids must not be NULL");
        REQUIRE(ids || capacity == 0, "ids must not be NULL when capacity > 0");
        write_ids(bundle->impl->tokenize(caption), ids, capacity, n_ids);
    });
}

kidrr_status kidrr_vocab_open(const char* vocab_json, size_t max_caption_len, kidrr_vocab** out) {
    return guarded("kidrr_vocab_open", [&] {
        REQUIRE(out, "out must not be NULL");
        *out = nullptr;
        REQUIRE(vocab_json, "vocab_json must not be NULL");
        auto v = std::make_unique<kidrr_vocab>();
        v->tokenizer = kidrr::load_tokenizer_file(vocab_json);
        v->max_len = max_caption_len;
        *out = v.release();
    });
}

void kidrr_vocab_free(kidrr_vocab* vocab) { delete vocab; }

kidrr_status kidrr_vocab_encode(const kidrr_vocab* vocab, const char* caption, int64_t* ids, size_t capacity, size_t* n_ids) {
    return guarded("kidrr_vocab_encode", [&] {
        REQUIRE(vocab && caption && n_ids, "vocab, caption and n_ids must not be NULL");
        REQUIRE(ids || capacity == 0, "ids must not be NULL when capacity > 0");
        write_ids(vocab->tokenizer->encode(caption, vocab->max_len), ids, capacity, n_ids);
    });
}

}  // extern "C"
