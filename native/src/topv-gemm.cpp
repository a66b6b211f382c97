#include "topv-gemm.h"

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
#elif defined(__AVX__)
constexpr int VL = 8;
#else
constexpr int VL = 4;
#endif

constexpr int MR = 6;        // rows of A per micro-tile (6 x 2 accumulators fit 16 registers)
constexpr int NR = 2 * VL;   // columns of B per micro-tile
constexpr int64_t KC = 256;  // depth of one block: a KC x NR panel of B stays in L1

#ifdef TOPV_VECTOR_EXT
typedef float vfloat __attribute__((vector_size(VL * sizeof(float))));

inline vfloat load(const float * p) {
    vfloat v;
    std::memcpy(&v, p, sizeof(v));
    return v;
}
#endif

// acc (MR x NR, row-major) = sum_k a_pack[k][r] * b_pack[k][c]
inline void micro_kernel(int64_t kc, const float * a_pack, const float * b_pack, float * acc) {
#ifdef TOPV_VECTOR_EXT
    vfloat c0[MR] = {};
    vfloat c1[MR] = {};
    for (int64_t k = 0; k < kc; ++k) {
        const vfloat b0 = load(b_pack + k * NR);
        const vfloat b1 = load(b_pack + k * NR + VL);
        const float * a = a_pack + k * MR;
        for (int r = 0; r < MR; ++r) {
            const vfloat ar = vfloat{} + a[r];
            c0[r] += ar * b0;
            c1[r] += ar * b1;
        }
    }
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

// dst[k * width + r] = src[(row0 + r) * ld + k0 + k], zero past n_rows (pads tails).
void pack_panel(const float * src, int64_t ld, int64_t row0, int64_t n_rows, int width,
                int64_t k0, int64_t kc, float * dst) {
    for (int r = 0; r < width; ++r) {
        if (r < n_rows) {
            const float * s = src + (row0 + r) * ld + k0;
            for (int64_t k = 0; k < kc; ++k) {
                dst[k * width + r] = s[k];
            }
        } else {
            for (int64_t k = 0; k < kc; ++k) {
                dst[k * width + r] = 0.0f;
            }
        }
    }
}

} // namespace

void gram_rows(const float * a, int64_t i0, int64_t i1,
               const float * b, int64_t n_b, int64_t n_embd,
               double * out, gemm_scratch & scratch) {
    const int64_t m = i1 - i0;
    const int64_t n_panels_a = (m + MR - 1) / MR;
    scratch.a_pack.resize((size_t) (n_panels_a * MR * KC));
    scratch.b_pack.resize((size_t) (NR * KC));
    float acc[MR * NR];

    for (int64_t k0 = 0; k0 < n_embd; k0 += KC) {
        const int64_t kc = std::min(KC, n_embd - k0);
        for (int64_t p = 0; p < n_panels_a; ++p) {
            pack_panel(a, n_embd, i0 + p * MR, std::min<int64_t>(MR, m - p * MR), MR, k0, kc,
                       scratch.a_pack.data() + p * MR * KC);
        }
        for (int64_t j0 = 0; j0 < n_b; j0 += NR) {
            const int64_t nc = std::min<int64_t>(NR, n_b - j0);
            pack_panel(b, n_embd, j0, nc, NR, k0, kc, scratch.b_pack.data());
            for (int64_t p = 0; p < n_panels_a; ++p) {
                micro_kernel(kc, scratch.a_pack.data() + p * MR * KC, scratch.b_pack.data(), acc);
                const int64_t mr = std::min<int64_t>(MR, m - p * MR);
                for (int64_t r = 0; r < mr; ++r) {
                    double * o = out + (p * MR + r) * n_b + j0;
                    const float * s = acc + r * NR;
                    if (k0 == 0) {
                        for (int64_t c = 0; c < nc; ++c) o[c] = s[c];
                    } else {
                        for (int64_t c = 0; c < nc; ++c) o[c] += s[c];
                    }
                }
            }
        }
    }
}

} // namespace topv
