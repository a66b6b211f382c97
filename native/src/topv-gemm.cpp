#include "topv-gemm.h"

#include "topv-threads.h"

#include <algorithm>
#include <cstring>

// The micro-kernel is written with GCC/Clang vector extensions: plain
// element-wise arithmetic that the compiler maps to AVX-512, AVX2, SSE or NEON
// FMAs without intrinsics. Other compilers get the scalar loop below.
#if defined(__GNUC__) || defined(__clang__)
#    define TOPV_VECTOR_EXT 1
#endif

namespace topv {

namespace {

#if defined(__AVX512F__)
constexpr int VL = 16;
constexpr int MR = 12;       // 32 vector registers: 12 x 2 accumulators, 2 of B, 1 broadcast
#elif defined(__AVX__)
constexpr int VL = 8;
constexpr int MR = 6;        // 16 registers: 6 x 2 accumulators
#else
constexpr int VL = 4;
constexpr int MR = 6;
#endif

constexpr int NR = 2 * VL;   // columns of B per micro-tile
constexpr int64_t KC = 256;  // depth of one block: a KC x NR panel of B stays in L1. Part of the
                             // arithmetic (float32 sums within a block), so not tunable per machine.

#ifdef TOPV_VECTOR_EXT
typedef float vfloat __attribute__((vector_size(VL * sizeof(float))));

inline vfloat load(const float * p) {
    vfloat v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
#endif

// acc (MR x NR, row-major) = sum_k a_pack[k][r] * b_pack[k][c], k in order from 0
inline void micro_kernel(int64_t kc, const float * a_pack, const float * b_pack, float * acc) {
#ifdef TOPV_VECTOR_EXT
    vfloat c0[MR] = {};
    vfloat c1[MR] = {};
    for (int64_t k = 0; k < kc; ++k) {
        const vfloat b0 = load(b_pack + k * NR);
        const vfloat b1 = load(b_pack + k * NR + VL);
        const float * a = a_pack + k * MR;
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) {
            c0[r] += a[r] * b0; // a scalar operand is broadcast (an FMA with a broadcast load)
            c1[r] += a[r] * b1;
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
        std::memcpy(acc + r * NR, &c0[r], sizeof(vfloat));
        std::memcpy(acc + r * NR + VL, &c1[r], sizeof(vfloat));
    }
#else
    std::fill(acc, acc + MR * NR, 0.0f);
    for (int64_t k = 0; k < kc; ++k) {
        for (int r = 0; r < MR; ++r) {
            for (int c = 0; c < NR; ++c) {
                acc[r * NR + c] += a_pack[k * MR + r] * b_pack[k * NR + c];
            }
        }
    }
#endif
}

// dst[k * width + r] = src[(row0 + r) * ld + k0 + k] for k < kc, zero past n_rows (pads tails).
void pack_panel(const float * src, int64_t ld, int64_t row0, int64_t n_rows, int width,
                int64_t k0, int64_t kc, float * dst) {
    for (int r = 0; r < width; ++r) {
        if (r < n_rows) {
            const float * s = src + (row0 + r) * ld + k0;
            for (int64_t k = 0; k < kc; ++k) dst[k * width + r] = s[k];
        } else {
            for (int64_t k = 0; k < kc; ++k) dst[k * width + r] = 0.0f;
        }
    }
}

} // namespace

int64_t gemm_panel_width() { return NR; }

// Layout: panel q (rows q NR .. q NR + NR - 1 of b) at q * n_embd * NR, entry (k, c) at k * NR + c.
void pack_rows(const float * b, int64_t n, int64_t n_embd, int n_threads, packed_rows & out) {
    const int64_t n_panels = (n + NR - 1) / NR;
    out.n = n;
    out.n_embd = n_embd;
    out.data.resize((size_t) (n_panels * NR * n_embd));
    parallel_for(n_panels, n_threads, [&](int64_t q, int) {
        pack_panel(b, n_embd, q * NR, std::min<int64_t>(NR, n - q * NR), NR, 0, n_embd,
                   out.data.data() + q * NR * n_embd);
    });
}

void pack_append_row(const float * row, int64_t n_embd, packed_rows & out) {
    if (out.n == 0) out.n_embd = n_embd;
    const int64_t q = out.n / NR, c = out.n % NR;
    if (c == 0) out.data.resize((size_t) ((q + 1) * NR * n_embd), 0.0f);
    float * dst = out.data.data() + q * NR * n_embd + c;
    for (int64_t k = 0; k < n_embd; ++k) dst[k * NR] = row[k];
    ++out.n;
}

void pack_a(const float * a, int64_t i0, int64_t i1, int64_t n_embd, gemm_scratch & scratch) {
    const int64_t m = i1 - i0, d = n_embd;
    const int64_t n_panels_a = (m + MR - 1) / MR;
    const int64_t n_kb = (d + KC - 1) / KC;
    // panel p of depth block kb at (kb * n_panels_a + p) * MR * KC
    scratch.a_pack.resize((size_t) (n_kb * n_panels_a * MR * KC));
    scratch.m = m;
    for (int64_t kb = 0; kb < n_kb; ++kb) {
        const int64_t k0 = kb * KC, kc = std::min(KC, d - k0);
        for (int64_t p = 0; p < n_panels_a; ++p) {
            pack_panel(a, d, i0 + p * MR, std::min<int64_t>(MR, m - p * MR), MR, k0, kc,
                       scratch.a_pack.data() + (kb * n_panels_a + p) * MR * KC);
        }
    }
}

void gram_packed(const gemm_scratch & scratch, int64_t m, const packed_rows & b, int64_t j0, int64_t j1,
                 double * out, int64_t ld) {
    const int64_t d = b.n_embd;
    m = std::min(m, scratch.m);
    if (m <= 0 || j1 <= j0) return;
    const int64_t n_panels_a = (scratch.m + MR - 1) / MR, n_panels_used = (m + MR - 1) / MR;
    const int64_t n_kb = (d + KC - 1) / KC;
    float acc[MR * NR];
    // one column panel at a time, all depth blocks: the output strip (m x NR doubles) stays in
    // cache while it accumulates, and the panel of B is read from memory once per call
    for (int64_t q = j0 / NR; q * NR < j1; ++q) {
        const int64_t c_lo = std::max(j0, q * NR) - q * NR, c_hi = std::min(j1, q * NR + NR) - q * NR;
        const float * bq = b.data.data() + q * NR * d;
        for (int64_t kb = 0; kb < n_kb; ++kb) {
            const int64_t k0 = kb * KC, kc = std::min(KC, d - k0);
            for (int64_t p = 0; p < n_panels_used; ++p) {
                micro_kernel(kc, scratch.a_pack.data() + (kb * n_panels_a + p) * MR * KC, bq + k0 * NR, acc);
                const int64_t mr = std::min<int64_t>(MR, m - p * MR);
                for (int64_t r = 0; r < mr; ++r) {
                    double * o = out + (p * MR + r) * ld + (q * NR - j0);
                    const float * s = acc + r * NR;
                    if (kb == 0) {
                        for (int64_t c = c_lo; c < c_hi; ++c) o[c] = s[c];
                    } else {
                        for (int64_t c = c_lo; c < c_hi; ++c) o[c] += s[c];
                    }
                }
            }
        }
    }
}

void gram_block(const float * a, int64_t i0, int64_t i1, const packed_rows & b, int64_t j0, int64_t j1,
                double * out, int64_t ld, gemm_scratch & scratch) {
    if (i1 <= i0 || j1 <= j0) return;
    pack_a(a, i0, i1, b.n_embd, scratch);
    gram_packed(scratch, i1 - i0, b, j0, j1, out, ld);
}

} // namespace topv
