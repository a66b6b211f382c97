"""The native C++ pass against the Numba reference on hundreds of seeded cases.

Tolerances (docs/pass.md explains them): the native pass sums the feature
distances in float32 blocks around a Gram matrix, the reference directly in
float64. Scores must agree to SCORE_RTOL relative to the largest score, scaled
by alpha / eps (the kernel's sensitivity to a cost error); wherever the last
chosen and the first rejected scores are further apart than that tolerance,
the kept sets must be identical. Every transport read-out (topv, topv_rowsum, topv_cost,
topv_fcost) takes a quarter of the seeded cases; every baseline has its own cases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import topv_edge
from helpers.features import COS_ATOL, divprune_replay, random_features, select_topv
from topv_edge.pruning import BASELINES, READOUTS


SCORE_RTOL = 2e-6  # per unit of alpha / eps
TRANSPORT = sorted(READOUTS)

SIZES_N = [1, 2, 3, 5, 16, 49, 64, 100, 144, 576, 1024, 2304, 4096]
SIZES_D = [1, 2, 3, 8, 17, 64, 256, 896, 2048, 4096]
WORK_LIMIT = 1.2e8  # N * N * d for the (slow, plain) reference


def _grid_for(rng: np.random.Generator, n: int) -> tuple[tuple[int, int], tuple[np.ndarray, np.ndarray] | None]:
    shape = rng.integers(4)
    if shape == 0:  # 1 x N strip
        return (n, 1), None
    if shape == 1:  # N x 1 column
        return (1, n), None
    divisors = [w for w in range(1, n + 1) if n % w == 0]
    if shape == 2:  # closest to square, or any factorisation
        w = divisors[len(divisors) // 2] if rng.integers(2) else int(rng.choice(divisors))
        return (w, n // w), None
    # tokens on part of a larger grid (e.g. a slice), arbitrary cells, repeats allowed
    w, h = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    return (w, h), (rng.integers(0, w, n), rng.integers(0, h, n))


def _case(seed: int):
    rng = np.random.default_rng(seed)
    while True:
        n = int(rng.choice(SIZES_N))
        d = int(rng.choice(SIZES_D))
        if n * n * d <= WORK_LIMIT:
            break
    source, target = random_features(rng, n, d, str(rng.choice(["correlated", "independent", "outliers"])))
    grid, coords = _grid_for(rng, n)
    params = {
        "alpha": float(rng.choice([0.0, 0.5, 1.0, 2.0])),
        "beta": float(rng.choice([0.0, 0.25, 0.5, 1.0])),
        "gamma": float(rng.choice([0.0, 0.5, 1.0])),
        "sigma": float(rng.choice([0.05, 0.25, 1.0])),
        "tau": float(rng.choice([0.1, 1.0, 10.0, math.inf])),
        "iters": int(rng.choice([1, 3, 10, 25])),
        "recover": float(rng.choice([0.0, 0.1, 0.25, 0.5, 1.0])),
    }
    total = params["alpha"] + params["beta"] + params["gamma"]
    params["eps"] = float(rng.choice([0.05, 0.1, 0.5])) if total < 30 else 1.0
    keep = int(rng.integers(1, n + 1)) if rng.integers(3) else float(rng.choice([0.05, 0.25, 0.5, 1.0]))
    return source, target, grid, coords, keep, params


def feature_range(source: np.ndarray, target: np.ndarray) -> float:
    """max - min of the feature cost F (docs/pass.md step 2), in float64."""
    d = source.shape[1]
    s = source / np.sqrt(np.mean(np.float64(source) ** 2, axis=1, keepdims=True) + 1e-6)
    t = target / np.sqrt(np.mean(np.float64(target) ** 2, axis=1, keepdims=True) + 1e-6)
    f = (np.sum(s**2, 1)[:, None] + np.sum(t**2, 1)[None, :] - 2 * s @ t.T) / d
    return float(f.max() - f.min())


def score_tolerance(source, target, alpha: float, eps: float, scores: np.ndarray, method: str = "topv_rowsum",
                    scale: float | None = None) -> float:
    """An error of delta in F moves the kernel by alpha / eps * delta / range(F), relatively. The read-outs
    that weigh the plan by the scaled F (in [0, 1]) see an absolute delta / range(F) in it as well, so
    their scale is that of the largest possible score: 1 for topv_fcost (a weighted mean of the scaled F), the
    largest cost times the largest mass for topv_cost (passed as `scale`)."""
    f_range = max(feature_range(source, target), 1e-4)
    sensitivity = max(1.0, alpha / eps / f_range)
    size = float(np.abs(scores).max())
    if method in ("topv_fcost", "topv_cost"):
        sensitivity = max(sensitivity, 1.0 / f_range)
        size = max(size, 1.0 if method == "topv_fcost" else float(scale))
    return SCORE_RTOL * sensitivity * size


def _check_selection(indices: np.ndarray, n: int, k: int) -> None:
    assert indices.dtype == np.int64
    assert len(indices) == k
    assert np.all(np.diff(indices) > 0), "sorted and unique"
    assert indices.min() >= 0 and indices.max() < n


def test_both_backends_know_the_same_methods() -> None:
    """The names live in C (topv_method_name); the reference implements each of them."""
    assert set(topv_edge.METHODS) == set(READOUTS) | set(BASELINES)
    assert topv_edge.METHODS["topv"] == 0
    assert sorted(topv_edge.METHODS.values()) == list(range(len(topv_edge.METHODS)))


@pytest.mark.parametrize("seed", range(300))
def test_native_matches_reference(seed: int) -> None:
    source, target, grid, coords, keep, params = _case(seed)
    method = TRANSPORT[seed % len(TRANSPORT)]
    n = source.shape[0]
    k = topv_edge.keep_count(n, keep)
    got, got_scores = select_topv(source, target, grid, keep, coords=coords, method=method, **params)
    want, want_scores = select_topv(source, target, grid, keep, coords=coords, method=method, backend="numba",
                                         **params)
    _check_selection(got, n, k)
    _check_selection(want, n, k)

    scale = None
    if method == "topv_cost":  # the largest cost times the largest mass
        mass = select_topv(source, target, grid, keep, coords=coords, method="topv_rowsum", backend="numba",
                                **params)[1]
        scale = (params["alpha"] + params["beta"] + params["gamma"]) * float(mass.max())
    tol = score_tolerance(source, target, params["alpha"], params["eps"], want_scores, method, scale)
    np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=tol)

    n_best = k - math.floor(np.float32(params["recover"]) * k)
    ranked = np.sort(want_scores)[::-1]
    separated = n_best == 0 or n_best == n or ranked[n_best - 1] - ranked[n_best] > 2 * tol
    if separated:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("method", ["uniform", "norm", "uniform2d"])
@pytest.mark.parametrize("seed", range(20))
def test_baselines_match_reference(method: str, seed: int) -> None:
    source, target, grid, coords, keep, _ = _case(1000 + seed)
    got, got_scores = select_topv(source, target, grid, keep, coords=coords, method=method)
    want, want_scores = select_topv(source, target, grid, keep, coords=coords, method=method, backend="numba")
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-12)


@pytest.mark.parametrize("seed", range(30))
def test_distinct_matches_reference(seed: int) -> None:
    source, target, grid, coords, keep, _ = _case(2000 + seed)
    got, got_scores = select_topv(source, None, grid, keep, coords=coords, method="distinct")
    want, want_scores = select_topv(source, None, grid, keep, coords=coords, method="distinct", backend="numba")
    n, k = len(source), topv_edge.keep_count(len(source), keep)
    _check_selection(got, n, k)
    np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=COS_ATOL)
    ranked = np.sort(want_scores)[::-1]
    if k == n or ranked[k - 1] - ranked[k] > 2 * COS_ATOL:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(30))
def test_divprune_matches_reference(seed: int) -> None:
    """The native picks, replayed on the reference's float64 cosines, are a greedy max-min sequence: each
    pick's gain is within COS_ATOL of the best available (so wherever the best is clear, the same pick)."""
    source, target, grid, coords, keep, _ = _case(3000 + seed)
    n, k = len(source), topv_edge.keep_count(len(source), keep)
    got, got_scores = select_topv(source, None, grid, keep, coords=coords, method="divprune")
    want, want_scores = select_topv(source, None, grid, keep, coords=coords, method="divprune", backend="numba")
    _check_selection(got, n, k)
    np.testing.assert_array_equal(np.sort(got_scores[got]), np.arange(1, k + 1))  # K - t for the t-th pick
    assert np.count_nonzero(got_scores) == k
    exact = divprune_replay(source, got_scores, k, COS_ATOL)
    if exact:
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_scores, want_scores)


def test_parity_at_realistic_size(rng: np.random.Generator) -> None:
    """A LLaVA-1.5 image (24 x 24 tokens) with a 4096-wide LLM, default parameters."""
    source, target = random_features(rng, 576, 4096, "outliers")
    got, got_scores = select_topv(source, target, (24, 24), 0.25)
    want, want_scores = select_topv(source, target, (24, 24), 0.25, backend="numba")
    p = topv_edge.default_params()
    tol = score_tolerance(source, target, p["alpha"], p["eps"], want_scores, "topv")
    np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=tol)
    np.testing.assert_array_equal(got, want)
