"""The project's GGUF writer: vision-language model pairs (text model + mmproj) in the layouts llama.cpp
loads at the pinned commit, from given weights (a trained model) or random ones (tests, benchmarks).

    python -m topv_edge.lab.synth --family qwen3vl --preset tiny -o models/
    python -m topv_edge.lab.synth --family qwen3vl --preset 4b --quantize Q4_K_M -o models/

Families (what each reproduces: docs/families.md): `llava` (LLaVA-1.5: text arch `llama`, projector `mlp`;
`--class-embedding` gives its real CLIP tower with the class token), `gemma3`, `gemma4` (projector `gemma4v`,
dynamic non-square grid), `qwen2vl`, `qwen25vl` (`qwen2.5vl_merger`, window attention), `qwen3vl`
(`qwen3vl_merger` with deepstack, IM-RoPE), `qwen35` (hybrid recurrent text arch `qwen35`) and `pixtral`
([IMG_BREAK] after every row). Weights are numpy arrays in PyTorch's convention (a Linear weight is
[out, in]); the writer stores them as GGUF expects (ggml's ne is the reverse of numpy's shape). Same seed,
same bytes.

Tiled families (a large picture becomes several image chunks: `picture_chunks`, `TILED_FAMILIES`):
`llava16` (LLaVA-1.6 anyres: `mlp` with `clip.vision.image_grid_pinpoints`, CLIP with its class token; tiles
first, the overview last, no markers) and `minicpmv` (MiniCPM-V 2.6: text arch `qwen2`, projector `resampler`
with `clip.minicpmv_version` 3; overview first, slices between `<slice>` `</slice>`, each chunk the
resampler's learned queries, not a spatial grid). `smolvlm` (SmolVLM / SmolVLM2: text arch `llama`, projector
`idefics3`: SigLIP, pixel shuffle 4, `clip.vision.preproc_image_size` longest edge; tiles after
`<fake_token_around_image><row_R_col_C>`, `\\n` after each row, then `\\n\\n<fake_token_around_image><global-img>`
overview `<fake_token_around_image>`) and `internvl` (InternVL 2.5 / 3: text arch `qwen2`, projector `internvl`:
InternViT with its class token, pixel shuffle 2, 1..N-tile candidates; `<img>` tiles then overview `</img>`).
Their chunks' tokens are row-major over the pixel-shuffled grid (token y * nx + x).
`lfm2` (LFM2-VL: hybrid text arch `lfm2`, short-convolution and attention layers, `shortconv.l_cache`;
projector `lfm2`: SigLIP2 NaFlex, pixel unshuffle 2, LayerNorm + MLP) tiles only a picture above twice the
256-token budget: `<|image_start|>` then `<|img_row_R_col_C|>` before each 512 px tile, `<|img_thumbnail|>`
thumbnail, `<|image_end|>`; a smaller picture is one chunk on a dynamic grid (64..256 tokens), row-major too.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
import numpy as np

from ...session.templates import CHATML_TEMPLATE, GEMMA4_TEMPLATE, GEMMA_TEMPLATE, LLAVA15_TEMPLATE, MISTRAL_TEMPLATE
from ...session.templates import SMOLVLM_TEMPLATE
from ...session.templates import MINICPMV26_TEMPLATE
from ...session.templates import LFM2_TEMPLATE

WRITER_VERSION = 4  # bump when the bytes write_pair produces change (invalidates cached pairs)
FINGERPRINT_KEY = "topv_edge.lab.synth.fingerprint"

# ----------------------------------------------------------------------------------------------------
# hyperparameters


@dataclass(frozen=True)
class TextConfig:
    arch: str = "llama"          # llama | qwen2vl | qwen3vl | qwen35 | gemma3 | gemma4
    n_embd: int = 128
    n_ff: int = 352              # != n_embd (llama.cpp swaps ffn_up/ffn_down when they are equal)
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    n_ctx_train: int = 4096
    rope_sections: tuple[int, int, int, int] = (0, 0, 0, 0)  # M-RoPE / IM-RoPE sections (t, h, w, e), in pairs
    n_embd_head: int = 0         # 0: n_embd // n_head (Qwen3 and Gemma heads are wider than that)
    tied_output: bool = False    # no output.weight: the LM head is token_embd (gemma* always)
    n_deepstack: int = 0         # qwen3vl: image rows carry n_deepstack extra n_embd slices, added after layer il
    rope_dim: int = 0            # 0: the whole head; qwen35 rotates a quarter of it
    # qwen35 gated delta-net layers (every layer but each full_attn_interval-th)
    ssm_conv: int = 4
    ssm_state: int = 0           # head dim of the linear-attention keys and values
    ssm_groups: int = 0          # key heads
    ssm_v_heads: int = 0         # value heads
    full_attn_interval: int = 4
    # gemma4: which layers use sliding-window attention, their head width and window
    swa_pattern: tuple[bool, ...] = ()
    n_embd_head_swa: int = 0
    n_head_kv_global: int = 0    # gemma4: KV heads of the global layers (0: n_head_kv)
    sliding_window: int = 0      # gemma3/gemma4: attention.sliding_window (gemma3: 0 writes none, no SWA)
    rope_base_swa: float = 10000.0
    rope_partial_global: float = 0.25  # gemma4: the global layers rotate this share of their head
    # lfm2: the attention layers (the others are short-convolution layers, kernel ssm_conv = shortconv.l_cache)
    attn_layers: tuple[int, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.n_embd_head or self.n_embd // self.n_head

    def layer_head_dim(self, il: int) -> int:
        """Head width of layer il (gemma4: the sliding-window layers are narrower)."""
        if self.arch == "gemma4" and self.swa_pattern[il]:
            return self.n_embd_head_swa
        return self.head_dim

    def layer_head_kv(self, il: int) -> int:
        if self.arch == "gemma4" and not self.swa_pattern[il] and self.n_head_kv_global:
            return self.n_head_kv_global
        return self.n_head_kv

    def is_recurrent(self, il: int) -> bool:
        if self.arch == "lfm2":  # short-convolution layers: head_count_kv 0 (src/models/lfm2.cpp is_recr_impl)
            return il not in self.attn_layers
        return self.arch == "qwen35" and (il + 1) % self.full_attn_interval != 0


@dataclass(frozen=True)
class VisionConfig:
    projector: str = "mlp"       # mlp | gemma3 | gemma4v | qwen2vl_merger | qwen2.5vl_merger | qwen3vl_merger | pixtral
    image_size: int = 112
    patch_size: int = 14
    n_embd: int = 64
    n_ff: int = 160
    n_layer: int = 3
    n_head: int = 4
    ln_eps: float = 1e-5
    proj_hidden: int = 128       # mlp: width between mm.0 and mm.2
    spatial_merge: int = 2       # qwen*: s x s patches per token; gemma3/gemma4v: s x s average pool; pixtral: patch merger (1: none)
    class_embedding: bool = False
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    hidden_act: str = "gelu"     # gelu (use_gelu) | silu (use_silu) | quick_gelu (neither key: llama.cpp's default)
    patch_bias: bool = True      # mlp: a bias on the patch convolution (HF CLIP has none)
    n_wa_pattern: int = 0        # qwen2.5vl_merger: every n-th block attends globally, the others in 112 px windows
    deepstack: tuple[int, ...] = ()  # qwen3vl_merger: blocks whose output feeds a deepstack merger
    pos_size: int = 0            # qwen3vl_merger: side of the learned position grid; gemma4v: rows of each x/y table
    # tiling
    preproc_longest_edge: int = 0  # idefics3: clip.vision.preproc_image_size
    preproc_tiles: tuple[int, int] = (0, 0)  # internvl: preproc_min/max_tiles (0: none)
    grid_pinpoints: tuple[int, ...] = ()  # mlp: clip.vision.image_grid_pinpoints (w, h, ...): LLaVA-1.6 anyres
    minicpmv_version: int = 0      # resampler: clip.minicpmv_version (3: MiniCPM-V 2.6)
    n_queries: int = 0             # resampler: clip.minicpmv_query_num (learned queries = tokens per chunk)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def n_image_tokens(self) -> int:
        """Image tokens per picture of image_size x image_size."""
        return image_layout(self, self.image_size, self.image_size).n_tokens


@dataclass(frozen=True)
class ModelConfig:
    family: str
    text: TextConfig
    vision: VisionConfig
    dtype: str = "f32"           # f32 | f16 for the big matrices


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


# families whose large pictures become an overview and tiles (several image chunks): `picture_chunks`
TILED_FAMILIES: frozenset[str] = frozenset({
    "llava16",
    "minicpmv",
    "smolvlm",
    "internvl",
    "lfm2",
})

# family -> text architecture, projector (the layouts of the real GGUFs named in docs/families.md)
FAMILIES: dict[str, tuple[str, str]] = {
    "llava": ("llama", "mlp"),
    "gemma3": ("gemma3", "gemma3"),
    "gemma4": ("gemma4", "gemma4v"),
    "qwen2vl": ("qwen2vl", "qwen2vl_merger"),
    "qwen25vl": ("qwen2vl", "qwen2.5vl_merger"),
    "qwen3vl": ("qwen3vl", "qwen3vl_merger"),
    "qwen35": ("qwen35", "qwen3vl_merger"),
    "pixtral": ("llama", "pixtral"),
    "llava16": ("llama", "mlp"),
    "minicpmv": ("qwen2", "resampler"),
    "smolvlm": ("llama", "idefics3"),
    "internvl": ("qwen2", "internvl"),
    "lfm2": ("lfm2", "lfm2"),
}

_SIGLIP = dict(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))

PRESETS: dict[tuple[str, str], ModelConfig] = {
    ("llava", "tiny"): ModelConfig("llava", TextConfig(), VisionConfig()),
    # LLaVA-1.5 shapes around a 1B llama: ViT-L/14-336 (24 x 24 = 576 image tokens), TinyLlama-sized text model
    ("llava", "1b"): ModelConfig(
        "llava",
        TextConfig(n_embd=2048, n_ff=5632, n_layer=16, n_head=32, n_head_kv=4),
        VisionConfig(image_size=336, patch_size=14, n_embd=1024, n_ff=4096, n_layer=24, n_head=16, proj_hidden=2048),
        dtype="f16"),
    ("qwen2vl", "tiny"): ModelConfig(
        "qwen2vl",
        TextConfig(arch="qwen2vl", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6,
                   rope_sections=(4, 6, 6, 0)),
        VisionConfig(projector="qwen2vl_merger", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=2,
                     n_head=4, ln_eps=1e-6, hidden_act="quick_gelu")),
    # Qwen2.5-VL: Qwen2-VL's text model; RMS-norm ViT with SiLU-gated FFNs, window attention (full every 2nd
    # block here, every 8th in the real 3B/7B)
    ("qwen25vl", "tiny"): ModelConfig(
        "qwen25vl",
        TextConfig(arch="qwen2vl", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6,
                   rope_sections=(4, 6, 6, 0), rms_eps=1e-6),
        VisionConfig(projector="qwen2.5vl_merger", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=4,
                     n_head=4, ln_eps=1e-6, hidden_act="silu", n_wa_pattern=2)),
    # Qwen3-VL: Qwen3 text (q/k norms, 32-wide heads over a 128-wide model, tied LM head), IM-RoPE, deepstack
    # after text layers 0 and 1 from ViT blocks 1 and 2 (real 4B: 3 of 24 blocks)
    ("qwen3vl", "tiny"): ModelConfig(
        "qwen3vl",
        TextConfig(arch="qwen3vl", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=5e6,
                   rope_sections=(8, 8, 8, 0), rms_eps=1e-6, n_embd_head=48, tied_output=True, n_deepstack=2),
        VisionConfig(projector="qwen3vl_merger", image_size=256, patch_size=16, n_embd=64, n_ff=160, n_layer=4,
                     n_head=4, ln_eps=1e-6, deepstack=(1, 2), pos_size=16, **_SIGLIP)),
    # Qwen3.5: hybrid text model (gated delta-net layers, every 4th layer full attention with a gated query),
    # IM-RoPE on a quarter of each head; the Qwen3-VL encoder without deepstack
    ("qwen35", "tiny"): ModelConfig(
        "qwen35",
        TextConfig(arch="qwen35", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e7,
                   rope_sections=(3, 3, 2, 0), rms_eps=1e-6, n_embd_head=64, rope_dim=16, tied_output=True,
                   ssm_conv=4, ssm_state=32, ssm_groups=2, ssm_v_heads=4, full_attn_interval=4),
        VisionConfig(projector="qwen3vl_merger", image_size=256, patch_size=16, n_embd=64, n_ff=160, n_layer=2,
                     n_head=4, ln_eps=1e-6, pos_size=16, **_SIGLIP)),
    ("gemma3", "tiny"): ModelConfig(
        "gemma3",
        TextConfig(arch="gemma3", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rms_eps=1e-6),
        VisionConfig(projector="gemma3", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                     ln_eps=1e-6, spatial_merge=2, **_SIGLIP)),
    # Gemma 4 (31B / 26B layout: no per-layer embeddings, non-causal images): sliding-window layers with
    # narrower heads, the last layer global; ViT with 2D RoPE and x/y position tables, 3 x 3 pooling
    ("gemma4", "tiny"): ModelConfig(
        "gemma4",
        TextConfig(arch="gemma4", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rms_eps=1e-6,
                   rope_base=1e6, n_embd_head=64, n_embd_head_swa=32, swa_pattern=(True, True, True, False),
                   n_head_kv_global=1, sliding_window=512, tied_output=True),
        VisionConfig(projector="gemma4v", image_size=224, patch_size=16, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                     ln_eps=1e-6, spatial_merge=3, pos_size=128, hidden_act="quick_gelu", **_SIGLIP)),
    # Pixtral-12B layout (no patch merger): llama text, RMS-norm ViT with 2D RoPE, [IMG_BREAK] after each row
    ("pixtral", "tiny"): ModelConfig(
        "pixtral",
        TextConfig(n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6, n_embd_head=48),
        VisionConfig(projector="pixtral", image_size=1024, patch_size=16, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                     ln_eps=1e-5, hidden_act="silu", spatial_merge=1,
                     image_mean=(0.48145466, 0.4578275, 0.40821073))),
    # Qwen2-VL-2B shapes (text 1536 wide, 28 layers; ViT 1280 wide, 32 layers), image at 448 x 448: 16 x 16 tokens
    ("qwen2vl", "2b"): ModelConfig(
        "qwen2vl",
        TextConfig(arch="qwen2vl", n_embd=1536, n_ff=8960, n_layer=28, n_head=12, n_head_kv=2, rope_base=1e6,
                   rope_sections=(16, 24, 24, 0)),
        VisionConfig(projector="qwen2vl_merger", image_size=448, patch_size=14, n_embd=1280, n_ff=5120, n_layer=32,
                     n_head=16, ln_eps=1e-6, hidden_act="quick_gelu"),
        dtype="f16"),
    # Qwen3-VL-4B-Instruct (config.json): text 2560 wide, 36 layers, 32 heads of 128, 8 KV heads, FFN 9728,
    # tied; ViT 1024 wide, 24 blocks, 16 heads, FFN 4096, patch 16, 48 x 48 position grid, deepstack 5/11/17
    ("qwen3vl", "4b"): ModelConfig(
        "qwen3vl",
        TextConfig(arch="qwen3vl", n_embd=2560, n_ff=9728, n_layer=36, n_head=32, n_head_kv=8, rope_base=5e6,
                   rope_sections=(24, 20, 20, 0), rms_eps=1e-6, n_embd_head=128, tied_output=True, n_deepstack=3,
                   n_ctx_train=262144),
        VisionConfig(projector="qwen3vl_merger", image_size=768, patch_size=16, n_embd=1024, n_ff=4096, n_layer=24,
                     n_head=16, ln_eps=1e-6, deepstack=(5, 11, 17), pos_size=48, **_SIGLIP),
        dtype="f16"),
    # Gemma-3-4B-it: text 2560 wide, 34 layers, 8 heads of 256, 4 KV heads, FFN 10240; SigLIP-So400m/14 at
    # 896 px (27 layers, 1152 wide, FFN 4304), pooled 4 x 4 to 256 tokens
    ("gemma3", "4b"): ModelConfig(
        "gemma3",
        TextConfig(arch="gemma3", n_embd=2560, n_ff=10240, n_layer=34, n_head=8, n_head_kv=4, rms_eps=1e-6,
                   rope_base=1e6, n_embd_head=256, n_ctx_train=131072, sliding_window=1024),
        VisionConfig(projector="gemma3", image_size=896, patch_size=14, n_embd=1152, n_ff=4304, n_layer=27,
                     n_head=16, ln_eps=1e-6, spatial_merge=4, **_SIGLIP),
        dtype="f16"),
}

# LLaVA-1.5's vision tower as its GGUFs carry it (openai/clip-vit-large-patch14-336 through llama.cpp's
# legacy converter): a class embedding, no patch bias, quick-GELU
_LLAVA_CLASS_TOKEN = dict(class_embedding=True, patch_bias=False, hidden_act="quick_gelu")

# LLaVA-1.6 (LLaVA-NeXT, anyres): LLaVA-1.5's tower with its class token, and llava-v1.6's five pinpoints
# (336 x 672, 672 x 336, 672 x 672, 1008 x 336, 336 x 1008) at the tiny image size 112: tiles of 8 x 8 = 64
PRESETS[("llava16", "tiny")] = ModelConfig(
    "llava16", TextConfig(),
    VisionConfig(image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=3, n_head=4,
                 grid_pinpoints=(112, 224, 224, 112, 224, 224, 336, 112, 112, 336), **_LLAVA_CLASS_TOKEN))
# MiniCPM-V 2.6: Qwen2 text (q/k/v biases), SigLIP (patch bias, 70 x 70 position table bucketed to the
# slice's patch grid, post-LN, GELU), resampler (minicpmv_version 3) with 32 learned queries here (64 real)
PRESETS[("minicpmv", "tiny")] = ModelConfig(
    "minicpmv",
    TextConfig(arch="qwen2", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6, rms_eps=1e-6),
    VisionConfig(projector="resampler", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                 ln_eps=1e-6, pos_size=70, minicpmv_version=3, n_queries=32, **_SIGLIP))
# SmolVLM / SmolVLM2 (Idefics3): llama text; SigLIP (patch bias, post-LN, GELU) on square tiles, pixel shuffle
# by 4 as the real ones (512 px tiles of 16 px patches: 8 x 8 = 64 tokens) -> mm.model.fc. Tiny: 128 px tiles of
# 8 px patches, 16 x 16 -> 4 x 4 = 16 tokens; longest edge 384 (real 2048 = 4 tiles): at most 3 x 3 tiles
PRESETS[("smolvlm", "tiny")] = ModelConfig(
    "smolvlm",
    TextConfig(n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e5),
    VisionConfig(projector="idefics3", image_size=128, patch_size=8, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                 ln_eps=1e-6, spatial_merge=4, preproc_longest_edge=384, **_SIGLIP))
# InternVL3-1B/2B, InternVL2.5-1B: Qwen2.5 text (arch qwen2: q/k/v biases; tied output as Qwen2.5-0.5B/1.5B);
# InternViT-300M (class token, position table of n_patches + 1 rows, layer scales ls1/ls2, LayerNorm, GELU) on
# image_size tiles, pixel shuffle 2 (real 448 / 14: 32 x 32 -> 16 x 16 = 256), mlp1 = LN, fc, GELU, fc. Tiny:
# 112 px tiles, 8 x 8 -> 4 x 4 = 16 tokens, 1..6 tiles (real 1..12)
PRESETS[("internvl", "tiny")] = ModelConfig(
    "internvl",
    TextConfig(arch="qwen2", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6, rms_eps=1e-6,
               tied_output=True),
    VisionConfig(projector="internvl", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                 ln_eps=1e-6, spatial_merge=2, class_embedding=True, preproc_tiles=(1, 6),
                 image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225)))
# LFM2-VL: LFM2 text (hybrid: gated short-convolution layers, kernel 3, and GQA attention layers with q/k
# norms; tied output); SigLIP2 NaFlex tower (patch bias, learned position grid resized to the picture's,
# post-LN, GELU), pixel unshuffle 2 -> LayerNorm -> linear, GELU, linear. Real: 16 px patches, 16 x 16 position
# grid, 512 px tiles of 16 x 16 = 256 tokens. The tile size (512) and token limits (64..256) are llama.cpp
# constants, so the tiny tower has 38 px patches: tiles of 13 x 13 patches, padded to 14 x 14 by the unshuffle,
# 7 x 7 = 49 tokens; the real pattern's first layers are conv, conv, attention (attention at 2, 5, 8, 10, 12, 14)
PRESETS[("lfm2", "tiny")] = ModelConfig(
    "lfm2",
    TextConfig(arch="lfm2", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6, rms_eps=1e-5,
               tied_output=True, ssm_conv=3, attn_layers=(2, 3)),
    VisionConfig(projector="lfm2", image_size=38 * 8, patch_size=38, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                 ln_eps=1e-6, spatial_merge=2, pos_size=8, proj_hidden=128, **_SIGLIP))


# ----------------------------------------------------------------------------------------------------
# tokenizer: byte-level BPE (gpt2 style) so that any text tokenises


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_CORPUS = ("the picture shows a red circle a blue square and a green triangle on the left and on the right "
           "what color is the shape how many shapes are there is there a yes no top bottom image question answer "
           "user assistant system describe object")


@dataclass(frozen=True)
class Tokenizer:
    tokens: list[str]
    types: list[int]            # 1 normal, 3 control
    merges: list[str]
    bos: int
    eos: int
    chat_template: str
    special: dict[str, int] = field(default_factory=dict)


def make_tokenizer(specials: list[str], chat_template: str, n_merges: int = 48, corpus: str = _CORPUS) -> Tokenizer:
    """Byte tokens, `n_merges` BPE merges learnt greedily on `corpus` (deterministic), then the special tokens."""
    b2u = _bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    words = [[b2u[b] for b in (" " + w).encode()] for w in corpus.split()]
    merges: list[str] = []
    for _ in range(n_merges):
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        (a, b), _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    types = [1] * len(tokens)
    special = {}
    for s in specials:
        special[s] = len(tokens)
        tokens.append(s)
        types.append(3)
    return Tokenizer(tokens, types, merges, bos=special[specials[0]], eos=special[specials[1]],
                     chat_template=chat_template, special=special)


_QWEN_SPECIALS = ["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]


def family_tokenizer(family: str) -> Tokenizer:
    """The family's tokenizer: BOS, EOS first, then the chat and image markers its template and mtmd use."""
    if family == "llava":
        return make_tokenizer(["<s>", "</s>"], LLAVA15_TEMPLATE)
    if family == "llava16":  # llava-v1.6-vicuna: LLaVA-1.5's format; mtmd puts no markers between the tiles
        return make_tokenizer(["<s>", "</s>"], LLAVA15_TEMPLATE)
    if family == "minicpmv":  # mtmd looks up <image> </image> <slice> </slice> and "\n" (a byte token here)
        return make_tokenizer(["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<image>", "</image>", "<slice>",
                               "</slice>"], MINICPMV26_TEMPLATE)
    if family in ("qwen2vl", "qwen25vl", "qwen3vl", "qwen35"):
        return make_tokenizer(_QWEN_SPECIALS, CHATML_TEMPLATE)
    if family == "gemma3":
        return make_tokenizer(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                               "<end_of_image>"], GEMMA_TEMPLATE)
    if family == "gemma4":  # mtmd wraps each image in <|image> ... <image|>
        return make_tokenizer(["<bos>", "<eos>", "<|turn>", "<turn|>", "<|image>", "<image|>"], GEMMA4_TEMPLATE)
    if family == "pixtral":  # mtmd ends each image with [IMG_END]; [IMG_BREAK] is an embedding in the mmproj
        return make_tokenizer(["<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"],
                              MISTRAL_TEMPLATE)
    if family == "smolvlm":  # mtmd looks up "\n\n", "<fake_token_around_image>", "<global-img>", "\n", <row_R_col_C>
        rows = [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]  # 6 x 6, as SmolVLM's vocabulary
        return _with_merged_token(make_tokenizer(["<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                                                  "<global-img>", "<image>"] + rows, SMOLVLM_TEMPLATE), "\n\n")
    if family == "internvl":  # mtmd wraps the tiles and the overview in <img> ... </img>
        return make_tokenizer(["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<img>", "</img>", "<IMG_CONTEXT>"],
                              CHATML_TEMPLATE)
    if family == "lfm2":  # mtmd: <|image_start|> [<|img_row_R_col_C|> tile ...] [<|img_thumbnail|>] image <|image_end|>
        rows = [f"<|img_row_{r}_col_{c}|>" for r in range(1, 11) for c in range(1, 11) if r * c <= 10]  # <= 10 tiles
        return make_tokenizer(["<|startoftext|>", "<|im_end|>", "<|im_start|>", "<|pad|>", "<image>",
                               "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>"] + rows, LFM2_TEMPLATE)
    raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def _with_merged_token(tok: Tokenizer, text: str) -> Tokenizer:
    """`tok` plus an ordinary token for the two bytes of `text` and the BPE merge that makes it (SmolLM2's
    vocabulary has "\\n\\n" as one token; mtmd's lookup_token compares the pieces' text)."""
    a, b = (_bytes_to_unicode()[c] for c in text.encode())
    return replace(tok, tokens=tok.tokens + [a + b], types=tok.types + [1], merges=tok.merges + [f"{a} {b}"])


# ----------------------------------------------------------------------------------------------------
# weights


def _lfm2_text_weight_shapes(cfg: TextConfig, n_vocab: int) -> dict[str, tuple[int, ...]]:
    # src/models/lfm2.cpp load_arch_tensors: the final norm is called token_embd_norm; short-convolution layers
    # (in_proj -> B, C, x; conv kernel [n_embd, l_cache] as numpy, HF's Conv1d weight squeezed) or attention
    # layers with q/k norms; every layer has the same SwiGLU FFN
    d, hd = cfg.n_embd, cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, d), "token_embd_norm.weight": (d,)}
    if not cfg.tied_output:
        shapes["output.weight"] = (n_vocab, d)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        shapes[b + "attn_norm.weight"] = (d,)
        if cfg.is_recurrent(i):
            shapes.update({b + "shortconv.conv.weight": (d, cfg.ssm_conv), b + "shortconv.in_proj.weight": (3 * d, d),
                           b + "shortconv.out_proj.weight": (d, d)})
        else:
            shapes.update({b + "attn_q.weight": (cfg.n_head * hd, d), b + "attn_k.weight": (cfg.n_head_kv * hd, d),
                           b + "attn_v.weight": (cfg.n_head_kv * hd, d), b + "attn_output.weight": (d, cfg.n_head * hd),
                           b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)})
        shapes.update({b + "ffn_norm.weight": (d,), b + "ffn_gate.weight": (cfg.n_ff, d),
                       b + "ffn_up.weight": (cfg.n_ff, d), b + "ffn_down.weight": (d, cfg.n_ff)})
    return shapes


def text_weight_shapes(cfg: TextConfig, n_vocab: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and numpy shapes ([out, in] for matrices) of the text model."""
    if cfg.arch == "lfm2":
        return _lfm2_text_weight_shapes(cfg, n_vocab)
    d = cfg.n_embd
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (n_vocab, d),
        "output_norm.weight": (d,),
        "output.weight": (n_vocab, d),
    }
    if cfg.arch == "gemma4":  # proportional RoPE of the global layers (one table, shared)
        shapes["rope_freqs.weight"] = (cfg.head_dim // 2,)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        hd = cfg.layer_head_dim(i)
        q, kv = cfg.n_head * hd, cfg.layer_head_kv(i) * hd
        shapes[b + "attn_norm.weight"] = (d,)
        if cfg.is_recurrent(i):  # qwen35 gated delta net: fused q/k/v, output gate, short conv, decay, beta
            key, value = cfg.ssm_state * cfg.ssm_groups, cfg.ssm_state * cfg.ssm_v_heads
            shapes.update({
                b + "attn_qkv.weight": (2 * key + value, d),
                b + "attn_gate.weight": (value, d),
                b + "ssm_conv1d.weight": (2 * key + value, cfg.ssm_conv),
                b + "ssm_dt.bias": (cfg.ssm_v_heads,),
                b + "ssm_a": (cfg.ssm_v_heads,),
                b + "ssm_beta.weight": (cfg.ssm_v_heads, d),
                b + "ssm_alpha.weight": (cfg.ssm_v_heads, d),
                b + "ssm_norm.weight": (cfg.ssm_state,),
                b + "ssm_out.weight": (d, value),
            })
        else:
            shapes.update({
                b + "attn_q.weight": (2 * q if cfg.arch == "qwen35" else q, d),  # qwen35: query and its gate
                b + "attn_k.weight": (kv, d),
                b + "attn_v.weight": (kv, d),
                b + "attn_output.weight": (d, q),
            })
            if cfg.arch in ("gemma3", "gemma4", "qwen3vl", "qwen35"):
                shapes.update({b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)})
        if cfg.arch == "qwen35":  # the pre-FFN norm is called post_attention_norm there
            shapes[b + "post_attention_norm.weight"] = (d,)
        else:
            shapes[b + "ffn_norm.weight"] = (d,)
        shapes.update({
            b + "ffn_gate.weight": (cfg.n_ff, d),
            b + "ffn_up.weight": (cfg.n_ff, d),
            b + "ffn_down.weight": (d, cfg.n_ff),
        })
        if cfg.arch in ("qwen2vl", "qwen2"):  # Qwen2 has q/k/v biases
            shapes.update({b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)})
        if cfg.arch in ("gemma3", "gemma4"):  # sandwich norms
            shapes.update({b + "post_attention_norm.weight": (d,), b + "post_ffw_norm.weight": (d,)})
        if cfg.arch == "gemma4":  # HF layer_scalar
            shapes[b + "layer_output_scale.weight"] = (1,)
    if cfg.tied_output or cfg.arch in ("gemma3", "gemma4"):
        del shapes["output.weight"]
    return shapes


def _lfm2_vision_weight_shapes(cfg: VisionConfig, n_embd_text: int) -> dict[str, tuple[int, ...]]:
    # SigLIP2 NaFlex (tools/mtmd/models/siglip.cpp: learned position grid resized to the picture's patch grid,
    # LayerNorm blocks with biases, GELU MLP, post-LN), then the LFM2-VL projector (clip.cpp PROJECTOR_TYPE_LFM2:
    # pixel unshuffle, LayerNorm mm.input_norm over the m*m*n_embd row, mm.1, GELU, mm.2)
    d, p, m = cfg.n_embd, cfg.patch_size, cfg.n_embd * cfg.spatial_merge ** 2
    shapes: dict[str, tuple[int, ...]] = {"v.patch_embd.weight": (d, 3, p, p), "v.patch_embd.bias": (d,),
                                          "v.position_embd.weight": (cfg.pos_size * cfg.pos_size, d)}
    for i in range(cfg.n_layer):
        b = f"v.blk.{i}."
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            shapes.update({b + t + ".weight": (d, d), b + t + ".bias": (d,)})
        shapes.update({b + "ln1.weight": (d,), b + "ln1.bias": (d,), b + "ln2.weight": (d,), b + "ln2.bias": (d,),
                       b + "ffn_up.weight": (cfg.n_ff, d), b + "ffn_up.bias": (cfg.n_ff,),
                       b + "ffn_down.weight": (d, cfg.n_ff), b + "ffn_down.bias": (d,)})
    shapes.update({"v.post_ln.weight": (d,), "v.post_ln.bias": (d,), "mm.input_norm.weight": (m,),
                   "mm.input_norm.bias": (m,), "mm.1.weight": (cfg.proj_hidden, m), "mm.1.bias": (cfg.proj_hidden,),
                   "mm.2.weight": (n_embd_text, cfg.proj_hidden), "mm.2.bias": (n_embd_text,)})
    return shapes


def vision_weight_shapes(cfg: VisionConfig, n_embd_text: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and numpy shapes of the mmproj (all n_layer blocks, also for llava: see `write_mmproj`)."""
    if cfg.projector == "lfm2":
        return _lfm2_vision_weight_shapes(cfg, n_embd_text)
    d, p, proj = cfg.n_embd, cfg.patch_size, cfg.projector
    qwen = proj in ("qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger")
    shapes: dict[str, tuple[int, ...]] = {"v.patch_embd.weight": (d, 3, p, p)}
    if qwen:  # a temporal conv of 2 frames, split into two 2D kernels
        shapes["v.patch_embd.weight.1"] = (d, 3, p, p)
    if proj in ("qwen3vl_merger", "resampler", "idefics3", "internvl") or (proj in ("mlp", "gemma3") and cfg.patch_bias):
        shapes["v.patch_embd.bias"] = (d,)
    if proj in ("mlp", "gemma3", "idefics3", "internvl"):  # internvl: class token, n_patches + 1 rows
        shapes["v.position_embd.weight"] = (cfg.grid * cfg.grid + (1 if cfg.class_embedding else 0), d)
        if cfg.class_embedding:
            shapes["v.class_embd"] = (d,)
    elif proj == "qwen3vl_merger":  # a learned pos_size x pos_size grid, resized to the picture's
        shapes["v.position_embd.weight"] = (cfg.pos_size * cfg.pos_size, d)
    elif proj == "gemma4v":  # two tables, x then y: ggml [n_embd, pos_size, 2]
        shapes["v.position_embd.weight"] = (2, cfg.pos_size, d)
    elif proj == "resampler":  # SigLIP's pos_size x pos_size table (70 x 70), bucketed to the slice's patch grid
        shapes["v.position_embd.weight"] = (cfg.pos_size * cfg.pos_size, d)
    if proj in ("mlp", "pixtral"):  # CLIP's pre-layernorm (pixtral: an RMS norm, no bias)
        shapes["v.pre_ln.weight"] = (d,)
        if proj == "mlp":
            shapes["v.pre_ln.bias"] = (d,)
    rms = proj in ("qwen2.5vl_merger", "gemma4v", "pixtral")  # RMS norms: weights only
    biases = proj not in ("gemma4v", "pixtral")
    gated = proj in ("qwen2.5vl_merger", "gemma4v", "pixtral")
    dh = d // cfg.n_head
    for i in range(cfg.n_layer):
        b = f"v.blk.{i}."
        if proj == "qwen3vl_merger":
            shapes[b + "attn_qkv.weight"] = (3 * d, d)
            shapes[b + "attn_qkv.bias"] = (3 * d,)
        else:
            for t in ("attn_q", "attn_k", "attn_v"):
                shapes[b + t + ".weight"] = (d, d)
                if biases:
                    shapes[b + t + ".bias"] = (d,)
        shapes[b + "attn_out.weight"] = (d, d)
        if biases:
            shapes[b + "attn_out.bias"] = (d,)
        for t in ("ln1", "ln2"):
            shapes[b + t + ".weight"] = (d,)
            if not rms:
                shapes[b + t + ".bias"] = (d,)
        if proj == "gemma4v":  # per-head q/k norms, sandwich norms
            shapes.update({b + "attn_q_norm.weight": (dh,), b + "attn_k_norm.weight": (dh,),
                           b + "attn_post_norm.weight": (d,), b + "ffn_post_norm.weight": (d,)})
        if gated:
            shapes[b + "ffn_gate.weight"] = (cfg.n_ff, d)
            if biases:
                shapes[b + "ffn_gate.bias"] = (cfg.n_ff,)
        shapes[b + "ffn_up.weight"] = (cfg.n_ff, d)
        if biases:
            shapes[b + "ffn_up.bias"] = (cfg.n_ff,)
        shapes[b + "ffn_down.weight"] = (d, cfg.n_ff)
        if biases:
            shapes[b + "ffn_down.bias"] = (d,)
        if proj == "internvl":  # InternViT's layer scales (attention, FFN)
            shapes.update({b + "ls1.weight": (d,), b + "ls2.weight": (d,)})
    m = d * cfg.spatial_merge ** 2
    if proj == "mlp":
        shapes.update({"mm.0.weight": (cfg.proj_hidden, d), "mm.0.bias": (cfg.proj_hidden,),
                       "mm.2.weight": (n_embd_text, cfg.proj_hidden), "mm.2.bias": (n_embd_text,)})
        if cfg.grid_pinpoints:  # LLaVA-1.6's image_newline, named as the legacy converter writes it (unread)
            shapes["model.image_newline"] = (n_embd_text,)
    elif proj == "gemma3":  # post-layernorm, RMS norm, projection stored [in, out] (the graph transposes it)
        shapes.update({"v.post_ln.weight": (d,), "v.post_ln.bias": (d,), "mm.soft_emb_norm.weight": (d,),
                       "mm.input_projection.weight": (d, n_embd_text)})
    elif proj == "gemma4v":  # Gemma4MultimodalEmbedder: weightless RMS norm, then a plain [out, in] projection
        shapes["mm.input_projection.weight"] = (n_embd_text, d)
    elif proj == "pixtral":  # LlavaMultiModalProjector (linear_1, GELU, linear_2) and the [IMG_BREAK] embedding
        if cfg.spatial_merge > 1:  # Mistral Small 3.1's patch merger
            shapes.update({"mm.input_norm.weight": (d,), "mm.patch_merger.weight": (d, m)})
        shapes.update({"mm.1.weight": (n_embd_text, d), "mm.1.bias": (n_embd_text,),
                       "mm.2.weight": (n_embd_text, n_embd_text), "mm.2.bias": (n_embd_text,),
                       "v.token_embd.img_break": (n_embd_text,)})
    elif proj == "resampler":  # SigLIP post-LN, then MiniCPM-V's resampler (legacy converter's names and shapes)
        e = n_embd_text
        shapes.update({"v.post_ln.weight": (d,), "v.post_ln.bias": (d,), "resampler.query": (cfg.n_queries, e),
                       "resampler.kv.weight": (e, d)})
        for t in ("q", "k", "v", "out"):  # nn.MultiheadAttention's in_proj split in three, and out_proj
            shapes.update({f"resampler.attn.{t}.weight": (e, e), f"resampler.attn.{t}.bias": (e,)})
        for t in ("q", "kv", "post"):
            shapes.update({f"resampler.ln_{t}.weight": (e,), f"resampler.ln_{t}.bias": (e,)})
        # proj is an nn.Parameter used as x @ proj, stored transposed; pos_embed_k is the 70 x 70 2D sin-cos
        # table the converter adds (the graph computes its own: loaded, unused)
        shapes.update({"resampler.proj.weight": (e, e), "resampler.pos_embed_k": (70 * 70, e)})
    elif proj == "idefics3":  # SigLIP post-LN, pixel shuffle, Idefics3Connector's bias-free projection
        shapes.update({"v.post_ln.weight": (d,), "v.post_ln.bias": (d,), "mm.model.fc.weight": (n_embd_text, m)})
    elif proj == "internvl":  # no post-LN; pixel shuffle, then mlp1: LayerNorm(m), Linear, GELU, Linear
        shapes.update({"mm.model.mlp.0.weight": (m,), "mm.model.mlp.0.bias": (m,),
                       "mm.model.mlp.1.weight": (n_embd_text, m), "mm.model.mlp.1.bias": (n_embd_text,),
                       "mm.model.mlp.3.weight": (n_embd_text, n_embd_text), "mm.model.mlp.3.bias": (n_embd_text,)})
    else:  # qwen mergers: norm over each patch (v.post_ln), then 2 x 2 patches -> MLP
        shapes["v.post_ln.weight"] = (d,)
        if proj != "qwen2.5vl_merger":
            shapes["v.post_ln.bias"] = (d,)
        shapes.update({"mm.0.weight": (m, m), "mm.0.bias": (m,),
                       "mm.2.weight": (n_embd_text, m), "mm.2.bias": (n_embd_text,)})
        for il in cfg.deepstack:  # deepstack mergers: the norm is over the 2 x 2-merged row
            b = f"v.deepstack.{il}."
            shapes.update({b + "norm.weight": (m,), b + "norm.bias": (m,), b + "fc1.weight": (m, m),
                           b + "fc1.bias": (m,), b + "fc2.weight": (n_embd_text, m), b + "fc2.bias": (n_embd_text,)})
    return shapes


def gemma4_rope_freqs(head_dim: int, partial: float) -> np.ndarray:
    """The global layers' "proportional" RoPE as convert_hf_to_gguf.py writes it: divisor 1 for the rotated
    pairs, 1e30 (no rotation) for the rest."""
    n_rot = int(head_dim * partial / 2)
    return np.array([1.0] * n_rot + [1e30] * (head_dim // 2 - n_rot), np.float32)


def minicpmv_pos_embed_k(embed_dim: int, grid: tuple[int, int] = (70, 70)) -> np.ndarray:
    """resampler.pos_embed_k as minicpmv-convert-image-encoder-to-gguf.py writes it (get_2d_sincos_pos_embed,
    [h * w, embed_dim]: sin/cos of the column, then of the row)."""
    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid[1], dtype=np.float32), np.arange(grid[0], dtype=np.float32))
    return np.concatenate([one_d(embed_dim // 2, gw), one_d(embed_dim // 2, gh)], axis=1).astype(np.float32)


def random_weights(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Scaled so activations stay O(1): matrices ~ N(0, 1/fan_in), norms ~ 1, biases and tables small.
    (gemma4's rope_freqs is not a weight: fill it with `gemma4_rope_freqs`.)"""
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            base = 1.0 if ("norm" in name or ".ln" in name or "_ln" in name) and name.endswith("weight") else 0.0
            if name.endswith(".ssm_a"):  # qwen35: the decay is -exp(A_log), A_log ~ 0
                base = -1.0
            if name.endswith("layer_output_scale.weight"):  # gemma4's layer_scalar
                base = 1.0
            if name.endswith((".ls1.weight", ".ls2.weight")) or name == "mm.model.mlp.0.weight":
                base = 1.0  # internvl: layer scales; mlp1's LayerNorm weight
            if name in ("v.class_embd", "v.token_embd.img_break"):  # embeddings: O(1) like the rows they join
                out[name] = rng.standard_normal(shape).astype(np.float32)
                continue
            out[name] = (base + 0.02 * rng.standard_normal(shape)).astype(np.float32)
        elif name in ("token_embd.weight", "v.position_embd.weight"):
            out[name] = rng.standard_normal(shape).astype(np.float32) * (1.0 if name == "token_embd.weight" else 0.1)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------------
# writing


class LazyRandomWeights(Mapping):
    """Random weights generated one tensor at a time (seeded by the name), for presets too large to hold in
    memory: the writer streams them to disk. Same scaling as `random_weights`."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
        self.shapes, self.seed = shapes, int(seed)

    def __getitem__(self, name: str) -> np.ndarray:
        digest = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return random_weights({name: self.shapes[name]}, rng)[name]

    def __contains__(self, name: object) -> bool:  # Mapping's default would generate the tensor
        return name in self.shapes

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def _stored(name: str, a: np.ndarray, dtype: str) -> np.ndarray:
    # 1-D tensors (norms, biases), the position tables and the class embedding stay f32, as llama.cpp's
    # converters do; float64 arrays (a trained model's export) would otherwise be stored as F64
    keep_f32 = a.ndim < 2 or "position_embd" in name
    return np.ascontiguousarray(a.astype(np.float16 if dtype == "f16" and not keep_f32 else np.float32))


def _write(w: "object", names: list[str], weights: Mapping[str, np.ndarray], expected: dict[str, tuple[int, ...]],
           dtype: str) -> None:
    """Header, metadata, tensor infos, then the tensors one at a time (a lazy mapping is never held whole)."""
    lazy = isinstance(weights, LazyRandomWeights)
    if not lazy:
        for n in names:
            w.add_tensor(n, _stored(n, weights[n], dtype))  # type: ignore[attr-defined]
        _finish(w)
        return
    for n in names:
        dt = np.float16 if dtype == "f16" and len(expected[n]) >= 2 and "position_embd" not in n else np.float32
        nbytes = int(np.prod(expected[n])) * np.dtype(dt).itemsize
        w.add_tensor_info(n, expected[n], np.dtype(dt), nbytes)  # type: ignore[attr-defined]
    w.write_header_to_file()  # type: ignore[attr-defined]
    w.write_kv_data_to_file()  # type: ignore[attr-defined]
    w.write_ti_data_to_file()  # type: ignore[attr-defined]
    for n in names:
        w.write_tensor_data(_stored(n, weights[n], dtype))  # type: ignore[attr-defined]
    w.close()  # type: ignore[attr-defined]


def write_text_model(path: Path, cfg: TextConfig, tok: Tokenizer, weights: Mapping[str, np.ndarray],
                     dtype: str = "f32", name: str = "topv-edge synthetic",
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write a GGUF text model of architecture `cfg.arch` from `weights` (names and shapes: `text_weight_shapes`).

    Array convention: numpy shapes as PyTorch stores them, a Linear weight is [out, in], the embedding table
    [n_vocab, n_embd]; any float dtype (stored F32, or F16 for >= 2-D tensors when dtype="f16"). For arch
    `llama`, attn_q/attn_k rows must already be in llama.cpp's interleaved RoPE order: apply
    `permute_qk_for_llama` to HuggingFace (rotate_half) weights, as convert_hf_to_gguf.py does. The Qwen and
    Gemma architectures use NEOX-style RoPE in llama.cpp: no permutation. gemma*'s output is tied to
    token_embd. Note llama.cpp's gemma graphs scale the token embeddings by sqrt(n_embd) and gemma3's RMS
    norms multiply by the stored weight (HF Gemma's `1 + weight` must be folded in before writing)."""
    import gguf

    expected = text_weight_shapes(cfg, len(tok.tokens))
    _check_weights(weights, expected, "text model")
    w = gguf.GGUFWriter(str(path), cfg.arch)
    w.add_name(name)
    w.add_context_length(cfg.n_ctx_train)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_head_count(cfg.n_head)
    if cfg.arch == "gemma4" and cfg.n_head_kv_global:  # per layer, as the converter writes it
        w.add_head_count_kv([cfg.layer_head_kv(i) for i in range(cfg.n_layer)])
    elif cfg.arch == "lfm2":  # per layer, 0 for the short-convolution layers (conversion/lfm2.py)
        w.add_head_count_kv([0 if cfg.is_recurrent(i) else cfg.n_head_kv for i in range(cfg.n_layer)])
    else:
        w.add_head_count_kv(cfg.n_head_kv)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_rope_freq_base(cfg.rope_base)
    if cfg.arch != "lfm2":  # LFM2's converter writes none (the whole head rotates)
        w.add_rope_dimension_count(cfg.rope_dim or cfg.head_dim)
    if cfg.arch == "lfm2":
        w.add_vocab_size(len(tok.tokens))
        w.add_shortconv_l_cache(cfg.ssm_conv)
    if cfg.n_embd_head:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if cfg.arch in ("qwen2vl", "qwen3vl", "qwen35"):
        w.add_rope_dimension_sections(list(cfg.rope_sections))
    if cfg.n_deepstack:
        w.add_uint32(f"{cfg.arch}.n_deepstack_layers", cfg.n_deepstack)
    if cfg.arch == "qwen35":
        w.add_ssm_conv_kernel(cfg.ssm_conv)
        w.add_ssm_inner_size(cfg.ssm_state * cfg.ssm_v_heads)
        w.add_ssm_state_size(cfg.ssm_state)
        w.add_ssm_time_step_rank(cfg.ssm_v_heads)
        w.add_ssm_group_count(cfg.ssm_groups)
        w.add_uint32(f"{cfg.arch}.full_attention_interval", cfg.full_attn_interval)
        w.add_array(f"{cfg.arch}.attention.recurrent_layers", [cfg.is_recurrent(i) for i in range(cfg.n_layer)])
    if cfg.arch == "gemma3" and cfg.sliding_window:  # the real ones: 5 local layers to 1 global (llama.cpp's default)
        w.add_sliding_window(cfg.sliding_window)
    if cfg.arch == "gemma4":
        w.add_array(f"{cfg.arch}.attention.sliding_window_pattern", list(cfg.swa_pattern))
        w.add_sliding_window(cfg.sliding_window)
        w.add_uint32(f"{cfg.arch}.embedding_length_per_layer_input", 0)
        w.add_uint32(f"{cfg.arch}.attention.key_length_swa", cfg.n_embd_head_swa)
        w.add_uint32(f"{cfg.arch}.attention.value_length_swa", cfg.n_embd_head_swa)
        w.add_uint32(f"{cfg.arch}.rope.dimension_count_swa", cfg.n_embd_head_swa)
        w.add_float32(f"{cfg.arch}.rope.freq_base_swa", cfg.rope_base_swa)
        w.add_float32(f"{cfg.arch}.final_logit_softcapping", 30.0)
        w.add_uint32(f"{cfg.arch}.attention.shared_kv_layers", 0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("lfm2" if cfg.arch == "lfm2" else "default")
    w.add_token_list(tok.tokens)
    w.add_token_types(tok.types)
    w.add_token_merges(tok.merges)
    w.add_bos_token_id(tok.bos)
    w.add_eos_token_id(tok.eos)
    w.add_add_bos_token(cfg.arch in ("llama", "gemma3", "gemma4", "lfm2"))
    w.add_chat_template(tok.chat_template)
    for k, v in (metadata or {}).items():
        w.add_string(k, v)
    _write(w, list(expected), weights, expected, dtype)
    return path


_PROJECTOR_ACT = {"gelu": "clip.use_gelu", "silu": "clip.use_silu", "quick_gelu": None}


def mmproj_block_count(cfg: VisionConfig) -> int:
    """clip.vision.block_count as the converters write it: llava's (mlp) legacy converter drops the ViT's last
    block (LLaVA-1.5 feeds the projector the penultimate block, HF `hidden_states[-2]`); the others keep all."""
    return cfg.n_layer - 1 if cfg.projector == "mlp" else cfg.n_layer


def write_mmproj(path: Path, cfg: VisionConfig, n_embd_text: int, weights: Mapping[str, np.ndarray],
                 dtype: str = "f32", name: str = "topv-edge synthetic mmproj",
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write a GGUF mmproj (`clip` architecture) for projector `cfg.projector` (names/shapes: `vision_weight_shapes`).

    Same array convention as `write_text_model` (Linear [out, in]; the patch embedding is a Conv2d weight
    [n_embd, 3, patch, patch]); exceptions: gemma3's `mm.input_projection.weight` is [in, out] as in HF
    (the graph transposes it); the Qwen mergers' Conv3d patch kernel [n_embd, 3, 2, p, p] is written as two
    Conv2d kernels, `v.patch_embd.weight` = k[:, :, 0] and `v.patch_embd.weight.1` = k[:, :, 1]; gemma4v's
    position table is [2, pos_size, n_embd] (x table, then y).
    llava (mlp): `weights` holds all n_layer blocks of the HF ViT and, as llama.cpp's legacy converter does,
    the last one is not written (block_count = n_layer - 1): the projector reads the penultimate block's
    output. The patched llama.cpp runs every stored block (patches/10-clip-class-token-first.patch)."""
    import gguf

    expected = vision_weight_shapes(cfg, n_embd_text)
    _check_weights(weights, expected, "mmproj")
    n_blocks = mmproj_block_count(cfg)
    names = [n for n in expected if not (n.startswith("v.blk.") and int(n.split(".")[2]) >= n_blocks)]
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", cfg.projector)
    act_key = _PROJECTOR_ACT[cfg.hidden_act]
    if act_key is not None:
        w.add_bool(act_key, True)
    elif cfg.projector == "mlp":  # quick GELU is llama.cpp's default; the legacy converter writes use_gelu = false
        w.add_bool("clip.use_gelu", False)
    w.add_uint32("clip.vision.image_size", cfg.image_size)
    w.add_uint32("clip.vision.patch_size", cfg.patch_size)
    w.add_uint32("clip.vision.embedding_length", cfg.n_embd)
    w.add_uint32("clip.vision.feed_forward_length", cfg.n_ff)
    w.add_uint32("clip.vision.block_count", n_blocks)
    # the MiniCPM-V converter writes 0 (the resampler's width is resampler.proj's)
    w.add_uint32("clip.vision.projection_dim", 0 if cfg.projector == "resampler" else n_embd_text)
    w.add_uint32("clip.vision.attention.head_count", cfg.n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", cfg.ln_eps)
    w.add_array("clip.vision.image_mean", list(cfg.image_mean))
    w.add_array("clip.vision.image_std", list(cfg.image_std))
    if cfg.projector in ("gemma3", "gemma4v", "lfm2"):
        w.add_uint32("clip.vision.projector.scale_factor", cfg.spatial_merge)
    if cfg.projector == "qwen2vl_merger":
        w.add_uint32("clip.vision.spatial_merge_size", cfg.spatial_merge)
        w.add_uint32("clip.vision.image_min_pixels", (cfg.patch_size * cfg.spatial_merge) ** 2 * 4)
        w.add_uint32("clip.vision.image_max_pixels", cfg.image_size * cfg.image_size)
    if cfg.projector == "qwen2.5vl_merger":
        w.add_uint32("clip.vision.n_wa_pattern", cfg.n_wa_pattern)
    if cfg.projector == "qwen3vl_merger":
        w.add_uint32("clip.vision.spatial_merge_size", cfg.spatial_merge)
        w.add_array("clip.vision.is_deepstack_layers", [i in cfg.deepstack for i in range(cfg.n_layer)])
    if cfg.projector == "mlp" and cfg.grid_pinpoints:  # LLaVA-1.6 (legacy converter + config_vit.json keys)
        w.add_array("clip.vision.image_grid_pinpoints", list(cfg.grid_pinpoints))
        w.add_string("clip.vision.image_aspect_ratio", "anyres")
        w.add_string("clip.vision.mm_patch_merge_type", "spatial_unpad")
    if cfg.projector == "resampler":  # minicpmv-convert-image-encoder-to-gguf.py
        w.add_bool("clip.has_minicpmv_projector", True)
        w.add_int32("clip.minicpmv_version", cfg.minicpmv_version)
        w.add_uint32("clip.minicpmv_query_num", cfg.n_queries)
    if cfg.projector == "pixtral" and cfg.spatial_merge > 1:
        w.add_uint32("clip.vision.spatial_merge_size", cfg.spatial_merge)
    if cfg.projector in ("idefics3", "internvl"):  # conversion/smolvlm.py, conversion/internvl.py: pixel shuffle
        w.add_uint32("clip.vision.projector.scale_factor", cfg.spatial_merge)
    if cfg.projector == "idefics3":  # the preprocessor's longest edge (preprocessor_config size.longest_edge)
        w.add_uint32("clip.vision.preproc_image_size", cfg.preproc_longest_edge)
    if cfg.projector == "internvl":  # min/max_dynamic_patch, written when the config has them
        if cfg.preproc_tiles[0] > 0:
            w.add_uint32("clip.vision.preproc_min_tiles", cfg.preproc_tiles[0])
        if cfg.preproc_tiles[1] > 0:
            w.add_uint32("clip.vision.preproc_max_tiles", cfg.preproc_tiles[1])
    for k, v in (metadata or {}).items():
        w.add_string(k, v)
    _write(w, names, weights, expected, dtype)
    return path


def permute_qk_for_llama(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate_half) -> llama.cpp (interleaved) RoPE row order of a llama attn_q / attn_k weight or bias.

    `n_head` is the head count of that projection (n_head_kv for attn_k). Same as convert_hf_to_gguf.py."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _check_weights(weights: Mapping[str, np.ndarray], expected: dict[str, tuple[int, ...]], what: str) -> None:
    missing = [n for n in expected if n not in weights]
    if missing:
        raise ValueError(f"{what}: missing weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if isinstance(weights, LazyRandomWeights):  # generated to these shapes, finite by construction
        return
    for n, shape in expected.items():
        if tuple(weights[n].shape) != shape:
            raise ValueError(f"{what}: {n} has shape {tuple(weights[n].shape)}, expected {shape}")
        if not np.all(np.isfinite(weights[n])):
            raise ValueError(f"{what}: {n} has non-finite values")


def _finish(w: "object") -> None:
    w.write_header_to_file()  # type: ignore[attr-defined]
    w.write_kv_data_to_file()  # type: ignore[attr-defined]
    w.write_tensors_to_file()  # type: ignore[attr-defined]
    w.close()  # type: ignore[attr-defined]


def pair_paths(family: str, preset: str, out_dir: str | Path, class_embedding: bool = False,
               quantize: str | None = None) -> tuple[Path, Path]:
    """Where `write_pair` puts a pair: `<family>-<preset>[-cls][-<QUANT>].gguf` and `mmproj-<family>-<preset>[-cls].gguf`."""
    out = Path(out_dir)
    stem = f"{family}-{preset}" + ("-cls" if class_embedding else "")
    return out / f"{stem}{'-' + quantize if quantize else ''}.gguf", out / f"mmproj-{stem}.gguf"


def preset_config(family: str, preset: str, class_embedding: bool = False) -> ModelConfig:
    """The configuration of a preset (ValueError listing the known ones if there is none)."""
    try:
        cfg = PRESETS[(family, preset)]
    except KeyError:
        known = ", ".join(f"{f}/{p}" for f, p in PRESETS)
        raise ValueError(f"unknown family/preset {family}/{preset}; known: {known}") from None
    if class_embedding:
        if cfg.vision.projector != "mlp":
            raise ValueError("class_embedding is only supported by the llava family (projector mlp)")
        cfg = replace(cfg, vision=replace(cfg.vision, **_LLAVA_CLASS_TOKEN))
    return cfg


def pair_fingerprint(family: str, preset: str, seed: int = 0, class_embedding: bool = False) -> str:
    """What identifies the bytes `write_pair` produces: writer version, configuration, tokenizer, seed."""
    cfg = preset_config(family, preset, class_embedding)
    tok = family_tokenizer(family)
    key = repr((WRITER_VERSION, family, preset, int(seed), cfg, tok.tokens, tok.types, tok.merges,
                tok.chat_template))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_fingerprint(path: str | Path) -> str | None:
    """The fingerprint stored in a GGUF written by `write_pair` (None if absent or unreadable)."""
    import gguf

    try:
        field_ = gguf.GGUFReader(str(path)).get_field(FINGERPRINT_KEY)
    except Exception:  # not a GGUF, truncated, ...
        return None
    return None if field_ is None else str(field_.contents())


# presets with more parameters than this are written from lazily generated weights, tensor by tensor
_STREAM_ABOVE = 50_000_000


def _weights_for(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator, seed: int) -> Mapping[str, np.ndarray]:
    if sum(int(np.prod(s)) for s in shapes.values()) > _STREAM_ABOVE:
        return LazyRandomWeights(shapes, seed)
    return random_weights(shapes, rng)


def pair_weights(family: str, preset: str, seed: int = 0, class_embedding: bool = False
                 ) -> tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]:
    """The random weights `write_pair` writes: (text, vision), in `text_weight_shapes` / `vision_weight_shapes`
    (for llava all n_layer ViT blocks, the last of which the file leaves out). Lazy for large presets."""
    cfg = preset_config(family, preset, class_embedding)
    rng = np.random.default_rng(seed)
    text_w = _weights_for(text_weight_shapes(cfg.text, len(family_tokenizer(family).tokens)), rng, seed)
    if cfg.text.arch == "gemma4":
        text_w = {**text_w, "rope_freqs.weight": gemma4_rope_freqs(cfg.text.head_dim, cfg.text.rope_partial_global)}
    vis_w = _weights_for(vision_weight_shapes(cfg.vision, cfg.text.n_embd), rng, seed + 1)
    if cfg.vision.projector == "resampler":  # not a weight: the converter's fixed table
        vis_w = {**vis_w, "resampler.pos_embed_k": minicpmv_pos_embed_k(cfg.text.n_embd)}
    return text_w, vis_w


def quantize_model(src: Path, dst: Path, qtype: str, threads: int | None = None) -> Path:
    """Quantise a GGUF text model with the patched build's own llama-quantize (e.g. qtype "Q4_K_M")."""
    import os
    import subprocess

    from ...llama import build as llama_build

    exe = llama_build.build_dir() / "bin" / "llama-quantize"
    if not exe.is_file():
        raise ValueError(f"{exe} is missing: build llama.cpp with scripts/build_llama_cpp.sh")
    tmp = dst.with_suffix(".tmp")
    env = dict(os.environ, LD_LIBRARY_PATH=str(llama_build.build_dir() / "lib"))
    r = subprocess.run([str(exe), str(src), str(tmp), qtype, str(threads or os.cpu_count() or 1)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:]
        raise ValueError(f"llama-quantize failed (exit {r.returncode}): {tail[0] if tail else 'no output'}")
    tmp.replace(dst)
    return dst


def write_pair(family: str, preset: str, out_dir: str | Path, seed: int = 0, overwrite: bool = False,
               class_embedding: bool = False, quantize: str | None = None) -> tuple[Path, Path]:
    """Write a random-weight pair of a preset; returns (model, mmproj).

    Cached: if both files exist and carry the fingerprint of this call (writer version, configuration,
    tokenizer, seed), nothing is written. Same arguments, byte-identical files. `quantize` (e.g. "Q4_K_M")
    also writes the text model quantised by llama-quantize and returns that one (the mmproj stays as written,
    as the published GGUFs ship it)."""
    cfg = preset_config(family, preset, class_embedding)
    fp = pair_fingerprint(family, preset, seed, class_embedding)
    model, mmproj = pair_paths(family, preset, out_dir, class_embedding)
    if overwrite or not all(p.exists() and read_fingerprint(p) == fp for p in (model, mmproj)):
        model.parent.mkdir(parents=True, exist_ok=True)
        tok = family_tokenizer(family)
        text_w, vis_w = pair_weights(family, preset, seed, class_embedding)
        meta = {FINGERPRINT_KEY: fp}
        stem = model.stem
        # write to temporary names, then rename: an interrupted run never leaves a half-written "cached" pair
        tmp_model, tmp_mmproj = model.with_suffix(".tmp"), mmproj.with_suffix(".tmp")
        write_text_model(tmp_model, cfg.text, tok, text_w, cfg.dtype, name=stem, metadata=meta)
        write_mmproj(tmp_mmproj, cfg.vision, cfg.text.n_embd, vis_w, cfg.dtype, name=f"mmproj-{stem}", metadata=meta)
        tmp_model.replace(model)
        tmp_mmproj.replace(mmproj)
    if quantize:
        qmodel = pair_paths(family, preset, out_dir, class_embedding, quantize)[0]
        if overwrite or read_fingerprint(qmodel) != fp or qmodel.stat().st_mtime < model.stat().st_mtime:
            quantize_model(model, qmodel, quantize)
        return qmodel, mmproj
    return model, mmproj


# ----------------------------------------------------------------------------------------------------
# a test picture


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m topv_edge.lab.synth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=list(FAMILIES), default="llava")
    ap.add_argument("--preset", default="tiny",
                    help="tiny (tests) or realistic shapes: " + ", ".join(f"{f} {p}" for f, p in PRESETS if p != "tiny"))
    ap.add_argument("-o", "--out", type=Path, default=Path("models"), help="output directory (default models/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rewrite existing files")
    ap.add_argument("--class-embedding", action="store_true",
                    help="llava: LLaVA-1.5's CLIP tower with its class embedding (files get a -cls suffix)")
    ap.add_argument("--quantize", metavar="TYPE", help="also quantise the text model with llama-quantize (e.g. Q4_K_M)")
    args = ap.parse_args(argv)
    try:
        model, mmproj = write_pair(args.family, args.preset, args.out, seed=args.seed, overwrite=args.force,
                                   class_embedding=args.class_embedding, quantize=args.quantize)
    except ValueError as e:
        ap.error(str(e))
    print(model)
    print(mmproj)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
