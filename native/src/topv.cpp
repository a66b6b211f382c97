// The TopV pass and its baselines: the specification and decisions are docs/pass.md.
#include "topv.h"

#include "topv-gemm.h"
#include "topv-threads.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <new>
#include <numeric>
#include <thread>
#include <vector>

namespace {

constexpr int64_t ROW_BLOCK  = 144;   // rows per task: fixed (results never depend on threads), large
                                      // enough to amortise packing B in the Gram kernel
constexpr double  EXP_LIMIT  = 700.0; // exp(-700) ~ 1e-304 is still a normal double
constexpr double  RMS_EPS    = 1e-6;
constexpr double  F_RANGE_MIN = 1e-4; // a smaller spread of F is rounding noise: treat F as constant

struct inputs {
    const float   * source;
    const float   * target;
    int64_t         n;
    int64_t         d;
    const int32_t * x;
    const int32_t * y;
    int32_t         w;
    int32_t         h;
    int64_t         n_keep;
    topv_params     p;
    int             n_threads;
};

// How a TopV method reads a source's importance out of the plan P = diag(u) K diag(v).
enum class readout { rowsum, cost, fcost, self };

struct method_info {
    const char * name;
    bool         source; // reads the source features
    bool         target; // reads the target features (the transport methods)
    readout      how;    // for the transport methods
};

// Indexed by enum topv_method: the one place where the names live.
constexpr method_info METHOD_TABLE[TOPV_METHOD_COUNT] = {
    {"topv",        true,  true,  readout::self},
    {"uniform",     false, false, readout::rowsum},
    {"norm",        true,  false, readout::rowsum},
    {"topv_rowsum", true,  true,  readout::rowsum},
    {"topv_cost",   true,  true,  readout::cost},
    {"topv_fcost",  true,  true,  readout::fcost},
    {"divprune",    true,  false, readout::rowsum},
    {"uniform2d",   false, false, readout::rowsum},
    {"distinct",    true,  false, readout::rowsum},
};

bool known_method(int32_t m) { return m >= 0 && m < TOPV_METHOD_COUNT; }

int32_t check_params(const topv_params & p) {
    if (!known_method(p.method)) {
        return TOPV_STATUS_BAD_PARAM;
    }
    const auto nonneg = [](float v) { return std::isfinite(v) && v >= 0.0f; };
    const auto pos    = [](float v) { return std::isfinite(v) && v > 0.0f; };
    if (!nonneg(p.alpha) || !nonneg(p.beta) || !nonneg(p.gamma) || !pos(p.sigma) || !pos(p.eps)) {
        return TOPV_STATUS_BAD_PARAM;
    }
    if (std::isnan(p.tau) || p.tau <= 0.0f || p.iters < 1 || !(p.recover >= 0.0f && p.recover <= 1.0f)) {
        return TOPV_STATUS_BAD_PARAM;
    }
    // C = alpha F + beta P + gamma E with F, E in [0, 1] and P in [0, 1): bounded by the weights.
    if (((double) p.alpha + p.beta + p.gamma) / p.eps >= EXP_LIMIT) {
        return TOPV_STATUS_EPS_RANGE;
    }
    return TOPV_STATUS_OK;
}

// exp(x) for x in [-708, 0], which the eps guard ensures for -C / eps. Branch-free
// and inlined (libm's exp was most of the pass's time at large N), the same bits
// on every platform: Cody-Waite reduction x = n ln2 + r with |r| <= ln2 / 2, a
// degree-13 Taylor polynomial (truncation error < 1e-17), then the exponent bits.
inline double exp_nonpositive(double x) {
    constexpr double log2e  = 1.4426950408889634;
    constexpr double ln2_hi = 6.93147180369123816490e-01;
    constexpr double ln2_lo = 1.90821492927058770002e-10;
    constexpr double round  = 6755399441055744.0; // 1.5 * 2^52: adding it rounds to an integer
    const double n = (x * log2e + round) - round;
    const double r = (x - n * ln2_hi) - n * ln2_lo;
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    const uint64_t bits = (uint64_t) ((int64_t) n + 1023) << 52;
    double scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

// Dot products with 8 independent lanes added in a fixed order: vectorisable
// without -ffast-math, and the same result on every run.
template <typename TA, typename TB>
double dot(const TA * a, const TB * b, int64_t n) {
    double lanes[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
        for (int l = 0; l < 8; ++l) lanes[l] += (double) a[k + l] * (double) b[k + l];
    }
    double s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for (; k < n; ++k) s += (double) a[k] * (double) b[k];
    return s;
}

// Sum of squares of each row, in double. A NaN or Inf anywhere in a row makes
// its sum non-finite (no finite float squares to Inf in double), so this is
// also the input check. Returns false if any row is non-finite.
bool row_sum_squares(const float * x, int64_t n, int64_t d, int n_threads, std::vector<double> & out) {
    out.resize((size_t) n);
    topv::parallel_for((n + ROW_BLOCK - 1) / ROW_BLOCK, n_threads, [&](int64_t b, int) {
        for (int64_t i = b * ROW_BLOCK; i < std::min(n, (b + 1) * ROW_BLOCK); ++i) {
            out[(size_t) i] = dot(x + i * d, x + i * d, d);
        }
    });
    for (double v : out) {
        if (!std::isfinite(v)) return false;
    }
    return true;
}

// Indices of the `count` largest scores, ties to the lower index, in that order.
std::vector<int32_t> top_indices(const std::vector<double> & scores, int64_t count) {
    std::vector<int32_t> order(scores.size());
    std::iota(order.begin(), order.end(), 0);
    const auto better = [&](int32_t a, int32_t b) {
        return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
    };
    std::partial_sort(order.begin(), order.begin() + count, order.end(), better);
    order.resize((size_t) count);
    return order;
}

// Step 7: the K - R best, plus R recovered at a regular stride from the rest.
std::vector<int32_t> select_with_recovery(const std::vector<double> & r, int64_t n_keep, double recover) {
    const int64_t n = (int64_t) r.size();
    const int64_t n_recover = (int64_t) std::floor(recover * (double) n_keep);
    std::vector<int32_t> kept = top_indices(r, n_keep - n_recover);
    if (n_recover > 0) {
        std::vector<char> taken((size_t) n, 0);
        for (int32_t i : kept) taken[i] = 1;
        std::vector<int32_t> rest;
        rest.reserve((size_t) (n - (int64_t) kept.size()));
        for (int32_t i = 0; i < n; ++i) {
            if (!taken[i]) rest.push_back(i);
        }
        const int64_t m = (int64_t) rest.size();
        for (int64_t k = 0; k < n_recover; ++k) {
            kept.push_back(rest[(size_t) (((2 * k + 1) * m) / (2 * n_recover))]);
        }
    }
    std::sort(kept.begin(), kept.end());
    return kept;
}

// The transport problem of docs/pass.md steps 1-6. The N x N kernel (and, for
// the read-outs that need it, the scaled feature cost as float32) is stored for
// as many leading row blocks as fit in max_scratch_bytes (all of them for N up to
// 8192 at the default 256 MiB), and the other blocks are recomputed on every pass
// over them (iters + 2 passes): scratch is that budget plus O(N d + N * ROW_BLOCK * threads).
//
// The central cost is constant along a row, so K = diag(e) K' with e_i = exp(-gamma E_i / eps)
// kept in double and K' = exp(-(alpha F + beta P) / eps) stored: the row factor cancels
// exactly where it should (the balanced case, P_ii / r_i) whatever K' is rounded to.
// KT is K's storage type: float wherever every entry of K' is a normal float
// ((alpha + beta) / eps <= KERNEL_F32_LIMIT: half the memory and half the traffic of the
// Sinkhorn passes, which read it 2 * iters times), else double. With float the feature cost
// F is rounded to float as well, before its min-max scaling (an error far below the float32
// Gram product's). Stored and recomputed rows round the same doubles: the same bits.
constexpr double KERNEL_F32_LIMIT = 80.0; // exp(-80) = 1.8e-35 > FLT_MIN

template <typename KT>
class transport {
public:
    transport(const inputs & in, const std::vector<double> & source_sq, const std::vector<double> & target_sq,
              readout how)
        : in_(in), n_(in.n), n_blocks_((in.n + ROW_BLOCK - 1) / ROW_BLOCK), how_(how),
          needs_f_(how == readout::cost || how == readout::fcost) {
        row_stats(source_sq, ps_, ia_);
        row_stats(target_sq, pt_, ib_);
        spatial_terms();
        topv::pack_rows(in.target, n_, in.d, in.n_threads, packed_target_);
        gemm_.resize((size_t) in.n_threads);
        gram_.resize((size_t) in.n_threads);
        const double entry = sizeof(KT) + (needs_f_ ? sizeof(float) : 0);
        // whole blocks, so that a block is either stored or recomputed (the same bits either way)
        const double block_bytes = (double) ROW_BLOCK * (double) n_ * entry;
        n_stored_ = std::min<int64_t>(n_blocks_, (int64_t) std::floor((double) in.p.max_scratch_bytes / block_bytes));
        if ((double) n_ * (double) n_ * entry <= (double) in.p.max_scratch_bytes) n_stored_ = n_blocks_;
        const int64_t stored_rows = std::min(n_, n_stored_ * ROW_BLOCK);
        kernel_.resize((size_t) (stored_rows * n_));
        if (needs_f_) f_scaled_.resize((size_t) (stored_rows * n_));
        rows_.resize((size_t) in.n_threads);
        f_rows_.resize((size_t) in.n_threads);
        work_.resize((size_t) in.n_threads);
        feature_range();
    }

    // The importance read out of the plan P = diag(u) K diag(v) after `iters`
    // Sinkhorn iterations, with r_i = u_i (K v)_i the mass source i sends.
    std::vector<double> importance() {
        const topv_params & p = in_.p;
        const double marginal = 1.0 / (double) n_;
        const double lam = std::isinf(p.tau) ? 1.0 : (double) p.tau / ((double) p.tau + (double) p.eps);
        std::vector<double> u((size_t) n_), v((size_t) n_, 1.0);
        for (int it = 0; it < p.iters; ++it) {
            // u_i needs only row i of K v, so one sweep gives K v, u and K^T u
            const std::vector<double> ktu = sweep(v, [&](int64_t i, double kv_i) {
                u[i] = lam == 1.0 ? marginal / kv_i : std::pow(marginal / kv_i, lam);
                return u[i];
            });
            for (int64_t j = 0; j < n_; ++j) {
                v[j] = marginal / ktu[j];
            }
        }
        std::vector<double> out((size_t) n_);
        const double alpha = p.alpha, beta = p.beta, gamma = p.gamma;
        for_each_block_f([&](int64_t b, const KT * rows, const float * f_rows, int worker) {
            std::vector<double> & w = work_[(size_t) worker];
            w.resize((size_t) (2 * n_));
            double * pv = w.data(), * c = w.data() + n_;
            for (int64_t r = 0; r < block_rows(b); ++r) {
                const int64_t i = b * ROW_BLOCK + r;
                const KT * row = rows + r * n_; // K' (row i of K over e_i)
                const double kv_i = dot(row, v.data(), n_);
                switch (how_) {
                    case readout::rowsum:
                        out[i] = u[i] * (row_factor_[i] * kv_i);
                        break;
                    case readout::self: // P_ii / r_i = K_ii v_i / (K v)_i: u_i and e_i cancel
                        out[i] = (double) row[i] * v[i] / kv_i;
                        break;
                    case readout::fcost: { // sum_j P_ij F_ij / r_i: u_i and e_i cancel
                        const float * f = f_rows + r * n_;
                        for (int64_t j = 0; j < n_; ++j) { pv[j] = (double) row[j] * v[j]; c[j] = (double) f[j]; }
                        out[i] = dot(pv, c, n_) / kv_i;
                        break;
                    }
                    case readout::cost: { // sum_j P_ij C_ij
                        const float * f = f_rows + r * n_;
                        const double row_cost = gamma * central_[i];
                        for (int64_t j = 0; j < n_; ++j) {
                            const int32_t dx = std::abs(in_.x[i] - in_.x[j]), dy = std::abs(in_.y[i] - in_.y[j]);
                            pv[j] = (double) row[j] * v[j];
                            c[j] = alpha * (double) f[j] + beta * spatial(dx, dy) + row_cost;
                        }
                        out[i] = u[i] * (row_factor_[i] * dot(pv, c, n_));
                        break;
                    }
                }
            }
        });
        return out;
    }

private:
    // sum(x^2) per row -> squared norm after RMS normalisation / d, and 1 / rms.
    void row_stats(const std::vector<double> & sum_sq, std::vector<double> & sq, std::vector<double> & inv_rms) const {
        sq.resize((size_t) n_);
        inv_rms.resize((size_t) n_);
        for (int64_t i = 0; i < n_; ++i) {
            const double ms = sum_sq[(size_t) i] / (double) in_.d;
            sq[i] = ms / (ms + RMS_EPS);
            inv_rms[i] = 1.0 / std::sqrt(ms + RMS_EPS);
        }
    }

    // P for a grid offset (|dx|, |dy|): from the table, or computed for grids too large to tabulate.
    double spatial(int32_t dx, int32_t dy) const {
        if (!spatial_.empty()) return spatial_[(size_t) dy * in_.w + dx];
        const double d2 = (double) dx * dx + (double) dy * dy;
        return 1.0 - std::exp(-d2 / two_sigma2_);
    }

    void spatial_terms() {
        const double sigma_px = (double) in_.p.sigma * (double) std::max(in_.w, in_.h);
        two_sigma2_ = 2.0 * sigma_px * sigma_px;
        // P depends on (|dx|, |dy|) only: a W x H table instead of N^2 exponentials (up to 8 MiB;
        // a token grid is rarely larger, and then each pair computes its own).
        if ((double) in_.w * (double) in_.h <= (double) (1 << 20)) {
            spatial_.resize((size_t) in_.w * in_.h);
            for (int32_t dy = 0; dy < in_.h; ++dy) {
                for (int32_t dx = 0; dx < in_.w; ++dx) {
                    const double d2 = (double) dx * dx + (double) dy * dy;
                    spatial_[(size_t) dy * in_.w + dx] = 1.0 - std::exp(-d2 / two_sigma2_);
                }
            }
        }
        const double cx = (in_.w - 1) / 2.0, cy = (in_.h - 1) / 2.0;
        const double norm = std::sqrt(cx * cx + cy * cy);
        central_.resize((size_t) n_);
        for (int64_t i = 0; i < n_; ++i) {
            const double ddx = in_.x[i] - cx, ddy = in_.y[i] - cy;
            central_[i] = norm > 0.0 ? std::sqrt(ddx * ddx + ddy * ddy) / norm : 0.0;
        }
        row_factor_.resize((size_t) n_);
        for (int64_t i = 0; i < n_; ++i) {
            row_factor_[i] = exp_nonpositive(-((double) in_.p.gamma * central_[i]) / (double) in_.p.eps);
        }
    }

    int64_t block_rows(int64_t b) const { return std::min(ROW_BLOCK, n_ - b * ROW_BLOCK); }
    bool stored(int64_t b) const { return b < n_stored_; }

    // F_ij = ||s_i / rms_i - t_j / rms_j||^2 / d, expanded around the Gram matrix S T^T.
    void feature_cost(int64_t b, int worker, KT * dst) {
        const int64_t i0 = b * ROW_BLOCK, rows = block_rows(b);
        std::vector<double> & g = gram_[(size_t) worker];
        g.resize((size_t) (ROW_BLOCK * n_));
        topv::gram_block(in_.source, i0, i0 + rows, packed_target_, 0, n_, g.data(), n_, gemm_[(size_t) worker]);
        const double two_over_d = 2.0 / (double) in_.d;
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = i0 + r;
            const double scale = two_over_d * ia_[i];
            for (int64_t j = 0; j < n_; ++j) {
                const double f = ps_[i] + pt_[j] - scale * ib_[j] * g[(size_t) (r * n_ + j)];
                dst[r * n_ + j] = (KT) (f > 0.0 ? f : 0.0);
            }
        }
    }

    // In place: F -> K' = exp(-(alpha F_scaled + beta P) / eps), one vectorisable loop per
    // row (the table lookup is a gather; the exponential is inlined).
    void feature_to_kernel(int64_t b, KT * rows) const {
        const topv_params & p = in_.p;
        const double range = f_max_ - f_min_;
        const double inv_range = range >= F_RANGE_MIN ? 1.0 / range : 0.0;
        const double alpha = p.alpha, beta = p.beta, eps = p.eps, f_min = f_min_;
        const int32_t * xs = in_.x, * ys = in_.y;
        const int64_t i0 = b * ROW_BLOCK, w = in_.w;
        for (int64_t r = 0; r < block_rows(b); ++r) {
            const int64_t i = i0 + r;
            const int32_t xi = xs[i], yi = ys[i];
            KT * row = rows + r * n_;
            if (!spatial_.empty()) {
                const double * table = spatial_.data();
                for (int64_t j = 0; j < n_; ++j) {
                    const int32_t dx = std::abs(xi - xs[j]), dy = std::abs(yi - ys[j]);
                    const double c = alpha * ((double) row[j] - f_min) * inv_range
                                   + beta * table[(int64_t) dy * w + dx];
                    row[j] = (KT) exp_nonpositive(-c / eps);
                }
            } else {
                for (int64_t j = 0; j < n_; ++j) {
                    const int32_t dx = std::abs(xi - xs[j]), dy = std::abs(yi - ys[j]);
                    const double c = alpha * ((double) row[j] - f_min) * inv_range + beta * spatial(dx, dy);
                    row[j] = (KT) exp_nonpositive(-c / eps);
                }
            }
        }
    }

    void feature_range() {
        std::vector<double> lo((size_t) n_blocks_), hi((size_t) n_blocks_);
        topv::parallel_for(n_blocks_, in_.n_threads, [&](int64_t b, int worker) {
            KT * dst = stored(b) ? &kernel_[(size_t) (b * ROW_BLOCK * n_)] : scratch_rows(worker);
            feature_cost(b, worker, dst);
            const auto mm = std::minmax_element(dst, dst + block_rows(b) * n_);
            lo[b] = (double) *mm.first;
            hi[b] = (double) *mm.second;
        });
        f_min_ = *std::min_element(lo.begin(), lo.end());
        f_max_ = *std::max_element(hi.begin(), hi.end());
        if (n_stored_ > 0) {
            topv::parallel_for(n_stored_, in_.n_threads, [&](int64_t b, int) {
                if (needs_f_) scale_features(b, &kernel_[(size_t) (b * ROW_BLOCK * n_)], &f_scaled_[(size_t) (b * ROW_BLOCK * n_)]);
                feature_to_kernel(b, &kernel_[(size_t) (b * ROW_BLOCK * n_)]);
            });
        }
    }

    // The min-max scaled feature cost of block b as float32 (for the read-outs only:
    // the same bits whether stored or recomputed).
    void scale_features(int64_t b, const KT * f, float * out) const {
        const double range = f_max_ - f_min_;
        const double inv_range = range >= F_RANGE_MIN ? 1.0 / range : 0.0;
        for (int64_t k = 0; k < block_rows(b) * n_; ++k) {
            out[k] = (float) (((double) f[k] - f_min_) * inv_range);
        }
    }

    // Calls fn(b, K rows, scaled F rows or NULL, worker) for every block, in parallel.
    template <typename Fn>
    void for_each_block_f(Fn && fn) {
        topv::parallel_for(n_blocks_, in_.n_threads, [&](int64_t b, int worker) {
            if (stored(b)) {
                fn(b, (const KT *) &kernel_[(size_t) (b * ROW_BLOCK * n_)],
                   needs_f_ ? (const float *) &f_scaled_[(size_t) (b * ROW_BLOCK * n_)] : nullptr, worker);
            } else {
                KT * rows = scratch_rows(worker);
                feature_cost(b, worker, rows);
                float * f = nullptr;
                if (needs_f_) {
                    std::vector<float> & fr = f_rows_[(size_t) worker];
                    fr.resize((size_t) (ROW_BLOCK * n_));
                    f = fr.data();
                    scale_features(b, rows, f);
                }
                feature_to_kernel(b, rows);
                fn(b, (const KT *) rows, (const float *) f, worker);
            }
        });
    }

    KT * scratch_rows(int worker) {
        std::vector<KT> & rows = rows_[(size_t) worker];
        rows.resize((size_t) (ROW_BLOCK * n_));
        return rows.data();
    }

    // Calls fn(b, K rows of block b) for every block, in parallel.
    template <typename Fn>
    void for_each_block(Fn && fn) {
        topv::parallel_for(n_blocks_, in_.n_threads, [&](int64_t b, int worker) {
            if (stored(b)) {
                fn(b, (const KT *) &kernel_[(size_t) (b * ROW_BLOCK * n_)]);
            } else {
                KT * rows = scratch_rows(worker);
                feature_cost(b, worker, rows);
                feature_to_kernel(b, rows);
                fn(b, (const KT *) rows);
            }
        });
    }

    // One pass over K: for each row i, w_i = row_fn(i, (K v)_i); returns K^T w.
    // K^T w is summed per block and the blocks added in order: independent of threads.
    template <typename RowFn>
    std::vector<double> sweep(const std::vector<double> & v, RowFn && row_fn) {
        partial_.assign((size_t) (n_blocks_ * n_), 0.0);
        for_each_block([&](int64_t b, const KT * rows) {
            double * acc = &partial_[(size_t) (b * n_)];
            for (int64_t r = 0; r < block_rows(b); ++r) {
                const KT * row = rows + r * n_;
                const int64_t i = b * ROW_BLOCK + r;
                const double w = row_fn(i, row_factor_[i] * dot(row, v.data(), n_)) * row_factor_[i];
                if (w != 0.0) {
                    for (int64_t j = 0; j < n_; ++j) acc[j] += (double) row[j] * w;
                }
            }
        });
        std::vector<double> out(partial_.begin(), partial_.begin() + n_);
        for (int64_t b = 1; b < n_blocks_; ++b) {
            for (int64_t j = 0; j < n_; ++j) out[j] += partial_[(size_t) (b * n_ + j)];
        }
        return out;
    }

    const inputs & in_;
    const int64_t n_;
    const int64_t n_blocks_;
    const readout how_;
    const bool needs_f_;
    int64_t n_stored_ = 0;                   // row blocks [0, n_stored_) are stored
    std::vector<double> ps_, ia_, pt_, ib_;  // per-row squared norm / d and 1 / rms
    std::vector<double> spatial_;            // P by (|dx|, |dy|), or empty for huge grids
    double two_sigma2_ = 1.0;
    std::vector<double> central_;            // E_i
    std::vector<double> row_factor_;         // e_i = exp(-gamma E_i / eps)
    double f_min_ = 0.0, f_max_ = 0.0;
    std::vector<KT> kernel_;                 // K' of the stored row blocks
    std::vector<double> partial_;            // per-block column sums
    topv::packed_rows packed_target_;        // T packed once for the Gram kernel
    std::vector<topv::gemm_scratch> gemm_;   // per worker
    std::vector<std::vector<double>> gram_;  // per worker
    std::vector<std::vector<KT>> rows_;      // per worker, when K is not stored
    std::vector<float> f_scaled_;            // scaled F of the stored row blocks, for the cost read-outs
    std::vector<std::vector<float>> f_rows_; // per worker, when F is not stored
    std::vector<std::vector<double>> work_;  // per worker, the read-out's row products
};

// Cosine similarities of the source rows, cos_ij = s_i . s_j / (|s_i| |s_j|) (0 where
// a row is all zeros), from the Gram kernel: the features of the diversity baselines.
// Never stored: each entry is G_ij * (inv_i * inv_j) with G_ij from gram_block, whose
// arithmetic makes G_ij and G_ji the same bits, so any pair may be computed either way
// round, in any tile, and the values (hence every comparison) are those of the full matrix.
class cosine {
public:
    cosine(const inputs & in, const std::vector<double> & source_sq)
        : in_(in), n_(in.n), n_blocks_((in.n + ROW_BLOCK - 1) / ROW_BLOCK) {
        inv_.resize((size_t) n_);
        for (int64_t i = 0; i < n_; ++i) {
            inv_[i] = source_sq[(size_t) i] > 0.0 ? 1.0 / std::sqrt(source_sq[(size_t) i]) : 0.0;
        }
        topv::pack_rows(in.source, n_, in.d, in.n_threads, packed_);
        gemm_.resize((size_t) in.n_threads);
    }

    // 1 - max_{j != i} cos_ij for every row (1 for a lone token), from the upper triangle only:
    // row block [i0, i1) against the columns from i0 (rounded down to a panel) on, each entry
    // counted for its row and, by symmetry, for its column. Max is exact, so the order is free.
    std::vector<double> distinctiveness() {
        const int64_t panel = topv::gemm_panel_width();
        const int64_t chunk = std::max<int64_t>(panel, (COLUMN_CHUNK / panel) * panel);
        std::vector<double> row_max((size_t) n_, -INFINITY);
        std::vector<std::vector<double>> col_max((size_t) in_.n_threads);
        std::vector<std::vector<double>> tile((size_t) in_.n_threads);
        topv::parallel_for(n_blocks_, in_.n_threads, [&](int64_t b, int worker) {
            const int64_t i0 = b * ROW_BLOCK, i1 = std::min(n_, i0 + ROW_BLOCK);
            std::vector<double> & cm = col_max[(size_t) worker];
            std::vector<double> & g = tile[(size_t) worker];
            if (cm.empty()) cm.assign((size_t) n_, -INFINITY);
            g.resize((size_t) (ROW_BLOCK * chunk));
            for (int64_t j0 = (i0 / panel) * panel; j0 < n_; j0 += chunk) {
                const int64_t j1 = std::min(n_, j0 + chunk), w = j1 - j0;
                topv::gram_block(in_.source, i0, i1, packed_, j0, j1, g.data(), w, gemm_[(size_t) worker]);
                for (int64_t i = i0; i < i1; ++i) {
                    double * c = g.data() + (i - i0) * w;
                    for (int64_t j = j0; j < j1; ++j) c[j - j0] *= inv_[i] * inv_[j];
                    double best = row_max[i];
                    for (int64_t j = j0; j < j1; ++j) {
                        if (j == i) continue;
                        best = std::max(best, c[j - j0]);
                        cm[j] = std::max(cm[j], c[j - j0]);
                    }
                    row_max[i] = best;
                }
            }
        });
        std::vector<double> out((size_t) n_);
        for (int64_t i = 0; i < n_; ++i) {
            double best = row_max[i];
            for (const auto & cm : col_max) {
                if (!cm.empty()) best = std::max(best, cm[i]);
            }
            out[i] = n_ > 1 ? 1.0 - best : 1.0;
        }
        return out;
    }

    // DivPrune (max-min diversity), greedily: the first token is the most distinctive
    // (largest distance 1 - cos to its nearest other token), each next one the token
    // farthest from its nearest already chosen token; ties to the lower index.
    // Scores: K - t for the token chosen at step t, 0 for the others.
    //
    // Without the N x N matrix and without a pass over all tokens per pick: each token keeps
    // its distance to the nearest of the picks applied to it so far (an upper bound on its
    // distance to all picks, since applying more picks only lowers it). A max-heap on that
    // bound (ties to the lower index) yields the pick: the top token, once brought up to date,
    // is larger than every other token's bound, hence than its true distance. Stale tokens
    // are brought up to date in batches, one small Gram product against the packed picks:
    // tokens that never come near the top are never updated again. The distances are the same
    // doubles as from the matrix (1 - G_ij * (inv_i * inv_j)), so the picks are the same.
    void divprune(int64_t n_keep, std::vector<int32_t> & kept, std::vector<double> & scores) {
        const std::vector<double> first = distinctiveness();
        int64_t pick = 0;
        for (int64_t j = 1; j < n_; ++j) {
            if (first[j] > first[pick]) pick = j;
        }
        kept.assign(1, (int32_t) pick);
        scores[pick] = (double) n_keep;
        if (n_keep == 1) return;

        struct entry { double gain; int32_t j; };
        const auto lower = [](const entry & a, const entry & b) { // the heap's top: largest gain, lowest index
            return a.gain < b.gain || (a.gain == b.gain && a.j > b.j);
        };
        std::vector<double> nearest((size_t) n_, INFINITY);
        std::vector<int32_t> applied((size_t) n_, 0); // picks [0, applied[j]) are in nearest[j]
        std::vector<entry> heap;
        heap.reserve((size_t) n_);
        for (int64_t j = 0; j < n_; ++j) {
            if (j != pick) heap.push_back({INFINITY, (int32_t) j});
        }
        std::make_heap(heap.begin(), heap.end(), lower);
        topv::packed_rows picks;
        topv::pack_append_row(in_.source + pick * in_.d, in_.d, picks);

        std::vector<int32_t> batch;
        std::vector<float> rows;
        std::vector<double> g, c;
        for (int64_t t = 1; t < n_keep; ++t) {
            for (;;) {
                if (applied[(size_t) heap.front().j] == t) break; // up to date and on top: the pick
                batch.clear();
                while (!heap.empty() && (int64_t) batch.size() < BATCH && applied[(size_t) heap.front().j] < t) {
                    batch.push_back(heap.front().j);
                    std::pop_heap(heap.begin(), heap.end(), lower);
                    heap.pop_back();
                }
                update(batch, t, picks, kept, nearest, applied, rows, g, c);
                for (int32_t j : batch) {
                    heap.push_back({nearest[(size_t) j], j});
                    std::push_heap(heap.begin(), heap.end(), lower);
                }
            }
            pick = heap.front().j;
            std::pop_heap(heap.begin(), heap.end(), lower);
            heap.pop_back();
            kept.push_back((int32_t) pick);
            scores[pick] = (double) (n_keep - t);
            if (t + 1 < n_keep) topv::pack_append_row(in_.source + pick * in_.d, in_.d, picks);
        }
        std::sort(kept.begin(), kept.end());
    }

private:
    static constexpr int64_t COLUMN_CHUNK = 2048; // columns per tile of the triangle (bounds its scratch)
    static constexpr int64_t BATCH = 24;          // stale tokens brought up to date together
    static constexpr double PARALLEL_UPDATE_WORK = 4e6; // multiply-adds

    // nearest[j] = min(nearest[j], 1 - cos(order[a], j)) for the picks a in [applied[j], t), for j in batch.
    // The batch is ordered by applied[] so that each panel of picks is multiplied by only the rows
    // that lack it (a prefix): the work is what the tokens need, rounded up to a panel.
    void update(std::vector<int32_t> & batch, int64_t t, const topv::packed_rows & picks,
                const std::vector<int32_t> & order, std::vector<double> & nearest, std::vector<int32_t> & applied,
                std::vector<float> & rows, std::vector<double> & g, std::vector<double> & c) {
        std::sort(batch.begin(), batch.end(), [&](int32_t a, int32_t b) {
            return applied[(size_t) a] < applied[(size_t) b] || (applied[(size_t) a] == applied[(size_t) b] && a < b);
        });
        const int64_t m = (int64_t) batch.size(), d = in_.d, panel = topv::gemm_panel_width();
        const int64_t a0 = applied[(size_t) batch[0]], w = t - a0;
        rows.resize((size_t) (m * d));
        for (int64_t r = 0; r < m; ++r) {
            std::copy(in_.source + batch[r] * d, in_.source + (batch[r] + 1) * d, rows.begin() + r * d);
        }
        g.resize((size_t) (m * w));
        c.resize((size_t) w);
        topv::gemm_scratch & scratch = gemm_[0];
        topv::pack_a(rows.data(), 0, m, d, scratch);
        const int64_t q_first = a0 / panel, n_q = (t + panel - 1) / panel - q_first;
        const auto product = [&](int64_t q, int) { // panel q of the picks, for the rows that lack it
            const int64_t q0 = (q_first + q) * panel, q1 = std::min(t, q0 + panel), lo = std::max(q0, a0);
            int64_t rows_needing = 0;
            while (rows_needing < m && applied[(size_t) batch[rows_needing]] < q1) ++rows_needing;
            topv::gram_packed(scratch, rows_needing, picks, lo, q1, g.data() + (lo - a0), w);
        };
        // threads only for products worth a thread's start (~50 us); the panels write disjoint columns
        if ((double) m * (double) w * (double) d >= PARALLEL_UPDATE_WORK && n_q > 1) {
            topv::parallel_for(n_q, in_.n_threads, product);
        } else {
            for (int64_t q = 0; q < n_q; ++q) product(q, 0);
        }
        for (int64_t r = 0; r < m; ++r) {
            const int64_t j = batch[r], from = applied[(size_t) j] - a0;
            const double * gr = g.data() + r * w;
            // the cosine first, into memory, then the distance: as from the stored matrix
            // (no fused multiply-add of the two, which would round differently)
            for (int64_t a = from; a < w; ++a) c[a] = gr[a] * (inv_[order[a0 + a]] * inv_[j]);
            double best = nearest[j];
            for (int64_t a = from; a < w; ++a) best = std::min(best, 1.0 - c[a]);
            nearest[j] = best;
            applied[j] = (int32_t) t;
        }
    }

    const inputs & in_;
    const int64_t n_;
    const int64_t n_blocks_;
    std::vector<double> inv_;                // 1 / |s_i|, or 0
    topv::packed_rows packed_;               // the source rows, packed for the Gram kernel
    std::vector<topv::gemm_scratch> gemm_;   // per worker
};

// An even 2-D lattice of exactly K points over the W x H grid: gy rows (about
// sqrt(K H / W), so that the spacing is about the same both ways), row r at
// y = floor((2r + 1) H / (2 gy)) with its share of K (floor((r + 1) K / gy) -
// floor(r K / gy)) at x = floor((2k + 1) W / (2 m)). Each point takes the nearest
// token not yet taken (squared grid distance, ties to the lower index): on a
// full raster grid, exactly the token in that cell.
std::vector<int32_t> lattice(const inputs & in) {
    const int64_t n = in.n, k_total = in.n_keep, w = in.w, h = in.h;
    std::vector<int32_t> kept;
    kept.reserve((size_t) k_total);
    if (k_total == n) {
        for (int64_t i = 0; i < n; ++i) kept.push_back((int32_t) i);
        return kept;
    }
    int64_t gy = (int64_t) std::floor(std::sqrt((double) k_total * (double) h / (double) w) + 0.5);
    gy = std::max(gy, (k_total + w - 1) / w);
    gy = std::max<int64_t>(1, std::min(gy, std::min(h, k_total)));
    // tokens ordered by cell, then index: a cell's tokens without a W x H table
    std::vector<int32_t> order((size_t) n);
    std::iota(order.begin(), order.end(), 0);
    const auto cell_less = [&](int32_t a, int32_t b) {
        if (in.y[a] != in.y[b]) return in.y[a] < in.y[b];
        if (in.x[a] != in.x[b]) return in.x[a] < in.x[b];
        return a < b;
    };
    std::sort(order.begin(), order.end(), cell_less);
    std::vector<char> taken((size_t) n, 0);
    for (int64_t r = 0; r < gy; ++r) {
        const int64_t m = (r + 1) * k_total / gy - r * k_total / gy;
        const int64_t py = (2 * r + 1) * h / (2 * gy);
        for (int64_t k = 0; k < m; ++k) {
            const int64_t px = (2 * k + 1) * w / (2 * m);
            int64_t pick = -1;
            auto it = std::lower_bound(order.begin(), order.end(), 0, [&](int32_t a, int) {
                return in.y[a] < py || (in.y[a] == py && in.x[a] < px);
            });
            for (; it != order.end() && in.y[*it] == py && in.x[*it] == px; ++it) {
                if (!taken[*it]) { pick = *it; break; }
            }
            if (pick < 0) { // the cell is empty or used up: the nearest free token
                int64_t best = INT64_MAX;
                for (int64_t i = 0; i < n; ++i) {
                    if (taken[i]) continue;
                    const int64_t dx = in.x[i] - px, dy = in.y[i] - py, d2 = dx * dx + dy * dy;
                    if (d2 < best) { best = d2; pick = i; }
                }
            }
            taken[pick] = 1;
            kept.push_back((int32_t) pick);
        }
    }
    std::sort(kept.begin(), kept.end());
    return kept;
}

// The float32 Gram kernel overflows for rows with |x|^2 above ~3e38. Features that
// large (finite, but far beyond any model's) are scaled by a power of two, exactly,
// into a copy whose rows stay below GRAM_SQ_MAX; every method that uses the Gram
// product is invariant to that scale (up to RMS_EPS, negligible at that size).
constexpr double GRAM_SQ_MAX = 1e30;

void fit_gram_range(const float *& x, int64_t n, int64_t d, int n_threads, std::vector<double> & sum_sq,
                    std::vector<float> & copy) {
    const double peak = *std::max_element(sum_sq.begin(), sum_sq.end());
    if (peak <= GRAM_SQ_MAX) return;
    const int shift = (int) std::ceil(std::log2(peak / GRAM_SQ_MAX) / 2.0) + 1;
    copy.resize((size_t) (n * d));
    for (int64_t k = 0; k < n * d; ++k) copy[(size_t) k] = std::ldexp(x[k], -shift);
    x = copy.data();
    row_sum_squares(x, n, d, n_threads, sum_sq);
}

int32_t run(const inputs & in_raw, std::vector<int32_t> & kept, std::vector<double> & scores) {
    inputs in = in_raw;
    const method_info & m = METHOD_TABLE[in.p.method];
    std::vector<double> source_sq, target_sq;
    if (m.source && !row_sum_squares(in.source, in.n, in.d, in.n_threads, source_sq)) {
        return TOPV_STATUS_NONFINITE;
    }
    if (m.target && !row_sum_squares(in.target, in.n, in.d, in.n_threads, target_sq)) {
        return TOPV_STATUS_NONFINITE;
    }
    std::vector<float> source_copy, target_copy;
    if (in.p.method != TOPV_METHOD_NORM) { // norm reads the raw norms, not the Gram product
        if (m.source) fit_gram_range(in.source, in.n, in.d, in.n_threads, source_sq, source_copy);
        if (m.target) fit_gram_range(in.target, in.n, in.d, in.n_threads, target_sq, target_copy);
    }
    scores.assign((size_t) in.n, 0.0);
    if (m.target) { // the transport methods
        if (((double) in.p.alpha + in.p.beta) / in.p.eps <= KERNEL_F32_LIMIT) {
            scores = transport<float>(in, source_sq, target_sq, m.how).importance();
        } else {
            scores = transport<double>(in, source_sq, target_sq, m.how).importance();
        }
        for (double s : scores) {
            if (!std::isfinite(s) || s < 0.0) return TOPV_STATUS_NUMERIC;
        }
        kept = select_with_recovery(scores, in.n_keep, (double) in.p.recover);
        return TOPV_STATUS_OK;
    }
    switch (in.p.method) {
        case TOPV_METHOD_UNIFORM:
            kept.resize((size_t) in.n_keep);
            for (int64_t k = 0; k < in.n_keep; ++k) {
                kept[k] = (int32_t) (((2 * k + 1) * in.n) / (2 * in.n_keep));
                scores[kept[k]] = 1.0;
            }
            return TOPV_STATUS_OK;
        case TOPV_METHOD_NORM:
            for (int64_t i = 0; i < in.n; ++i) {
                scores[i] = std::sqrt(source_sq[(size_t) i]);
            }
            kept = top_indices(scores, in.n_keep);
            std::sort(kept.begin(), kept.end());
            return TOPV_STATUS_OK;
        case TOPV_METHOD_UNIFORM2D:
            kept = lattice(in);
            for (int32_t i : kept) scores[i] = 1.0;
            return TOPV_STATUS_OK;
        case TOPV_METHOD_DISTINCT: {
            cosine cs(in, source_sq);
            scores = cs.distinctiveness();
            kept = top_indices(scores, in.n_keep);
            std::sort(kept.begin(), kept.end());
            return TOPV_STATUS_OK;
        }
        case TOPV_METHOD_DIVPRUNE: {
            cosine cs(in, source_sq);
            cs.divprune(in.n_keep, kept, scores);
            return TOPV_STATUS_OK;
        }
        default:
            break;
    }
    return TOPV_STATUS_INTERNAL;
}

} // namespace

extern "C" {

struct topv_params topv_default_params(void) {
    topv_params p;
    p.method            = TOPV_METHOD_DIVPRUNE; // chosen on two trained models' validation splits (docs/pass.md)
    p.alpha             = 1.0f;
    p.beta              = 0.5f;
    p.gamma             = 0.5f;
    p.sigma             = 0.25f;
    p.eps               = 0.1f;
    p.tau               = 1.0f;
    p.iters             = 10;
    p.recover           = 0.5f; // chosen on the demo model's validation split (docs/pass.md, "Evidence")
    p.n_threads         = 0;
    p.max_scratch_bytes = (size_t) 256 << 20;
    return p;
}

const char * topv_method_name(int32_t method) {
    return known_method(method) ? METHOD_TABLE[method].name : nullptr;
}

int32_t topv_method_reads(int32_t method) {
    if (!known_method(method)) return -1;
    return (METHOD_TABLE[method].source ? TOPV_READS_SOURCE : 0) | (METHOD_TABLE[method].target ? TOPV_READS_TARGET : 0);
}

int32_t topv_method_from_name(const char * name) {
    if (!name) return -1;
    for (int32_t m = 0; m < TOPV_METHOD_COUNT; ++m) {
        if (std::strcmp(name, METHOD_TABLE[m].name) == 0) return m;
    }
    return -1;
}

const char * topv_status_string(int32_t status) {
    switch (status) {
        case TOPV_STATUS_OK:            return "success";
        case TOPV_STATUS_NULL_ARGUMENT: return "a required pointer argument is NULL";
        case TOPV_STATUS_BAD_SHAPE:     return "n_tokens and n_embd must be at least 1";
        case TOPV_STATUS_BAD_GRID:      return "grid size must be at least 1 x 1 and every token's (x, y) must lie inside it";
        case TOPV_STATUS_BAD_KEEP:      return "n_keep must be between 1 and n_tokens";
        case TOPV_STATUS_NONFINITE:     return "source or target features contain NaN or Inf";
        case TOPV_STATUS_BAD_PARAM:     return "a parameter is out of range (alpha, beta, gamma >= 0; sigma, eps, tau > 0; iters >= 1; recover in [0, 1]; a known method)";
        case TOPV_STATUS_EPS_RANGE:     return "eps too small: (alpha + beta + gamma) / eps must stay below 700, or exp(-C / eps) underflows";
        case TOPV_STATUS_OUT_OF_MEMORY: return "out of memory";
        case TOPV_STATUS_NUMERIC:       return "the transport diverged (non-finite scores)";
        case TOPV_STATUS_INTERNAL:      return "internal error";
        default:                        return "unknown status code";
    }
}

int32_t topv_check_params(struct topv_params params) {
    return check_params(params);
}

int64_t topv_keep_count(int64_t n_tokens, double ratio) {
    if (n_tokens < 1 || !(ratio > 0.0 && ratio <= 1.0)) {
        return -1;
    }
    const int64_t k = (int64_t) std::floor(ratio * (double) n_tokens + 0.5);
    return std::min(std::max<int64_t>(k, 1), n_tokens);
}

int32_t topv_select(const float * source, const float * target, int64_t n_tokens, int64_t n_embd,
                    const int32_t * pos_x, const int32_t * pos_y, int32_t grid_w, int32_t grid_h,
                    int64_t n_keep, struct topv_params params, int32_t * kept, double * scores) {
    const bool needs_source = known_method(params.method) && METHOD_TABLE[params.method].source;
    const bool needs_target = known_method(params.method) && METHOD_TABLE[params.method].target;
    if ((needs_source && !source) || (needs_target && !target) || !pos_x || !pos_y || !kept) {
        return TOPV_STATUS_NULL_ARGUMENT;
    }
    if (n_tokens < 1 || n_embd < 1 || n_tokens > INT32_MAX) {
        return TOPV_STATUS_BAD_SHAPE;
    }
    if (grid_w < 1 || grid_h < 1) {
        return TOPV_STATUS_BAD_GRID;
    }
    for (int64_t i = 0; i < n_tokens; ++i) {
        if (pos_x[i] < 0 || pos_x[i] >= grid_w || pos_y[i] < 0 || pos_y[i] >= grid_h) {
            return TOPV_STATUS_BAD_GRID;
        }
    }
    if (n_keep < 1 || n_keep > n_tokens) {
        return TOPV_STATUS_BAD_KEEP;
    }
    const int32_t status = check_params(params);
    if (status != TOPV_STATUS_OK) {
        return status;
    }
    int n_threads = params.n_threads;
    if (n_threads <= 0) {
        n_threads = (int) std::max(1u, std::thread::hardware_concurrency());
    }
    const inputs in = {source, target, n_tokens, n_embd, pos_x, pos_y, grid_w, grid_h, n_keep, params,
                       std::min(n_threads, 1024)};
    try {
        std::vector<int32_t> kept_out;
        std::vector<double> scores_out;
        const int32_t rc = run(in, kept_out, scores_out);
        if (rc != TOPV_STATUS_OK) {
            return rc;
        }
        std::copy(kept_out.begin(), kept_out.end(), kept);
        if (scores) {
            std::copy(scores_out.begin(), scores_out.end(), scores);
        }
        return TOPV_STATUS_OK;
    } catch (const std::bad_alloc &) {
        return TOPV_STATUS_OUT_OF_MEMORY;
    } catch (...) {
        return TOPV_STATUS_INTERNAL;
    }
}

} // extern "C"
