"""Seeded splits of a procedural task, their JSONL files on disk and exact-match scoring (shared by the
demo and scenes tasks).

Example `i` of the split with seed `s` is drawn from `np.random.default_rng([s, i])`, so a split is
reproducible example by example and independent of how many examples are asked for. Seed 1 is the
validation split, 2 the test split, 3..999 other evaluation sets; training draws from seeds >= 1000 only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np


class Example(NamedTuple):
    image: "object"   # PIL.Image.Image, RGB
    question: str
    answer: str
    qtype: str


def example_rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, i])


@dataclass(frozen=True)
class Splits:
    """The splits of one task: `make_example(rng)` draws an Example; cached splits live in
    root/{prefix}seed{seed}-n{n} (the prefix keeps two tasks' caches apart in one root)."""

    make_example: Callable[[np.random.Generator], Example]
    prefix: str = ""

    def iter(self, n: int, seed: int) -> Iterator[Example]:
        for i in range(n):
            yield self.make_example(example_rng(seed, i))

    def generate(self, n: int, seed: int) -> list[Example]:
        return list(self.iter(n, seed))

    def write_jsonl(self, out_dir: str | Path, n: int, seed: int) -> Path:
        """images/NNNNN.png and data.jsonl ({"image", "question", "answer", "kind"} a line) of split `seed`."""
        return write_examples(out_dir, self.iter(n, seed))

    def cached(self, root: str | Path, n: int, seed: int) -> Path:
        """data.jsonl of the first n examples of split `seed`, written on first use."""
        path = Path(root) / f"{self.prefix}seed{seed}-n{n}" / "data.jsonl"
        return path if path.is_file() else self.write_jsonl(path.parent, n, seed)


def write_examples(out_dir: str | Path, examples: Iterable) -> Path:
    """Write examples (anything with image, question, answer, qtype) as images/NNNNN.png and data.jsonl. Returns
    data.jsonl (written last, under a temporary name until complete)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    path = out / "data.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for i, ex in enumerate(examples):
            rel = f"images/{i:05d}.png"
            ex.image.save(out / rel)
            f.write(json.dumps({"image": rel, "question": ex.question, "answer": ex.answer, "kind": ex.qtype}) + "\n")
    tmp.replace(path)
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """The lines of a data.jsonl, with "image" made an absolute path."""
    path = Path(path)
    rows = []
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                row["image"] = str((path.parent / row["image"]).resolve())
                rows.append(row)
    return rows


def normalize_answer(text: str) -> str:
    """Exact-match scoring: the whole answer, lower case, surrounding blanks and punctuation stripped."""
    return text.strip().lower().strip(".,!?;:\"' \n")


def accuracy_by_type(rows: Sequence[tuple[str, str, str]]) -> dict[str, tuple[int, int]]:
    """rows of (qtype, answer, prediction) -> {qtype: (correct, total)} plus "all"."""
    out: dict[str, list[int]] = {}
    for t, a, p in rows:
        for key in (t, "all"):
            c = out.setdefault(key, [0, 0])
            c[0] += int(normalize_answer(p) == a)
            c[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def distinct_questions(ask, scene, rng, k: int) -> list:
    """Up to k different questions about one scene: `ask(scene, rng)` drawn up to 4k times, the first k whose
    question text is new (the answer and what else `ask` returns come with it)."""
    out, seen = [], set()
    for _ in range(4 * k):
        if len(out) == k:
            break
        q = ask(scene, rng)
        if q[0] not in seen:
            seen.add(q[0])
            out.append(q)
    return out
