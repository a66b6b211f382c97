"""The pass: `select`, the one Python entry point to it, on either backend (the C++ library or the Numba reference).

The rules of what the pass accepts live here and in the C library's checks (topv_check_params): the method
and its parameters (`make_params`), and what `keep` means (`check_keep`, `keep_count`). The Numba reference
is imported only when `backend="numba"` asks for it.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from ..errors import OptionError, OptionTypeError, TopVError
from . import native as _native
from .native import TopVParams

PARAM_NAMES: tuple[str, ...] = ("alpha", "beta", "gamma", "sigma", "eps", "tau", "iters", "recover")
BACKENDS: tuple[str, ...] = ("native", "numba")
# The methods that solve the transport problem and read its plan (they need target features); the C library's
# method table holds the names, tests/unit/test_pass_parity.py checks that both sides know the same methods.
READOUTS: tuple[str, ...] = ("topv", "topv_rowsum", "topv_cost", "topv_fcost")
BASELINES: tuple[str, ...] = ("uniform", "norm", "divprune", "uniform2d", "distinct")


def __getattr__(name: str) -> Any:
    # METHODS ({name: enum value}) is the C library's table, read when first asked for: importing needs no library
    if name == "METHODS":
        return _native.METHODS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def default_method() -> str:
    """The default method's name: topv_default_params().method, read from the C library."""
    value = _native.default_params().method
    return next(name for name, m in _native.METHODS.items() if m == value)


def default_params() -> dict[str, float | int]:
    """The pass parameters' defaults, read from the native topv_default_params()."""
    p = _native.default_params()
    return {name: getattr(p, name) for name in PARAM_NAMES}


def check_keep(keep: Any) -> float | int:
    """The one rule of `keep`: an int is a token count (>= 1), a float a ratio in (0, 1]. Returns it."""
    if isinstance(keep, (bool, np.bool_)) or not isinstance(keep, (numbers.Integral, numbers.Real)):
        raise OptionTypeError("keep", f"must be a ratio in (0, 1] (a float) or a token count (an int), got {keep!r}")
    if isinstance(keep, numbers.Integral):
        if keep < 1:
            raise OptionError("keep", f"count must be at least 1, got {keep}")
        return int(keep)
    if not 0.0 < float(keep) <= 1.0:  # NaN fails too
        raise OptionError("keep", f"ratio must be in (0, 1], got {keep}; a whole number (an int) is a token count")
    return float(keep)


def keep_count(n_tokens: int, keep: int | float) -> int:
    """K for `keep` (check_keep's rule): an int is a count (1..N), a float a ratio in (0, 1] -> round(ratio * N)."""
    keep = check_keep(keep)
    if isinstance(keep, int):
        if keep > n_tokens:
            raise OptionError("keep", f"count must be between 1 and {n_tokens} (the number of tokens), got {keep}")
        return keep
    return _native.keep_count(n_tokens, keep)


def make_params(method: str | None = None, threads: int = 0, max_scratch_bytes: int | None = None,
                **params: Any) -> TopVParams:
    """A validated topv_params struct: the C defaults with `params` applied (method None: the default)."""
    method = default_method() if method is None else method
    if method not in _native.METHODS:
        raise ValueError(f"method must be one of {', '.join(_native.METHODS)}, got {method!r}")
    unknown = set(params) - set(PARAM_NAMES)
    if unknown:
        raise TypeError(f"unknown pass parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(PARAM_NAMES)}")
    p = _native.default_params()
    p.method = _native.METHODS[method]
    for name, value in params.items():
        if name == "iters":
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise TypeError(f"iters must be an int, got {value!r}")
            if not 1 <= value <= 2**31 - 1:
                raise ValueError(f"iters must be at least 1, got {value}")
        elif not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a number, got {value!r}")
        setattr(p, name, value)
    p.n_threads = int(threads)
    if max_scratch_bytes is not None:
        p.max_scratch_bytes = int(max_scratch_bytes)
    try:
        _native.check_params(p)
    except TopVError as e:
        shown = ", ".join(f"{n}={getattr(p, n):g}" for n in PARAM_NAMES)
        raise TopVError(e.status, f"{e} (got {shown})") from None
    return p


def _as_features(name: str, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (tokens x features), got shape {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} must have at least one token and one feature, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf (first at row {int(np.argwhere(~np.isfinite(x))[0, 0])})")
    return x


def _coordinates(n: int, grid: tuple[int, int], coords: Any) -> tuple[np.ndarray, np.ndarray]:
    w, h = grid
    if coords is None:
        if w * h != n:
            raise ValueError(f"grid {w}x{h} has {w * h} cells but there are {n} tokens; pass coords=(x, y)")
        idx = np.arange(n, dtype=np.int32)
        return np.ascontiguousarray(idx % w), np.ascontiguousarray(idx // w)
    xs, ys = (np.ascontiguousarray(c, dtype=np.int32) for c in coords)
    if xs.shape != (n,) or ys.shape != (n,):
        raise ValueError(f"coords must be two arrays of {n} grid coordinates, got shapes {xs.shape}, {ys.shape}")
    if xs.min() < 0 or xs.max() >= w or ys.min() < 0 or ys.max() >= h:
        raise ValueError(f"coords must lie in the {w}x{h} grid")
    return xs, ys


def select(
    source: np.ndarray,
    target: np.ndarray | None,
    grid: tuple[int, int],
    keep: int | float,
    *,
    method: str | None = None,
    backend: str = "native",
    coords: tuple[np.ndarray, np.ndarray] | None = None,
    threads: int = 0,
    max_scratch_bytes: int | None = None,
    **params: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose which visual tokens of one image (slice) to keep.

    source, target: N x d features (the hidden states entering layer Li and the
        post-attention norm output of layer Li); target may be None for the
        baselines (uniform, uniform2d, norm, divprune, distinct), which do not read it.
    grid: (W, H) in tokens. coords: per-token (x, y) arrays; by default the N = W * H
        tokens are in raster order.
    keep: an int is a count K (1..N); a float is a ratio in (0, 1], K = round(ratio * N).
    method: a name of METHODS (docs/pass.md): "topv" (optimal-transport importance, read
        as the share of a token's mass the plan sends to its own target), "topv_rowsum",
        "topv_cost", "topv_fcost" (other read-outs of the same plan), or a baseline: "uniform" (evenly
        spaced in raster order), "uniform2d" (an even 2-D lattice), "norm" (largest
        source-feature norm), "divprune" (greedy max-min cosine diversity), "distinct"
        (1 - max cosine similarity to the other tokens). None: default_method().
    backend: "native" (the C++ pass) or "numba" (the reference implementation).
    params: alpha, beta, gamma, sigma, eps, tau, iters, recover (defaults: default_params()).

    Returns (indices, scores): the K kept token indices, ascending, int64; and the
    N scores, float64 (higher is kept first; 1/0 for uniform and uniform2d; K - t for
    the token divprune picked at step t, 0 for the others).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    method = default_method() if method is None else method
    p = make_params(method, threads, max_scratch_bytes, **params)
    s = _as_features("source", source)
    n, d = s.shape
    if target is None:
        if method in READOUTS:
            raise ValueError(f"method {method!r} needs target features")
        t = s
    else:
        t = _as_features("target", target)
        if t.shape != s.shape:
            raise ValueError(f"source and target must have the same shape, got {s.shape} and {t.shape}")
    try:
        w, h = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (W, H), got {grid!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"grid must be at least 1x1, got {w}x{h}")
    xs, ys = _coordinates(n, (w, h), coords)
    n_keep = keep_count(n, keep)

    if backend == "native":
        kept, scores = _native.select(s, t, xs, ys, (w, h), n_keep, p)
        return kept.astype(np.int64), scores
    return _reference_select(s, t, xs, ys, (w, h), n_keep, p)


def _reference_select(s: np.ndarray, t: np.ndarray, xs: np.ndarray, ys: np.ndarray,
                      grid: tuple[int, int], n_keep: int, p: TopVParams) -> tuple[np.ndarray, np.ndarray]:
    from . import reference  # Numba compiles on first use: only callers of the reference pay for it

    n = s.shape[0]
    method = next(name for name, value in _native.METHODS.items() if value == p.method)
    if method in ("uniform", "uniform2d"):
        if method == "uniform":
            kept = reference.uniform_indices(n, n_keep)
        else:
            kept = reference.lattice_indices(xs, ys, grid[0], grid[1], n_keep)
        scores = np.zeros(n)
        scores[kept] = 1.0
        return kept, scores
    if method == "norm":
        scores = reference.row_norms(s)
        return np.sort(reference.top_indices(scores, n_keep)), scores
    if method in ("distinct", "divprune"):
        cos = reference.cosine_matrix(s)
        if method == "distinct":
            scores = reference.distinctiveness(cos)
            return np.sort(reference.top_indices(scores, n_keep)), scores
        order = reference.divprune_order(cos, n_keep)
        scores = np.zeros(n)
        scores[order] = n_keep - np.arange(n_keep)
        return np.sort(order), scores
    # float32 parameters, exactly as the native pass sees them
    scores = reference.topv_importance(s, t, xs, ys, grid[0], grid[1], p.alpha, p.beta, p.gamma,
                                       p.sigma, p.eps, p.tau, p.iters, reference.READOUTS[method])
    if not np.isfinite(scores).all():
        raise TopVError(_native.STATUS_NUMERIC, _native.status_string(_native.STATUS_NUMERIC))
    return reference.select_with_recovery(scores, n_keep, p.recover), scores
