#!/usr/bin/env python3
"""Accuracy evidence for the demo model: choose the pass's defaults on the validation split, then
report every method on the test split.

    python scripts/eval_demo_model.py sweep   [--n 1200]   # validation split (seed 1): results/sweep_val_demo.json
    python scripts/eval_demo_model.py report  [--n 1200]   # test split (seed 2): results/eval_demo.json, .png
    python scripts/eval_demo_model.py sweep  --data scenes # the second model (topv_edge/lab/models/scenes) on its
    python scripts/eval_demo_model.py report --data scenes #   own splits: results/{sweep_val,eval}_scenes.json

`sweep` (validation only) measures, at keep 0.25 and 0.11:
  1. every method (topv_edge.METHODS) at probe layers 0 and 2 (uniform and uniform2d read no features:
     layer 0 only);
  2. for the transport read-outs (topv, topv_rowsum, topv_cost, topv_fcost), each pass parameter moved
     one at a time from the library defaults, at the layer --param-layer.
The objective is the mean of the two accuracies. It prints markdown tables; the decision (which
read-out is `topv`, which defaults) is made from them and recorded in docs/pass.md.

`report` (test split) answers unpruned and at keep in {0.5, 0.25, 0.11, 0.05} for every method at
--layer, kept tokens at their original positions, with the library's default parameters, per question
kind; writes results/eval_demo.json, a markdown table and results/eval_demo.png.

Both run `topv_edge.eval.evaluate` (the harness users run) on sets written by `topv_edge.lab.data.demo`,
through the patched llama.cpp, with greedy decoding. Results are cached per configuration in the JSON
file, so an interrupted run resumes (--fresh starts over).
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

from topv_edge.lab.data import demo as demo_data  # noqa: E402
from topv_edge.lab.data import scenes as scenes_data  # noqa: E402
from topv_edge.demo import DEMO_MMPROJ, DEMO_MODEL  # noqa: E402
from topv_edge.eval import evaluate, read_items  # noqa: E402
from topv_edge.pruning.native import method_reads  # noqa: E402
from topv_edge.options import DEFAULT_LAYER  # noqa: E402
from topv_edge.pruning import METHODS, READOUTS, default_params  # noqa: E402
from topv_edge.options import TopVOptions  # noqa: E402
from topv_edge.session import VisionChat  # noqa: E402

VAL_SEED, TEST_SEED = 1, 2
DEMO2 = REPO / "topv_edge" / "lab" / "models" / "scenes"
# --data: the question generator, the model trained on it, and the name its result files carry
DATASETS = {
    "demo": (demo_data, DEMO_MODEL, DEMO_MMPROJ, "demo"),
    "scenes": (scenes_data, DEMO2 / "scenes-vlm.gguf", DEMO2 / "mmproj-scenes-vlm.gguf", "scenes"),
}
EVAL_DIR = REPO / "build" / "eval"  # the splits, written on first use (topv_edge.lab.train's EVAL_DIR)
SWEEP_KEEPS = (0.25, 0.11)
REPORT_KEEPS = (0.5, 0.25, 0.11, 0.05)
# methods that read no features (topv_method_reads): the probe layer cannot change what they keep
FEATURELESS = tuple(m for m, v in METHODS.items() if method_reads(v) == 0)
PARAM_GRID = {  # around the defaults; the values the read-out is most sensitive to (docs/pass.md)
    "recover": [0.0, 0.5],
    "beta": [0.0, 1.0],
    "eps": [0.05, 0.2],
    "sigma": [0.5],
    "alpha": [2.0],
}


class Runner:
    """Evaluates configurations once each, caching accuracies (and per-kind figures) in a JSON file."""

    def __init__(self, chat: VisionChat, items, path: Path, fresh: bool) -> None:
        self.chat, self.items, self.path = chat, items, path
        self.cache: dict[str, dict] = {}
        if path.is_file() and not fresh:
            self.cache = json.loads(path.read_text()).get("runs", {})

    def run(self, method: str | None, keep: float = 1.0, layer: int = 0, options: dict | None = None,
            **params) -> dict:
        """One configuration (None: unpruned); `options` are further TopVOptions (e.g. overview_weight), `params`
        the pass's."""
        # for the transport read-outs the key holds every parameter's value (the defaults filled in), so a
        # cached result of older defaults is never taken for the current ones; the baselines read none. The
        # question count is in it too: a run on fewer questions is never taken for one on more
        full = {**default_params(), **params} if method in READOUTS else params
        key = json.dumps([method, keep, layer, sorted(full.items()), len(self.items)]
                         + ([sorted(options.items())] if options else []), default=str)
        if key not in self.cache:
            t0 = time.perf_counter()
            opts = (TopVOptions(enabled=False) if method is None
                    else TopVOptions(keep=keep, layer=layer, method=method, params=params, **(options or {})))
            r = evaluate(self.chat, self.items, opts)
            self.cache[key] = {"method": method or "none", "keep": keep, "layer": None if method is None else layer,
                               "params": params, "options": options or {}, "accuracy": r["accuracy"], "n": r["n"],
                               "per_kind": r["per_kind"], "kept_tokens": r["kept_tokens"],
                               "seconds": time.perf_counter() - t0}
            print(f"  {method or 'none':<12} keep {keep:<5g} layer {layer} {params or ''}{options or ''}: "
                  f"{r['accuracy']:.3f} ({self.cache[key]['seconds']:.0f} s)", file=sys.stderr, flush=True)
            self.save()
        return self.cache[key]

    def save(self, **extra) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        old.update(extra)
        old["runs"] = self.cache
        self.path.write_text(json.dumps(old, indent=1, default=str))


def _chat(args) -> VisionChat:
    return VisionChat(args.model, args.mmproj, topv=TopVOptions(enabled=False), threads=args.threads, max_tokens=4)


def sweep(args) -> int:
    items = read_items(DATASETS[args.data][0].cached_split(EVAL_DIR, args.n, VAL_SEED))
    with _chat(args) as chat:
        run = Runner(chat, items, args.json, args.fresh)
        base = run.run(None)["accuracy"]
        print(f"unpruned: {base:.3f} ({len(items)} validation questions)", file=sys.stderr)
        methods = list(METHODS) if not args.methods else args.methods.split(",")
        table = []
        for method in methods:
            for layer in (0,) if method in FEATURELESS else args.layers:
                accs = [run.run(method, keep, layer)["accuracy"] for keep in SWEEP_KEEPS]
                table.append((method, layer, accs))
        print(f"\n| method | layer | " + " | ".join(f"keep {k:g}" for k in SWEEP_KEEPS) + " | mean |")
        print("|---|---:|" + "---:|" * (len(SWEEP_KEEPS) + 1))
        for method, layer, accs in table:
            print(f"| {method} | {layer} | " + " | ".join(f"{a:.3f}" for a in accs) + f" | {sum(accs) / len(accs):.3f} |")

        if not args.skip_params:
            defaults = default_params()
            layer = args.param_layer
            readouts = [m for m in (args.param_methods.split(",") if args.param_methods else READOUTS)]
            print(f"\nparameters one at a time from the defaults ({json.dumps(defaults)}), layer {layer}:")
            print("| method | parameter | value | " + " | ".join(f"keep {k:g}" for k in SWEEP_KEEPS) + " | mean |")
            print("|---|---|---:|" + "---:|" * (len(SWEEP_KEEPS) + 1))
            for method in readouts:
                for name, values in PARAM_GRID.items():
                    if args.params and name not in args.params.split(","):
                        continue
                    for v in values:
                        p = {name: v}
                        q = dict(defaults, **p)
                        if (q["alpha"] + q["beta"] + q["gamma"]) / q["eps"] >= 700:
                            continue
                        accs = [run.run(method, keep, layer, **p)["accuracy"] for keep in SWEEP_KEEPS]
                        print(f"| {method} | {name} | {v:g} | " + " | ".join(f"{a:.3f}" for a in accs)
                              + f" | {sum(accs) / len(accs):.3f} |", flush=True)
        run.save(split="validation", seed=VAL_SEED, n=len(items), unpruned=base, defaults=default_params())
    print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


def report(args) -> int:
    items = read_items(DATASETS[args.data][0].cached_split(EVAL_DIR, args.n, TEST_SEED))
    methods = list(METHODS) if not args.methods else args.methods.split(",")
    with _chat(args) as chat:
        run = Runner(chat, items, args.json, args.fresh)
        rows = [dict(run.run(None), retention=1.0)]
        base = rows[0]["accuracy"]
        for keep in args.keeps:  # keep-major: the keeps that matter most first
            for method in methods:
                layer = 0 if method in FEATURELESS else args.layer
                r = run.run(method, keep, layer)
                rows.append(dict(r, retention=r["accuracy"] / base))
        run.save(split="test", seed=TEST_SEED, n=len(items), layer=args.layer, defaults=default_params(),
                 rows=rows)
    kinds = sorted(rows[0]["per_kind"])
    print(f"\n| method | keep | accuracy | retention | " + " | ".join(kinds) + " |")
    print("|---|---:|---:|---:|" + "---:|" * len(kinds))
    for r in rows:
        print(f"| {r['method']} | {r['keep']:g} | {r['accuracy']:.3f} | {r['retention']:.3f} | "
              + " | ".join(f"{r['per_kind'][k]:.2f}" for k in kinds) + " |")
    print(f"\n| keep | " + " | ".join(methods) + " |")
    print("|---:|" + "---:|" * len(methods))
    for keep in args.keeps:
        cells = [next(r["accuracy"] for r in rows if r["method"] == m and r["keep"] == keep) for m in methods]
        print(f"| {keep:g} | " + " | ".join(f"{a:.3f}" for a in cells) + " |")
    plot(rows, args.png, f"{args.data} model, test split ({len(items)} questions, layer {args.layer}): accuracy against keep")
    print(f"\nwrote {args.json} and {args.png}", file=sys.stderr)
    return 0


COLOURS = ["#c0392b", "#2471a3", "#229954", "#8e44ad", "#d68910", "#17a589", "#515a5a", "#e74c3c", "#5dade2"]


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Accuracy against keep per method (log-spaced keep axis). Pillow only."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 640, 440, 55, 470, 40, 395
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    base = next(r for r in rows if r["method"] == "none")
    lo = 0.0
    keeps = sorted({r["keep"] for r in rows} | {1.0})
    kmin = math.log(min(keeps))
    px = lambda k: left + (math.log(k) - kmin) / (0 - kmin) * (right - left)  # noqa: E731
    py = lambda a: bottom - (a - lo) / (1.0 - lo) * (bottom - top)  # noqa: E731
    d.rectangle((left, top, right, bottom), outline="black")
    d.text((left, 10), title, fill="black")
    for i in range(11):
        t = i / 10
        d.line((left, py(t), right, py(t)), fill="#eeeeee")
        d.text((22, py(t) - 6), f"{t:.1f}", fill="black")
    for k in keeps:
        d.text((px(k) - 10, bottom + 6), f"{k:g}", fill="black")
    d.text((left + 120, h - 22), "keep (fraction of image tokens, log scale)", fill="black")
    d.line((left, py(base["accuracy"]), right, py(base["accuracy"])), fill="#999999")
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "none"]
    for i, method in enumerate(methods):
        colour = COLOURS[i % len(COLOURS)]
        pts = sorted((r["keep"], r["accuracy"]) for r in rows if r["method"] == method)
        pts.append((1.0, base["accuracy"]))
        d.line([(px(k), py(a)) for k, a in pts], fill=colour, width=4 if method == "topv" else 2)
        ly = top + 10 + 16 * i
        d.line((right + 12, ly + 6, right + 32, ly + 6), fill=colour, width=4 if method == "topv" else 2)
        d.text((right + 38, ly), method, fill="black")
    img.save(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("sweep", "report"):
        p = sub.add_parser(name)
        p.add_argument("--data", choices=sorted(DATASETS), default="demo",
                       help="demo: the shapes model and its questions; scenes: the second model (clutter, sizes, "
                            "relations, reading)")
        p.add_argument("--model", type=Path, help="default: the model trained on --data")
        p.add_argument("--mmproj", type=Path)
        p.add_argument("--n", type=int, default=1200, help="questions (default 1200)")
        p.add_argument("--threads", type=int)
        p.add_argument("--methods", help="comma-separated (default: every method)")
        p.add_argument("--fresh", action="store_true", help="ignore the cached results in --json")
        if name == "sweep":
            p.add_argument("--layers", type=int, nargs="+", default=[0, 2], help="probe layers (default 0 2)")
            p.add_argument("--param-layer", type=int, default=0)
            p.add_argument("--param-methods", help="read-outs for the parameter sweep (default: all four)")
            p.add_argument("--skip-params", action="store_true")
            p.add_argument("--params", help="comma-separated parameters to sweep (default: all of PARAM_GRID)")
            p.add_argument("--json", type=Path, help="default: results/sweep_val_<data>.json")
        else:
            p.add_argument("--layer", type=int, default=DEFAULT_LAYER,
                           help=f"probe layer of the feature-reading methods (default {DEFAULT_LAYER})")
            p.add_argument("--keeps", type=float, nargs="+", default=list(REPORT_KEEPS))
            p.add_argument("--json", type=Path, help="default: results/eval_<data>.json")
            p.add_argument("--png", type=Path, help="default: --json with .png")
    args = ap.parse_args(argv)
    _, model, mmproj, name = DATASETS[args.data]
    args.model, args.mmproj = args.model or model, args.mmproj or mmproj
    if args.json is None:
        stem = f"sweep_val_{name}" if args.cmd == "sweep" else f"eval_{name}"
        args.json = REPO / "results" / f"{stem}.json"
    if args.cmd == "report" and args.png is None:
        args.png = args.json.with_suffix(".png")
    return sweep(args) if args.cmd == "sweep" else report(args)


if __name__ == "__main__":
    raise SystemExit(main())
