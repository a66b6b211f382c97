"""Numba reference of the pass and its baselines: docs/pass.md written out plainly.

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
# how a transport method reads importance out of the plan (docs/pass.md, "Read-outs")
READOUT_ROWSUM, READOUT_COST, READOUT_FCOST, READOUT_SELF = 0, 1, 2, 3
# each transport method's reading of the plan (the names are topv_edge.pruning.READOUTS)
READOUTS = {"topv": READOUT_SELF, "topv_rowsum": READOUT_ROWSUM, "topv_cost": READOUT_COST,
            "topv_fcost": READOUT_FCOST}
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
                    alpha, beta, gamma, sigma, eps, tau, iters, readout=READOUT_ROWSUM):
    """The importance read out of the source-relaxed entropic transport plan P (steps 1-6):
    rowsum r_i = sum_j P_ij, cost sum_j P_ij C_ij, fcost sum_j P_ij F_ij / r_i (F min-max scaled),
    self P_ii / r_i."""
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
    total = np.empty((n, n), dtype=np.float64)
    for i in range(n):
        dxc = xs[i] - cx
        dyc = ys[i] - cy
        central = np.sqrt(dxc * dxc + dyc * dyc) / centre_norm if centre_norm > 0.0 else 0.0
        for j in range(n):
            dx = np.float64(xs[i] - xs[j])
            dy = np.float64(ys[i] - ys[j])
            spatial = 1.0 - np.exp(-(dx * dx + dy * dy) / (2.0 * sigma_px * sigma_px))
            cost[i, j] = (cost[i, j] - f_min) * inv_range  # now the scaled F
            c = alpha * cost[i, j] + beta * spatial + gamma * central
            total[i, j] = c
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
    plan = (u[:, None] * kernel) * v[None, :]
    r = plan.sum(axis=1)
    if readout == READOUT_COST:
        return (plan * total).sum(axis=1)
    if readout == READOUT_FCOST:
        return (plan * cost).sum(axis=1) / r
    if readout == READOUT_SELF:
        out = np.empty(n, dtype=np.float64)
        for i in range(n):
            out[i] = plan[i, i] / r[i]
        return out
    return r


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


@njit(cache=True)
def cosine_matrix(source):
    """cos_ij = s_i . s_j / (|s_i| |s_j|), 0 where a row is all zeros; float64 throughout."""
    n, d = source.shape
    x = source.astype(np.float64)
    norms = np.sqrt((x * x).sum(axis=1))
    inv = np.zeros(n)
    for i in range(n):
        if norms[i] > 0.0:
            inv[i] = 1.0 / norms[i]
    g = x @ x.T
    for i in range(n):
        for j in range(n):
            g[i, j] *= inv[i] * inv[j]
    return g


@njit(cache=True)
def distinctiveness(cos):
    """1 - max_{j != i} cos_ij (1 for a lone token)."""
    n = cos.shape[0]
    out = np.ones(n)
    if n == 1:
        return out
    for i in range(n):
        best = -np.inf
        for j in range(n):
            if j != i and cos[i, j] > best:
                best = cos[i, j]
        out[i] = 1.0 - best
    return out


@njit(cache=True)
def divprune_order(cos, n_keep):
    """Greedy max-min diversity (DivPrune): the most distinctive token first, then each time the
    token farthest (1 - cos) from its nearest chosen token; ties to the lower index. The picks in order."""
    n = cos.shape[0]
    gain = distinctiveness(cos)
    nearest = np.full(n, np.inf)
    taken = np.zeros(n, dtype=np.bool_)
    order = np.empty(n_keep, dtype=np.int64)
    for t in range(n_keep):
        pick = -1
        for j in range(n):
            g = gain[j] if t == 0 else nearest[j]
            if not taken[j] and (pick < 0 or g > (gain[pick] if t == 0 else nearest[pick])):
                pick = j
        taken[pick] = True
        order[t] = pick
        for j in range(n):
            nearest[j] = min(nearest[j], 1.0 - cos[pick, j])
    return order


@njit(cache=True)
def lattice_indices(xs, ys, grid_w, grid_h, n_keep):
    """K points on an even 2-D lattice over the grid, each taking the nearest free token
    (squared grid distance, ties to the lower index); see docs/pass.md."""
    n = xs.shape[0]
    if n_keep == n:
        return np.arange(n)
    w, h, k_total = np.int64(grid_w), np.int64(grid_h), np.int64(n_keep)
    gy = np.int64(np.floor(np.sqrt(float(k_total) * float(h) / float(w)) + 0.5))
    gy = max(gy, (k_total + w - 1) // w)
    gy = max(np.int64(1), min(gy, min(h, k_total)))
    taken = np.zeros(n, dtype=np.bool_)
    kept = np.empty(n_keep, dtype=np.int64)
    c = 0
    for r in range(gy):
        m = (r + 1) * k_total // gy - r * k_total // gy
        py = (2 * r + 1) * h // (2 * gy)
        for k in range(m):
            px = (2 * k + 1) * w // (2 * m)
            pick, best = -1, np.int64(0)
            for i in range(n):
                if taken[i]:
                    continue
                dx, dy = np.int64(xs[i]) - px, np.int64(ys[i]) - py
                d2 = dx * dx + dy * dy
                if pick < 0 or d2 < best:
                    pick, best = i, d2
            taken[pick] = True
            kept[c] = pick
            c += 1
    return np.sort(kept)
