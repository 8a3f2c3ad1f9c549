/* kidrr_index [--locals-dtype fp16|fp32] BUNDLE IMAGE_DIR OUT
 *
 * Encodes the JPEG files of IMAGE_DIR (*.jpg, *.jpeg; not recursive; sorted by name) through the
 * bundle's preprocessing and backbone graphs and writes OUT, a new format-2 gallery folder that the
 * Python runtime (kidrr.gallery) and kidrr_search read; ids are the file names. Decoding: Debian's
 * libjpeg-turbo with its defaults (islow DCT, fancy upsampling), the pixels Pillow gives, turned
 * upright by the EXIF orientation as kidrr-index does (Pillow's exif_transpose). Skipped, with the
 * reason: undecodable files, CMYK/YCCK JPEGs (kidrr-index converts those), and images over the
 * runtime's pixel limit (docs/images.md), refused from the header before any pixel is decoded.
 * Locals are stored as fp16 by default, as kidrr-index and kidrr.gallery store them (half the disk
 * and page cache; rSum delta 0.0 on the synthetic test set, docs/gallery.md); --locals-dtype fp32
 * keeps them exact. Exit codes as kidrr-index: 0 all encoded, 1 some files skipped (named on
 * stderr), 2 error.
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jpeglib.h>

#include "kidrr.h"

struct jpeg_failure {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
};

static void on_jpeg_error(j_common_ptr info) { longjmp(((struct jpeg_failure*)info->err)->jump, 1); }

#define MAX_PIXELS 400000000ull /* the Python decoder's limit (kidrr.images.decode.MAX_PIXELS) */

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
    FILE* f = fopen(path, "rb");
    *why = "not a decodable JPEG";
    if (!f) { *why = "cannot be opened"; return NULL; }
    info.err = jpeg_std_error(&err.mgr);
    err.mgr.error_exit = on_jpeg_error;
    if (setjmp(err.jump)) {
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
        *why = "a CMYK JPEG (kidrr-index, the Python tool, converts it to RGB; this example does not)";
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
    char** names = NULL;
    const char** ids = NULL;
    unsigned char** pixels = NULL;
    size_t *heights = NULL, *widths = NULL, *strides = NULL, n = 0, kept = 0, cap = 0;
    int rc = 2;
    DIR* dir = opendir(argv[2]);
    if (!dir) { fprintf(stderr, "error: cannot list %s\n", argv[2]); return 2; }
    for (struct dirent* e; (e = readdir(dir));) {
        if (!is_jpeg(e->d_name)) continue;
        if (n == cap) {
            char** grown = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof *names);
            if (!grown) { closedir(dir); fprintf(stderr, "out of memory\n"); goto done; }
            names = grown;
        }
        names[n++] = strdup(e->d_name);
    }
    closedir(dir);
    if (n == 0) { fprintf(stderr, "error: no .jpg/.jpeg files in %s; nothing written\n", argv[2]); goto done; }
    qsort(names, n, sizeof *names, by_name);
    if (kidrr_open(argv[1], NULL, &bundle) != KIDRR_OK) { fprintf(stderr, "error: %s\n", kidrr_last_error()); goto done; }
    ids = calloc(n, sizeof *ids);
    pixels = calloc(n, sizeof *pixels);
    heights = calloc(n, sizeof *heights);
    widths = calloc(n, sizeof *widths);
    strides = calloc(n, sizeof *strides);
    if (!ids || !pixels || !heights || !widths || !strides) { fprintf(stderr, "out of memory\n"); goto done; }
    for (size_t i = 0; i < n; ++i) {
        size_t len = strlen(argv[2]) + strlen(names[i]) + 2;
        char* path = malloc(len);
        if (!path) { fprintf(stderr, "out of memory\n"); goto done; }
        snprintf(path, len, "%s/%s", argv[2], names[i]);
        const char* why = NULL;
        pixels[kept] = decode_jpeg(path, &heights[kept], &widths[kept], &why);
        free(path);
        if (!pixels[kept]) { fprintf(stderr, "skipped %s: %s\n", names[i], why); continue; }
        strides[kept] = 3 * widths[kept];
        ids[kept++] = names[i];
    }
    if (kept == 0) { fprintf(stderr, "error: none of the %zu files could be decoded; nothing written\n", n); goto done; }
    if (kidrr_encode_pixels(bundle, (const unsigned char* const*)pixels, heights, widths, strides, kept, &images) != KIDRR_OK ||
        kidrr_gallery_write_dtype(bundle, images, ids, kept, argv[3], locals_dtype) != KIDRR_OK) {
        fprintf(stderr, "error: %s\n", kidrr_last_error());
        goto done;
    }
    printf("%zu images -> %s (%zu skipped, %s locals)\n", kept, argv[3], n - kept, locals_dtype);
    rc = kept == n ? 0 : 1;
done:
    for (size_t i = 0; pixels && i < kept; ++i) free(pixels[i]);
    for (size_t i = 0; i < n; ++i) free(names[i]);
    free(names); free(ids); free(pixels); free(heights); free(widths); free(strides);
    kidrr_images_free(images);
    kidrr_close(bundle);
    return rc;
}
