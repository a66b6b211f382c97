"""The pass at larger N: DivPrune without the N x N matrix, TopV's stored / recomputed kernel, scratch bounds.

DivPrune's greedy keeps only each token's distance to its nearest applied pick (a lazy max-heap, docs/pass.md
"Speed"); it must make exactly the reference's picks. With small-integer features every Gram entry is exact in
float32 and the cosines are the same doubles in both implementations, so the kept sets and scores must be
identical, exact ties included (such features are full of them). With Gaussian features the native cosines
differ from the reference's float64 ones by rounding, so the picks are held to the parity suite's criterion.
Speed is not asserted here: scripts/bench_pass.py --scaling measures it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import topv_edge
from helpers.features import COS_ATOL, divprune_replay, random_features, select_topv
from topv_edge.pruning import reference

TRANSPORT = ("topv", "topv_rowsum", "topv_cost", "topv_fcost")


def _integer_features(rng: np.random.Generator, n: int, d: int, levels: int) -> np.ndarray:
    """Entries in {-levels, ..., levels}, some rows repeated and some all zero: exact float32 Gram entries
    (|sum| < 2^24) and many exactly tied distances."""
    x = rng.integers(-levels, levels + 1, (n, d)).astype(np.float32)
    x[rng.random(n) < 0.2] = x[rng.integers(0, n, 1)]  # a repeated token
    x[rng.random(n) < 0.02] = 0.0
    return x


def _grid(n: int) -> tuple[tuple[int, int], tuple[np.ndarray, np.ndarray]]:
    w = int(np.ceil(np.sqrt(n)))
    idx = np.arange(n)
    return (w, (n + w - 1) // w), (idx % w, idx // w)


@pytest.mark.parametrize(("n", "d", "levels"), [(2, 3, 1), (97, 5, 1), (600, 64, 1), (1500, 256, 2), (3000, 1024, 2),
                                                pytest.param(6000, 2560, 2, marks=pytest.mark.slow)])
def test_divprune_identical_to_reference_on_exact_cosines(n: int, d: int, levels: int) -> None:
    rng = np.random.default_rng(n + d)
    s = _integer_features(rng, n, d, levels)
    grid, coords = _grid(n)
    for keep in (1, 0.25, n):
        want, want_scores = select_topv(s, None, grid, keep, coords=coords, method="divprune", backend="numba")
        # every memory budget (the distances never need the N x N matrix) and thread count gives the same picks
        for threads, scratch in ((1, None), (2, 0), (3, 1 << 20)):
            got, got_scores = select_topv(s, None, grid, keep, coords=coords, method="divprune", threads=threads,
                                          max_scratch_bytes=scratch)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got_scores, want_scores)


def test_distinct_identical_to_reference_on_exact_cosines() -> None:
    rng = np.random.default_rng(7)
    s = _integer_features(rng, 2000, 300, 2)
    grid, coords = _grid(2000)
    want, want_scores = select_topv(s, None, grid, 0.25, coords=coords, method="distinct", backend="numba")
    got, got_scores = select_topv(s, None, grid, 0.25, coords=coords, method="distinct", max_scratch_bytes=0)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_scores, want_scores)


@pytest.mark.parametrize(("n", "d"), [(576, 2560), (2048, 256), (4000, 64)])
def test_divprune_matches_reference_gaussian(n: int, d: int) -> None:
    rng = np.random.default_rng(n)
    s, _ = random_features(rng, n, d, "outliers")
    grid, coords = _grid(n)
    k = topv_edge.keep_count(n, 0.25)
    got, got_scores = select_topv(s, None, grid, k, coords=coords, method="divprune", max_scratch_bytes=0)
    np.testing.assert_array_equal(np.sort(got_scores[got]), np.arange(1, k + 1))
    if divprune_replay(s, got_scores, k, COS_ATOL):
        want, want_scores = select_topv(s, None, grid, k, coords=coords, method="divprune", backend="numba")
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_scores, want_scores)
    again = select_topv(s, None, grid, k, coords=coords, method="divprune", threads=1)
    np.testing.assert_array_equal(again[0], got)
    np.testing.assert_array_equal(again[1], got_scores)


@pytest.mark.parametrize("method", TRANSPORT)
def test_transport_stored_partial_and_recomputed_are_identical(method: str) -> None:
    """The kernel stored whole, for some row blocks only, or recomputed on every pass: the same bits."""
    rng = np.random.default_rng(3)
    n, d = 1500, 96
    s, t = random_features(rng, n, d)
    grid, coords = _grid(n)
    entry = 4 + (4 if method in ("topv_cost", "topv_fcost") else 0)  # float32 K' (+ scaled F)
    block = 144 * n * entry
    ref = select_topv(s, t, grid, 0.25, coords=coords, method=method)  # default budget: all stored
    for scratch in (0, block, 3 * block + 1, n * n * entry - 1, n * n * entry):
        for threads in (1, 2):
            got = select_topv(s, t, grid, 0.25, coords=coords, method=method, threads=threads,
                              max_scratch_bytes=scratch)
            np.testing.assert_array_equal(got[0], ref[0])
            np.testing.assert_array_equal(got[1], ref[1])


def test_transport_double_kernel_path_matches_float_path_closely() -> None:
    """(alpha + beta) / eps at 80 stores K' as float32, just above it in double (float would underflow).
    Both are the same transport problem: the scores agree to float32 precision."""
    rng = np.random.default_rng(4)
    s, t = random_features(rng, 400, 64)
    grid, coords = _grid(400)
    _, a = select_topv(s, t, grid, 0.25, coords=coords, method="topv_rowsum", alpha=4.0, beta=0.0, eps=0.05)
    _, b = select_topv(s, t, grid, 0.25, coords=coords, method="topv_rowsum", alpha=4.0, beta=0.0, eps=0.0499)
    _, b0 = select_topv(s, t, grid, 0.25, coords=coords, method="topv_rowsum", alpha=4.0, beta=0.0, eps=0.0499,
                        backend="numba")
    _, a0 = select_topv(s, t, grid, 0.25, coords=coords, method="topv_rowsum", alpha=4.0, beta=0.0, eps=0.05,
                        backend="numba")
    # each path against the reference at its own eps (the parity suite's scale of error)
    assert np.abs(a - a0).max() <= 1e-4 * np.abs(a0).max()
    assert np.abs(b - b0).max() <= 1e-4 * np.abs(b0).max()


def _peak_growth_mib(code: str) -> float:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


_MEASURE = """
    import resource, numpy as np, topv_edge
    rng = np.random.default_rng(0)
    n, d = {n}, {d}
    s = rng.standard_normal((n, d)).astype(np.float32)
    t = (s + rng.standard_normal((n, d))).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kept, scores = topv_edge.select(s, t, (128, n // 128), 0.25, method="{method}"{extra})
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(kept) == n // 4 and np.isfinite(scores).all()
    print((after - before) / 1024)
"""


@pytest.mark.slow
def test_divprune_scratch_bound_at_16384() -> None:
    """N = 16384 at a real LLM width: no N x N matrix (2 GiB as doubles): scratch is O(N d)."""
    growth = _peak_growth_mib(_MEASURE.format(n=16384, d=2560, method="divprune", extra=""))
    assert growth < 1024, f"peak memory grew by {growth:.0f} MiB"


@pytest.mark.slow
def test_topv_scratch_bound_at_16384() -> None:
    """N = 16384: the default budget (256 MiB) stores a quarter of K' and recomputes the rest; scratch
    stays below 1 GiB (the packed T, the budget, per-thread row blocks)."""
    growth = _peak_growth_mib(_MEASURE.format(n=16384, d=256, method="topv", extra=", iters=2"))
    assert growth < 1024, f"peak memory grew by {growth:.0f} MiB"
