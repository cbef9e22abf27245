// Single-thread throughput of ggml's own quantizer (ggml_quantize_chunk) on a raw f32 matrix,
// for side-by-side comparison with `quantfit quantize-raw --single-thread --repeat N`.
// Built against a local llama.cpp checkout by compare.sh; not part of quantfit or its CI.
//
// usage: quantize_speed INPUT.f32 COLS TYPE[,TYPE...] IMATRIX.f32|- REPEAT
#include "ggml.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float *read_floats(const char *path, long *count) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    *count = ftell(f) / 4;
    fseek(f, 0, SEEK_SET);
    float *v = malloc(*count * 4);
    if (fread(v, 4, *count, f) != (size_t)*count) { fprintf(stderr, "%s: short read\n", path); exit(2); }
    fclose(f);
    return v;
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: %s INPUT COLS TYPES IMATRIX|- REPEAT\n", argv[0]); return 2; }
    long n, n_im;
    float *x = read_floats(argv[1], &n);
    int cols = atoi(argv[2]);
    float *imatrix = strcmp(argv[4], "-") ? read_floats(argv[4], &n_im) : NULL;
    int repeat = atoi(argv[5]);
    long rows = n / cols;
    char *types = strdup(argv[3]);
    for (char *name = strtok(types, ","); name; name = strtok(NULL, ",")) {
        int type = -1;
        for (int t = 0; t < GGML_TYPE_COUNT; t++) {
            const char *tn = ggml_type_name(t);
            if (tn && !strcasecmp(tn, name)) type = t;
        }
        if (type < 0) { fprintf(stderr, "unknown type %s\n", name); return 2; }
        void *out = malloc(ggml_row_size(type, cols) * rows);
        ggml_quantize_init(type);
        double best = 1e30;
        for (int r = 0; r < repeat; r++) {
            double t0 = seconds_now();
            ggml_quantize_chunk(type, x, out, 0, rows, cols, imatrix);
            double dt = seconds_now() - t0;
            if (dt < best) best = dt;
        }
        printf("%s %.1f\n", name, n * 4 / 1e6 / best);
        free(out);
    }
    return 0;
}
