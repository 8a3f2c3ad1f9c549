/* kidrr.h: the C ABI of the KIDRR retrieval runtime (image-text matching over an exported bundle).
 *
 * Handles are opaque. Every function returns a kidrr_status; on anything but KIDRR_OK,
 * kidrr_last_error() gives a message saying what was wrong and what to do. Outputs are written
 * only on success.
 *
 * Thread-safety contract:
 *  - A kidrr_bundle may be used from several threads at once for every call that takes it as
 *    `const kidrr_bundle*` (encode, score, search, tokenize): ONNX Runtime sessions are safe for
 *    concurrent Run calls and the bundle holds no other mutable state.
 *  - kidrr_images / kidrr_captions are immutable once created: share them read-only freely.
 *  - A *_free / kidrr_close must not run while another thread still uses that handle.
 *  - kidrr_last_error() is per thread: it reports the last failed call made by the calling thread.
 *  - kidrr_vocab handles follow the same rules as bundles.
 * Strings are UTF-8 and NUL-terminated (a caption cannot hold an embedded NUL character).
 */
#ifndef KIDRR_H
#define KIDRR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define KIDRR_API __declspec(dllexport)
#else
#define KIDRR_API __attribute__((visibility("default")))
#endif

#define KIDRR_ABI_VERSION 1

typedef enum kidrr_status {
    KIDRR_OK = 0,
    KIDRR_ERR_INVALID_ARGUMENT = 1, /* null pointer, zero count, buffer too small */
    KIDRR_ERR_INPUT = 2,            /* bad caption (empty, too long, invalid UTF-8), wrong feature size, NaN */
    KIDRR_ERR_BUNDLE = 3,           /* bundle missing, unknown format, file hash mismatch, bad JSON */
    KIDRR_ERR_BACKEND = 4,          /* ONNX Runtime not found, too old, or failed while running */
    KIDRR_ERR_OUT_OF_MEMORY = 5,
    KIDRR_ERR_INTERNAL = 6,         /* a bug: please report it with the message */
    KIDRR_ERR_UNKNOWN_ITEM = 7      /* no live item of the gallery has the id given (removed, or never added) */
} kidrr_status;

typedef struct kidrr_bundle kidrr_bundle;     /* an opened bundle: three ONNX sessions + vocabulary */
typedef struct kidrr_images kidrr_images;     /* encoded images: locals (n, R, D) and globals (n, D) */
typedef struct kidrr_captions kidrr_captions; /* encoded captions: locals (m, L, D), globals, lengths */
typedef struct kidrr_vocab kidrr_vocab;       /* a tokenizer alone (vocab.json or tokenizer.json) */
typedef struct kidrr_gallery kidrr_gallery;   /* a format-2 gallery folder, memory-mapped (docs/gallery.md) */

typedef struct kidrr_options {
    /* Path of libonnxruntime.so. NULL: $KIDRR_ORT_LIBRARY, else the library inside the onnxruntime
     * Python wheel found when the runtime was built, else the one `python3` (or $KIDRR_PYTHON) finds now. */
    const char* ort_library;
    int intra_op_threads;  /* 0: ONNX Runtime's default */
    int tile_images;       /* images per scoring tile; 0: 32 (scaled up when fewer captions than tile_captions) */
    int tile_captions;     /* captions per scoring tile; 0: 8. A tile holds tile_images x tile_captions pairs */
} kidrr_options;

typedef struct kidrr_hit {
    size_t image;  /* row of the image in the gallery */
    float score;   /* full KIDRR score */
} kidrr_hit;

typedef struct kidrr_bundle_info {
    size_t feature_size;     /* F */
    size_t embed_size;       /* D */
    size_t max_caption_len;  /* tokens including <start>/<end> */
    size_t vocab_size;
    const char* precision;   /* "fp32" | "fp16" | "int8"; valid while the bundle is open */
    const char* ort_version; /* ONNX Runtime library version in use */
} kidrr_bundle_info;

/* Message of the calling thread's last failed call ("" if none). Valid until its next failed call. */
KIDRR_API const char* kidrr_last_error(void);
KIDRR_API const char* kidrr_status_name(kidrr_status status);

/* Open a bundle folder: checks manifest format, every file's sha256, the tokenizer (kidrr-basic/1
 * rules with vocab.json, or for MiniLM bundles a BERT WordPiece tokenizer.json), and loads ONNX
 * Runtime (options may be NULL). */
KIDRR_API kidrr_status kidrr_open(const char* bundle_dir, const kidrr_options* options, kidrr_bundle** out);
KIDRR_API void kidrr_close(kidrr_bundle* bundle); /* NULL is fine */
KIDRR_API kidrr_status kidrr_bundle_get_info(const kidrr_bundle* bundle, kidrr_bundle_info* out);
/* What runs the similarity graph's kidrr ops: "fused (PATH)" when libkidrr_ops (built beside libkidrr,
 * or $KIDRR_OPS_LIBRARY; "off" disables it) was registered, else "function bodies" and why. Same
 * scores either way. Valid while the bundle is open; NULL bundle gives "". */
KIDRR_API const char* kidrr_bundle_kernels(const kidrr_bundle* bundle);

/* Encode n images of `regions` region features of size feature_size (row-major float32 n x R x F).
 * feature_size must equal the bundle's F. */
KIDRR_API kidrr_status kidrr_encode_images(const kidrr_bundle* bundle, const float* features, size_t n,
                                           size_t regions, size_t feature_size, kidrr_images** out);
/* Encode m UTF-8 captions (tokenised by the bundle's tokenizer: the kidrr-basic/1 rules, or WordPiece
 * exactly as the `tokenizers` library; docs/tokenizer.md). As the Python runtime, fails
 * (KIDRR_ERR_INPUT, naming its index) on the first caption that is empty after
 * tokenising, has only unknown words, is longer than max_caption_len, or is not valid UTF-8. */
KIDRR_API kidrr_status kidrr_encode_captions(const kidrr_bundle* bundle, const char* const* captions, size_t m,
                                             kidrr_captions** out);
KIDRR_API void kidrr_images_free(kidrr_images* images);
KIDRR_API void kidrr_captions_free(kidrr_captions* captions);
KIDRR_API size_t kidrr_images_count(const kidrr_images* images);
KIDRR_API size_t kidrr_captions_count(const kidrr_captions* captions);
/* Concatenate image sets (same R) into one gallery, e.g. after encoding in batches. */
KIDRR_API kidrr_status kidrr_images_concat(const kidrr_images* const* parts, size_t count, kidrr_images** out);
/* Borrow the (n, D) global embeddings (l2-normalised; the first stage of two-stage search). */
KIDRR_API kidrr_status kidrr_images_globals(const kidrr_images* images, const float** data, size_t* n, size_t* d);

/* A gallery from a file: a .npz written by the Python runtime (Gallery.save; refused if another
 * bundle encoded it), or a .npy of raw features float32 (n, R, F), encoded now. */
KIDRR_API kidrr_status kidrr_gallery_load(const kidrr_bundle* bundle, const char* path, kidrr_images** out);

/* Full scores of every image against every caption: out_scores is n x m row-major, out_len >= n*m. */
KIDRR_API kidrr_status kidrr_score(const kidrr_bundle* bundle, const kidrr_images* images,
                                   const kidrr_captions* captions, float* out_scores, size_t out_len);

/* Top-k images of the gallery for one caption, best first. shortlist == 0: exact (score every
 * image). shortlist > 0: two-stage: rank by the global dot product, fully score the best
 * `shortlist` (>= k) images only. *n_hits = k; k larger than the gallery, or an empty gallery,
 * is KIDRR_ERR_INPUT (as in Python). */
KIDRR_API kidrr_status kidrr_search(const kidrr_bundle* bundle, const kidrr_images* gallery, const char* caption,
                                    size_t k, size_t shortlist, kidrr_hit* hits, size_t* n_hits);

/* Photos in (bundles with preprocessing + backbone graphs, docs/images.md; others give
 * KIDRR_ERR_BUNDLE). Pixels are RGB8: `height` rows of `width` R,G,B bytes, rows `stride` bytes apart
 * (stride >= 3 * width); at most the bundle's max_pixels. kidrr_extract_features writes the
 * backbone's features (R x F floats, out_len >= R * F; *regions = R); kidrr_encode_pixels encodes n
 * images into a set as kidrr_encode_images does. Decoding files (JPEG...) is the caller's: the
 * kidrr_index example uses libjpeg-turbo. */
KIDRR_API kidrr_status kidrr_extract_features(const kidrr_bundle* bundle, const uint8_t* rgb, size_t height, size_t width,
                                              size_t stride, float* out, size_t out_len, size_t* regions);
KIDRR_API kidrr_status kidrr_encode_pixels(const kidrr_bundle* bundle, const uint8_t* const* rgb, const size_t* heights,
                                           const size_t* widths, const size_t* strides, size_t n, kidrr_images** out);

/* Format-2 gallery folders (kidrr.gallery, docs/gallery.md): opened read-only and memory-mapped
 * (opening reads the manifest and the arrays' headers; searches read the globals they scan and the
 * locals they score), checked as the Python reader checks them: KIDRR_ERR_INPUT for a damaged
 * folder, KIDRR_ERR_BUNDLE for one another bundle encoded. Rows number items across segments; a
 * removed item's row is never returned. Immutable: many threads may search one gallery at once. */
KIDRR_API kidrr_status kidrr_gallery_open(const kidrr_bundle* bundle, const char* folder, kidrr_gallery** out);
KIDRR_API void kidrr_gallery_close(kidrr_gallery* gallery);
KIDRR_API size_t kidrr_gallery_count(const kidrr_gallery* gallery); /* live items; 0 for NULL */
/* As kidrr_search; hits[t].image is a row, kidrr_gallery_id names it. The first stage of a two-stage
 * search is always an exact scan of the globals (faiss indexes are not read). */
KIDRR_API kidrr_status kidrr_gallery_search(const kidrr_bundle* bundle, const kidrr_gallery* gallery, const char* caption,
                                            size_t k, size_t shortlist, kidrr_hit* hits, size_t* n_hits);
/* Items like a stored item (query by example): the live items ranked by the dot product of their
 * globals with the stored global of the item whose id is `id` (UTF-8, NUL-terminated; the vector is
 * read from the gallery, nothing is encoded), best first, ties by the smaller row; the item itself is
 * left out. hits[t].score is that dot product (the cosine: globals are l2-normalised). The same
 * answer as Python's Retriever.search_like_id on a gallery without an ANN index (an exact scan; faiss
 * indexes are not read). k must be in 1..kidrr_gallery_count (KIDRR_ERR_INPUT otherwise, as in
 * Python); *n_hits = min(k, count - 1). KIDRR_ERR_UNKNOWN_ITEM when no live item has the id.
 * Finding the id scans the id table (linear in the gallery's rows). */
KIDRR_API kidrr_status kidrr_gallery_search_like_id(const kidrr_gallery* gallery, const char* id, size_t k,
                                                    kidrr_hit* hits, size_t* n_hits);
/* Write encoded images as a NEW format-2 gallery folder (one segment, fp32 locals) with the given
 * ids (n = the image count; unique non-empty UTF-8, <= 1024 bytes). The folder must not exist: it
 * appears all at once, and nothing is overwritten. kidrr.gallery reads it and can append to it. */
KIDRR_API kidrr_status kidrr_gallery_write(const kidrr_bundle* bundle, const kidrr_images* images, const char* const* ids,
                                           size_t n, const char* folder);
/* As kidrr_gallery_write, with the locals stored as locals_dtype: "fp32", or "fp16" (half the disk and
 * page cache; kidrr.gallery's default; rounded to nearest even as numpy rounds, values beyond
 * 65504 refused). */
KIDRR_API kidrr_status kidrr_gallery_write_dtype(const kidrr_bundle* bundle, const kidrr_images* images,
                                                 const char* const* ids, size_t n, const char* folder,
                                                 const char* locals_dtype);
/* The id of a row: *id points into the gallery's map (valid until kidrr_gallery_close), *len bytes
 * of UTF-8, not NUL-terminated. */
KIDRR_API kidrr_status kidrr_gallery_id(const kidrr_gallery* gallery, size_t row, const char** id, size_t* len);

/* Token ids of a caption with <start>/<end> ([CLS]/[SEP]) as the bundle's text encoder sees them. *n_ids is set to
 * the number needed even when capacity is too small (then KIDRR_ERR_INVALID_ARGUMENT). */
KIDRR_API kidrr_status kidrr_tokenize(const kidrr_bundle* bundle, const char* caption, int64_t* ids,
                                      size_t capacity, size_t* n_ids);

/* A tokenizer alone: vocab.json of a bundle or checkpoint, or a BERT WordPiece tokenizer.json (as in
 * MiniLM bundles; other tokenizer kinds are KIDRR_ERR_BUNDLE); max_caption_len 0 = no limit. */
KIDRR_API kidrr_status kidrr_vocab_open(const char* vocab_json, size_t max_caption_len, kidrr_vocab** out);
KIDRR_API void kidrr_vocab_free(kidrr_vocab* vocab);
KIDRR_API kidrr_status kidrr_vocab_encode(const kidrr_vocab* vocab, const char* caption, int64_t* ids,
                                          size_t capacity, size_t* n_ids);

#ifdef __cplusplus
}
#endif
#endif /* KIDRR_H */
