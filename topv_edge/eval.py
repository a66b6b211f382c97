"""Accuracy under pruning: answer a visual question set with greedy decoding through the patched
llama.cpp, for each method, keep and layer, and compare with the unpruned baseline.

  python -m topv_edge.eval --model M.gguf [--mmproj P.gguf] --data FILE.jsonl [--keep 0.5 0.25 0.11]
                           [--method topv,divprune,uniform2d,uniform] [--layer 0 2] [--positions original,renumbered]
                           [--topv NAME=VALUE ...] [--limit N] [--json] [--out results.json]

FILE.jsonl holds one object per line: {"image": path, "question": str, "answer": str} (image paths
relative to the file; other fields, e.g. "kind", break the accuracy down). A prediction is right when it
equals the answer after lower-casing and removing punctuation and surrounding spaces; only the answer's
first line counts. Works on any model llama.cpp runs (real models and data sets included): the prompt
is the question, with the model's own chat template.

--keep: 0.25 or 25% is a ratio of each image's tokens, a whole number (144) a token count (so 1 is one
token and 1.0 all of them); the table shows ratios as percentages and counts as "N tok", the JSON both
("keep_ratio" / "keep_count") with the mean kept fraction and kept tokens per image.

--out FILE: the file's directory must exist (it is not created, as for a shell redirection); checked
before anything runs.

`--positions renumbered` is a diagnostic: the kept tokens are decoded at consecutive positions and the
text follows right after them (what a pruner that ignores positions does), to measure what keeping the
original positions is worth. M-RoPE models (Qwen2-VL) always keep their original positions.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cli import (Parser, add_device_flags, add_pruning_flags, device_options, parse_topv_params, positive_int,
                  run_command)
from .errors import ChatError
from .options import TopVOptions
from .pruning import METHODS
from .session import VisionChat


def normalise(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    return re.sub(r"[^\w\s]", "", first.lower()).strip()


@dataclass
class Item:
    image: Path
    question: str
    answer: str
    kind: str


def read_items(path: Path, limit: int | None = None) -> list[Item]:
    if not path.is_file():
        raise ChatError(f"data file not found: {path}")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            items.append(Item(path.parent / d["image"], str(d["question"]), str(d["answer"]), str(d.get("kind", ""))))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ChatError(f"{path}:{n}: expected {{\"image\", \"question\", \"answer\"}} ({e})") from None
        if limit and len(items) >= limit:
            break
    if not items:
        raise ChatError(f"{path} holds no questions")
    return items


def evaluate(chat: VisionChat, items: list[Item], options: TopVOptions, progress=None) -> dict:
    """Accuracy of one configuration, overall and per kind, with the predictions."""
    chat.set_topv(options)
    right, per_kind, predictions, kept = 0, {}, [], []
    for i, it in enumerate(items):
        chat.reset()
        answer, report = chat.ask(it.question, [it.image])
        ok = normalise(answer) == normalise(it.answer)
        right += ok
        k = per_kind.setdefault(it.kind or "all", [0, 0])
        k[0] += ok
        k[1] += 1
        predictions.append(answer)
        kept.extend((im.n_kept / im.n_tokens, im.n_kept) for im in report.images)
        if progress:
            progress(i + 1, len(items))
    return {"accuracy": right / len(items), "n": len(items),
            "per_kind": {k: v[0] / v[1] for k, v in sorted(per_kind.items())},
            "kept_fraction": sum(f for f, _ in kept) / max(1, len(kept)),
            "kept_tokens": sum(n for _, n in kept) / max(1, len(kept)), "predictions": predictions}


def keep_fields(options: TopVOptions) -> dict:
    """The requested keep, unambiguous: ratio or count (the other None), and its label."""
    if not options.enabled:
        return {"keep": 1.0, "keep_ratio": 1.0, "keep_count": None, "keep_label": "all"}
    return {"keep": options.keep, "keep_ratio": None if options.is_count else float(options.keep),
            "keep_count": int(options.keep) if options.is_count else None,
            "keep_label": f"{int(options.keep)} tok" if options.is_count else f"{100 * float(options.keep):.4g}%"}


def check_out(path: Path | None) -> None:
    """--out must name a file in an existing directory (nothing is created but the file)."""
    if path is None:
        return
    if path.is_dir():
        raise ChatError(f"--out {path} is a directory; give a file name, e.g. {path / 'results.json'}")
    if not path.parent.is_dir():
        raise ChatError(f"--out {path}: the directory {path.parent} does not exist (create it first)")
    if not os.access(path.parent, os.W_OK):
        raise ChatError(f"--out {path}: the directory {path.parent} is not writable")


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m topv_edge.eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="the text model (.gguf)")
    ap.add_argument("--mmproj")
    ap.add_argument("--data", required=True, type=Path, help="JSON lines: image, question, answer")
    add_pruning_flags(ap, many=True)
    ap.add_argument("--method", default="topv,divprune,uniform2d,uniform",
                    help=f"comma-separated, from: {', '.join(METHODS)}; default topv,divprune,uniform2d,uniform")
    ap.add_argument("--positions", default="original",
                    help="comma-separated: original (the product), renumbered (diagnostic, see above)")
    ap.add_argument("--limit", type=positive_int, help="only the first N questions")
    ap.add_argument("-n", "--max-tokens", "--n-predict", "--predict", dest="max_tokens", type=positive_int, default=8,
                    help="longest answer in tokens (default 8)")
    add_device_flags(ap)
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--out", type=Path, help="also write the results (JSON) here; its directory must exist")
    args = ap.parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    check_out(args.out)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ChatError(f"unknown method(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(METHODS)}")
    positions = [m.strip() for m in args.positions.split(",") if m.strip()]
    bad = [m for m in positions if m not in ("original", "renumbered")]
    if bad or not positions:
        raise ChatError(f"unknown --positions {', '.join(bad)}; choose from original, renumbered")
    params = parse_topv_params(args.topv)
    items = read_items(args.data, args.limit)
    show = (lambda i, n: print(f"\r  {i}/{n}", end="", file=sys.stderr, flush=True)) if sys.stderr.isatty() else None
    rows = []
    with VisionChat(args.model, args.mmproj, topv=TopVOptions(enabled=False), max_tokens=args.max_tokens,
                    **device_options(args)) as chat:
        t0 = time.perf_counter()
        base = evaluate(chat, items, TopVOptions(enabled=False), show)
        rows.append({"method": "none", **keep_fields(TopVOptions(enabled=False)), "layer": None,
                     "positions": "original", **base, "retention": 1.0})
        for pos in positions:
            for method in methods:
                for layer in args.layer:
                    for keep in args.keep:
                        opts = TopVOptions(keep=keep, layer=layer, method=method, params=params,
                                           renumber_positions=pos == "renumbered",
                                           overview_weight=args.overview_weight)
                        r = evaluate(chat, items, opts, show)
                        rows.append({"method": method, **keep_fields(opts), "layer": layer, "positions": pos, **r,
                                     "retention": r["accuracy"] / base["accuracy"] if base["accuracy"] else None})
        seconds = time.perf_counter() - t0
    if show:
        print(file=sys.stderr)
    result = {"model": str(args.model), "data": str(args.data), "n": len(items), "params": params,
              "seconds": seconds, "rows": rows}
    if args.out:
        try:
            args.out.write_text(json.dumps(result, indent=1))
        except OSError as e:
            raise ChatError(f"could not write --out {args.out}: {e.strerror}") from None
    if args.json:
        print(json.dumps(result))
    else:
        kinds = sorted({k for r in rows for k in r["per_kind"]})
        show_pos = positions != ["original"]
        # keep as asked (25% = a ratio, "16 tok" = a count), then what was kept: fraction and tokens per image
        width = max(len(r["method"]) for r in rows) + 2
        print(f"{'method':<{width}}{'keep':>8}{'layer':>6}" + (f"{'positions':>12}" if show_pos else "")
              + f"{'kept':>7}{'tokens':>8}{'accuracy':>10}{'retention':>11}  " + "".join(f"{k:>9}" for k in kinds))
        for r in rows:
            layer = "-" if r["layer"] is None else str(r["layer"])
            retention = "-" if r["retention"] is None else f"{r['retention']:.3f}"
            print(f"{r['method']:<{width}}{r['keep_label']:>8}{layer:>6}" + (f"{r['positions']:>12}" if show_pos else "")
                  + f"{r['kept_fraction']:>7.2f}{r['kept_tokens']:>8.1f}{r['accuracy']:>10.3f}{retention:>11}  "
                  + "".join(f"{r['per_kind'].get(k, float('nan')):>9.3f}" for k in kinds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
