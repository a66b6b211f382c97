"""Test pictures."""

from __future__ import annotations


import numpy as np


def demo_image(size: tuple[int, int] = (336, 336), seed: int = 0):
    """A deterministic picture: a few coloured shapes on a textured background (PIL.Image, RGB)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    bg = (rng.integers(90, 150, (h // 8 + 1, w // 8 + 1, 3))).astype(np.uint8)
    img = Image.fromarray(np.kron(bg, np.ones((8, 8, 1), np.uint8))[:h, :w])
    d = ImageDraw.Draw(img)
    colours = [(220, 40, 40), (40, 90, 220), (40, 180, 60), (240, 200, 40)]
    for k in range(4):
        r = int(rng.integers(min(w, h) // 12, min(w, h) // 6))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        box = (cx - r, cy - r, cx + r, cy + r)
        [d.ellipse, d.rectangle, lambda b, fill: d.polygon([(b[0], b[3]), (b[2], b[3]), ((b[0] + b[2]) // 2, b[1])],
                                                           fill=fill)][k % 3](box, fill=colours[k])
    return img
