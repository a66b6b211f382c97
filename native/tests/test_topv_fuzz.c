/* Randomised robustness test of topv_select: random shapes, grids, keep counts and
 * methods, every parameter at and beyond its limits, NaN/Inf rows, NULL, unaligned
 * and aliased buffers. Every call must return a status code (never crash: CI runs
 * this under ASan + UBSan), the status must be the one the arguments call for, and
 * a successful call must return a valid selection and finite scores. Seeded and
 * bounded (a fixed number of cases on small problems). */
#include "topv.h"

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define EXPECT(cond, ...)                                                         \
    do {                                                                          \
        if (!(cond)) {                                                            \
            fprintf(stderr, "%s:%d: case %d: expected %s: ", __FILE__, __LINE__, \
                    current_case, #cond);                                         \
            fprintf(stderr, __VA_ARGS__);                                         \
            fprintf(stderr, "\n");                                                \
            if (++failures > 20) exit(1);                                         \
        }                                                                         \
    } while (0)

static int current_case = 0;
static int n_ok = 0, n_by_method[TOPV_METHOD_COUNT];

/* xorshift64*: the same sequence on every platform (rand() is not) */
static uint64_t state = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void) {
    state ^= state >> 12;
    state ^= state << 25;
    state ^= state >> 27;
    return state * 2685821657736338717ull;
}
static int64_t below(int64_t n) { return (int64_t) (next_u64() % (uint64_t) n); }
static double  unit(void) { return (double) (next_u64() >> 11) / 9007199254740992.0; }
static int     chance(int percent) { return below(100) < percent; }

static float pick_float(const float * values, int n) { return values[below(n)]; }

/* a parameter value in its range, at its limit, or beyond it */
static void random_params(struct topv_params * p) {
    static const float weights[] = {0.0f, 0.0f, 0.5f, 1.0f, 2.0f, 1e-30f, -0.0f, 1e30f, -1e-30f, -1.0f, NAN, INFINITY};
    static const float positive[] = {0.1f, 0.25f, 1.0f, 1e-30f, FLT_MIN, 1e-45f, 1e30f, FLT_MAX, 0.0f, -0.0f, -1.0f, NAN, INFINITY};
    static const float taus[] = {1.0f, 0.1f, 10.0f, INFINITY, 1e-30f, FLT_MAX, 0.0f, -1.0f, NAN, -INFINITY};
    static const float recovers[] = {0.0f, 0.25f, 0.5f, 1.0f, 1e-30f, 0.99999994f, 1.0000001f, -1e-30f, -0.0f, NAN, INFINITY};
    static const int32_t iters[] = {1, 2, 5, 10, 0, -1, INT32_MIN};
    static const int32_t threads[] = {0, 1, 2, 3, -1, INT32_MIN, 64, INT32_MAX};
    static const size_t scratch[] = {(size_t) 256 << 20, 0, 1, 4096, SIZE_MAX};
    *p = topv_default_params();
    if (chance(80)) {
        p->method = (int32_t) below(TOPV_METHOD_COUNT);
    } else {
        static const int32_t bad[] = {-1, TOPV_METHOD_COUNT, TOPV_METHOD_COUNT + 1, INT32_MIN, INT32_MAX};
        p->method = bad[below(5)];
    }
    /* half the cases draw from the valid values only (each list starts with them) */
    const int valid = chance(50);
    if (chance(50)) p->alpha = pick_float(weights, valid ? 6 : 12);
    if (chance(50)) p->beta = pick_float(weights, valid ? 6 : 12);
    if (chance(50)) p->gamma = pick_float(weights, valid ? 6 : 12);
    if (chance(40)) p->sigma = pick_float(positive, valid ? 8 : 13);
    if (chance(40)) p->eps = pick_float(positive, valid ? 3 : 13);
    if (chance(40)) p->tau = pick_float(taus, valid ? 6 : 10);
    if (chance(30)) p->iters = iters[below(valid ? 4 : 7)];
    if (chance(40)) p->recover = pick_float(recovers, valid ? 6 : 11);
    p->n_threads = threads[below(8)];
    p->max_scratch_bytes = scratch[below(5)];
}

/* what topv_check_params must say, written out independently of the library */
static int32_t expected_param_status(const struct topv_params * p) {
    if (p->method < 0 || p->method >= TOPV_METHOD_COUNT) return TOPV_STATUS_BAD_PARAM;
    const float w[3] = {p->alpha, p->beta, p->gamma};
    for (int i = 0; i < 3; ++i) {
        if (!isfinite(w[i]) || w[i] < 0.0f) return TOPV_STATUS_BAD_PARAM;
    }
    if (!isfinite(p->sigma) || !(p->sigma > 0.0f) || !isfinite(p->eps) || !(p->eps > 0.0f)) return TOPV_STATUS_BAD_PARAM;
    if (isnan(p->tau) || !(p->tau > 0.0f) || p->iters < 1 || !(p->recover >= 0.0f && p->recover <= 1.0f)) {
        return TOPV_STATUS_BAD_PARAM;
    }
    if (((double) p->alpha + p->beta + p->gamma) / p->eps >= 700.0) return TOPV_STATUS_EPS_RANGE;
    return TOPV_STATUS_OK;
}

static int reads_source(int32_t m) { return m != TOPV_METHOD_UNIFORM && m != TOPV_METHOD_UNIFORM2D; }
static int reads_target(int32_t m) {
    return m == TOPV_METHOD_TOPV || m == TOPV_METHOD_TOPV_ROWSUM || m == TOPV_METHOD_TOPV_COST || m == TOPV_METHOD_TOPV_FCOST;
}

static void fill_features(float * x, int64_t n, int64_t d, int kind) {
    for (int64_t k = 0; k < n * d; ++k) {
        switch (kind) {
            case 0: x[k] = (float) (unit() * 2.0 - 1.0); break;
            case 1: x[k] = (float) ((unit() * 2.0 - 1.0) * 1e30); break;     /* huge but finite */
            case 2: x[k] = (float) ((unit() * 2.0 - 1.0) * 1e-40); break;    /* denormal */
            case 3: x[k] = 0.0f; break;                                      /* all zeros */
            default: x[k] = (float) (k % 3) - 1.0f; break;                   /* many exact ties */
        }
    }
}

static void one_case(void) {
    const int64_t n = 1 + below(chance(10) ? 400 : 60);
    const int64_t d = 1 + below(chance(10) ? 300 : 24);
    /* grid: full raster, a strip, tokens on part of a larger grid (repeats allowed), huge */
    int32_t w, h;
    const int grid_kind = (int) below(4);
    if (grid_kind == 0) {
        w = (int32_t) (1 + below(n));
        while (n % w) --w;
        h = (int32_t) (n / w);
    } else if (grid_kind == 1) {
        w = (int32_t) n;
        h = 1;
    } else if (grid_kind == 2) {
        w = (int32_t) (1 + below(30));
        h = (int32_t) (1 + below(30));
    } else {
        w = chance(50) ? INT32_MAX : (int32_t) (1 + below(1 << 20));
        h = chance(50) ? INT32_MAX : (int32_t) (1 + below(1 << 20));
    }

    /* one allocation per buffer, with an offset so that vector code sees unaligned starts */
    const int64_t off = below(4);
    float   * src_buf = malloc(sizeof(float) * (size_t) (n * d + 4));
    float   * tgt_buf = malloc(sizeof(float) * (size_t) (n * d + 4));
    int32_t * xy_buf  = malloc(sizeof(int32_t) * (size_t) (2 * n + 8));
    int32_t * kept    = malloc(sizeof(int32_t) * (size_t) (n + 1));
    double  * scores  = malloc(sizeof(double) * (size_t) (n + 1));
    if (!src_buf || !tgt_buf || !xy_buf || !kept || !scores) {
        fprintf(stderr, "out of memory in the test\n");
        exit(1);
    }
    float * src = src_buf + off;
    float * tgt = tgt_buf + (3 - off);
    int32_t * xs = xy_buf + off;
    int32_t * ys = xy_buf + off + n + 1;
    fill_features(src, n, d, chance(70) ? 0 : (int) below(5));
    fill_features(tgt, n, d, chance(70) ? 0 : (int) below(5));
    if (chance(15)) tgt = src;                 /* aliased: the same features as source and target */
    for (int64_t i = 0; i < n; ++i) {
        if (grid_kind <= 1) {
            xs[i] = (int32_t) (i % w);
            ys[i] = (int32_t) (i / w);
        } else {
            xs[i] = (int32_t) below(w);
            ys[i] = (int32_t) below(h);
        }
    }
    if (chance(10)) ys = xs;                   /* aliased coordinates (valid when they fit the grid) */

    int32_t bad_grid = 0;
    if (chance(5)) { xs[below(n)] = chance(50) ? -1 : w; bad_grid = 1; }
    if (chance(3)) { w = chance(50) ? 0 : -5; bad_grid = 1; }
    int nonfinite = 0;
    if (chance(8)) {
        const float bad[] = {NAN, INFINITY, -INFINITY};
        float * which = chance(50) ? src : tgt;
        which[below(n) * d + below(d)] = bad[below(3)];
        nonfinite = which == src ? 1 : 2;
        if (tgt == src) nonfinite = 3;
    }
    for (int64_t i = 0; i < n && !bad_grid; ++i) {
        if (xs[i] < 0 || xs[i] >= w || ys[i] < 0 || ys[i] >= h) bad_grid = 1;
    }

    int64_t n_keep = 1 + below(n);
    int bad_keep = 0;
    if (chance(5)) { n_keep = chance(50) ? 0 : (chance(50) ? n + 1 : INT64_MIN); bad_keep = 1; }
    if (chance(10) && !bad_keep) n_keep = n;

    struct topv_params p;
    random_params(&p);
    const int param_status = expected_param_status(&p);
    const int32_t status_check = topv_check_params(p);
    EXPECT(status_check == param_status, "topv_check_params %d, want %d", status_check, param_status);

    const float * s_arg = src, * t_arg = tgt;
    int null_arg = 0;
    /* a NULL feature pointer is an error only for a known method that reads it */
    const int known = p.method >= 0 && p.method < TOPV_METHOD_COUNT;
    if (chance(4)) { s_arg = NULL; null_arg = known && reads_source(p.method); }
    if (chance(4)) { t_arg = NULL; null_arg |= known && reads_target(p.method); }
    double * sc = chance(20) ? NULL : scores;

    for (int64_t i = 0; i < n + 1; ++i) { kept[i] = -7; scores[i] = -7.0; }
    const int32_t st = topv_select(s_arg, t_arg, n, d, xs, ys, w, h, n_keep, p, kept, sc);

    /* the status the arguments call for, in the documented order of the checks */
    int32_t want = TOPV_STATUS_OK;
    if (null_arg) want = TOPV_STATUS_NULL_ARGUMENT;
    else if (bad_grid) want = TOPV_STATUS_BAD_GRID;
    else if (bad_keep) want = TOPV_STATUS_BAD_KEEP;
    else if (param_status != TOPV_STATUS_OK) want = param_status;
    else if ((nonfinite & 1 && reads_source(p.method)) || (nonfinite & 2 && reads_target(p.method))) want = TOPV_STATUS_NONFINITE;

    if (want == TOPV_STATUS_OK) {
        /* valid inputs: OK, or NUMERIC where extreme parameters overflow the transport */
        EXPECT(st == TOPV_STATUS_OK || (st == TOPV_STATUS_NUMERIC && reads_target(p.method)),
               "status %d (%s), method %d n %lld d %lld grid %dx%d keep %lld", st, topv_status_string(st),
               p.method, (long long) n, (long long) d, w, h, (long long) n_keep);
    } else {
        EXPECT(st == want, "status %d (%s), want %d, method %d", st, topv_status_string(st), want, p.method);
    }
    if (st == TOPV_STATUS_OK) {
        n_ok++;
        n_by_method[p.method]++;
        for (int64_t k = 0; k < n_keep; ++k) {
            EXPECT(kept[k] >= 0 && kept[k] < n && (k == 0 || kept[k] > kept[k - 1]), "kept[%lld] = %d",
                   (long long) k, kept[k]);
        }
        EXPECT(kept[n_keep < n ? n_keep : n] == -7, "wrote past n_keep");
        if (sc) {
            for (int64_t i = 0; i < n; ++i) EXPECT(isfinite(scores[i]), "scores[%lld] = %g", (long long) i, scores[i]);
        }
        EXPECT(scores[n] == -7.0, "wrote past n_tokens");
        /* the same bits on one thread with the kernel recomputed instead of stored, and the other way */
        struct topv_params q = p;
        q.n_threads = 1 + (int32_t) below(3);
        q.max_scratch_bytes = p.max_scratch_bytes ? 0 : SIZE_MAX;
        int32_t * kept2 = malloc(sizeof(int32_t) * (size_t) n);
        double * scores2 = malloc(sizeof(double) * (size_t) n);
        if (!kept2 || !scores2) exit(1);
        EXPECT(topv_select(s_arg, t_arg, n, d, xs, ys, w, h, n_keep, q, kept2, scores2) == TOPV_STATUS_OK, "rerun");
        EXPECT(memcmp(kept, kept2, sizeof(int32_t) * (size_t) n_keep) == 0, "kept differs across threads/memory");
        if (sc) EXPECT(memcmp(scores, scores2, sizeof(double) * (size_t) n) == 0, "scores differ across threads/memory");
        free(kept2);
        free(scores2);
    } else {
        int untouched = 1;
        for (int64_t i = 0; i < n + 1; ++i) untouched &= kept[i] == -7 && scores[i] == -7.0;
        EXPECT(untouched, "outputs written on status %d", st);
    }
    free(src_buf);
    free(tgt_buf);
    free(xy_buf);
    free(kept);
    free(scores);
}

int main(int argc, char ** argv) {
    const int n_cases = argc > 1 ? atoi(argv[1]) : 4000;
    if (argc > 2) state = strtoull(argv[2], NULL, 0);
    for (current_case = 0; current_case < n_cases; ++current_case) {
        one_case();
    }
    /* size and pointer checks that random cases rarely reach */
    struct topv_params p = topv_default_params();
    const float f[4] = {0.0f, 1.0f, 2.0f, 3.0f};
    const int32_t z[4] = {0, 0, 0, 0};
    int32_t kept[4];
    EXPECT(topv_select(f, f, (int64_t) INT32_MAX + 1, 1, z, z, 1, 1, 1, p, kept, NULL) == TOPV_STATUS_BAD_SHAPE, "big n");
    EXPECT(topv_select(f, f, -1, 1, z, z, 1, 1, 1, p, kept, NULL) == TOPV_STATUS_BAD_SHAPE, "negative n");
    EXPECT(topv_select(f, f, 4, 0, z, z, 1, 1, 1, p, kept, NULL) == TOPV_STATUS_BAD_SHAPE, "d = 0");
    EXPECT(topv_select(f, f, 4, 1, NULL, z, 1, 1, 1, p, kept, NULL) == TOPV_STATUS_NULL_ARGUMENT, "pos_x");
    EXPECT(topv_select(f, f, 4, 1, z, z, 1, 1, 1, p, NULL, NULL) == TOPV_STATUS_NULL_ARGUMENT, "kept");
    if (failures) {
        fprintf(stderr, "%d failed\n", failures);
        return 1;
    }
    /* the cases must reach every method's computation, not only the argument checks */
    for (int m = 0; m < TOPV_METHOD_COUNT; ++m) {
        EXPECT(n_by_method[m] >= n_cases / 100, "method %d succeeded only %d times", m, n_by_method[m]);
    }
    if (failures) {
        fprintf(stderr, "%d failed\n", failures);
        return 1;
    }
    printf("topv fuzz: %d random cases (%d succeeded), all checks passed\n", n_cases, n_ok);
    return 0;
}
