"""Numba reference of the pass: shared/TOPV.md section 3 written out plainly.

This is the oracle the native pass is tested against, so it favours the
obvious formulation over speed: distances are summed directly in float64
(the native pass expands them around a float32 Gram matrix), the N x N cost
and kernel are stored whole. Decisions the spec leaves open match
native/src/topv.cpp and are written down in docs/pass.md.
"""

from __future__ import annotations

import numpy as np
from numba import njit

RMS_EPS = 1e-6
F_RANGE_MIN = 1e-4  # a smaller spread of F is rounding noise: F counts as constant (docs/pass.md)


@njit(cache=True)
def _rms_normalise(x: np.ndarray) -> np.ndarray:
    n, d = x.shape
    out = np.empty((n, d), dtype=np.float64)
    for i in range(n):
        s = 0.0
        for k in range(d):
            s += np.float64(x[i, k]) * np.float64(x[i, k])
        scale = 1.0 / np.sqrt(s / d + RMS_EPS)
        for k in range(d):
            out[i, k] = np.float64(x[i, k]) * scale
    return out


@njit(cache=True)
def topv_importance(source, target, xs, ys, grid_w, grid_h,
                    alpha, beta, gamma, sigma, eps, tau, iters):
    """Row sums r_i of the source-relaxed entropic transport plan (steps 1-6)."""
    n, d = source.shape
    s = _rms_normalise(source)
    t = _rms_normalise(target)

    # step 2: feature cost, min-max scaled over the whole matrix
    cost = np.empty((n, n), dtype=np.float64)
    for i in range(n):
        for j in range(n):
            acc = 0.0
            for k in range(d):
                diff = s[i, k] - t[j, k]
                acc += diff * diff
            cost[i, j] = acc / d
    f_min = cost.min()
    f_range = cost.max() - f_min
    inv_range = 1.0 / f_range if f_range >= F_RANGE_MIN else 0.0

    # steps 3-5: spatial and central costs, total cost, kernel
    sigma_px = sigma * max(grid_w, grid_h)
    cx = (grid_w - 1) / 2.0
    cy = (grid_h - 1) / 2.0
    centre_norm = np.sqrt(cx * cx + cy * cy)
    kernel = np.empty((n, n), dtype=np.float64)
    for i in range(n):
        dxc = xs[i] - cx
        dyc = ys[i] - cy
        central = np.sqrt(dxc * dxc + dyc * dyc) / centre_norm if centre_norm > 0.0 else 0.0
        for j in range(n):
            dx = np.float64(xs[i] - xs[j])
            dy = np.float64(ys[i] - ys[j])
            spatial = 1.0 - np.exp(-(dx * dx + dy * dy) / (2.0 * sigma_px * sigma_px))
            c = alpha * (cost[i, j] - f_min) * inv_range + beta * spatial + gamma * central
            kernel[i, j] = np.exp(-c / eps)

    # step 6: unbalanced Sinkhorn, source marginal relaxed by tau
    marginal = 1.0 / n
    lam = 1.0 if np.isinf(tau) else tau / (tau + eps)
    u = np.empty(n, dtype=np.float64)
    v = np.ones(n, dtype=np.float64)
    for _ in range(iters):
        kv = kernel @ v
        for i in range(n):
            u[i] = (marginal / kv[i]) ** lam
        ktu = kernel.T @ u
        for j in range(n):
            v[j] = marginal / ktu[j]
    return u * (kernel @ v)


@njit(cache=True)
def top_indices(scores, count):
    """The `count` largest scores, ties to the lower index (a stable sort on -score)."""
    order = np.argsort(-scores, kind="mergesort")
    return order[:count]


@njit(cache=True)
def select_with_recovery(scores, n_keep, recover):
    """Step 7: the K - R best, plus R tokens at a regular stride from the rest."""
    n = scores.shape[0]
    n_recover = int(np.floor(recover * n_keep))
    best = top_indices(scores, n_keep - n_recover)
    taken = np.zeros(n, dtype=np.bool_)
    for i in best:
        taken[i] = True
    rest = np.flatnonzero(~taken)
    m = rest.shape[0]
    kept = np.empty(n_keep, dtype=np.int64)
    kept[: n_keep - n_recover] = best
    for k in range(n_recover):
        kept[n_keep - n_recover + k] = rest[((2 * k + 1) * m) // (2 * n_recover)]
    return np.sort(kept)


@njit(cache=True)
def uniform_indices(n, n_keep):
    """K tokens evenly spaced in raster order: floor((k + 1/2) N / K)."""
    kept = np.empty(n_keep, dtype=np.int64)
    for k in range(n_keep):
        kept[k] = ((2 * k + 1) * n) // (2 * n_keep)
    return kept


@njit(cache=True)
def row_norms(source):
    n, d = source.shape
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        s = 0.0
        for k in range(d):
            s += np.float64(source[i, k]) * np.float64(source[i, k])
        out[i] = np.sqrt(s)
    return out
