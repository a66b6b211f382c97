"""How llama.cpp turns a picture into image chunks at the pinned commit: the grid of one chunk, and the
overview and tiles of the tiled families (a copy of clip.cpp's preprocessing, checked against llama.cpp)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only: configs.VisionConfig asks this module for its grid
    from .configs import VisionConfig


@dataclass(frozen=True)
class ImageLayout:
    """What llama.cpp makes of one picture: the token grid (nx columns, ny rows) and the chunk's tokens."""
    width: int                   # the picture after llama.cpp's resize
    height: int
    nx: int
    ny: int
    n_tokens: int                # nx * ny, plus pixtral's [IMG_BREAK] after every row but the last


def _smart_resize(w: int, h: int, align: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    # tools/mtmd/mtmd-image.cpp calc_size_preserved_ratio (float arithmetic as there; std::round is half-up)
    def rnd(x: float) -> int:
        return int(np.floor(np.float32(x) / np.float32(align) + np.float32(0.5))) * align

    wb, hb = max(align, rnd(w)), max(align, rnd(h))
    if wb * hb > max_pixels:
        beta = float(np.sqrt(np.float32(h) * np.float32(w) / np.float32(max_pixels)))
        hb = max(align, int(np.floor(np.float32(h / beta) / align)) * align)
        wb = max(align, int(np.floor(np.float32(w / beta) / align)) * align)
    elif wb * hb < min_pixels:
        beta = float(np.sqrt(np.float32(min_pixels) / (np.float32(h) * np.float32(w))))
        hb = int(np.ceil(np.float32(h * beta) / align)) * align
        wb = int(np.ceil(np.float32(w * beta) / align)) * align
    return wb, hb


# per projector: (image tokens min, max) of llama.cpp's dynamic-size preprocessing (clip.cpp set_limit_image_tokens)
_DYNAMIC_TOKEN_LIMITS = {"qwen2vl_merger": (8, 4096), "qwen2.5vl_merger": (8, 4096), "qwen3vl_merger": (8, 4096),
                         "pixtral": (8, 1024), "gemma4v": (70, 1120),
                         "lfm2": (64, 256)}  # lfm2: a picture that is not tiled, and a tiled picture's thumbnail


def image_layout(cfg: VisionConfig, width: int, height: int) -> ImageLayout:
    """The token grid llama.cpp gives a width x height picture (one chunk; the families here never tile)."""
    if cfg.projector in _DYNAMIC_TOKEN_LIMITS:
        lo, hi = _DYNAMIC_TOKEN_LIMITS[cfg.projector]
        merge = cfg.spatial_merge if cfg.projector != "gemma4v" else cfg.spatial_merge
        align = cfg.patch_size * merge
        w, h = _smart_resize(width, height, align, lo * align * align, hi * align * align)
        nx, ny = w // align, h // align
        n = nx * ny + (ny - 1 if cfg.projector == "pixtral" else 0)
        return ImageLayout(w, h, nx, ny, n)
    if cfg.projector == "resampler":  # minicpmv, one chunk (overview or slice): the resampler's queries, no grid
        return ImageLayout(cfg.image_size, cfg.image_size, cfg.n_queries, 1, cfg.n_queries)
    # gemma3: pooled; idefics3 / internvl: pixel shuffle (one tile or the overview: `picture_chunks`)
    g = cfg.grid // (cfg.spatial_merge if cfg.projector in ("gemma3", "idefics3", "internvl") else 1)
    return ImageLayout(cfg.image_size, cfg.image_size, g, g, g * g)


@dataclass(frozen=True)
class PictureChunk:
    """One image chunk llama.cpp makes of a picture (tiled families make several, in decode order)."""
    role: str                    # "single" (the picture is one chunk), "overview" or "tile"
    tile_x: int                  # the tile's column and row in the picture's grid of tiles (-1 unless a tile)
    tile_y: int
    nx: int                      # the chunk's token grid, row-major (non-spatial chunks: nx = n_tokens, ny = 1)
    ny: int
    n_tokens: int


# llava16 / minicpmv: tools/mtmd/mtmd-image.cpp mtmd_image_preprocessor_llava_uhd (float arithmetic as there;
# std::round is half away from zero), then mtmd.cpp add_media's order of the overview and the slices


def _uhd_round_div(length: int, patch: int) -> int:
    # ensure_divide: max((int)(std::round((float)length / patch) * patch), patch)
    q = float(np.float32(length) / np.float32(patch))
    r = int(np.floor(q)) + (1 if q - np.floor(q) >= 0.5 else 0)
    return max(r * patch, patch)


def _uhd_best_resize(w: int, h: int, scale: int, patch: int, allow_upscale: bool) -> tuple[int, int]:
    # get_best_resize
    if w * h > scale * scale or allow_upscale:
        r = np.float32(w) / np.float32(h)
        h = int(np.float32(scale) / np.sqrt(r))
        w = int(np.float32(h) * r)
    return _uhd_round_div(w, patch), _uhd_round_div(h, patch)


def _uhd_select_best_resolution(w: int, h: int, candidates: list[tuple[int, int]]) -> tuple[int, int]:
    # select_best_resolution (+ resize_maintain_aspect_ratio): most of the picture kept, then least padding
    best, max_eff, min_waste = (0, 0), 0, None
    for cw, ch in candidates:
        s = min(np.float32(cw) / np.float32(w), np.float32(ch) / np.float32(h))
        tw, th = int(np.float32(w) * s), int(np.float32(h) * s)
        eff = min(tw * th, w * h)
        waste = cw * ch - eff
        if eff > max_eff or (eff == max_eff and (min_waste is None or waste < min_waste)):
            best, max_eff, min_waste = (cw, ch), eff, waste
    return best


def _uhd_best_grid(max_slices: int, multiple: int, log_ratio: np.float32) -> tuple[int, int]:
    # get_best_grid: (columns, rows) with multiple - 1 .. multiple + 1 slices closest to the aspect ratio
    grids = [(m, n // m) for n in (multiple - 1, multiple, multiple + 1) if n != 1 and n <= max_slices
             for m in range(1, n + 1) if n % m == 0]
    best, min_err = (1, 1), np.float32(np.inf)
    for gw, gh in grids:
        err = np.float32(abs(float(log_ratio) - np.log(1.0 * gw / gh)))
        if err < min_err:
            best, min_err = (gw, gh), err
    return best


def _llava_uhd_chunks(cfg: VisionConfig, width: int, height: int) -> list[PictureChunk]:
    S, p = cfg.image_size, cfg.patch_size  # slice size; n_merge is 1 for both projectors
    resampler = cfg.projector == "resampler"

    def chunk(role: str, tx: int, ty: int, w: int, h: int) -> PictureChunk:
        if resampler:  # the resampler's learned queries: not a spatial grid
            return PictureChunk(role, tx, ty, cfg.n_queries, 1, cfg.n_queries)
        return PictureChunk(role, tx, ty, w // p, h // p, (w // p) * (h // p))

    tiles: list[PictureChunk] = []
    if width <= S and height <= S:  # no slices: the overview alone, resized to S x S
        overview = chunk("overview", -1, -1, S, S)
    elif not resampler:  # pinpoints (LLaVA-1.6): overview S x S, tiles of the best pinpoint, row by row
        pins = list(zip(cfg.grid_pinpoints[0::2], cfg.grid_pinpoints[1::2]))
        rw, rh = _uhd_select_best_resolution(width, height, pins)
        overview = chunk("overview", -1, -1, S, S)
        tiles = [chunk("tile", x // S, y // S, min(S, rw - x), min(S, rh - y))
                 for y in range(0, rh, S) for x in range(0, rw, S)]
    else:  # MiniCPM-V: overview at the best size, then a grid chosen by the aspect ratio (max 9 slices)
        ow, oh = _uhd_best_resize(width, height, S, p, False)
        overview = chunk("overview", -1, -1, ow, oh)
        log_ratio = np.log(np.float32(width) / np.float32(height))
        ratio = np.float32(width) * np.float32(height) / np.float32(S * S)
        gw, gh = _uhd_best_grid(9, int(min(np.ceil(ratio), 9)), log_ratio)
        sw, sh = _uhd_best_resize(_uhd_round_div(width, gw) // gw, _uhd_round_div(height, gh) // gh, S, p, True)
        tiles = [chunk("tile", x, y, sw, sh) for y in range(gh) for x in range(gw)]
    # minicpmv (ov_img_first = true, mtmd.cpp init_vision): overview first; llava16 (ov_img_first false): last
    return [overview] + tiles if resampler else tiles + [overview]


def picture_chunks(cfg: VisionConfig, width: int, height: int) -> list[PictureChunk]:
    """The image chunks llama.cpp makes of a width x height picture, in decode order (text markers between
    them are not listed). Families that never tile give one "single" chunk (`image_layout`)."""
    if (cfg.projector == "mlp" and cfg.grid_pinpoints) or cfg.projector == "resampler":
        return _llava_uhd_chunks(cfg, width, height)
    if cfg.projector == "idefics3":
        return _idefics3_chunks(cfg, width, height)
    if cfg.projector == "internvl":
        return _internvl_chunks(cfg, width, height)
    if cfg.projector == "lfm2":
        return _lfm2_chunks(cfg, width, height)
    lay = image_layout(cfg, width, height)
    return [PictureChunk("single", -1, -1, lay.nx, lay.ny, lay.n_tokens)]


def _tile_chunks(cfg: VisionConfig, grid_x: int, grid_y: int) -> list[PictureChunk]:
    # idefics3 / internvl (ov_img_first = false, tools/mtmd/mtmd.cpp): the tiles row by row, then the overview;
    # every chunk is one image_size x image_size picture, pixel-shuffled (clip.cpp clip_n_output_tokens)
    g = cfg.grid // cfg.spatial_merge
    n = cfg.grid * cfg.grid // (cfg.spatial_merge * cfg.spatial_merge)
    tiles = [PictureChunk("tile", x, y, g, g, n) for y in range(grid_y) for x in range(grid_x)]
    return tiles + [PictureChunk("overview", -1, -1, g, g, n)]


def _idefics3_chunks(cfg: VisionConfig, width: int, height: int) -> list[PictureChunk]:
    """mtmd_image_preprocessor_idefics3 (tools/mtmd/mtmd-image.cpp) with clip.vision.preproc_image_size set:
    resize so the longer side is that (the shorter one truncated, then made even), round both up to whole
    tiles. Every picture is resized, so even a small one tiles (unless the longest edge is one tile)."""
    if cfg.preproc_longest_edge <= 0:
        raise ValueError("idefics3 without preproc_longest_edge (old GGUFs) is not mirrored")
    le, t = cfg.preproc_longest_edge, cfg.image_size
    aspect = width / height  # double arithmetic, (int) truncation as there
    if width >= height:
        rw, rh = le, int(le / aspect)
        rh += rh % 2
    else:
        rw, rh = int(le * aspect), le
        rw += rw % 2
    return _tile_chunks(cfg, (rw + t - 1) // t, (rh + t - 1) // t)


def _internvl_candidates(cfg: VisionConfig) -> list[tuple[int, int]]:
    # clip.cpp set_internvl_dhr_res_candidates; preproc_min/max_tiles default to 1 and 12 when absent
    lo, hi = cfg.preproc_tiles
    lo, hi = lo or 1, hi or 12
    out = []
    for a in range(lo, hi + 1):
        for b in range(max((lo + a - 1) // a, lo), min(hi // a, hi) + 1):
            out.append((a * cfg.image_size, b * cfg.image_size))
    return out


def _internvl_chunks(cfg: VisionConfig, width: int, height: int) -> list[PictureChunk]:
    """mtmd_image_preprocessor_internvl: llava-uhd slicing with the tile-count candidates as pinpoints
    (select_best_resolution, float arithmetic as there). A picture no larger than one tile is the overview alone."""
    t = cfg.image_size
    if not (width > t or height > t):
        return _tile_chunks(cfg, 0, 0)
    best = _uhd_select_best_resolution(width, height, _internvl_candidates(cfg))
    return _tile_chunks(cfg, best[0] // t, best[1] // t)


# lfm2 (LFM2-VL): tools/mtmd/mtmd-image.cpp mtmd_image_preprocessor_lfm2 (constants in mtmd-image.h: tiles of
# 512 px, 2..10 of them, max_pixels_tolerance 2); token limits 64..256 (clip.cpp set_limit_image_tokens(64, 256))
_LFM2_TILE, _LFM2_TILES, _LFM2_TOLERANCE = 512, (2, 10), 2.0


def lfm2_should_tile(cfg: VisionConfig, width: int, height: int) -> bool:
    """mtmd_image_preprocessor_lfm2::should_tile: the picture, rounded to whole tokens (std::nearbyint: half to
    even, in double), has more than max_pixels_tolerance x the most pixels of one dynamic-size chunk."""
    align = cfg.patch_size * cfg.spatial_merge
    hb = max(cfg.patch_size, int(np.rint(float(height) / align)) * align)
    wb = max(cfg.patch_size, int(np.rint(float(width) / align)) * align)
    return float(hb) * float(wb) > float(_DYNAMIC_TOKEN_LIMITS["lfm2"][1] * align * align) * _LFM2_TOLERANCE


def _lfm2_grid(width: int, height: int) -> tuple[int, int]:
    """get_grid_layout: the (columns, rows) of 2..10 tiles closest to the picture's aspect ratio (float32 as
    there); on an exact tie the later (larger) grid wins when the picture has over half its pixels."""
    lo, hi = _LFM2_TILES
    ratios: list[tuple[int, int]] = []
    for n in range(lo, hi + 1):  # get_target_ratios, then sorted by tile count (no tie the order decides)
        ratios += [(w, h) for w in range(1, n + 1) for h in range(1, n + 1)
                   if lo <= w * h <= hi and (w, h) not in ratios]
    ratios.sort(key=lambda r: r[0] * r[1])
    aspect = np.float32(width) / np.float32(height)
    area = np.float32(width * height)
    best, best_diff = (1, 1), np.float32(np.finfo(np.float32).max)
    for w, h in ratios:  # find_closest_aspect_ratio
        diff = np.abs(aspect - np.float32(w) / np.float32(h))
        if diff < best_diff:
            best, best_diff = (w, h), diff
        elif diff == best_diff and area > np.float32(0.5) * np.float32(_LFM2_TILE * _LFM2_TILE * w * h):
            best = (w, h)
    return best


def _lfm2_chunks(cfg: VisionConfig, width: int, height: int) -> list[PictureChunk]:
    """A picture that is not tiled is one chunk of the dynamic-size grid (`image_layout`: smart resize to whole
    tokens, 64..256 of them). A tiled one: the tiles row by row (512 x 512 crops of the picture resized to the
    grid), then the thumbnail, the whole picture at the dynamic size (mtmd.cpp add_media, ov_img_first false;
    markers <|img_row_R_col_C|> before each tile, <|img_thumbnail|> before the thumbnail). Tokens are the
    pixel-unshuffled patch grid, rounded up (clip.cpp clip_n_output_tokens, CLIP_ALIGN)."""
    lay = image_layout(cfg, width, height)
    if not lfm2_should_tile(cfg, width, height):
        return [PictureChunk("single", -1, -1, lay.nx, lay.ny, lay.n_tokens)]
    gx, gy = _lfm2_grid(width, height)
    t = -(-_LFM2_TILE // (cfg.patch_size * cfg.spatial_merge))
    tiles = [PictureChunk("tile", x, y, t, t, t * t) for y in range(gy) for x in range(gx)]
    return tiles + [PictureChunk("overview", -1, -1, lay.nx, lay.ny, lay.n_tokens)]
