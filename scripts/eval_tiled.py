#!/usr/bin/env python3
"""How to spread one budget over a tiled picture's chunks: measured on the trained demo model, tiled.

    python scripts/eval_tiled.py sweep  [--n 200]   # validation split (seed 1): results/sweep_val_tiled.json
    python scripts/eval_tiled.py report [--n 300]   # test split (seed 2): results/eval_tiled.json

The model: the trained LLaVA-1.5-style demo model (topv_edge/demo_model) with its mmproj made LLaVA-1.6
"anyres" - the same weights plus `clip.vision.image_grid_pinpoints` (168x336, 336x168, 336x336), so llama.cpp
tiles a large picture into 168-px tiles and a 168-px overview, each its own image chunk of 144 tokens, tiles
first, overview last, as it does real LLaVA-1.6 pictures. The pictures: each question's 168 x 168 picture
scaled up 2x (nearest): 2 x 2 tiles + the overview = 720 image tokens, the overview being the picture the model
was trained on and each tile a quarter of it at twice the scale.

The rule spreads the picture's budget (keep x 720) over its chunks: the overview's tokens count
`overview_weight` times (1: every chunk the same ratio; inf: the overview kept whole, the tiles share the
rest). `sweep` measures weights {1, 2, 4, inf} at keep 0.25 and 0.11 with the default method (--topv: and
TopV at layer 2) on the validation split; the default weight is chosen there (docs/families.md "Tiled pictures");
`report` gives the test-split figures of the chosen weight and of the same-ratio rule.

The model was trained on single 168-px pictures, never on tiles: it reads the overview as it learned to, and
the tiles are pictures at a scale it never saw. The figures say how the budget should be spread for such a
model; a model trained on tiles may weigh its tiles more (docs/families.md says so).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from topv_edge.lab.data import demo as demo_data  # noqa: E402
from topv_edge.demo import DEMO_MMPROJ, DEMO_MODEL  # noqa: E402
from topv_edge.eval import Item, read_items  # noqa: E402
from topv_edge.pruning import default_method  # noqa: E402
from topv_edge.options import TopVOptions  # noqa: E402
from topv_edge.session import VisionChat  # noqa: E402

from eval_demo_model import Runner  # noqa: E402  (scripts/: the same cached runner as the demo model's sweeps)

VAL_SEED, TEST_SEED = 1, 2
EVAL_DIR = REPO / "build" / "eval"
TILED_DIR = REPO / "build" / "tiled"
PINPOINTS = (168, 336, 336, 168, 336, 336)  # (w, h) pairs: the resolutions anyres may tile to
SCALE = 2
KEEPS = (0.25, 0.11)
WEIGHTS = (1.0, 2.0, 4.0, math.inf)


def anyres_mmproj(src: Path = DEMO_MMPROJ, out_dir: Path = TILED_DIR) -> Path:
    """The demo mmproj with LLaVA-1.6's grid pinpoints added (same tensors, same other keys)."""
    import gguf

    dst = out_dir / "mmproj-demo-vlm-anyres.gguf"
    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), arch="clip")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        writer.add_key_value(field.name, field.contents(), field.types[0],
                             sub_type=field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    writer.add_array("clip.vision.image_grid_pinpoints", list(PINPOINTS))
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_shape=list(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def tiled_items(seed: int, n: int) -> list[Item]:
    """The split's questions with their pictures scaled up SCALE x (nearest), written next to the split."""
    from PIL import Image

    items = read_items(demo_data.cached_split(EVAL_DIR, n, seed))
    out = EVAL_DIR / f"tiled-x{SCALE}-seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    tiled = []
    for it in items:
        dst = out / it.image.name
        if not dst.is_file():
            im = Image.open(it.image).convert("RGB")
            im.resize((im.width * SCALE, im.height * SCALE), Image.NEAREST).save(dst)
        tiled.append(Item(dst, it.question, it.answer, it.kind))
    return tiled


def _table(run: Runner, configs: list[tuple[str, int]], weights, keeps) -> list[dict]:
    rows = []
    print("\n| method | layer | overview weight | " + " | ".join(f"keep {k:g}" for k in keeps) + " | mean |")
    print("|---|---:|---:|" + "---:|" * (len(keeps) + 1))
    for method, layer in configs:
        for w in weights:
            accs = [run.run(method, k, layer, options={"overview_weight": w})["accuracy"] for k in keeps]
            rows.append({"method": method, "layer": layer, "weight": w, "accuracy": accs})
            print(f"| {method} | {layer} | {w:g} | " + " | ".join(f"{a:.3f}" for a in accs)
                  + f" | {sum(accs) / len(accs):.3f} |", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("sweep", "report"))
    ap.add_argument("--n", type=int, help="questions (default: 200 for sweep, 300 for report)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--weights", type=float, nargs="+", help="report: the weights to compare (default 1 and the "
                                                           "stage's default)")
    ap.add_argument("--topv", action="store_true", help="also TopV at layer 2 (default: the default method only)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args(argv)
    sweep = args.command == "sweep"
    n = args.n or (200 if sweep else 300)
    seed = VAL_SEED if sweep else TEST_SEED
    path = args.json or REPO / "results" / ("sweep_val_tiled.json" if sweep else "eval_tiled.json")
    items = tiled_items(seed, n)
    mmproj = anyres_mmproj()
    with VisionChat(DEMO_MODEL, mmproj, topv=TopVOptions(enabled=False), threads=args.threads, max_tokens=4) as chat:
        run = Runner(chat, items, path, args.fresh)
        base = run.run(None)
        print(f"unpruned, tiled: {base['accuracy']:.3f} ({len(items)} questions, "
              f"{'validation' if sweep else 'test'} split, seed {seed})", file=sys.stderr)
        configs = [(default_method(), 0)] + ([("topv", 2)] if args.topv else [])
        if sweep:
            rows = _table(run, configs, WEIGHTS, KEEPS)
        else:
            from topv_edge.options import DEFAULT_OVERVIEW_WEIGHT

            weights = args.weights or sorted({1.0, DEFAULT_OVERVIEW_WEIGHT})
            rows = _table(run, configs, weights, (0.5,) + KEEPS + (0.05,))
        run.save(split="validation" if sweep else "test", seed=seed, n=len(items), unpruned=base["accuracy"],
                 table=[dict(r, weight=None if math.isinf(r["weight"]) else r["weight"]) for r in rows],
                 model="topv_edge/demo_model, mmproj with image_grid_pinpoints " + str(list(PINPOINTS)),
                 pictures=f"the split's 168 px pictures scaled {SCALE}x (nearest): 2 x 2 tiles + overview")
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
