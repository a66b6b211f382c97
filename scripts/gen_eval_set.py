#!/usr/bin/env python3
"""Write an evaluation set of the demo data (topv_edge.lab.data.demo): images/NNNNN.png and data.jsonl,
one line per example: {"image": "images/00000.png", "question": ..., "answer": ..., "kind": ...}.

    python scripts/gen_eval_set.py --n 600 --seed 2 -o build/eval/test

Seeds: 1 = validation split, 2 = test split (the held-out split the model card reports), 3..999 free
for other evaluation sets; the demo model was trained on seeds >= 1000 only. Same seed and n, same files.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from topv_edge.lab.data import demo as D  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=600, help="number of examples (default 600)")
    ap.add_argument("--seed", type=int, default=2, help="split seed (default 2, the test split)")
    ap.add_argument("-o", "--out", type=Path, required=True, help="output directory")
    args = ap.parse_args(argv)
    if args.n < 1:
        ap.error("--n must be at least 1")
    if args.seed >= 1000:
        print(f"warning: seed {args.seed} >= 1000 overlaps the training seeds", file=sys.stderr)
    path = D.write_jsonl(args.out, args.n, args.seed)
    rows = D.read_jsonl(path)
    counts = collections.Counter(r["kind"] for r in rows)
    print(f"{path}: {len(rows)} examples ({', '.join(f'{t} {counts[t]}' for t in D.QTYPES)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
