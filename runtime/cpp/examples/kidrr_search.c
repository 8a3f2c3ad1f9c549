/* kidrr_search BUNDLE GALLERY "a dog runs on the grass" [-k K] [--shortlist S] [--repeat N]
 * kidrr_search BUNDLE GALLERY_FOLDER --like-id ID [-k K] [--repeat N]
 *
 * --like-id: the items most like a stored item (its stored global, never re-encoded; itself left out),
 * ranked by the globals' cosine; format-2 gallery folders only.
 *
 * Prints the top-k images of GALLERY (a format-2 gallery folder from kidrr.gallery, a .npz from the
 * Python runtime, or a .npy of features (n, R, F)) for the caption, best first, then the median latency of one query (tokenise + encode
 * the caption + score the gallery) over --repeat runs. Plain C: it uses nothing but kidrr.h.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "kidrr.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static int usage(const char* argv0) {
    fprintf(stderr, "usage: %s BUNDLE GALLERY CAPTION [-k K] [--shortlist S] [--repeat N] [--threads T]\n"
                    "       %s BUNDLE GALLERY_FOLDER --like-id ID [-k K] [--repeat N]\n"
                    "  GALLERY: a format-2 gallery folder, a .npz written by the Python runtime, or .npy features float32 (n, R, F)\n"
                    "  --shortlist S: two-stage search (globals shortlist of S, then full scores); 0 = exact\n", argv0, argv0);
    return 2;
}

int main(int argc, char** argv) {
    if (argc < 4) return usage(argv[0]);
    size_t k = 5, shortlist = 0;
    int repeat = 1, threads = 0, k_given = 0;
    const char* like_id = NULL; /* --like-id ID: search by a stored item instead of a caption */
    int first_option = 4;
    if (!strcmp(argv[3], "--like-id")) {
        if (argc < 5) return usage(argv[0]);
        like_id = argv[4];
        first_option = 5;
    }
    for (int i = first_option; i < argc; ++i) {
        if (i + 1 >= argc) return usage(argv[0]);
        if (!strcmp(argv[i], "-k")) { k = (size_t)strtoul(argv[++i], NULL, 10); k_given = 1; }
        else if (!strcmp(argv[i], "--shortlist")) shortlist = (size_t)strtoul(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--repeat")) repeat = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[++i]);
        else return usage(argv[0]);
    }
    if (k == 0 || repeat < 1 || (like_id && shortlist)) return usage(argv[0]);

    kidrr_options options = {NULL, threads, 0, 0};
    kidrr_bundle* bundle = NULL;
    kidrr_images* gallery = NULL;
    kidrr_gallery* folder = NULL; /* a format-2 gallery folder, searched in place (memory-mapped) */
    struct stat st;
    size_t count;
    kidrr_hit* hits = calloc(k, sizeof *hits);
    double* times = calloc((size_t)repeat, sizeof *times);
    size_t n_hits = 0;
    int rc = 1;
    if (!hits || !times) { fprintf(stderr, "out of memory\n"); goto done; }
    if (kidrr_open(argv[1], &options, &bundle) != KIDRR_OK) { fprintf(stderr, "error: %s\n", kidrr_last_error()); goto done; }
    if (stat(argv[2], &st) == 0 && S_ISDIR(st.st_mode)) {
        if (kidrr_gallery_open(bundle, argv[2], &folder) != KIDRR_OK) { fprintf(stderr, "error: %s\n", kidrr_last_error()); goto done; }
        count = kidrr_gallery_count(folder);
    } else if (like_id) {
        fprintf(stderr, "error: --like-id needs a format-2 gallery folder (kidrr.gallery), not %s\n", argv[2]);
        goto done;
    } else {
        if (kidrr_gallery_load(bundle, argv[2], &gallery) != KIDRR_OK) { fprintf(stderr, "error: %s\n", kidrr_last_error()); goto done; }
        count = kidrr_images_count(gallery);
    }
    /* The default top-5 shrinks to a smaller gallery; an explicit -k larger than it is an error. */
    if (!k_given && k > count) k = count;
    for (int r = 0; r < repeat; ++r) {
        double t0 = now_ms();
        kidrr_status st_search = like_id ? kidrr_gallery_search_like_id(folder, like_id, k, hits, &n_hits)
                               : folder ? kidrr_gallery_search(bundle, folder, argv[3], k, shortlist, hits, &n_hits)
                                        : kidrr_search(bundle, gallery, argv[3], k, shortlist, hits, &n_hits);
        if (st_search != KIDRR_OK) {
            fprintf(stderr, "error (%s): %s\n", kidrr_status_name(st_search), kidrr_last_error());
            goto done;
        }
        times[r] = now_ms() - t0;
    }
    qsort(times, (size_t)repeat, sizeof *times, cmp_double);
    if (like_id)
        printf("# %zu images, like item \"%s\", globals cosine\n", count, like_id);
    else
        printf("# %zu images, caption \"%s\", %s search\n", count, argv[3], shortlist ? "two-stage" : "exact");
    for (size_t t = 0; t < n_hits; ++t) {
        printf("%zu\timage %zu\tscore %.7f", t + 1, hits[t].image, hits[t].score);
        if (folder) {
            const char* id;
            size_t len;
            if (kidrr_gallery_id(folder, hits[t].image, &id, &len) != KIDRR_OK) { fprintf(stderr, "\nerror: %s\n", kidrr_last_error()); goto done; }
            printf("\tid %.*s", (int)len, id);
        }
        printf("\n");
    }
    printf("# latency_ms median %.3f over %d runs\n", (times[(repeat - 1) / 2] + times[repeat / 2]) / 2, repeat);
    rc = 0;
done:
    kidrr_images_free(gallery);
    kidrr_gallery_close(folder);
    kidrr_close(bundle);
    free(hits);
    free(times);
    return rc;
}
