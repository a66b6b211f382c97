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
