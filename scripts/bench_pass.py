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
    ap.add_argument("--blas-only", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.per_method:
        per_method(args)
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
