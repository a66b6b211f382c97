// Cache-blocked G = A B^T for the feature cost (the N x N x d bulk of the pass).
#pragma once

#include <cstdint>
#include <vector>

namespace topv {

// Scratch for one thread: packed panels of A and B. Reused across calls.
struct gemm_scratch {
    std::vector<float> a_pack;
    std::vector<float> b_pack;
};

// out[(i - i0) * n_b + j] = dot(a[i, :], b[j, :]) for i in [i0, i1), j in [0, n_b).
// a and b are row-major with n_embd columns. Float32 FMAs within blocks of 256
// along n_embd, the blocks added in double. The summation order depends only on
// n_embd (never on i0, i1 or the thread count), so every entry is reproducible.
void gram_rows(const float * a, int64_t i0, int64_t i1,
               const float * b, int64_t n_b, int64_t n_embd,
               double * out, gemm_scratch & scratch);

} // namespace topv
