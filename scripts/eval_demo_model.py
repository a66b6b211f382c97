#!/usr/bin/env python3
"""Accuracy evidence for the demo model: tune the pass on the validation split, then report the test split.

    python scripts/eval_demo_model.py tune    [--n 600] [--keep 0.25]   # validation split (seed 1)
    python scripts/eval_demo_model.py report  [--n 600]                 # test split (seed 2)

`tune` sweeps the probe layer and each pass parameter (alpha, beta, gamma, sigma, eps, tau, iters,
recover) one at a time at keep = 0.25, coordinate by coordinate: a parameter moves to the value with the
best validation accuracy, only if that beats the current value by more than --min-gain (otherwise the
current value stays). Writes results/tune_topv.json and prints a markdown table.

`report` answers the test split unpruned and at keep in {0.5, 0.25, 0.11} for topv, uniform and norm,
with the kept tokens at their original positions and renumbered (diagnostic), using the pass parameters
of `--topv NAME=VALUE` (default: the library's defaults). Writes results/eval_demo.json, a markdown table
and results/eval_demo.png.

Both run `topv_edge.eval` (the harness users run) on sets written by `topv_edge.demo_data`, through the
patched llama.cpp, with greedy decoding.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from topv_edge import demo_data as D  # noqa: E402
from topv_edge.demo import DEMO_MMPROJ, DEMO_MODEL  # noqa: E402
from topv_edge.eval import evaluate, read_items  # noqa: E402
from topv_edge.pruning import default_params  # noqa: E402
from topv_edge.runtime import TopVOptions, VisionChat  # noqa: E402

VAL_SEED, TEST_SEED = 1, 2
EVAL_DIR = REPO / "build" / "eval"  # the splits, written on first use (shared with train_demo_vlm.py)
GRID = {
    "alpha": [0.0, 0.5, 1.0, 2.0],
    "beta": [0.0, 0.25, 0.5, 1.0],
    "gamma": [0.0, 0.25, 0.5, 1.0],
    "sigma": [0.1, 0.25, 0.5],
    "eps": [0.05, 0.1, 0.2, 0.5],
    "tau": [0.1, 1.0, 10.0, math.inf],
    "iters": [3, 10, 30],
    "recover": [0.0, 0.25, 0.5],
}


def tune(args) -> int:
    items = read_items(D.cached_split(EVAL_DIR, args.n, VAL_SEED))
    current = {k: v for k, v in default_params().items()}
    layer, rows = 2, []
    with VisionChat(args.model, args.mmproj, topv=TopVOptions(enabled=False), threads=args.threads, max_tokens=4) as chat:
        t0 = time.perf_counter()
        base = evaluate(chat, items, TopVOptions(enabled=False))["accuracy"]
        print(f"unpruned: {base:.3f} ({len(items)} validation questions)", file=sys.stderr)

        def score(layer_: int, params: dict) -> float:
            r = evaluate(chat, items, TopVOptions(keep=args.keep, layer=layer_, params=params))
            return r["accuracy"]

        for name in ["layer"] + list(GRID):
            values = [0, 1, 2] if name == "layer" else GRID[name]
            now = layer if name == "layer" else current[name]
            results = {}
            for v in values:
                if name == "layer":
                    acc = score(v, current)
                else:
                    p = dict(current, **{name: v})
                    if p["eps"] > 0 and (p["alpha"] + p["beta"] + p["gamma"]) / p["eps"] >= 700:
                        continue
                    acc = score(layer, p)
                results[v] = acc
                print(f"  {name} = {v:g}: {acc:.3f}", file=sys.stderr)
            best = max(results, key=lambda v: results[v])
            chosen = best if results[best] > results.get(now, -1) + args.min_gain else now
            rows.append({"parameter": name, "before": now, "results": {str(k): v for k, v in results.items()},
                         "chosen": chosen})
            if name == "layer":
                layer = int(chosen)
            else:
                current[name] = chosen
        final = score(layer, current)
        seconds = time.perf_counter() - t0
    out = {"split": "validation", "seed": VAL_SEED, "n": len(items), "keep": args.keep, "unpruned": base,
           "min_gain": args.min_gain, "steps": rows, "chosen": {"layer": layer, **current}, "final": final,
           "seconds": seconds}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=1, default=str))
    print(f"| parameter | values tried: validation accuracy at keep {args.keep:g} | chosen |")
    print("|---|---|---:|")
    for r in rows:
        tried = ", ".join(f"{k}: {v:.3f}" for k, v in r["results"].items())
        print(f"| {r['parameter']} | {tried} | {r['chosen']:g} |")
    print(f"\nunpruned {base:.3f}; chosen {json.dumps(out['chosen'])}: {final:.3f} ({seconds / 60:.1f} min)")
    return 0


def report(args) -> int:
    from topv_edge.eval import main as eval_main

    data = D.cached_split(EVAL_DIR, args.n, TEST_SEED)
    argv = ["--model", str(args.model), "--mmproj", str(args.mmproj), "--data", str(data), "--keep", "0.5", "0.25",
            "0.11", "--method", "topv,uniform,norm", "--positions", "original,renumbered", "--layer", str(args.layer),
            "--max-tokens", "4", "--out", str(args.json)]
    argv += [a for p in args.topv for a in ("--topv", p)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    rc = eval_main(argv)
    if rc:
        return rc
    res = json.loads(args.json.read_text())
    rows = res["rows"]
    base = rows[0]
    kinds = sorted(base["per_kind"])
    print(f"\n| method | positions | keep | accuracy | retention | " + " | ".join(kinds) + " |")
    print("|---|---|---:|---:|---:|" + "---:|" * len(kinds))
    for r in rows:
        print(f"| {r['method']} | {r['positions']} | {r['keep']:g} | {r['accuracy']:.3f} | {r['retention']:.3f} | "
              + " | ".join(f"{r['per_kind'][k]:.2f}" for k in kinds) + " |")
    plot(rows, args.png)
    print(f"\nwrote {args.json} and {args.png}", file=sys.stderr)
    return 0


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy against keep per method; thick: original positions, thin: renumbered. Pillow only."""
    from PIL import Image, ImageDraw

    colours = {"topv": "#c0392b", "uniform": "#2471a3", "norm": "#229954"}
    w, h, left, right, top, bottom = 560, 400, 55, 545, 40, 355
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    base = next(r for r in rows if r["method"] == "none")
    accs = [r["accuracy"] for r in rows]
    lo = max(0.0, math.floor(min(accs) * 10) / 10 - 0.1)
    px = lambda k: left + k * (right - left)  # noqa: E731
    py = lambda a: bottom - (a - lo) / (1.0 - lo) * (bottom - top)  # noqa: E731
    d.rectangle((left, top, right, bottom), outline="black")
    d.text((left, 10), f"demo model, test split ({base['n']} questions): accuracy against keep", fill="black")
    t = lo
    while t <= 1.0 + 1e-9:
        d.line((left, py(t), right, py(t)), fill="#eeeeee")
        d.text((12, py(t) - 6), f"{t:.1f}", fill="black")
        t += 0.1
    for k in sorted({r["keep"] for r in rows}):
        d.text((px(k) - 10, bottom + 6), f"{k:g}", fill="black")
    d.text((left + 150, h - 22), "keep (fraction of image tokens)", fill="black")
    d.line((left, py(base["accuracy"]), right, py(base["accuracy"])), fill="#999999")
    legend = 0
    for method, colour in colours.items():
        for pos, width in (("original", 4), ("renumbered", 1)):
            pts = sorted((r["keep"], r["accuracy"]) for r in rows if r["method"] == method and r["positions"] == pos)
            if not pts:
                continue
            pts.append((1.0, base["accuracy"]))
            d.line([(px(k), py(a)) for k, a in pts], fill=colour, width=width)
            ly = bottom - 20 - 14 * legend
            d.line((right - 170, ly + 6, right - 150, ly + 6), fill=colour, width=width)
            d.text((right - 145, ly), f"{method}, {pos} positions", fill="black")
            legend += 1
    img.save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("tune", "report"):
        p = sub.add_parser(name)
        p.add_argument("--model", type=Path, default=DEMO_MODEL)
        p.add_argument("--mmproj", type=Path, default=DEMO_MMPROJ)
        p.add_argument("--n", type=int, default=600, help="questions (default 600)")
        p.add_argument("--threads", type=int)
        if name == "tune":
            p.add_argument("--keep", type=float, default=0.25)
            p.add_argument("--min-gain", type=float, default=0.005,
                           help="move a parameter only for more than this validation accuracy (default 0.005)")
            p.add_argument("--json", type=Path, default=REPO / "results" / "tune_topv.json")
        else:
            p.add_argument("--layer", type=int, default=2)
            p.add_argument("--topv", metavar="NAME=VALUE", action="append", default=[])
            p.add_argument("--json", type=Path, default=REPO / "results" / "eval_demo.json")
            p.add_argument("--png", type=Path, default=REPO / "results" / "eval_demo.png")
    args = ap.parse_args(argv)
    return tune(args) if args.cmd == "tune" else report(args)


if __name__ == "__main__":
    raise SystemExit(main())
