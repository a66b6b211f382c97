// topv.h - TopV visual-token pruning pass (plain C API, no dependencies).
//
// Scores the N visual tokens of one image (slice) with the source-relaxed
// entropic optimal transport of TopV (or a baseline) and selects K of them. The
// specification, with every decision and the evidence behind it, is docs/pass.md.
//
// Conventions (as in llama.h): parameters travel in an explicit struct that
// starts from topv_default_params(); functions return a status code
// (TOPV_STATUS_OK = 0) and never abort, throw or print.
#pragma once

#include <stddef.h>
#include <stdint.h>

#ifdef TOPV_SHARED
#    if defined(_WIN32) && !defined(__MINGW32__)
#        ifdef TOPV_BUILD
#            define TOPV_API __declspec(dllexport)
#        else
#            define TOPV_API __declspec(dllimport)
#        endif
#    else
#        define TOPV_API __attribute__((visibility("default")))
#    endif
#else
#    define TOPV_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

enum topv_status {
    TOPV_STATUS_OK             = 0,
    TOPV_STATUS_NULL_ARGUMENT  = 1, // a required pointer is NULL
    TOPV_STATUS_BAD_SHAPE      = 2, // n_tokens < 1 or n_embd < 1
    TOPV_STATUS_BAD_GRID       = 3, // grid size < 1, or a token's (x, y) outside it
    TOPV_STATUS_BAD_KEEP       = 4, // n_keep outside [1, n_tokens]
    TOPV_STATUS_NONFINITE      = 5, // NaN or Inf in the source or target features
    TOPV_STATUS_BAD_PARAM      = 6, // a parameter outside its documented range
    TOPV_STATUS_EPS_RANGE      = 7, // (alpha + beta + gamma) / eps >= 700: exp() would underflow
    TOPV_STATUS_OUT_OF_MEMORY  = 8,
    TOPV_STATUS_NUMERIC        = 9, // the transport diverged (non-finite scores)
    TOPV_STATUS_INTERNAL       = 10,
};

// Methods. The TopV ones solve the same transport problem and differ only in how
// a source token's importance is read out of the plan P (docs/pass.md, "Read-outs").
// Names (topv_method_name) are the ones the Python package and the command lines use.
enum topv_method {
    TOPV_METHOD_TOPV        = 0, // "topv": the share of a source's mass sent to its own target, P_ii / r_i
    TOPV_METHOD_UNIFORM     = 1, // "uniform": K tokens evenly spaced in raster order (baseline)
    TOPV_METHOD_NORM        = 2, // "norm": K tokens of largest source-feature L2 norm (baseline)
    TOPV_METHOD_TOPV_ROWSUM = 3, // "topv_rowsum": the mass a source sends, r_i = sum_j P_ij
    TOPV_METHOD_TOPV_COST   = 4, // "topv_cost": the total cost a source pays, sum_j P_ij C_ij
    TOPV_METHOD_TOPV_FCOST  = 5, // "topv_fcost": the feature cost a source pays per unit of mass, sum_j P_ij F_ij / r_i
    TOPV_METHOD_DIVPRUNE    = 6, // "divprune": greedy max-min cosine diversity of the source features (the default:
                                 // best on the validation splits of both trained models, docs/pass.md "Decision")
    TOPV_METHOD_UNIFORM2D   = 7, // "uniform2d": K tokens on an even 2-D lattice over the W x H grid (baseline)
    TOPV_METHOD_DISTINCT    = 8, // "distinct": 1 - max cosine similarity to the other source tokens (baseline)
    TOPV_METHOD_COUNT       = 9,
};

struct topv_params {
    int32_t method; // an enum topv_method, [0, TOPV_METHOD_COUNT) (an int so that any value from a caller can be checked)

    float alpha;   // weight of the feature cost F (>= 0)
    float beta;    // weight of the relative spatial cost P (>= 0)
    float gamma;   // weight of the central-distance cost E (>= 0)
    float sigma;   // spatial Gaussian width, as a fraction of max(W, H) (> 0)
    float eps;     // entropic regularisation (> 0, and (alpha + beta + gamma) / eps < 700)
    float tau;     // source-marginal relaxation (> 0; INFINITY = balanced transport)
    int32_t iters; // Sinkhorn iterations (>= 1)
    float recover; // fraction of K recovered at a regular stride from the pruned tokens, [0, 1]

    int32_t n_threads;        // worker threads; <= 0: all hardware threads
    size_t  max_scratch_bytes; // above this the N x N kernel is recomputed per pass instead of stored
};

TOPV_API struct topv_params topv_default_params(void);

// The name of a method ("topv", "uniform", ...; static storage), or NULL if unknown.
TOPV_API const char * topv_method_name(int32_t method);

// The method of a name (exact, case-sensitive), or -1 if name is NULL or unknown.
TOPV_API int32_t topv_method_from_name(const char * name);

// Which features a method reads: bit 0 (TOPV_READS_SOURCE) the source, bit 1 (TOPV_READS_TARGET) the
// target; 0 for uniform and uniform2d, -1 if the method is unknown. A caller that has the source without
// running the model (the embeddings, at layer 0) needs no probe for a method that does not read the target.
enum { TOPV_READS_SOURCE = 1, TOPV_READS_TARGET = 2 };
TOPV_API int32_t topv_method_reads(int32_t method);

// A short English sentence for a status code (static storage, never NULL).
TOPV_API const char * topv_status_string(int32_t status);

// TOPV_STATUS_OK, TOPV_STATUS_BAD_PARAM or TOPV_STATUS_EPS_RANGE: the checks
// topv_select makes of its parameters, for callers that validate flags early.
TOPV_API int32_t topv_check_params(struct topv_params params);

// K for a keep ratio: clamp(floor(ratio * n_tokens + 0.5), 1, n_tokens).
// Returns -1 if n_tokens < 1 or ratio is not in (0, 1].
TOPV_API int64_t topv_keep_count(int64_t n_tokens, double ratio);

// Select n_keep of n_tokens visual tokens.
//
//   source, target  n_tokens x n_embd float32, row-major (one token per row): the
//                   hidden states entering layer Li and the post-attention norm
//                   output of layer Li (docs/pass.md). uniform and uniform2d read
//                   neither (both may be NULL); norm, divprune and distinct read
//                   only the source (target may be NULL)
//   pos_x, pos_y    n_tokens grid coordinates (column, row) in [0, grid_w) x [0, grid_h)
//   kept            out: n_keep token indices, strictly ascending
//   scores          out, may be NULL: n_tokens importance scores (higher = kept first)
//
// Thread-safe; deterministic for any n_threads. Nothing is written to kept or
// scores unless the call returns TOPV_STATUS_OK.
TOPV_API int32_t topv_select(
        const float   * source,
        const float   * target,
        int64_t         n_tokens,
        int64_t         n_embd,
        const int32_t * pos_x,
        const int32_t * pos_y,
        int32_t         grid_w,
        int32_t         grid_h,
        int64_t         n_keep,
        struct topv_params params,
        int32_t       * kept,
        double        * scores);

#ifdef __cplusplus
}
#endif
