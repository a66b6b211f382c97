"""See what TopV keeps: the picture with the kept patches highlighted and the pruned ones dimmed, beside a
heat map of the TopV scores.

  python -m topv_edge.viz MODEL.gguf IMAGE -o kept.png [--keep 0.25] [--layer 2] [--mmproj P]

Both outputs have the input picture's size: the kept/pruned view (-o) and the score heat map (--heatmap,
default <out>-scores.png). Token cells are mapped onto the picture proportionally (exact for square
pictures; models that pad or crop non-square pictures shift it slightly).
Runs the real pipeline (the patched llama.cpp encodes, probes and prunes the image), then reads the
stage's kept indices and scores back. Exit codes as for `topv_edge.chat`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .chat import _nonnegative_int, _Parser, parse_keep
from .runtime import ChatError, TopVOptions, VisionChat


def kept_overlay(picture, kept: np.ndarray, grid: tuple[int, int], dim: float = 0.3):
    """The picture with the cells of the kept tokens as they are and the others dimmed (same size)."""
    from PIL import Image

    rgb = np.asarray(picture.convert("RGB"), dtype=np.float32)
    h, w = rgb.shape[:2]
    gw, gh = grid
    mask = np.zeros(gw * gh, bool)
    mask[kept] = True
    cell = mask.reshape(gh, gw)
    # each pixel to its token cell (the model sees the picture resized to the grid)
    ys = np.minimum((np.arange(h) * gh) // h, gh - 1)
    xs = np.minimum((np.arange(w) * gw) // w, gw - 1)
    keep_px = cell[ys][:, xs]
    out = np.where(keep_px[..., None], rgb, rgb * dim + 255 * (1 - dim) * 0.15)
    # a thin outline around kept cells
    edge = keep_px & ~(np.roll(keep_px, 1, 0) & np.roll(keep_px, -1, 0) & np.roll(keep_px, 1, 1) & np.roll(keep_px, -1, 1))
    out[edge] = (255, 200, 0)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def score_heatmap(scores: np.ndarray, grid: tuple[int, int], size: tuple[int, int]):
    """The TopV scores on the token grid, min-max scaled, as a colour map image of `size`."""
    from PIL import Image

    gw, gh = grid
    s = scores.reshape(gh, gw).astype(np.float64)
    s = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.zeros_like(s)
    # dark blue -> red -> yellow
    r = np.clip(2 * s, 0, 1)
    g = np.clip(2 * s - 1, 0, 1)
    b = np.clip(0.5 - s, 0, 0.5)
    rgb = (np.stack([r, g, b], -1) * 255).astype(np.uint8)
    return Image.fromarray(rgb).resize(size, Image.NEAREST)


def main(argv: list[str] | None = None) -> int:
    ap = _Parser(prog="python -m topv_edge.viz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("image")
    ap.add_argument("-o", "--out", type=Path, default=Path("kept.png"), help="output PNG (default kept.png)")
    ap.add_argument("--heatmap", type=Path, help="where to write the score heat map (default <out>-scores.png)")
    ap.add_argument("--mmproj")
    ap.add_argument("--keep", type=parse_keep, default=0.25)
    ap.add_argument("--layer", type=_nonnegative_int, default=2)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    try:
        from PIL import Image

        with VisionChat(args.model, args.mmproj, topv=TopVOptions(keep=args.keep, layer=args.layer),
                        threads=args.threads, max_tokens=1) as chat:
            (report,), _, _ = chat.add_user_message("Describe the picture.", [args.image])
            selection = chat.last_selection()
            if selection is None:
                raise ChatError(f"the image was not pruned: {report.note or 'keep covers every token'}")
        kept, scores, grid = selection
        picture = Image.open(args.image)
        heatmap = args.heatmap or args.out.with_name(args.out.stem + "-scores.png")
        kept_overlay(picture, kept, grid).save(args.out)
        score_heatmap(scores, grid, picture.size).save(heatmap)
        print(f"{args.out}: {report.n_kept} of {report.n_tokens} tokens kept on a {grid[0]}x{grid[1]} grid; "
              f"scores in {heatmap}")
        return 0
    except ChatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
