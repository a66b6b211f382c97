"""ctypes bindings to the native TopV pass (native/include/topv.h).

ctypes rather than a compiled extension: the library is a plain C API that the
llama.cpp patch links too, so binding it needs no Python-ABI build and one
shared library serves every Python version (docs/design.md).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import TopVError

STATUS_NUMERIC = 9  # TOPV_STATUS_NUMERIC


class TopVParams(ctypes.Structure):
    """Mirror of `struct topv_params`."""

    _fields_ = [
        ("method", ctypes.c_int32),
        ("alpha", ctypes.c_float),
        ("beta", ctypes.c_float),
        ("gamma", ctypes.c_float),
        ("sigma", ctypes.c_float),
        ("eps", ctypes.c_float),
        ("tau", ctypes.c_float),
        ("iters", ctypes.c_int32),
        ("recover", ctypes.c_float),
        ("n_threads", ctypes.c_int32),
        ("max_scratch_bytes", ctypes.c_size_t),
    ]


def _library_path() -> Path:
    """The compiled library: $TOPV_EDGE_LIB, else beside this file (an installed
    package: CMakeLists.txt installs it into topv_edge/pruning/), else in the installed distribution (when a source checkout on
    sys.path shadows the installed package, e.g. `python -m pytest` at its root)."""
    override = os.environ.get("TOPV_EDGE_LIB")
    if override:
        return Path(override)
    name = {"win32": "topv.dll", "darwin": "libtopv.dylib"}.get(sys.platform, "libtopv.so")
    here = Path(__file__).with_name(name)
    if here.exists():
        return here
    try:
        installed = Path(str(importlib.metadata.distribution("topv-edge").locate_file(f"topv_edge/pruning/{name}")))
    except importlib.metadata.PackageNotFoundError:
        return here
    return installed if installed.exists() else here


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL:
    """The loaded native library (loaded once; it holds no state of its own)."""
    path = _library_path()
    if not path.exists():
        raise ImportError(
            f"the native TopV library is missing ({path}); install the package with "
            "`pip install .` so scikit-build-core compiles native/"
        )
    lib = ctypes.CDLL(str(path))
    f32p = np.ctypeslib.ndpointer(np.float32, flags="C_CONTIGUOUS")
    i32p = np.ctypeslib.ndpointer(np.int32, flags="C_CONTIGUOUS")
    f64p = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
    lib.topv_default_params.restype = TopVParams
    lib.topv_default_params.argtypes = []
    lib.topv_status_string.restype = ctypes.c_char_p
    lib.topv_status_string.argtypes = [ctypes.c_int32]
    lib.topv_check_params.restype = ctypes.c_int32
    lib.topv_check_params.argtypes = [TopVParams]
    lib.topv_method_name.restype = ctypes.c_char_p
    lib.topv_method_name.argtypes = [ctypes.c_int32]
    lib.topv_method_from_name.restype = ctypes.c_int32
    lib.topv_method_from_name.argtypes = [ctypes.c_char_p]
    lib.topv_method_reads.restype = ctypes.c_int32
    lib.topv_method_reads.argtypes = [ctypes.c_int32]
    lib.topv_keep_count.restype = ctypes.c_int64
    lib.topv_keep_count.argtypes = [ctypes.c_int64, ctypes.c_double]
    lib.topv_select.restype = ctypes.c_int32
    lib.topv_select.argtypes = [
        f32p, f32p, ctypes.c_int64, ctypes.c_int64, i32p, i32p,
        ctypes.c_int32, ctypes.c_int32, ctypes.c_int64, TopVParams, i32p, f64p,
    ]
    return lib


def method_names() -> dict[str, int]:
    """{name: enum topv_method value}, read from the C library (topv_method_name): the names live in C only."""
    lib = library()
    out: dict[str, int] = {}
    m = 0
    while (name := lib.topv_method_name(m)) is not None:  # 0 .. TOPV_METHOD_COUNT - 1
        out[name.decode()] = m
        m += 1
    return out


READS_SOURCE, READS_TARGET = 1, 2  # topv_method_reads bits


def method_reads(method: int) -> int:
    """topv_method_reads: READS_SOURCE | READS_TARGET bits of the features the method reads, -1 if unknown."""
    return int(library().topv_method_reads(method))


def method_from_name(name: str) -> int:
    """topv_method_from_name: the enum value, or -1 if unknown."""
    return int(library().topv_method_from_name(name.encode()))


def __getattr__(name: str):
    # METHODS is read from the library on first use, so importing the package never needs it loaded
    if name == "METHODS":
        methods = method_names()
        globals()["METHODS"] = methods
        return methods
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def status_string(status: int) -> str:
    return library().topv_status_string(status).decode()


def check(status: int) -> None:
    """Raise TopVError for a non-zero topv_status."""
    if status != 0:
        raise TopVError(status, status_string(status))


def default_params() -> TopVParams:
    return library().topv_default_params()


def check_params(params: TopVParams) -> None:
    check(library().topv_check_params(params))


def keep_count(n_tokens: int, ratio: float) -> int:
    k = library().topv_keep_count(n_tokens, ratio)
    if k < 0:
        raise ValueError(f"keep ratio must be in (0, 1], got {ratio}")
    return int(k)


def select(
    source: np.ndarray,
    target: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    grid: tuple[int, int],
    n_keep: int,
    params: TopVParams,
) -> tuple[np.ndarray, np.ndarray]:
    """topv_select on validated, C-contiguous arrays (see topv_edge.select)."""
    n, d = source.shape
    kept = np.empty(n_keep, dtype=np.int32)
    scores = np.empty(n, dtype=np.float64)
    status = library().topv_select(
        source, target, n, d, xs, ys, grid[0], grid[1], n_keep, params, kept, scores
    )
    check(status)
    return kept, scores
