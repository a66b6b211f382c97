/* C API tests: every argument check returns its status code (no abort), and
 * small problems give correct, deterministic answers. Built with sanitizers in CI. */
#include "topv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

#define EXPECT(cond)                                                        \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                     \
        }                                                                   \
    } while (0)

enum { W = 12, H = 9, N = W * H, D = 40 };

static float   src[N * D], tgt[N * D];
static int32_t xs[N], ys[N];

static void make_inputs(unsigned seed) {
    srand(seed);
    for (int i = 0; i < N * D; ++i) {
        src[i] = (float) rand() / RAND_MAX - 0.5f;
        tgt[i] = (float) rand() / RAND_MAX - 0.5f;
    }
    for (int i = 0; i < N; ++i) {
        xs[i] = i % W;
        ys[i] = i / W;
    }
}

static int32_t select_k(int64_t k, struct topv_params p, int32_t * kept, double * scores) {
    return topv_select(src, tgt, N, D, xs, ys, W, H, k, p, kept, scores);
}

static void test_argument_checks(void) {
    struct topv_params p = topv_default_params();
    p.method = TOPV_METHOD_TOPV; // a transport method: it reads (and checks) both source and target
    int32_t kept[N];
    double  scores[N];

    EXPECT(topv_select(NULL, tgt, N, D, xs, ys, W, H, 5, p, kept, scores) == TOPV_STATUS_NULL_ARGUMENT);
    EXPECT(topv_select(src, NULL, N, D, xs, ys, W, H, 5, p, kept, scores) == TOPV_STATUS_NULL_ARGUMENT);
    EXPECT(topv_select(src, tgt, N, D, NULL, ys, W, H, 5, p, kept, scores) == TOPV_STATUS_NULL_ARGUMENT);
    EXPECT(topv_select(src, tgt, N, D, xs, ys, W, H, 5, p, NULL, scores) == TOPV_STATUS_NULL_ARGUMENT);
    EXPECT(topv_select(src, tgt, 0, D, xs, ys, W, H, 1, p, kept, scores) == TOPV_STATUS_BAD_SHAPE);
    EXPECT(topv_select(src, tgt, N, 0, xs, ys, W, H, 1, p, kept, scores) == TOPV_STATUS_BAD_SHAPE);
    EXPECT(topv_select(src, tgt, N, D, xs, ys, 0, H, 1, p, kept, scores) == TOPV_STATUS_BAD_GRID);
    EXPECT(topv_select(src, tgt, N, D, xs, ys, W - 1, H, 1, p, kept, scores) == TOPV_STATUS_BAD_GRID);
    EXPECT(select_k(0, p, kept, scores) == TOPV_STATUS_BAD_KEEP);
    EXPECT(select_k(N + 1, p, kept, scores) == TOPV_STATUS_BAD_KEEP);

    struct topv_params q = p; q.eps = 0.0f;          EXPECT(select_k(5, q, kept, scores) == TOPV_STATUS_BAD_PARAM);
    q = p; q.sigma = -1.0f;                          EXPECT(select_k(5, q, kept, scores) == TOPV_STATUS_BAD_PARAM);
    q = p; q.alpha = NAN;                            EXPECT(select_k(5, q, kept, scores) == TOPV_STATUS_BAD_PARAM);
    q = p; q.iters = 0;                              EXPECT(select_k(5, q, kept, scores) == TOPV_STATUS_BAD_PARAM);
    q = p; q.recover = 1.5f;                         EXPECT(select_k(5, q, kept, scores) == TOPV_STATUS_BAD_PARAM);
    q = p; q.tau = 0.0f;                             EXPECT(select_k(5, q, kept, scores) == TOPV_STATUS_BAD_PARAM);
    q = p; q.method = TOPV_METHOD_COUNT;             EXPECT(select_k(5, q, kept, scores) == TOPV_STATUS_BAD_PARAM);
    q = p; q.method = -1;                            EXPECT(select_k(5, q, kept, scores) == TOPV_STATUS_BAD_PARAM);
    q = p; q.eps = 1e-3f;                            EXPECT(select_k(5, q, kept, scores) == TOPV_STATUS_EPS_RANGE);
    EXPECT(topv_check_params(q) == TOPV_STATUS_EPS_RANGE);
    q = p; q.tau = INFINITY;                         EXPECT(topv_check_params(q) == TOPV_STATUS_OK);

    src[17] = NAN;
    EXPECT(select_k(5, p, kept, scores) == TOPV_STATUS_NONFINITE);
    src[17] = 0.0f;
    tgt[3] = INFINITY;
    EXPECT(select_k(5, p, kept, scores) == TOPV_STATUS_NONFINITE);
    tgt[3] = 0.0f;

    for (int s = -1; s <= 12; ++s) {
        EXPECT(topv_status_string(s) != NULL && strlen(topv_status_string(s)) > 0);
    }
    EXPECT(topv_keep_count(576, 0.25) == 144);
    EXPECT(topv_keep_count(5, 0.5) == 3);   /* half rounds up */
    EXPECT(topv_keep_count(10, 1e-9) == 1);
    EXPECT(topv_keep_count(10, 0.0) == -1);
    EXPECT(topv_keep_count(10, 1.5) == -1);
    EXPECT(topv_keep_count(0, 0.5) == -1);
}

static int is_valid_selection(const int32_t * kept, int64_t k) {
    for (int64_t i = 0; i < k; ++i) {
        if (kept[i] < 0 || kept[i] >= N) return 0;
        if (i > 0 && kept[i] <= kept[i - 1]) return 0;
    }
    return 1;
}

static void test_method_names(void) {
    EXPECT(TOPV_METHOD_COUNT == 9);
    for (int32_t m = 0; m < TOPV_METHOD_COUNT; ++m) {
        const char * name = topv_method_name(m);
        EXPECT(name != NULL && topv_method_from_name(name) == m);
    }
    EXPECT(strcmp(topv_method_name(TOPV_METHOD_TOPV), "topv") == 0);
    EXPECT(strcmp(topv_method_name(TOPV_METHOD_UNIFORM2D), "uniform2d") == 0);
    EXPECT(topv_method_name(-1) == NULL && topv_method_name(TOPV_METHOD_COUNT) == NULL);
    EXPECT(topv_method_reads(TOPV_METHOD_TOPV) == (TOPV_READS_SOURCE | TOPV_READS_TARGET));
    EXPECT(topv_method_reads(TOPV_METHOD_DIVPRUNE) == TOPV_READS_SOURCE);
    EXPECT(topv_method_reads(TOPV_METHOD_UNIFORM) == 0 && topv_method_reads(TOPV_METHOD_UNIFORM2D) == 0);
    EXPECT(topv_method_reads(-1) == -1 && topv_method_reads(TOPV_METHOD_COUNT) == -1);
    EXPECT(topv_method_from_name(NULL) == -1 && topv_method_from_name("") == -1);
    EXPECT(topv_method_from_name("TopV") == -1 && topv_method_from_name("topv ") == -1);
}

static void test_selection(void) {
    struct topv_params p = topv_default_params();
    int32_t kept[N], kept2[N];
    double  scores[N], scores2[N];

    for (int method = 0; method < TOPV_METHOD_COUNT; ++method) {
        p.method = method;
        for (int64_t k = 1; k <= N; k += 13) {
            EXPECT(select_k(k, p, kept, scores) == TOPV_STATUS_OK);
            EXPECT(is_valid_selection(kept, k));
        }
        EXPECT(select_k(N, p, kept, scores) == TOPV_STATUS_OK);
        for (int i = 0; i < N; ++i) EXPECT(kept[i] == i);
    }

    /* the same answer for any thread count and with the kernel recomputed instead of stored */
    p = topv_default_params();
    p.n_threads = 1;
    EXPECT(select_k(27, p, kept, scores) == TOPV_STATUS_OK);
    p.n_threads = 3;
    p.max_scratch_bytes = 0;
    EXPECT(select_k(27, p, kept2, scores2) == TOPV_STATUS_OK);
    EXPECT(memcmp(kept, kept2, sizeof(int32_t) * 27) == 0);
    EXPECT(memcmp(scores, scores2, sizeof(double) * N) == 0);

    /* scores may be NULL */
    EXPECT(select_k(27, p, kept2, NULL) == TOPV_STATUS_OK);
    EXPECT(memcmp(kept, kept2, sizeof(int32_t) * 27) == 0);

    /* uniform and norm do not need the target (norm) or any feature (uniform) */
    p.method = TOPV_METHOD_UNIFORM;
    EXPECT(topv_select(NULL, NULL, N, D, xs, ys, W, H, 4, p, kept, NULL) == TOPV_STATUS_OK);
    EXPECT(kept[0] == 13 && kept[1] == 40 && kept[2] == 67 && kept[3] == 94);
    p.method = TOPV_METHOD_NORM;
    EXPECT(topv_select(src, NULL, N, D, xs, ys, W, H, 4, p, kept, NULL) == TOPV_STATUS_OK);

    /* 1 x 1 grid, one token, one dimension */
    p = topv_default_params();
    {
        const float s1 = 1.0f, t1 = 2.0f;
        const int32_t zero = 0;
        int32_t k1 = -1;
        double r1 = -1.0;
        /* one token sends all the mass (1) to its own target, at a (constant, so zero) feature cost */
        p.method = TOPV_METHOD_TOPV_FCOST;
        EXPECT(topv_select(&s1, &t1, 1, 1, &zero, &zero, 1, 1, 1, p, &k1, &r1) == TOPV_STATUS_OK);
        EXPECT(k1 == 0 && fabs(r1) < 1e-12);
        p.method = TOPV_METHOD_TOPV_ROWSUM;
        EXPECT(topv_select(&s1, &t1, 1, 1, &zero, &zero, 1, 1, 1, p, &k1, &r1) == TOPV_STATUS_OK);
        EXPECT(k1 == 0 && fabs(r1 - 1.0) < 1e-12);
        p.method = TOPV_METHOD_TOPV;
        EXPECT(topv_select(&s1, &t1, 1, 1, &zero, &zero, 1, 1, 1, p, &k1, &r1) == TOPV_STATUS_OK);
        EXPECT(k1 == 0 && fabs(r1 - 1.0) < 1e-12);
    }
}

/* more tokens than one row block (144): the kernel stored whole, for some row blocks only, or recomputed,
 * and any thread count, give the same bits for every method (DivPrune's lazy greedy included) */
enum { W2 = 30, H2 = 20, N2 = W2 * H2, D2 = 24 };

static void test_partial_storage(void) {
    static float s2[N2 * D2], t2[N2 * D2];
    static int32_t x2[N2], y2[N2], kept[N2], kept2[N2];
    static double scores[N2], scores2[N2];
    for (int i = 0; i < N2 * D2; ++i) {
        s2[i] = (float) rand() / RAND_MAX - 0.5f;
        t2[i] = s2[i] + 0.3f * ((float) rand() / RAND_MAX - 0.5f);
    }
    for (int i = 0; i < N2; ++i) {
        x2[i] = i % W2;
        y2[i] = i / W2;
    }
    const size_t block = (size_t) 144 * N2 * 8; /* a row block of float K' and float scaled F */
    const size_t budgets[] = {0, block, 2 * block + 5, (size_t) N2 * N2 * 4 - 1, SIZE_MAX};
    for (int method = 0; method < TOPV_METHOD_COUNT; ++method) {
        struct topv_params p = topv_default_params();
        p.method = method;
        p.n_threads = 1;
        EXPECT(topv_select(s2, t2, N2, D2, x2, y2, W2, H2, 150, p, kept, scores) == TOPV_STATUS_OK);
        for (size_t b = 0; b < sizeof(budgets) / sizeof(budgets[0]); ++b) {
            p.max_scratch_bytes = budgets[b];
            p.n_threads = 1 + (int32_t) (b % 3);
            EXPECT(topv_select(s2, t2, N2, D2, x2, y2, W2, H2, 150, p, kept2, scores2) == TOPV_STATUS_OK);
            EXPECT(memcmp(kept, kept2, sizeof(int32_t) * 150) == 0);
            EXPECT(memcmp(scores, scores2, sizeof(double) * N2) == 0);
        }
    }
}

int main(void) {
    make_inputs(1234);
    test_partial_storage();
    test_argument_checks();
    test_selection();
    test_method_names();
    if (failures) {
        fprintf(stderr, "%d failed\n", failures);
        return 1;
    }
    printf("topv C API: all checks passed\n");
    return 0;
}
