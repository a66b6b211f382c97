"""Bad input: a clear Python exception from both backends, an error code from the C API, never a crash."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest

import topv_edge
from topv_edge.pruning import native as _native
from helpers.features import random_features, select_topv


BACKENDS = ["native", "numba"]


@pytest.fixture
def features(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return random_features(rng, 16, 8)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "shape_s, shape_t, message",
    [
        ((0, 8), (0, 8), "at least one token"),
        ((16, 0), (16, 0), "at least one token and one feature"),
        ((16,), (16,), "2-D"),
        ((16, 8), (16, 9), "same shape"),
        ((16, 8), (15, 8), "same shape"),
    ],
)
def test_bad_shapes(backend: str, shape_s, shape_t, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_topv(np.ones(shape_s, np.float32), np.ones(shape_t, np.float32), (4, 4), 1, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("keep", [0, 17, -1, 0.0, 1.5, -0.25, math.nan])
def test_keep_out_of_range(features, backend: str, keep) -> None:
    with pytest.raises(ValueError, match="keep"):
        select_topv(*features, (4, 4), keep, backend=backend)


@pytest.mark.parametrize("keep", [True, "0.5", None])
def test_keep_wrong_type(features, keep) -> None:
    with pytest.raises(TypeError, match="keep"):
        select_topv(*features, (4, 4), keep)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", [0, 1])
def test_nonfinite_features(features, backend: str, bad: float, which: int) -> None:
    arrays = [features[0].copy(), features[1].copy()]
    arrays[which][5, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        select_topv(*arrays, (4, 4), 4, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "params, status",
    [
        (dict(eps=0.001), "EPS_RANGE"),
        (dict(alpha=699.5, eps=1.0), "EPS_RANGE"),
        (dict(eps=0.0), "BAD_PARAM"),
        (dict(eps=-0.1), "BAD_PARAM"),
        (dict(sigma=0.0), "BAD_PARAM"),
        (dict(alpha=-1.0), "BAD_PARAM"),
        (dict(beta=math.nan), "BAD_PARAM"),
        (dict(tau=0.0), "BAD_PARAM"),
        (dict(recover=1.01), "BAD_PARAM"),
    ],
)
def test_bad_parameters(features, backend: str, params: dict, status: str) -> None:
    with pytest.raises(topv_edge.TopVError) as info:
        select_topv(*features, (4, 4), 4, backend=backend, **params)
    assert info.value.status == {"EPS_RANGE": 7, "BAD_PARAM": 6}[status]
    assert "eps" in str(info.value) or "out of range" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(iters=0), ValueError, "iters"),
        (dict(iters=2.5), TypeError, "iters"),
        (dict(alpha="1"), TypeError, "alpha"),
        (dict(lambda_=1.0), TypeError, "unknown pass parameter"),
        (dict(method="fastv"), ValueError, "method"),
        (dict(backend="cuda"), ValueError, "backend"),
    ],
)
def test_bad_arguments(features, kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        select_topv(*features, (4, 4), 4, **kwargs)


@pytest.mark.parametrize(
    "grid, coords, message",
    [
        ((4, 5), None, "cells"),
        ((0, 16), None, "at least 1x1"),
        ("4x4", None, "grid"),
        ((4, 4), (np.arange(16), np.arange(16)), "lie in the 4x4 grid"),
        ((4, 4), (np.zeros(15), np.zeros(15)), "16 grid coordinates"),
    ],
)
def test_bad_grid(features, grid, coords, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        select_topv(*features, grid, 4, coords=coords)


@pytest.mark.parametrize("method", sorted(topv_edge.METHODS))
def test_transport_methods_need_target(features, method: str) -> None:
    if method.startswith("topv"):
        with pytest.raises(ValueError, match="target"):
            select_topv(features[0], None, (4, 4), 4, method=method)
    else:  # the baselines do not read it
        for backend in ("native", "numba"):
            kept, _ = select_topv(features[0], None, (4, 4), 4, method=method, backend=backend)
            assert len(kept) == 4


def test_method_names_come_from_c() -> None:
    assert _native.method_from_name("topv") == 0
    assert _native.method_from_name("nonsense") == -1
    for name, value in topv_edge.METHODS.items():
        assert _native.method_from_name(name) == value
    with pytest.raises(ValueError, match="method must be one of"):
        select_topv(np.zeros((4, 2), np.float32), None, (2, 2), 1, method="TopV")


def test_what_a_method_reads_agrees_with_the_reference() -> None:
    """topv_method_reads (what the stage uses to skip the probe at layer 0): the transport read-outs read the
    target, every method but the two lattices reads the source; both sides know the same."""
    from topv_edge.pruning import READOUTS

    for name, value in topv_edge.METHODS.items():
        reads = _native.method_reads(value)
        assert bool(reads & _native.READS_TARGET) == (name in READOUTS), name
        assert bool(reads & _native.READS_SOURCE) == (name not in ("uniform", "uniform2d")), name
    assert _native.method_reads(-1) == -1 and _native.method_reads(len(topv_edge.METHODS)) == -1


def test_c_api_returns_codes_for_raw_calls() -> None:
    """The C API checks its own arguments (llama.cpp calls it without the Python checks)."""
    lib = ctypes.CDLL(str(_native._library_path()))
    lib.topv_select.restype = ctypes.c_int32
    p = _native.default_params()
    null = ctypes.c_void_p(0)
    lib.topv_select.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_void_p] * 2 + \
        [ctypes.c_int32] * 2 + [ctypes.c_int64, _native.TopVParams, ctypes.c_void_p, ctypes.c_void_p]
    assert lib.topv_select(null, null, 4, 4, null, null, 2, 2, 1, p, null, null) == 1
    s = np.zeros((4, 4), np.float32)
    xy = np.zeros(4, np.int32)
    out = np.zeros(4, np.int32)
    ptr = lambda a: a.ctypes.data_as(ctypes.c_void_p)  # noqa: E731
    assert lib.topv_select(ptr(s), ptr(s), 0, 4, ptr(xy), ptr(xy), 2, 2, 1, p, ptr(out), null) == 2
    assert lib.topv_select(ptr(s), ptr(s), 4, 4, ptr(xy), ptr(xy), 2, 2, 9, p, ptr(out), null) == 4
    s[1, 1] = np.nan
    assert lib.topv_select(ptr(s), ptr(s), 4, 4, ptr(xy), ptr(xy), 2, 2, 1, p, ptr(out), null) == 5
    assert np.all(out == 0), "nothing written on failure"
    for code in range(-1, 12):
        assert _native.status_string(code)
