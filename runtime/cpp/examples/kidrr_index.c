/* kidrr_index BUNDLE IMAGE_DIR OUT
 *
 * Encodes the JPEG files of IMAGE_DIR (*.jpg, *.jpeg; not recursive; sorted by name) through the
 * bundle's preprocessing and backbone graphs and writes OUT, a new format-2 gallery folder that the
 * Python runtime (kidrr.gallery) and kidrr_search read; ids are the file names. Decoding: Debian's
 * libjpeg-turbo with its defaults (islow DCT, fancy upsampling), the pixels Pillow gives.
 * Exit codes as kidrr-index: 0 all encoded, 1 some files skipped (named on stderr), 2 error.
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

/* RGB8 pixels of a JPEG file (malloc'ed), or NULL. */
static unsigned char* decode_jpeg(const char* path, size_t* height, size_t* width) {
    struct jpeg_decompress_struct info;
    struct jpeg_failure err;
    unsigned char* volatile rgb = NULL;
    FILE* f = fopen(path, "rb");
    if (!f) return NULL;
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
    jpeg_read_header(&info, TRUE);
    info.out_color_space = JCS_RGB;
    jpeg_start_decompress(&info);
    *width = info.output_width;
    *height = info.output_height;
    rgb = malloc(*height * *width * 3);
    if (!rgb) longjmp(err.jump, 1);
    while (info.output_scanline < info.output_height) {
        JSAMPROW row = rgb + (size_t)info.output_scanline * *width * 3;
        jpeg_read_scanlines(&info, &row, 1);
    }
    jpeg_finish_decompress(&info);
    jpeg_destroy_decompress(&info);
    fclose(f);
    return rgb;
}

static int is_jpeg(const char* name) {
    const char* dot = strrchr(name, '.');
    return name[0] != '.' && dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"));
}

static int by_name(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

int main(int argc, char** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s BUNDLE IMAGE_DIR OUT_GALLERY_FOLDER\n", argv[0]);
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
        pixels[kept] = decode_jpeg(path, &heights[kept], &widths[kept]);
        free(path);
        if (!pixels[kept]) { fprintf(stderr, "skipped %s: not a decodable JPEG\n", names[i]); continue; }
        strides[kept] = 3 * widths[kept];
        ids[kept++] = names[i];
    }
    if (kept == 0) { fprintf(stderr, "error: none of the %zu files could be decoded; nothing written\n", n); goto done; }
    if (kidrr_encode_pixels(bundle, (const unsigned char* const*)pixels, heights, widths, strides, kept, &images) != KIDRR_OK ||
        kidrr_gallery_write(bundle, images, ids, kept, argv[3]) != KIDRR_OK) {
        fprintf(stderr, "error: %s\n", kidrr_last_error());
        goto done;
    }
    printf("%zu images -> %s (%zu skipped)\n", kept, argv[3], n - kept);
    rc = kept == n ? 0 : 1;
done:
    for (size_t i = 0; pixels && i < kept; ++i) free(pixels[i]);
    for (size_t i = 0; i < n; ++i) free(names[i]);
    free(names); free(ids); free(pixels); free(heights); free(widths); free(strides);
    kidrr_images_free(images);
    kidrr_close(bundle);
    return rc;
}
