#!/usr/bin/env python3
"""Benchmark the TopV pass: native C++ (1 thread, all threads) vs the Numba
reference vs numpy's BLAS product S @ T.T alone (1 thread, all threads).

Everything is measured in one run on the same inputs; the table shows the
ratios the project tracks: Numba / C++ on one thread, and the whole C++ pass
on all threads / BLAS's S @ T.T on all threads. Writes JSON (--json).

    python scripts/bench_pass.py                 # the full grid (Numba skipped above --numba-max-work)
    python scripts/bench_pass.py --n 576 --d 4096
    python scripts/bench_pass.py --per-method --n 144 576 2880 --d 256 4096   # every method, side by side

`--per-method` times every method of topv_edge.METHODS (C++, all threads, keep 0.25, default
parameters) on the same inputs, with the ratio to `topv_rowsum` (the plan's row sums: what every
transport read-out costs at least), and writes results/bench_methods.json.

`--scaling` times every method at N = 576 ... 16384, d = 2560 (C++, all threads, keep 0.25, default
parameters, so max_scratch_bytes decides stored vs recomputed), each with its ratio to numpy's
S @ T.T on all threads in the same run and the peak scratch memory of the call (the growth of the
process's peak RSS, reset before each call through /proc/self/clear_refs), and the Numba reference
below --numba-max-work; writes results/bench_pass_scaling.json. Run it with the BLAS at its defaults:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python scripts/bench_pass.py --scaling
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

import topv_edge

DEFAULT_N = [64, 256, 576, 1024, 2880, 4096]
DEFAULT_D = [896, 2048, 4096]
SCALING_N = [576, 1024, 2048, 4096, 8192, 16384]
SCALING_D = [2560]


def median_ms(fn: Callable[[], object], repeats: int, min_seconds: float = 0.3) -> float:
    fn()  # warm-up (and Numba's compile)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 50):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def features(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, d), dtype=np.float32)
    t = (s + 0.5 * rng.standard_normal((n, d), dtype=np.float32)).astype(np.float32)
    return s, t


def grid_for(n: int) -> tuple[int, int]:
    w = int(np.sqrt(n))
    while n % w:
        w -= 1
    return w, n // w


def blas_single_thread(cases: list[tuple[int, int]], repeats: int) -> dict[str, float]:
    """S @ T.T with OpenBLAS limited to one thread: a child process, since the
    thread count is fixed when numpy loads its BLAS."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    arg = ",".join(f"{n}x{d}" for n, d in cases)
    out = subprocess.run([sys.executable, __file__, "--blas-only", arg, "--repeats", str(repeats)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=DEFAULT_N, help="token counts N")
    ap.add_argument("--d", type=int, nargs="+", default=DEFAULT_D, help="feature widths d")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions (median)")
    ap.add_argument("--numba-max-work", type=float, default=2e10,
                    help="skip the Numba reference where N*N*d exceeds this (it runs ~1e9 steps/s)")
    ap.add_argument("--json", type=Path, default=Path("results/bench_pass.json"), help="where to write results")
    ap.add_argument("--per-method", action="store_true", help="time every method side by side instead")
    ap.add_argument("--scaling", action="store_true",
                    help="every method at N = 576 ... 16384, d = 2560, with the ratio to S @ T.T and peak scratch")
    ap.add_argument("--methods", nargs="+", help="--scaling: only these methods")
    ap.add_argument("--blas-only", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.per_method:
        per_method(args)
        return
    if args.scaling:
        scaling(args)
        return

    if args.blas_only:  # child process: single-thread BLAS timings
        res = {}
        for case in args.blas_only.split(","):
            n, d = map(int, case.split("x"))
            s, t = features(n, d)
            res[case] = median_ms(lambda: s @ t.T, args.repeats)
        print(json.dumps(res))
        return

    cases = [(n, d) for n in args.n for d in args.d]
    blas_1t = blas_single_thread(cases, args.repeats)
    threads = os.cpu_count() or 1
    rows = []
    header = (f"{'N':>5} {'d':>5} | {'BLAS 1t':>9} {'BLAS all':>9} | {'C++ 1t':>9} {'C++ all':>9} | "
              f"{'Numba':>9} | {'Numba/C++1t':>11} {'C++all/BLASall':>14}")
    print(f"TopV pass, ms (median of {args.repeats}+); {threads} threads; keep 0.25, default parameters")
    print(header)
    print("-" * len(header))
    for n, d in cases:
        s, t = features(n, d)
        grid = grid_for(n)
        row = {
            "n": n, "d": d, "grid": grid,
            "blas_1t_ms": blas_1t[f"{n}x{d}"],
            "blas_all_ms": median_ms(lambda: s @ t.T, args.repeats),
            "cpp_1t_ms": median_ms(lambda: topv_edge.select(s, t, grid, 0.25, threads=1), args.repeats),
            "cpp_all_ms": median_ms(lambda: topv_edge.select(s, t, grid, 0.25, threads=threads), args.repeats),
            "numba_ms": None,
        }
        if n * n * d <= args.numba_max_work:
            row["numba_ms"] = median_ms(lambda: topv_edge.select(s, t, grid, 0.25, backend="numba"), 1, 0.0)
        row["numba_over_cpp_1t"] = row["numba_ms"] / row["cpp_1t_ms"] if row["numba_ms"] else None
        row["cpp_all_over_blas_all"] = row["cpp_all_ms"] / row["blas_all_ms"]
        rows.append(row)
        numba = f"{row['numba_ms']:9.1f}" if row["numba_ms"] else f"{'skipped':>9}"
        ratio = f"{row['numba_over_cpp_1t']:10.1f}x" if row["numba_ms"] else f"{'-':>11}"
        print(f"{n:5d} {d:5d} | {row['blas_1t_ms']:9.2f} {row['blas_all_ms']:9.2f} | {row['cpp_1t_ms']:9.2f} "
              f"{row['cpp_all_ms']:9.2f} | {numba} | {ratio} {row['cpp_all_over_blas_all']:13.2f}x", flush=True)

    meta = {"machine": platform.machine(), "processor": platform.processor(), "threads": threads,
            "python": platform.python_version(), "numpy": np.__version__, "topv_edge": topv_edge.__version__}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.json}")


def blas_info() -> dict[str, object]:
    """Which BLAS numpy runs and with which kernel: threadpoolctl if installed, else OpenBLAS's own
    get_corename (numpy's bundled scipy-openblas exports it), else unknown."""
    info: dict[str, object] = {name: os.environ.get(name) for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE",
                                                                       "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    try:
        import threadpoolctl

        info["threadpoolctl"] = [{k: m.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
                                 for m in threadpoolctl.threadpool_info() if m.get("user_api") == "blas"]
        return info
    except ImportError:
        info["threadpoolctl"] = "not installed"
    import ctypes
    import glob

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)  # already loaded by numpy: the same handle
        for prefix, suffix in (("scipy_openblas_", "64_"), ("scipy_openblas_", ""), ("openblas_", "")):
            try:
                corename = getattr(lib, f"{prefix}get_corename{suffix}")
                config = getattr(lib, f"{prefix}get_config{suffix}")
            except AttributeError:
                continue
            corename.restype = config.restype = ctypes.c_char_p
            info["openblas_corename"] = corename().decode()
            info["openblas_config"] = config().decode()
            return info
    info["openblas_corename"] = "unknown (no OpenBLAS found in numpy.libs)"
    return info


def peak_scratch_mib(fn: Callable[[], object]) -> tuple[float, float | None]:
    """(seconds, peak RSS growth in MiB) of one call: VmHWM reset to the current RSS first
    (/proc/self/clear_refs, Linux); None where that is not available."""
    def status(field: str) -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return float(line.split()[1]) / 1024.0
        raise KeyError(field)

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = status("VmRSS")
    except OSError:
        before = None
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    return seconds, (status("VmHWM") - before if before is not None else None)


def timed(fn: Callable[[], object], repeats: int, slow_seconds: float = 5.0) -> tuple[float, float | None, int]:
    """(median seconds, peak scratch MiB of the first call, samples): one sample for calls slower than
    slow_seconds, else up to `repeats`."""
    first, scratch = peak_scratch_mib(fn)
    times = [first]
    while first < slow_seconds and len(times) < repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), scratch, len(times)


def scaling(args) -> None:
    threads = os.cpu_count() or 1
    n_values = args.n if args.n != DEFAULT_N else SCALING_N
    d_values = args.d if args.d != DEFAULT_D else SCALING_D
    methods = args.methods or list(topv_edge.METHODS)
    json_path = args.json if args.json != Path("results/bench_pass.json") else Path("results/bench_pass_scaling.json")
    blas = blas_info()
    print(f"TopV pass scaling: C++ on {threads} threads, keep 0.25, default parameters; seconds (median of up to "
          f"{args.repeats}; one sample above 5 s), x = ratio to numpy S @ T.T (all threads, same run), peak scratch MiB")
    print(f"BLAS: {blas}")
    # Numba's compile, once per method, outside the timings
    for m in methods:
        s, t = features(16, 8)
        topv_edge.select(s, t, (4, 4), 0.25, method=m, backend="numba")
    header = f"{'N':>6} {'d':>5} {'method':>12} | {'C++ s':>9} {'x S@T.T':>8} {'scratch':>8} | {'Numba s':>9}"
    rows, blas_rows = [], []
    for n in n_values:
        for d in d_values:
            s, t = features(n, d)
            grid = grid_for(n)
            blas_s, blas_scratch, _ = timed(lambda: s @ t.T, max(args.repeats, 3), slow_seconds=60.0)
            blas_rows.append({"n": n, "d": d, "seconds": blas_s, "peak_scratch_mib": blas_scratch})
            print(f"\n{header}\n{'-' * len(header)}")
            print(f"{n:6d} {d:5d} {'S @ T.T':>12} | {blas_s:9.3f} {1.0:7.2f}x {blas_scratch or 0:8.0f} |", flush=True)
            for m in methods:
                sec, scratch, samples = timed(
                    lambda m=m: topv_edge.select(s, t, grid, 0.25, method=m, threads=threads), args.repeats)
                numba_s = None
                if n * n * d <= args.numba_max_work:
                    t0 = time.perf_counter()
                    topv_edge.select(s, t, grid, 0.25, method=m, backend="numba")
                    numba_s = time.perf_counter() - t0
                row = {"n": n, "d": d, "method": m, "seconds": sec, "samples": samples,
                       "over_blas_all": sec / blas_s, "peak_scratch_mib": scratch, "numba_seconds": numba_s}
                rows.append(row)
                numba = f"{numba_s:9.3f}" if numba_s is not None else f"{'skipped':>9}"
                print(f"{n:6d} {d:5d} {m:>12} | {sec:9.3f} {sec / blas_s:7.2f}x {scratch or 0:8.0f} | {numba}",
                      flush=True)
    meta = {"machine": platform.machine(), "processor": platform.processor(), "threads": threads,
            "python": platform.python_version(), "numpy": np.__version__, "topv_edge": topv_edge.__version__,
            "blas": blas, "load_average": os.getloadavg(), "keep": 0.25, "params": "defaults",
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"meta": meta, "blas": blas_rows, "rows": rows}, indent=1))
    print(f"wrote {json_path}")


def per_method(args) -> None:
    threads = os.cpu_count() or 1
    methods = list(topv_edge.METHODS)
    json_path = args.json if args.json != Path("results/bench_pass.json") else Path("results/bench_methods.json")
    print(f"TopV pass per method, C++ ms (median of {args.repeats}+), {threads} threads, keep 0.25, defaults;"
          " (x) = ratio to topv_rowsum")
    header = f"{'N':>5} {'d':>5} | " + " ".join(f"{m:>18}" for m in methods)
    print(header)
    print("-" * len(header))
    rows = []
    for n in args.n:
        for d in args.d:
            s, t = features(n, d)
            grid = grid_for(n)
            ms = {m: median_ms(lambda m=m: topv_edge.select(s, t, grid, 0.25, method=m, threads=threads), args.repeats)
                  for m in methods}
            base = ms["topv_rowsum"]
            rows.append({"n": n, "d": d, "grid": grid, "ms": ms, "over_rowsum": {m: v / base for m, v in ms.items()}})
            print(f"{n:5d} {d:5d} | " + " ".join(f"{ms[m]:9.2f} ({ms[m] / base:4.2f}x)" for m in methods), flush=True)
    meta = {"machine": platform.machine(), "processor": platform.processor(), "threads": threads,
            "python": platform.python_version(), "numpy": np.__version__, "topv_edge": topv_edge.__version__}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
