"""The second demo model's procedural task ("scenes"): objects of very different sizes among saturated
clutter, relations between two objects, and a character to read in a small box. One-word answers.

numpy + Pillow only; used by the training lab (topv_edge.lab.train scenes) and the tests. Seeds and splits
as in topv_edge.lab.data.splits: seed 1 is the validation split, 2 the test split, 3..999 other evaluation
sets, training uses seeds >= 1000 only.

A picture is 224 x 224: 16 x 16 patches of 14 px, which a Qwen2-VL-style merger turns into 8 x 8 = 64
image tokens of 28 x 28 px ("cells"). It holds:
- 1 to 3 objects (filled circle, square, triangle or cross, each of its own colour and shape), each
  filling a block of 1 x 1 up to 4 x 4 cells (28 to 112 px wide: the largest covers a quarter of the
  picture), aligned to the cell grid, never touching;
- mostly (BOX_P) a small box: one light cell with a dark border and a dark character in it;
- saturated clutter in the free cells: thin lines, dots, rings and zigzags in the objects' own colours,
  which no question asks about and which is never counted;
- a textured background.

Question kinds (KINDS):
  color   "What color is the circle?"                           the object's colour
  shape   "What shape is the red object?"                       its shape
  count   "How many shapes are there?"                          one .. three (objects only)
  left    "Is the red circle left of the blue square?"          yes / no (centres >= one cell apart in x)
  above   "Is the red circle above the blue square?"            yes / no (centres >= one cell apart in y)
  read    "What is written in the box?"                         2 3 4 7 a e h k
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .demo import COLORS, SHAPES  # the same colours and shapes as the demo task
from .splits import Example, Splits, accuracy_by_type, example_rng, normalize_answer, read_jsonl  # noqa: F401 (re-exported)
from .splits import distinct_questions
from .splits import write_examples  # noqa: F401 (re-exported)

IMAGE_SIZE = 224
PATCH_SIZE = 14
MERGE = 2
CELL = PATCH_SIZE * MERGE          # one image token after the 2 x 2 merge
GRID = IMAGE_SIZE // CELL          # 8 x 8 image tokens
MAX_OBJECTS = 3
SIZES = (1, 2, 3, 4)               # object block side, cells
SIZE_P = (0.35, 0.3, 0.2, 0.15)
BOX_P = 0.85                       # share of pictures with a box to read
INSET = 2.0                        # px between an object's bounding box and its block's edge

NUMBERS: tuple[str, ...] = ("one", "two", "three")
CHARS: tuple[str, ...] = ("2", "3", "4", "7", "a", "e", "h", "k")
KINDS: tuple[str, ...] = ("color", "shape", "count", "left", "above", "read")
ANSWERS: tuple[str, ...] = tuple(COLORS) + SHAPES + NUMBERS + ("yes", "no") + CHARS

VOCAB_WORDS: tuple[str, ...] = tuple(sorted(set(
    " ".join(list(COLORS) + list(SHAPES) + list(NUMBERS) + list(CHARS) + [
        "yes", "no", "what", "color", "is", "the", "shape", "object", "how", "many", "shapes", "are", "there",
        "left", "of", "above", "written", "in", "box", "user", "assistant", "system"]).split())))

# 5 x 7 glyphs of the characters (upper case drawn, lower case answered)
_GLYPHS: dict[str, tuple[str, ...]] = {
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11110", "00001", "00001", "01110", "00001", "00001", "11110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "a": ("01110", "10001", "10001", "11111", "10001", "10001", "10001"),
    "e": ("11111", "10000", "10000", "11110", "10000", "10000", "11111"),
    "h": ("10001", "10001", "10001", "11111", "10001", "10001", "10001"),
    "k": ("10001", "10010", "10100", "11000", "10100", "10010", "10001"),
}


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str
    gx: int           # top-left cell
    gy: int
    size: int         # side, cells

    @property
    def cx(self) -> float:
        return (self.gx + self.size / 2) * CELL

    @property
    def cy(self) -> float:
        return (self.gy + self.size / 2) * CELL


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    box: tuple[int, int, str] | None   # (cell x, cell y, character)
    seed_material: int                 # drives background, clutter and colour jitter


# ----------------------------------------------------------------------------------------------------
# scenes


def make_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """1..MAX_OBJECTS objects of distinct colours and shapes on free blocks (a free cell between any two),
    sizes drawn from SIZES with SIZE_P (largest first, so that they fit), then maybe a box."""
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    colors = rng.choice(len(COLORS), size=n, replace=False)
    shapes = rng.choice(len(SHAPES), size=n, replace=False)
    sizes = sorted((int(rng.choice(SIZES, p=SIZE_P)) for _ in range(n)), reverse=True)
    taken = np.zeros((GRID, GRID), bool)
    objs: list[Obj] = []
    for c, s, size in zip(colors, shapes, sizes):
        for _ in range(200):
            gx, gy = (int(v) for v in rng.integers(0, GRID - size + 1, 2))
            if not taken[max(0, gy - 1):gy + size + 1, max(0, gx - 1):gx + size + 1].any():
                break
        else:  # crowded: shrink to one cell and take any free spot with a gap
            size = 1
            free = [(x, y) for y in range(GRID) for x in range(GRID)
                    if not taken[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any()]
            gx, gy = free[int(rng.integers(len(free)))]
        taken[gy:gy + size, gx:gx + size] = True
        objs.append(Obj(list(COLORS)[int(c)], SHAPES[int(s)], gx, gy, size))
    box = None
    if rng.random() < BOX_P:
        free = [(x, y) for y in range(GRID) for x in range(GRID)
                if not taken[max(0, y - 1):y + 2, max(0, x - 1):x + 2].any()]
        if free:
            bx, by = free[int(rng.integers(len(free)))]
            box = (bx, by, CHARS[int(rng.integers(len(CHARS)))])
    return Scene(tuple(objs), box, int(rng.integers(2 ** 31)))


def _background(rng: np.random.Generator) -> np.ndarray:
    """A textured background (float32 HxWx3, 0..255): blocky noise, stripes or a gradient, pixel noise."""
    s = IMAGE_SIZE
    col = np.clip(rng.uniform(60, 170) + rng.uniform(-25, 25, 3), 0, 255).astype(np.float32)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    kind = int(rng.integers(3))
    if kind == 0:
        cell = int(rng.integers(4, 17))
        g = rng.uniform(-1, 1, (s // cell + 2, s // cell + 2)).astype(np.float32)
        field = np.kron(g, np.ones((cell, cell), np.float32))[:s, :s]
    elif kind == 1:
        ang, period = rng.uniform(0, math.pi), rng.uniform(8, 40)
        field = np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period + rng.uniform(0, 6.3))
    else:
        ang = rng.uniform(0, 2 * math.pi)
        field = ((xx - s / 2) * math.cos(ang) + (yy - s / 2) * math.sin(ang)) / (s / 2)
    img = col[None, None, :] + (rng.uniform(8, 28) * field)[..., None]
    return img + rng.normal(0, rng.uniform(2, 8), (s, s, 3)).astype(np.float32)


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.array(rgb, np.float32) + rng.uniform(-amount, amount, 3), 0, 255))


def _draw_object(draw: "object", o: Obj, fill: object) -> None:
    x0, y0 = o.gx * CELL + INSET, o.gy * CELL + INSET
    x1, y1 = (o.gx + o.size) * CELL - INSET, (o.gy + o.size) * CELL - INSET
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if o.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif o.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif o.shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), (cx, y0)], fill=fill)
    elif o.shape == "cross":
        t = r * 0.36
        draw.rectangle((cx - t, y0, cx + t, y1), fill=fill)
        draw.rectangle((x0, cy - t, x1, cy + t), fill=fill)
    else:
        raise ValueError(f"unknown shape {o.shape!r}")


def _draw_clutter(draw: "object", rng: np.random.Generator, n: int) -> None:
    """Thin saturated strokes and small marks: lines, dots, rings, zigzags (never a filled shape)."""
    palette = list(COLORS.values()) + [(250, 250, 250), (20, 20, 20)]
    for _ in range(n):
        c = _jitter(rng, palette[int(rng.integers(len(palette)))], 20)
        x, y = (float(v) for v in rng.uniform(0, IMAGE_SIZE, 2))
        kind = int(rng.integers(4))
        if kind == 0:
            ang, ln = rng.uniform(0, 2 * math.pi), rng.uniform(12, 60)
            draw.line((x, y, x + ln * math.cos(ang), y + ln * math.sin(ang)), fill=c, width=int(rng.integers(1, 3)))
        elif kind == 1:
            r = float(rng.uniform(1.5, 3.5))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=c)
        elif kind == 2:
            r = float(rng.uniform(3, 7))
            draw.ellipse((x - r, y - r, x + r, y + r), outline=c, width=1)
        else:
            step, pts = float(rng.uniform(3, 6)), []
            for k in range(int(rng.integers(3, 7))):
                pts.append((x + k * step, y + (step if k % 2 else 0)))
            draw.line(pts, fill=c, width=1)


def render(scene: Scene):
    """(PIL RGB image, mask: uint8 HxW, 0 elsewhere, k+1 where object k is drawn, 255 on the box)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(scene.seed_material)
    img = Image.fromarray(np.clip(_background(rng), 0, 255).astype(np.uint8), "RGB")
    # clutter on its own layer, pasted everywhere but the objects' and the box's blocks
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    _draw_clutter(ImageDraw.Draw(layer), rng, int(rng.integers(8, 21)))
    keep = np.ones((IMAGE_SIZE, IMAGE_SIZE), bool)
    blocks = [(o.gx, o.gy, o.size) for o in scene.objects] + ([(scene.box[0], scene.box[1], 1)] if scene.box else [])
    for gx, gy, size in blocks:
        keep[gy * CELL:(gy + size) * CELL, gx * CELL:(gx + size) * CELL] = False
    alpha = np.asarray(layer)[..., 3] * keep
    img.paste(layer.convert("RGB"), (0, 0), Image.fromarray(alpha.astype(np.uint8), "L"))
    draw = ImageDraw.Draw(img)
    mask = Image.new("L", img.size, 0)
    mdraw = ImageDraw.Draw(mask)
    for k, o in enumerate(scene.objects):
        _draw_object(draw, o, _jitter(rng, COLORS[o.color], 18))
        _draw_object(mdraw, o, k + 1)
    if scene.box:
        bx, by, ch = scene.box
        x0, y0 = bx * CELL + 1, by * CELL + 1
        paper = _jitter(rng, (235, 235, 225), 15)
        ink = _jitter(rng, (25, 25, 35), 15)
        draw.rectangle((x0, y0, x0 + CELL - 3, y0 + CELL - 3), fill=paper, outline=ink, width=2)
        mdraw.rectangle((x0, y0, x0 + CELL - 3, y0 + CELL - 3), fill=255)
        sx, sy = x0 + (CELL - 2 - 15) // 2, y0 + (CELL - 2 - 21) // 2
        for r, row in enumerate(_GLYPHS[ch]):
            for c, bit in enumerate(row):
                if bit == "1":
                    draw.rectangle((sx + 3 * c, sy + 3 * r, sx + 3 * c + 2, sy + 3 * r + 2), fill=ink)
    return img, np.asarray(mask, np.uint8)


def cell_labels(scene: Scene, mask: np.ndarray, min_cover: float = 0.2) -> dict[str, np.ndarray]:
    """Per-cell (image token, row-major GRID x GRID) classes for auxiliary losses: "color", "shape"
    (0 background/clutter, else 1 + index of the object covering at least `min_cover` of the cell) and
    "char" (0, or 1 + index in CHARS on the box's cell)."""
    m = mask.reshape(GRID, CELL, GRID, CELL).transpose(0, 2, 1, 3).reshape(GRID * GRID, CELL * CELL)
    out = {k: np.zeros(GRID * GRID, np.int64) for k in ("color", "shape", "char")}
    for k, o in enumerate(scene.objects):
        sel = (m == k + 1).mean(1) >= min_cover  # blocks never overlap: at most one object per cell
        out["color"][sel] = 1 + list(COLORS).index(o.color)
        out["shape"][sel] = 1 + SHAPES.index(o.shape)
    if scene.box:
        out["char"][scene.box[1] * GRID + scene.box[0]] = 1 + CHARS.index(scene.box[2])
    return out


def object_cells(o: Obj) -> np.ndarray:
    """Indices (row-major) of the image tokens of an object's block."""
    return np.array([y * GRID + x for y in range(o.gy, o.gy + o.size) for x in range(o.gx, o.gx + o.size)])


# ----------------------------------------------------------------------------------------------------
# questions


def _pairs(scene: Scene, axis: str) -> list[tuple[Obj, Obj]]:
    key = (lambda o: o.cx) if axis == "x" else (lambda o: o.cy)
    return [(a, b) for a in scene.objects for b in scene.objects if a is not b and abs(key(a) - key(b)) >= CELL]


def available_kinds(scene: Scene) -> list[str]:
    ok = {"color": True, "shape": True, "count": True, "left": bool(_pairs(scene, "x")),
          "above": bool(_pairs(scene, "y")), "read": scene.box is not None}
    return [k for k in KINDS if ok[k]]


def ask(scene: Scene, rng: np.random.Generator, kind: str | None = None) -> tuple[str, str, str, tuple[Obj, ...]]:
    """One question: (question, answer, kind, the objects it names in order). kind None: uniform over the
    kinds the scene allows."""
    kinds = available_kinds(scene)
    if kind is None:
        kind = kinds[int(rng.integers(len(kinds)))]
    elif kind not in KINDS:
        raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(KINDS)}")
    elif kind not in kinds:
        raise ValueError(f"no {kind!r} question can be asked about this scene")
    objs = scene.objects
    if kind == "color":
        o = objs[int(rng.integers(len(objs)))]
        return f"What color is the {o.shape}?", o.color, kind, (o,)
    if kind == "shape":
        o = objs[int(rng.integers(len(objs)))]
        return f"What shape is the {o.color} object?", o.shape, kind, (o,)
    if kind == "count":
        return "How many shapes are there?", NUMBERS[len(objs) - 1], kind, ()
    if kind == "read":
        return "What is written in the box?", scene.box[2], kind, ()  # type: ignore[index]
    pairs = _pairs(scene, "x" if kind == "left" else "y")
    a, b = pairs[int(rng.integers(len(pairs)))]  # both orders are pairs: yes and no equally often
    if kind == "left":
        return f"Is the {a.color} {a.shape} left of the {b.color} {b.shape}?", "yes" if a.cx < b.cx else "no", kind, (a, b)
    return f"Is the {a.color} {a.shape} above the {b.color} {b.shape}?", "yes" if a.cy < b.cy else "no", kind, (a, b)


def ask_many(scene: Scene, rng: np.random.Generator, k: int) -> list[tuple[str, str, str, tuple[Obj, ...]]]:
    """Up to k different questions about one scene."""
    return distinct_questions(ask, scene, rng, k)


# ----------------------------------------------------------------------------------------------------
# examples and splits


def make_example_full(rng: np.random.Generator) -> Example:
    """A scene and one question of a kind drawn uniformly from KINDS (scenes redrawn until it can be asked),
    so that every kind is equally frequent in the splits."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    scene = make_scene(rng)
    while kind not in available_kinds(scene):
        scene = make_scene(rng)
    q, a, t, _ = ask(scene, rng, kind)
    img, _ = render(scene)
    return Example(img, q, a, t)


SPLITS = Splits(make_example_full, prefix="scenes-")
iter_split, generate_split, write_jsonl, cached_split = SPLITS.iter, SPLITS.generate, SPLITS.write_jsonl, SPLITS.cached
