/* kidrr_index [--locals-dtype fp16|fp32] BUNDLE IMAGE_DIR OUT
 *
 * Encodes the JPEG files of IMAGE_DIR (*.jpg, *.jpeg; not recursive; sorted by name) through the
 * bundle's preprocessing and backbone graphs and writes OUT, a new format-2 gallery folder that the
 * Python runtime (kidrr.gallery) and kidrr_search read; ids are the file names. Decoding: Debian's
 * libjpeg-turbo with its defaults (islow DCT, fancy upsampling), the pixels Pillow gives, turned
 * upright by the EXIF orientation as kidrr index does (Pillow's exif_transpose). Skipped, with the
 * reason: undecodable files, CMYK/YCCK JPEGs (kidrr index converts those), and images over the
 * runtime's pixel limit (docs/images.md), refused from the header before any pixel is decoded;
 * anything but a regular file (a FIFO named *.jpg is never opened for a blocking read), files over
 * 1 GiB, truncated JPEGs (libjpeg's end-of-data warning is an error: Pillow refuses them), and
 * names that are not UTF-8 (they cannot be ids). Photos are decoded and encoded BATCH at a time,
 * so memory holds one batch of pixels, not the folder's (the encoded items, ~50 KB each, are kept
 * until the gallery is written).
 * Locals are stored as fp16 by default, as kidrr index and kidrr.gallery store them (half the disk
 * and page cache; rSum delta 0.0 on the synthetic test set, docs/gallery.md); --locals-dtype fp32
 * keeps them exact. Exit codes as kidrr index: 0 all encoded, 1 some files skipped (named on
 * stderr), 2 error.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <jerror.h>

#include "kidrr.h"

struct jpeg_failure {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
};

static void on_jpeg_error(j_common_ptr info) { longjmp(((struct jpeg_failure*)info->err)->jump, 1); }

/* libjpeg reports a truncated file as a warning (the data ends: a fake end marker is inserted) and
 * fills the rest of the picture with grey; Pillow refuses such a file ("image file is truncated"),
 * so that warning ends the decode here too. Other warnings are ignored, as Pillow ignores them. */
static void on_jpeg_message(j_common_ptr info, int level) {
    if (level < 0 && (info->err->msg_code == JWRN_JPEG_EOF || info->err->msg_code == JWRN_HIT_MARKER))
        longjmp(((struct jpeg_failure*)info->err)->jump, 2);
}

#define MAX_PIXELS 400000000ull /* the Python decoder's limit (kidrr.images.decode.MAX_PIXELS) */
#define MAX_FILE_BYTES (1ull << 30) /* kidrr.images.decode.MAX_FILE_BYTES */
#define BATCH 16 /* photos decoded and encoded at a time */

/* 1 if s is valid UTF-8 (no overlongs, surrogates or code points past U+10FFFF), as Python decodes it. */
static int valid_utf8(const unsigned char* s) {
    while (*s) {
        unsigned c = *s, n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : 9;
        if (n == 9) return 0;
        unsigned long cp = n == 0 ? c : c & (0x3F >> n);
        for (unsigned i = 1; i <= n; ++i) {
            if ((s[i] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i] & 0x3F);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        s += n + 1;
    }
    return 1;
}

static unsigned read16(const unsigned char* p, int big) { return big ? (p[0] << 8) | p[1] : (p[1] << 8) | p[0]; }
static unsigned long read32(const unsigned char* p, int big) {
    return big ? ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | (p[2] << 8) | p[3]
               : ((unsigned long)p[3] << 24) | ((unsigned long)p[2] << 16) | (p[1] << 8) | p[0];
}

/* The EXIF orientation (1-8) in an APP1 marker, 1 when absent or malformed (every read bounds-checked). */
static int exif_orientation(const jpeg_saved_marker_ptr markers) {
    for (jpeg_saved_marker_ptr m = markers; m; m = m->next) {
        const unsigned char* d = m->data;
        size_t n = m->data_length;
        if (m->marker != JPEG_APP0 + 1 || n < 14 || memcmp(d, "Exif\0\0", 6) != 0) continue;
        const unsigned char* tiff = d + 6;
        size_t size = n - 6;
        int big = tiff[0] == 'M' && tiff[1] == 'M';
        if (!big && !(tiff[0] == 'I' && tiff[1] == 'I')) return 1;
        unsigned long ifd = read32(tiff + 4, big);
        if (ifd > size - 2) return 1;
        unsigned count = read16(tiff + ifd, big);
        for (unsigned i = 0; i < count; ++i) {
            unsigned long at = ifd + 2 + 12ul * i;
            if (at > size - 12) return 1;
            if (read16(tiff + at, big) == 0x0112 && read16(tiff + at + 2, big) == 3) {   /* Orientation, SHORT */
                unsigned v = read16(tiff + at + 8, big);
                return v >= 1 && v <= 8 ? (int)v : 1;
            }
        }
        return 1;
    }
    return 1;
}

/* rgb (h x w) turned upright for EXIF orientation o, as Pillow's ImageOps.exif_transpose; a new
 * buffer (the old one freed), or NULL when out of memory. */
static unsigned char* orient(unsigned char* rgb, size_t* height, size_t* width, int o) {
    if (o == 1) return rgb;
    const size_t h = *height, w = *width, swap = o >= 5;
    const size_t oh = swap ? w : h, ow = swap ? h : w;
    unsigned char* out = malloc(h * w * 3);
    if (!out) { free(rgb); return NULL; }
    for (size_t y = 0; y < oh; ++y)
        for (size_t x = 0; x < ow; ++x) {
            size_t sy, sx;
            switch (o) {
                case 2: sy = y; sx = w - 1 - x; break;            /* mirror left-right */
                case 3: sy = h - 1 - y; sx = w - 1 - x; break;    /* rotate 180 */
                case 4: sy = h - 1 - y; sx = x; break;            /* mirror top-bottom */
                case 5: sy = x; sx = y; break;                    /* transpose */
                case 6: sy = h - 1 - x; sx = y; break;            /* rotate 90 clockwise */
                case 7: sy = h - 1 - x; sx = w - 1 - y; break;    /* transverse */
                default: sy = x; sx = w - 1 - y; break;           /* 8: rotate 90 counter-clockwise */
            }
            memcpy(out + (y * ow + x) * 3, rgb + (sy * w + sx) * 3, 3);
        }
    free(rgb);
    *height = oh;
    *width = ow;
    return out;
}

/* Upright RGB8 pixels of a JPEG file (malloc'ed), or NULL with *why set. */
static unsigned char* decode_jpeg(const char* path, size_t* height, size_t* width, const char** why) {
    struct jpeg_decompress_struct info;
    struct jpeg_failure err;
    unsigned char* volatile rgb = NULL;
    struct stat st;
    *why = "not a decodable JPEG";
    /* Never a blocking open: a FIFO would wait for a writer forever. Checked on the descriptor. */
    const int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { *why = "cannot be opened"; return NULL; }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) { close(fd); *why = "not a regular file"; return NULL; }
    if (st.st_size == 0) { close(fd); *why = "empty (0 bytes)"; return NULL; }
    if ((unsigned long long)st.st_size > MAX_FILE_BYTES) { close(fd); *why = "over the 1 GiB file limit"; return NULL; }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    FILE* f = fdopen(fd, "rb");
    if (!f) { close(fd); *why = "cannot be opened"; return NULL; }
    info.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = on_jpeg_error;
    err.mgr.emit_message = on_jpeg_message;
    int failed = setjmp(err.jump);
    if (failed) {
        if (failed == 2) *why = "truncated (the JPEG data ends early); re-save or remove the file";
        jpeg_destroy_decompress(&info);
        fclose(f);
        free(rgb);
        return NULL;
    }
    jpeg_create_decompress(&info);
    jpeg_stdio_src(&info, f);
    jpeg_save_markers(&info, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&info, TRUE);
    if (info.jpeg_color_space == JCS_CMYK || info.jpeg_color_space == JCS_YCCK) {
        *why = "a CMYK JPEG (kidrr index, the Python tool, converts it to RGB; this example does not)";
        longjmp(err.jump, 1);
    }
    if ((unsigned long long)info.image_width * info.image_height > MAX_PIXELS) {
        *why = "over the 400-megapixel limit";
        longjmp(err.jump, 1);
    }
    const int orientation = exif_orientation(info.marker_list);
    info.out_color_space = JCS_RGB;
    jpeg_start_decompress(&info);
    *width = info.output_width;
    *height = info.output_height;
    rgb = malloc(*height * *width * 3);   /* at most 1.2 GB: the pixel limit bounds it */
    if (!rgb) longjmp(err.jump, 1);
    while (info.output_scanline < info.output_height) {
        JSAMPROW row = rgb + (size_t)info.output_scanline * *width * 3;
        jpeg_read_scanlines(&info, &row, 1);
    }
    jpeg_finish_decompress(&info);
    jpeg_destroy_decompress(&info);
    fclose(f);
    unsigned char* upright = orient(rgb, height, width, orientation);
    if (!upright) *why = "out of memory";
    return upright;
}

static int is_jpeg(const char* name) {
    const char* dot = strrchr(name, '.');
    return name[0] != '.' && dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"));
}

static int by_name(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

int main(int argc, char** argv) {
    const char* locals_dtype = "fp16";
    if (argc == 6 && !strcmp(argv[1], "--locals-dtype") && (!strcmp(argv[2], "fp16") || !strcmp(argv[2], "fp32"))) {
        locals_dtype = argv[2];
        argv += 2;
        argc -= 2;
    }
    if (argc != 4) {
        fprintf(stderr, "usage: %s [--locals-dtype fp16|fp32] BUNDLE IMAGE_DIR OUT_GALLERY_FOLDER\n", argv[0]);
        return 2;
    }
    kidrr_bundle* bundle = NULL;
    kidrr_images* images = NULL;
    kidrr_images** parts = NULL;
    char** names = NULL;
    const char** ids = NULL;
    unsigned char* pixels[BATCH] = {0};
    size_t heights[BATCH], widths[BATCH], strides[BATCH];
    size_t n = 0, kept = 0, cap = 0, n_parts = 0, in_batch = 0, n_names = 0;
    int rc = 2;
    DIR* dir = opendir(argv[2]);
    if (!dir) { fprintf(stderr, "error: cannot list %s\n", argv[2]); return 2; }
    for (struct dirent* e; (e = readdir(dir));) {
        if (!is_jpeg(e->d_name)) continue;
        if (!valid_utf8((const unsigned char*)e->d_name)) {   /* ids are UTF-8: skipped, as kidrr index does */
            fprintf(stderr, "skipped ");
            for (const unsigned char* c = (const unsigned char*)e->d_name; *c; ++c)
                fprintf(stderr, *c < 0x80 ? "%c" : "\\x%02x", *c);
            fprintf(stderr, ": the file name is not UTF-8, so it cannot be an id; rename the file\n");
            ++n;   /* counted as found, so the exit code says something was skipped */
            continue;
        }
        if (n_names == cap) {
            char** grown = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *names);
            if (!grown) { closedir(dir); fprintf(stderr, "out of memory\n"); goto done; }
            names = grown;
        }
        names[n_names++] = strdup(e->d_name);
        ++n;
    }
    closedir(dir);
    const size_t listed = n_names;
    if (listed == 0) { fprintf(stderr, "error: no usable .jpg/.jpeg files in %s; nothing written\n", argv[2]); goto done; }
    qsort(names, listed, sizeof *names, by_name);
    if (kidrr_open(argv[1], NULL, &bundle) != KIDRR_OK) { fprintf(stderr, "error: %s\n", kidrr_last_error()); goto done; }
    ids = calloc(listed, sizeof *ids);
    parts = calloc(listed / BATCH + 1, sizeof *parts);
    if (!ids || !parts) { fprintf(stderr, "out of memory\n"); goto done; }
    for (size_t i = 0; i < listed; ++i) {
        size_t len = strlen(argv[2]) + strlen(names[i]) + 2;
        char* path = malloc(len);
        if (!path) { fprintf(stderr, "out of memory\n"); goto done; }
        snprintf(path, len, "%s/%s", argv[2], names[i]);
        const char* why = NULL;
        pixels[in_batch] = decode_jpeg(path, &heights[in_batch], &widths[in_batch], &why);
        free(path);
        if (!pixels[in_batch]) fprintf(stderr, "skipped %s: %s\n", names[i], why);
        else {
            strides[in_batch] = 3 * widths[in_batch];
            ids[kept++] = names[i];
            ++in_batch;
        }
        if (in_batch == BATCH || (i + 1 == listed && in_batch > 0)) {   /* encode the batch, then free its pixels */
            const kidrr_status st = kidrr_encode_pixels(bundle, (const unsigned char* const*)pixels, heights, widths,
                                                        strides, in_batch, &parts[n_parts]);
            for (size_t j = 0; j < in_batch; ++j) { free(pixels[j]); pixels[j] = NULL; }
            in_batch = 0;
            if (st != KIDRR_OK) { fprintf(stderr, "error: %s\n", kidrr_last_error()); goto done; }
            ++n_parts;
        }
    }
    if (kept == 0) { fprintf(stderr, "error: none of the %zu files could be decoded; nothing written\n", n); goto done; }
    if (kidrr_images_concat((const kidrr_images* const*)parts, n_parts, &images) != KIDRR_OK ||
        kidrr_gallery_write_dtype(bundle, images, ids, kept, argv[3], locals_dtype) != KIDRR_OK) {
        fprintf(stderr, "error: %s\n", kidrr_last_error());
        goto done;
    }
    printf("%zu images -> %s (%zu skipped, %s locals)\n", kept, argv[3], n - kept, locals_dtype);
    rc = kept == n ? 0 : 1;
done:
    for (size_t j = 0; j < BATCH; ++j) free(pixels[j]);
    for (size_t i = 0; parts && i < n_parts; ++i) kidrr_images_free(parts[i]);
    for (size_t i = 0; i < n_names; ++i) free(names[i]);
    free(names); free(ids); free(parts);
    kidrr_images_free(images);
    kidrr_close(bundle);
    return rc;
}
