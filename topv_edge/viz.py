"""See what TopV keeps: the picture with the kept patches highlighted and the pruned ones dimmed, beside a
heat map of the method's scores (for divprune: the order it picked the tokens in, the first highest).

  python -m topv_edge.viz MODEL.gguf IMAGE -o kept.png [--keep 0.25] [--layer L] [--method M] [--mmproj P]

Two pictures: the kept/pruned view (-o) and the score heat map with a colour bar (--heatmap, default
<out>-scores.png), each under a title line (method, keep, kept/total tokens, layer). Pictures smaller
than 512 px are enlarged by a whole factor (nearest neighbour, so the token cells stay sharp). Token
cells are mapped onto the picture proportionally (exact for square pictures; models that pad or crop
non-square pictures shift it slightly). The output format follows the file extension (.png, .jpg,
.webp, ... whatever Pillow writes); the output directory must exist.

Runs the real pipeline (the patched llama.cpp encodes, probes and prunes the image), then reads the
stage's kept indices and scores back. Exit codes as for `topv_edge.chat`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from .cli import Parser, add_device_flags, add_pruning_flags, device_options, pruning_options, run_command
from .errors import ChatError
from .session import VisionChat

MIN_SIDE = 512     # smaller pictures are enlarged to at least this (longer side)
TITLE_PX = 28      # height of the title band
BAR_PX = 96        # width of the colour bar panel of the heat map


def as_rgb(picture) -> np.ndarray:
    """H x W x 3 float32 in 0..255, 16-bit and 32-bit integer pictures scaled down (not clipped to white)."""
    mode = picture.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(picture, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
        if mode in ("I", "F") and a.max() > 65535:
            top = float(a.max())
        grey = np.clip(a / top * 255.0, 0, 255).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(picture.convert("RGB"), dtype=np.float32)


def upscale_factor(size: tuple[int, int], min_side: int = MIN_SIDE) -> int:
    """The whole factor that brings the longer side to at least `min_side` (1 for large pictures)."""
    return max(1, math.ceil(min_side / max(size)))


def kept_overlay(picture, kept: np.ndarray, grid: tuple[int, int], dim: float = 0.3, scale: int = 1):
    """The picture (enlarged `scale` times, nearest) with the kept tokens' cells as they are and the others dimmed."""
    from PIL import Image

    rgb = as_rgb(picture)
    if scale > 1:
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
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
    # around kept regions a black line outside a white one: one of the two shows on any colour (a single yellow
    # line vanished on yellow shapes)
    inside = _erode(keep_px)
    out[keep_px & ~inside] = (0, 0, 0)
    out[inside & ~_erode(inside)] = (255, 255, 255)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _erode(mask: np.ndarray) -> np.ndarray:
    """The mask less its border pixels (4-neighbour erosion)."""
    return mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)


# what a method's scores are, where they are not an importance: (title word, top label, bottom label)
SCORE_MEANING = {"divprune": ("pick order (first picked highest, not picked 0)", "1st", "not picked")}


def score_meaning(method: str) -> tuple[str, str, str]:
    """The heat map's title word and the colour bar's two ends for `method`'s scores."""
    return SCORE_MEANING.get(method, ("scores", "high", "low"))


def colour_map(s: np.ndarray) -> np.ndarray:
    """0..1 -> RGB uint8: dark blue -> red -> yellow."""
    r = np.clip(2 * s, 0, 1)
    g = np.clip(2 * s - 1, 0, 1)
    b = np.clip(0.5 - s, 0, 0.5)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def score_heatmap(scores: np.ndarray, grid: tuple[int, int], size: tuple[int, int]):
    """The TopV scores on the token grid, min-max scaled, as a colour map image of `size`."""
    from PIL import Image

    gw, gh = grid
    s = scores.reshape(gh, gw).astype(np.float64)
    s = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.zeros_like(s)
    return Image.fromarray(colour_map(s)).resize(size, Image.NEAREST)


def with_colour_bar(heatmap, lo: float, hi: float, high: str = "high", low: str = "low"):
    """The heat map with a vertical colour bar on its right, labelled with the score range and its two ends."""
    from PIL import Image, ImageDraw

    w, h = heatmap.size
    out = Image.new("RGB", (w + BAR_PX, h), (255, 255, 255))
    out.paste(heatmap, (0, 0))
    top, bottom = 16, h - 16
    ramp = np.linspace(1.0, 0.0, max(2, bottom - top))[:, None].repeat(16, axis=1)
    out.paste(Image.fromarray(colour_map(ramp)), (w + 8, top))
    d = ImageDraw.Draw(out)
    font = _font(11)
    d.text((w + 28, top - 2), f"{hi:.3g}", fill=(0, 0, 0), font=font)
    d.text((w + 28, top + 12), high, fill=(0, 0, 0), font=font)
    d.text((w + 28, bottom - 26), low, fill=(0, 0, 0), font=font)
    d.text((w + 28, bottom - 12), f"{lo:.3g}", fill=(0, 0, 0), font=font)
    return out


def titled(picture, title: str):
    """The picture under a white band with `title`."""
    from PIL import Image, ImageDraw

    w, h = picture.size
    out = Image.new("RGB", (w, h + TITLE_PX), (255, 255, 255))
    out.paste(picture, (0, TITLE_PX))
    ImageDraw.Draw(out).text((6, 6), title, fill=(0, 0, 0), font=_font(14))
    return out


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def check_output(path: Path, flag: str) -> None:
    """An output path Pillow can write: an existing directory and a known image extension."""
    from PIL import Image

    if path.is_dir():
        raise ChatError(f"{flag} {path} is a directory; give a file name, e.g. {path / 'kept.png'}")
    if not path.parent.is_dir():
        raise ChatError(f"{flag} {path}: the directory {path.parent} does not exist (create it first)")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise ChatError(f"{flag} {path}: unknown picture extension {path.suffix or '(none)'!r}; use .png, .jpg or .webp")


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m topv_edge.viz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="the text model (.gguf)")
    ap.add_argument("image", help="the picture (PNG, JPEG, ... anything Pillow reads; 16-bit too)")
    ap.add_argument("-o", "--out", type=Path, default=Path("kept.png"), help="the kept/pruned view (default kept.png)")
    ap.add_argument("--heatmap", type=Path, help="where to write the score heat map (default <out>-scores.png)")
    ap.add_argument("--mmproj", help="the vision projector (.gguf); default: the *mmproj*.gguf next to the model")
    add_pruning_flags(ap)
    add_device_flags(ap)
    args = ap.parse_intermixed_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from PIL import Image

    heatmap = args.heatmap or args.out.with_name(args.out.stem + "-scores" + args.out.suffix)
    check_output(args.out, "-o")
    check_output(heatmap, "--heatmap")
    options = pruning_options(args)
    with VisionChat(args.model, args.mmproj, topv=options, max_tokens=1, **device_options(args)) as chat:
        reports, _, _ = chat.add_user_message("Describe the picture.", [args.image])
        if len(reports) != 1:  # the kept cells of tiles cut from a resized copy: not drawn on the picture yet
            raise ChatError(f"this model made {len(reports)} image chunks of the picture (an overview and "
                            f"{sum(r.role == 'tile' for r in reports)} tiles); the viz draws pictures of one chunk "
                            "only: give a picture small enough not to be tiled, or see what each chunk kept with "
                            "python -m topv_edge.chat ... --json")
        (report,) = reports
        selection = chat.last_selection()
        if selection is None:
            raise ChatError(f"the image was not pruned: {report.note}")
    kept, scores, grid = selection
    picture = Image.open(Path(args.image).expanduser())
    scale = upscale_factor(picture.size)
    size = (picture.size[0] * scale, picture.size[1] * scale)
    what = (f"{args.method}, keep {options.keep_label()}: {report.n_kept}/{report.n_tokens} tokens, "
            f"layer {args.layer}")
    view = titled(kept_overlay(picture, kept, grid, scale=scale), what)
    meaning, high, low = score_meaning(args.method)
    heat = titled(with_colour_bar(score_heatmap(scores, grid, size), float(scores.min()), float(scores.max()),
                                  high, low), f"{meaning} ({what})")
    try:
        view.save(args.out)
        heat.save(heatmap)
    except OSError as e:
        raise ChatError(f"could not write the pictures: {e}") from None
    print(f"{args.out}: {report.n_kept} of {report.n_tokens} tokens kept on a {grid[0]}x{grid[1]} grid"
          f"{f' (shown {scale}x larger)' if scale > 1 else ''}; {meaning} in {heatmap}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
