"""What users of the pass rely on, beyond agreeing with the reference."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import topv_edge
from helpers.features import random_features, select_topv


GRID = (24, 24)
N = 576


def central_distance(indices: np.ndarray, grid: tuple[int, int] = GRID) -> float:
    w, h = grid
    x, y = indices % w, indices // w
    return float(np.mean(np.hypot(x - (w - 1) / 2, y - (h - 1) / 2)))


@pytest.mark.parametrize("method", sorted(topv_edge.METHODS))
def test_keep_all_returns_everything(rng: np.random.Generator, method: str) -> None:
    s, t = random_features(rng, N, 32)
    for keep in (1.0, N):
        indices, scores = select_topv(s, t, GRID, keep, method=method)
        np.testing.assert_array_equal(indices, np.arange(N))
        assert scores.shape == (N,)


@pytest.mark.parametrize("method", sorted(topv_edge.METHODS))
@pytest.mark.parametrize("keep", [1, 2, 57, 0.11, 0.25, 0.5, 575])
def test_exactly_k_sorted_unique(rng: np.random.Generator, keep: int | float, method: str) -> None:
    s, t = random_features(rng, N, 64)
    indices, _ = select_topv(s, t, GRID, keep, method=method)
    k = keep if isinstance(keep, int) else round(keep * N)
    assert len(indices) == k
    assert np.all(np.diff(indices) > 0)
    assert 0 <= indices[0] and indices[-1] < N


def test_keep_ratio_rounds_half_up() -> None:
    assert topv_edge.keep_count(5, 0.5) == 3
    assert topv_edge.keep_count(576, 0.25) == 144
    assert topv_edge.keep_count(576, 0.11) == 63
    assert topv_edge.keep_count(10, 0.001) == 1
    assert topv_edge.keep_count(10, 7) == 7


def test_recovered_tokens_spread_over_the_grid(rng: np.random.Generator) -> None:
    s, t = random_features(rng, N, 64)
    # a strong central cost puts every top-ranked token near the middle ...
    params = dict(gamma=5.0, eps=0.5, recover=0.5)
    k = 144
    kept, scores = select_topv(s, t, GRID, k, method="topv_rowsum", **params)
    best = set(np.argsort(-scores, kind="stable")[: k - 72].tolist())
    recovered = np.array(sorted(set(kept.tolist()) - best))
    assert len(recovered) == 72
    # ... and the recovered ones still reach every band of rows and columns
    rows, cols = recovered // 24, recovered % 24
    assert set(rows // 6) == {0, 1, 2, 3} and set(cols // 6) == {0, 1, 2, 3}
    # with everything recovered, the pass degenerates to the uniform baseline
    all_recovered, _ = select_topv(s, t, GRID, k, recover=1.0)
    uniform, _ = select_topv(s, t, GRID, k, method="uniform")
    np.testing.assert_array_equal(all_recovered, uniform)


def test_gamma_moves_the_choice_toward_the_centre(rng: np.random.Generator) -> None:
    """With the spatial term off (it favours the centre by itself: border tokens
    have fewer neighbours), raising gamma moves the kept tokens from all over the
    image to the most central disc."""
    s, t = random_features(rng, N, 64, "independent")
    distances = [
        central_distance(select_topv(s, t, GRID, 0.25, method="topv_rowsum", beta=0.0, gamma=g, eps=0.5,
                                          recover=0.0)[0])
        for g in (0.0, 0.01, 0.03, 0.1, 1.0)
    ]
    assert all(a >= b for a, b in zip(distances, distances[1:])), distances
    idx = np.arange(N)
    everywhere = central_distance(idx)
    most_central = central_distance(np.argsort(np.hypot(idx % 24 - 11.5, idx // 24 - 11.5))[:144])
    assert distances[0] > 0.9 * everywhere
    assert distances[-1] < most_central + 0.05


def test_balanced_case_when_tau_is_infinite(rng: np.random.Generator) -> None:
    """tau = inf is balanced transport: row sums converge to the source marginal 1/N
    (docs/pass.md) and the central cost cancels exactly."""
    s, t = random_features(rng, N, 64)
    rowsum = dict(method="topv_rowsum")
    _, scores = select_topv(s, t, GRID, 0.25, tau=math.inf, iters=200, **rowsum)
    np.testing.assert_allclose(scores, 1.0 / N, rtol=1e-6)
    _, a = select_topv(s, t, GRID, 0.25, tau=math.inf, gamma=0.0, iters=5, **rowsum)
    _, b = select_topv(s, t, GRID, 0.25, tau=math.inf, gamma=2.0, iters=5, **rowsum)
    np.testing.assert_allclose(a, b, rtol=1e-9)
    # relaxed (finite tau): the central cost matters and the scores are not flat
    _, c = select_topv(s, t, GRID, 0.25, tau=1.0, gamma=2.0, iters=5, **rowsum)
    assert np.std(c) / np.mean(c) > 0.05


def test_scores_are_a_transport_plan_row_sum(rng: np.random.Generator) -> None:
    s, t = random_features(rng, N, 64)
    _, scores = select_topv(s, t, GRID, 0.25, method="topv_rowsum")
    assert np.all(scores > 0)
    assert 0.1 < scores.sum() < 10.0  # the plan's mass: columns sum to 1/N each


def test_read_outs_of_one_plan_are_consistent(rng: np.random.Generator) -> None:
    """The read-outs weigh the same plan: the feature cost per unit of mass is a weighted mean of the
    scaled F (in [0, 1]), the share sent to the own target lies in (0, 1], and the total cost paid with
    only the central term is gamma E_i r_i."""
    s, t = random_features(rng, N, 64)
    _, r = select_topv(s, t, GRID, 0.25, method="topv_rowsum")
    _, cost = select_topv(s, t, GRID, 0.25, method="topv_cost")
    _, fcost = select_topv(s, t, GRID, 0.25, method="topv_fcost")
    _, own = select_topv(s, t, GRID, 0.25, method="topv")
    assert np.all((fcost >= 0) & (fcost <= 1)) and np.all((own > 0) & (own <= 1))
    assert np.all(cost > 0) and np.all(cost <= r * 2.0)  # C <= alpha + beta + gamma = 2
    p = dict(alpha=0.0, beta=0.0, gamma=0.5)
    _, r0 = select_topv(s, t, GRID, 0.25, method="topv_rowsum", **p)
    _, c0 = select_topv(s, t, GRID, 0.25, method="topv_cost", **p)
    idx = np.arange(N)
    e = np.hypot(idx % 24 - 11.5, idx // 24 - 11.5) / np.hypot(11.5, 11.5)
    np.testing.assert_allclose(c0, 0.5 * e * r0, rtol=1e-12, atol=1e-300)


def _clustered(rng: np.random.Generator, n: int = 144, d: int = 64, n_obj: int = 6):
    """A uniform background (one feature vector plus noise) with n_obj distinct 'object' tokens."""
    base = rng.standard_normal(d)
    s = (base + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    obj = rng.choice(n, n_obj, replace=False)
    s[obj] = rng.standard_normal((n_obj, d))
    t = (s + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
    return s, t, set(obj.tolist())


@pytest.mark.parametrize("method", ["topv", "divprune", "distinct"])
def test_distinctive_tokens_are_kept(rng: np.random.Generator, method: str) -> None:
    """Tokens unlike the rest are what these methods single out; the plan's row sum cannot (a distinctive
    token's mass goes to its own target column, whose total is fixed: issue 11's measurement)."""
    for _ in range(3):
        s, t, obj = _clustered(rng)
        kept, _ = select_topv(s, t, (12, 12), 18, method=method, recover=0.0)
        assert obj <= set(kept.tolist())
    s, t, obj = _clustered(rng)
    kept, _ = select_topv(s, t, (12, 12), 18, method="topv_rowsum", recover=0.0)
    assert len(obj & set(kept.tolist())) <= 2


def test_uniform2d_is_an_even_lattice() -> None:
    s = np.zeros((144, 4), dtype=np.float32)
    for k, rows in ((36, [1, 3, 5, 7, 9, 11]), (16, [1, 4, 7, 10]), (4, [3, 9])):
        kept, scores = select_topv(s, None, (12, 12), k, method="uniform2d")
        assert len(kept) == k and scores.sum() == k
        assert sorted(set((kept // 12).tolist())) == rows
        assert sorted(set((kept % 12).tolist())) == rows  # square grid, square lattice
    # exactly K for every K, on square, wide and tall grids and on tokens scattered over a larger grid
    rng = np.random.default_rng(5)
    for grid, n in (((12, 12), 144), ((24, 6), 144), ((1, 50), 50), ((50, 1), 50)):
        for k in range(1, n + 1):
            kept, _ = select_topv(np.zeros((n, 1), np.float32), None, grid, k, method="uniform2d")
            assert len(kept) == k and np.all(np.diff(kept) > 0)
    coords = (rng.integers(0, 30, 100), rng.integers(0, 20, 100))
    for k in (1, 7, 50, 99, 100):
        kept, _ = select_topv(np.zeros((100, 1), np.float32), None, (30, 20), k, method="uniform2d",
                                   coords=coords)
        assert len(kept) == k and np.all(np.diff(kept) > 0)


def test_divprune_spreads_over_clusters(rng: np.random.Generator) -> None:
    """Four tight clusters of features: the first four picks take one token from each."""
    centres = rng.standard_normal((4, 32))
    labels = rng.integers(0, 4, 200)
    s = (centres[labels] + 0.01 * rng.standard_normal((200, 32))).astype(np.float32)
    kept, scores = select_topv(s, None, (20, 10), 4, method="divprune")
    assert sorted(labels[kept].tolist()) == [0, 1, 2, 3]
    assert sorted(scores[kept].tolist()) == [1.0, 2.0, 3.0, 4.0]
    first = int(np.argmax(scores))
    _, distinct = select_topv(s, None, (20, 10), 4, method="distinct")
    assert first == int(np.argmax(distinct))  # DivPrune starts from the most distinctive token


@pytest.mark.parametrize("method", sorted(topv_edge.METHODS))
def test_deterministic_across_threads_and_memory_modes(rng: np.random.Generator, method: str) -> None:
    s, t = random_features(rng, 1000, 96)
    coords = (rng.integers(0, 40, 1000), rng.integers(0, 30, 1000))
    ref = select_topv(s, t, (40, 30), 0.3, coords=coords, threads=1, method=method)
    for threads in (2, 3, 7):
        for scratch in (None, 0):  # stored N x N kernel, or recomputed block by block
            got = select_topv(s, t, (40, 30), 0.3, coords=coords, threads=threads, max_scratch_bytes=scratch,
                                   method=method)
            np.testing.assert_array_equal(got[0], ref[0])
            np.testing.assert_array_equal(got[1], ref[1])


def test_inputs_are_not_modified(rng: np.random.Generator) -> None:
    s, t = random_features(rng, 64, 16)
    s0, t0 = s.copy(), t.copy()
    select_topv(s, t, (8, 8), 10)
    np.testing.assert_array_equal(s, s0)
    np.testing.assert_array_equal(t, t0)


def test_accepts_other_dtypes_and_layouts(rng: np.random.Generator) -> None:
    s, t = random_features(rng, 64, 16)
    ref = select_topv(s, t, (8, 8), 10)
    got = select_topv(s.astype(np.float64), np.asfortranarray(t), (8, 8), 10)
    np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.slow
def test_large_image_stays_within_memory_bound() -> None:
    """N = 16384 (the largest Qwen2-VL image) must not materialise the N x N kernel."""
    code = textwrap.dedent(
        """
        import resource, numpy as np, topv_edge
        rng = np.random.default_rng(0)
        n, d = 16384, 32
        s = rng.standard_normal((n, d)).astype(np.float32)
        t = (s + rng.standard_normal((n, d))).astype(np.float32)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kept, scores = topv_edge.select(s, t, (128, 128), 0.25, method="topv", iters=3)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert len(kept) == 4096 and np.isfinite(scores).all()
        print((after - before) / 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    growth_mib = float(out.stdout.strip().splitlines()[-1])
    assert growth_mib < 512, f"peak memory grew by {growth_mib:.0f} MiB"
