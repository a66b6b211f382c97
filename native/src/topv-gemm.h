// Cache-blocked G = A B^T for the feature cost and the cosines (the N x N x d bulk of the pass).
#pragma once

#include <cstdint>
#include <vector>

namespace topv {

// The column width of a packed panel of B (a multiple of the vector width).
int64_t gemm_panel_width();

// B (n rows of n_embd floats) packed once into panels of gemm_panel_width() rows stored
// k-major, zero-padded: shared read-only by every worker, so no task repacks B.
struct packed_rows {
    std::vector<float> data;
    int64_t n = 0;
    int64_t n_embd = 0;
};

// Packs all rows of b (row-major, n x n_embd), in parallel.
void pack_rows(const float * b, int64_t n, int64_t n_embd, int n_threads, packed_rows & out);

// Appends one row to a packed set (for sets that grow one row at a time).
void pack_append_row(const float * row, int64_t n_embd, packed_rows & out);

// Scratch for one thread: the packed rows of A. Reused across calls.
struct gemm_scratch {
    std::vector<float> a_pack;
    int64_t m = 0; // rows packed
};

// out[(i - i0) * ld + (j - j0)] = dot(a[i, :], b[j, :]) for i in [i0, i1), j in [j0, j1).
// a is row-major with b.n_embd columns. Float32 FMAs within blocks of 256 along n_embd, the
// blocks added in double in order. The arithmetic of an entry depends only on n_embd (never
// on i0, i1, j0, j1, the thread count, or which of the two rows is the A side), so every entry
// is reproducible and dot(x, y) has the same bits as dot(y, x).
void gram_block(const float * a, int64_t i0, int64_t i1, const packed_rows & b, int64_t j0, int64_t j1,
                double * out, int64_t ld, gemm_scratch & scratch);

// gram_block in two steps, for several products of the same rows of A: pack rows [i0, i1)
// of a, then out[r * ld + (j - j0)] for the first m packed rows (the same bits as gram_block).
void pack_a(const float * a, int64_t i0, int64_t i1, int64_t n_embd, gemm_scratch & scratch);
void gram_packed(const gemm_scratch & scratch, int64_t m, const packed_rows & b, int64_t j0, int64_t j1,
                 double * out, int64_t ld);

} // namespace topv
