"""Features shaped like an LLM layer's input and output, and the pass with TopV's transport by default."""

from __future__ import annotations

import numpy as np


def random_features(rng: np.random.Generator, n: int, d: int, kind: str = "correlated") -> tuple[np.ndarray, np.ndarray]:
    """Source and target features shaped like a layer's input and its post-attention norm output."""
    source = rng.standard_normal((n, d)).astype(np.float32)
    if kind == "independent":
        target = rng.standard_normal((n, d)).astype(np.float32)
    elif kind == "outliers":  # LLM hidden states carry a few huge channels
        source[:, : max(1, d // 64)] *= 50.0
        target = (0.7 * source + rng.standard_normal((n, d))).astype(np.float32)
    else:
        target = (source + 0.5 * rng.standard_normal((n, d))).astype(np.float32)
    return source, target


def select_topv(*args, **kwargs):
    """topv_edge.select with TopV's transport pass unless the call names another method (the product's default
    method is another one): the pass tests are about every method, TopV first."""
    import topv_edge

    return topv_edge.select(*args, **{"method": "topv", **kwargs})


COS_ATOL = 1e-5  # cosine similarities from the native float32 Gram kernel vs the reference's float64 sums


def divprune_replay(source: np.ndarray, got_scores: np.ndarray, k: int, atol: float = COS_ATOL) -> bool:
    """The native picks replayed on the reference's float64 cosines: each within `atol` of the best available
    gain. Returns whether every step's best was clear (then the sequences must be identical)."""
    from topv_edge.pruning import reference

    n = len(source)
    order = np.argsort(-got_scores, kind="stable")[:k]
    cos = reference.cosine_matrix(source)
    gain = reference.distinctiveness(cos)
    taken = np.zeros(n, dtype=bool)
    nearest = np.full(n, np.inf)
    exact = True
    for t, pick in enumerate(order):
        g = gain if t == 0 else nearest
        free = np.flatnonzero(~taken)
        best = g[free].max()
        assert g[pick] >= best - atol, (t, pick, g[pick], best)
        runner_up = np.sort(g[free])[-2] if len(free) > 1 else -np.inf
        exact &= best - runner_up > 2 * atol
        taken[pick] = True
        nearest = np.minimum(nearest, 1.0 - cos[pick])
    return exact
