"""The demo model's procedural data set: coloured shapes on cluttered backgrounds, with one-word answers.

Shared by the training lab (topv_edge.lab.train demo), the evaluation-set generator
(scripts/gen_eval_set.py) and the tests. numpy + Pillow only. Every example is a pure function of
its seed (splits, seeds and caches: topv_edge.lab.data.splits); training draws from seeds >= 1000 only
(TRAIN_SEED_BASE + step, see topv_edge.lab.train.demo), so no evaluation example is ever trained on.

A picture is IMAGE_SIZE x IMAGE_SIZE (168 = 12 x 12 patches of 14 px, 144 image tokens), 1 to 4
shapes (circle, square, triangle, cross) of distinct (colour, shape) pairs and three sizes (blocks of
1 x 1, 2 x 2 or 3 x 3 patches, aligned to the patch grid), never touching, on a textured background (blocky noise, stripes, gradient or checker) with
faint clutter (thin lines and dots of low contrast) that is never counted as a shape.

Question types (QTYPES), answers are single lower-case words (ANSWERS):
  color   "What color is the circle?"                      (the named shape occurs once)
  shape   "What shape is the red object?"                  (the named colour occurs once)
  exists  "Is there a blue square?"                        yes / no, balanced; "no" is usually a near miss
  count   "How many shapes are there?"                     one .. four
  lr      "Is the red circle on the left or the right?"    object centre at least POS_MARGIN px off the middle
  tb      "Is the red circle at the top or the bottom?"    same, vertically
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .splits import Example, Splits, accuracy_by_type, example_rng, normalize_answer, read_jsonl  # noqa: F401 (re-exported)
from .splits import distinct_questions
from .splits import write_examples  # noqa: F401 (re-exported)

IMAGE_SIZE = 168
PATCH_SIZE = 14
GRID = IMAGE_SIZE // PATCH_SIZE

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 175, 55),
    "blue": (40, 75, 230),
    "yellow": (240, 215, 30),
    "purple": (150, 50, 210),
    "cyan": (30, 205, 215),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
NUMBERS: tuple[str, ...] = ("one", "two", "three", "four")
QTYPES: tuple[str, ...] = ("color", "shape", "exists", "count", "lr", "tb")
ANSWERS: tuple[str, ...] = (tuple(COLORS) + SHAPES + ("yes", "no") + NUMBERS + ("left", "right", "top", "bottom"))

MIN_CELLS, MAX_CELLS = 1, 3       # a shape fills a block of 1 x 1 .. 3 x 3 patches
INSET = 1.5                       # px between a shape's bounding box and its block's edge
POS_MARGIN = 16                   # lr / tb questions: |centre - middle| >= this, px
MAX_SHAPES = 4

# the words a question or answer can use (for the tokenizer's corpus)
VOCAB_WORDS: tuple[str, ...] = tuple(sorted(set(
    " ".join(list(COLORS) + list(SHAPES) + list(NUMBERS) + ["yes", "no", "left", "right", "top", "bottom",
             "what", "color", "is", "the", "shape", "object", "there", "a", "how", "many", "shapes", "are",
             "on", "or", "at", "user", "assistant"]).split())))


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    cx: float
    cy: float
    r: float          # half side of the bounding box


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    seed_material: int  # drives the texture and clutter (a scene renders the same picture every time)


# ----------------------------------------------------------------------------------------------------
# scenes


def make_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """1..4 shapes with distinct (colour, shape) pairs, each filling a square block of 1, 2 or 3 patches
    of the 14-px grid, at random blocks that do not touch (a free cell between any two shapes).

    Why on the grid: then every patch a shape covers shows a fixed part of its outline (a circle's arc,
    a triangle's slope, a cross's notch), so a ViT small enough to train on a CPU in an hour learns
    shapes; with free placement the same ViT stayed at chance on shape (see docs/demo_model.md)."""
    n = int(rng.integers(1, MAX_SHAPES + 1)) if n_objects is None else n_objects
    combos = [(c, s) for c in COLORS for s in SHAPES]
    picks = rng.choice(len(combos), size=n, replace=False)
    taken = np.zeros((GRID, GRID), bool)
    objs: list[Obj] = []
    for k in picks:
        color, shape = combos[int(k)]
        for _ in range(500):
            size = int(rng.integers(MIN_CELLS, MAX_CELLS + 1))
            gx, gy = (int(v) for v in rng.integers(0, GRID - size + 1, 2))
            if not taken[max(0, gy - 1):gy + size + 1, max(0, gx - 1):gx + size + 1].any():
                break
        else:  # pragma: no cover - 4 blocks of at most 3 x 3 always fit in 12 x 12 with gaps
            raise RuntimeError("could not place the shapes")
        taken[gy:gy + size, gx:gx + size] = True
        objs.append(Obj(color, shape, (gx + size / 2) * PATCH_SIZE, (gy + size / 2) * PATCH_SIZE,
                        size * PATCH_SIZE / 2 - INSET))
    background = ("noise", "stripes", "gradient", "checker")[int(rng.integers(4))]
    return Scene(tuple(objs), background, int(rng.integers(2 ** 31)))


def _draw_shape(draw: "object", o: Obj, fill: object) -> None:
    x0, y0, x1, y1 = o.cx - o.r, o.cy - o.r, o.cx + o.r, o.cy + o.r
    if o.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif o.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif o.shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (o.cx, y0)], fill=fill)
    elif o.shape == "cross":
        t = o.r * 0.38
        draw.rectangle((o.cx - t, y0, o.cx + t, y1), fill=fill)
        draw.rectangle((x0, o.cy - t, x1, o.cy + t), fill=fill)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")


def _background(rng: np.random.Generator, kind: str) -> np.ndarray:
    """A textured, low-saturation background (float32 HxWx3, 0..255)."""
    s = IMAGE_SIZE
    base = rng.uniform(70, 185)
    tint = rng.uniform(-18, 18, 3)
    col = np.clip(base + tint, 0, 255).astype(np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    if kind == "noise":
        cell = int(rng.integers(4, 15))
        g = rng.uniform(-1, 1, (s // cell + 2, s // cell + 2)).astype(np.float32)
        field = np.kron(g, np.ones((cell, cell), np.float32))[:s, :s]
        amp = rng.uniform(12, 30)
    elif kind == "stripes":
        ang = rng.uniform(0, math.pi)
        period = rng.uniform(6, 30)
        field = np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period + rng.uniform(0, 6.3))
        amp = rng.uniform(10, 25)
    elif kind == "gradient":
        ang = rng.uniform(0, 2 * math.pi)
        field = ((xx - s / 2) * math.cos(ang) + (yy - s / 2) * math.sin(ang)) / (s / 2)
        amp = rng.uniform(15, 40)
    else:  # checker
        cell = int(rng.integers(8, 29))
        field = (((xx // cell) + (yy // cell)) % 2) * 2.0 - 1.0
        amp = rng.uniform(6, 18)
    img = col[None, None, :] + (amp * field)[..., None]
    img += rng.normal(0, rng.uniform(2, 9), (s, s, 3)).astype(np.float32)  # pixel noise
    return img


def render(scene: Scene):
    """(PIL RGB image, object mask: uint8 HxW, 0 background, k+1 where object k is drawn)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(scene.seed_material)
    bg = _background(rng, scene.background)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    # faint clutter: thin lines and dots, colours close to the local background
    for _ in range(int(rng.integers(2, 9))):
        x, y = (float(v) for v in rng.uniform(0, IMAGE_SIZE, 2))
        ref = bg[int(min(y, IMAGE_SIZE - 1)), int(min(x, IMAGE_SIZE - 1))]
        c = tuple(int(v) for v in np.clip(ref + rng.uniform(-45, 45, 3), 0, 255))
        if rng.random() < 0.6:
            ang, ln = rng.uniform(0, 2 * math.pi), rng.uniform(15, 70)
            draw.line((x, y, x + ln * math.cos(ang), y + ln * math.sin(ang)), fill=c, width=int(rng.integers(1, 3)))
        else:
            rr = float(rng.uniform(1.5, 4))
            draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=c)
    mask = Image.new("L", img.size, 0)
    mdraw = ImageDraw.Draw(mask)
    for k, o in enumerate(scene.objects):
        base = np.array(COLORS[o.color], np.float32)
        fill = tuple(int(v) for v in np.clip(base + rng.uniform(-18, 18, 3), 0, 255))
        _draw_shape(draw, o, fill)
        _draw_shape(mdraw, o, k + 1)
    return img, np.asarray(mask, np.uint8)


def patch_labels(scene: Scene, mask: np.ndarray, min_cover: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch (colour, shape) classes, row-major GRID x GRID -> two int arrays of GRID*GRID:
    0 = background, else 1 + index in COLORS / SHAPES of the object covering most of the patch
    (when it covers at least `min_cover` of it). For auxiliary training losses."""
    p = PATCH_SIZE
    m = mask.reshape(GRID, p, GRID, p).transpose(0, 2, 1, 3).reshape(GRID * GRID, p * p)
    colors, shapes = np.zeros(GRID * GRID, np.int64), np.zeros(GRID * GRID, np.int64)
    cnames, snames = list(COLORS), list(SHAPES)
    for k, o in enumerate(scene.objects):
        cover = (m == k + 1).mean(1)
        sel = cover >= min_cover
        # the object that covers most wins (objects never overlap, so ties cannot cover >= 0.5 each)
        best = np.ones(GRID * GRID, bool)
        for j in range(len(scene.objects)):
            if j != k:
                best &= cover >= (m == j + 1).mean(1)
        sel &= best
        colors[sel] = 1 + cnames.index(o.color)
        shapes[sel] = 1 + snames.index(o.shape)
    return colors, shapes


# ----------------------------------------------------------------------------------------------------
# questions


def _available(scene: Scene) -> dict[str, list]:
    objs = scene.objects
    shape_count = {s: sum(o.shape == s for o in objs) for s in SHAPES}
    color_count = {c: sum(o.color == c for o in objs) for c in COLORS}
    mid = IMAGE_SIZE / 2
    return {
        "color": [o for o in objs if shape_count[o.shape] == 1],
        "shape": [o for o in objs if color_count[o.color] == 1],
        "exists": [None],
        "count": [None],
        "lr": [o for o in objs if abs(o.cx - mid) >= POS_MARGIN],
        "tb": [o for o in objs if abs(o.cy - mid) >= POS_MARGIN],
    }


def available_qtypes(scene: Scene) -> list[str]:
    av = _available(scene)
    return [t for t in QTYPES if av[t]]


def ask(scene: Scene, rng: np.random.Generator, qtype: str | None = None) -> tuple[str, str, str]:
    """One question about the scene: (question, answer, qtype). qtype None: uniform over the available types."""
    av = _available(scene)
    if qtype is None:
        types = [t for t in QTYPES if av[t]]
        qtype = types[int(rng.integers(len(types)))]
    elif qtype not in QTYPES:
        raise ValueError(f"unknown question type {qtype!r}; known: {', '.join(QTYPES)}")
    elif not av[qtype]:
        raise ValueError(f"no {qtype!r} question can be asked about this scene")
    cands = av[qtype]
    o = cands[int(rng.integers(len(cands)))]
    mid = IMAGE_SIZE / 2
    if qtype == "color":
        return f"What color is the {o.shape}?", o.color, qtype
    if qtype == "shape":
        return f"What shape is the {o.color} object?", o.shape, qtype
    if qtype == "count":
        return "How many shapes are there?", NUMBERS[len(scene.objects) - 1], qtype
    if qtype == "lr":
        return f"Is the {o.color} {o.shape} on the left or the right?", "left" if o.cx < mid else "right", qtype
    if qtype == "tb":
        return f"Is the {o.color} {o.shape} at the top or the bottom?", "top" if o.cy < mid else "bottom", qtype
    # exists: yes half the time; a "no" names a missing pair, usually sharing a colour or a shape with one shown
    present = {(p.color, p.shape) for p in scene.objects}
    if rng.random() < 0.5:
        p = scene.objects[int(rng.integers(len(scene.objects)))]
        c, s, ans = p.color, p.shape, "yes"
    else:
        missing = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
        near = [(c, s) for c, s in missing if any(c == p.color or s == p.shape for p in scene.objects)]
        pool = near if near and rng.random() < 0.75 else missing
        c, s = pool[int(rng.integers(len(pool)))]
        ans = "no"
    return f"Is there a {c} {s}?", ans, "exists"


def ask_many(scene: Scene, rng: np.random.Generator, k: int) -> list[tuple[str, str, str]]:
    """Up to k different questions about one scene (types drawn uniformly, no question twice)."""
    return distinct_questions(ask, scene, rng, k)


# ----------------------------------------------------------------------------------------------------
# examples and splits


def make_example_full(rng: np.random.Generator, qtype: str | None = None) -> Example:
    scene = make_scene(rng)
    if qtype is not None:
        while qtype not in available_qtypes(scene):
            scene = make_scene(rng)
    q, a, t = ask(scene, rng, qtype)
    img, _ = render(scene)
    return Example(img, q, a, t)


def make_example(rng: np.random.Generator):
    """(PIL.Image, question, answer)."""
    ex = make_example_full(rng)
    return ex.image, ex.question, ex.answer


SPLITS = Splits(make_example_full)  # question types uniform per example
iter_split, generate_split, write_jsonl, cached_split = SPLITS.iter, SPLITS.generate, SPLITS.write_jsonl, SPLITS.cached
