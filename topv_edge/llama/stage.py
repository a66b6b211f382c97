"""The TopV stage of the patched libmtmd, driven from Python: set its parameters, decode an image chunk through
it, and read back what it did. The pruning itself happens in C (native/mtmd/), the one place that prunes.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import Any

from ..errors import ChatError, explain_llama_error
from ..options import TopVOptions
from ..pruning.native import status_string
from . import libs as llama_libs


@dataclass
class ImageReport:
    """One image chunk: a whole picture, or the overview or one tile of a tiled picture."""
    n_tokens: int         # image tokens the model produced for the chunk
    n_kept: int           # tokens decoded into the KV cache
    pruned: bool          # False when TopV was off or the stage fell back to unpruned
    encode_ms: float
    probe_ms: float
    pass_ms: float
    decode_ms: float      # decode of the kept tokens
    note: str = ""        # why the stage did not prune ("" exactly when it pruned)
    picture: int = 0      # the picture it belongs to, counted from 0 in its prompt (-1: unknown)
    role: str = "single"  # "single" (the picture is this chunk), "overview" or "tile"
    tile: tuple[int, int] | None = None  # (column, row) of a tile in the picture's grid of tiles
    tiles: tuple[int, int] = (0, 0)      # the picture's grid of tiles (columns, rows)
    budget: int = 0       # grid tokens this chunk was given of the picture's budget (0 when not pruning)
    kept_whole: bool = False  # not pruned because keep (or its share of a tiled picture's budget) covers it all
    video: str = ""       # the video it is frames of (llama.cpp's id of the file: its SHA-256), "" for a picture
    frame: int = -1       # a video's chunk: its first frame, counted from 0
    n_frames: int = 1     # frames in the chunk (a Qwen-VL encoder merges two in time)

    @property
    def kept_fraction(self) -> float:
        return self.n_kept / self.n_tokens if self.n_tokens else 1.0


def configure_topv(libs: llama_libs.LlamaLibs, mctx: Any, options: TopVOptions, threads: int) -> None:
    """Set the TopV stage's parameters on an mtmd context (the patch's mtmd_topv_set_params)."""
    options.validate()
    p = libs.topv_default_params()
    p.enabled = options.enabled
    if isinstance(options.keep, int):
        p.keep_count, p.keep_ratio = options.keep, 0.0
    else:
        p.keep_count, p.keep_ratio = 0, float(options.keep)
    p.layer = options.layer
    p.renumber_positions = options.renumber_positions
    p.overview_weight = float(options.overview_weight)
    p.pass_params = options.pass_params(threads)
    rc = libs.topv_set_params(mctx, p)
    if rc != 0:
        raise ChatError(f"TopV parameters rejected by llama.cpp: {status_string(rc)}")


def video_frame_of(chunk_id: str) -> tuple[str, int]:
    """(video id, first frame) of a chunk llama.cpp's video reader made (its id is "<file sha256>+<frame>"), or
    ("", -1) for a picture's chunk."""
    video, plus, frame = chunk_id.rpartition("+")
    return (video, int(frame)) if plus and video and frame.isdigit() else ("", -1)


def image_report(libs: llama_libs.LlamaLibs, mctx: Any, n_tokens: int, encode_ms: float,
                 chunk_id: str = "") -> ImageReport:
    """What the TopV stage did with the image chunk just decoded; every chunk it did not prune gets a reason."""
    st = libs.topv_stats(mctx)
    video, frame = video_frame_of(chunk_id)
    pruned = st.result == llama_libs.MTMD_TOPV_PRUNED
    role = libs.topv_chunk_role(st.role)
    if pruned:
        note = ""
    elif st.result == llama_libs.MTMD_TOPV_KEEP_ALL and role == "single":
        p = libs.topv_get_params(mctx)
        asked = f"{p.keep_count} tokens" if p.keep_count > 0 else f"{100 * p.keep_ratio:.4g}%"
        note = f"keep ({asked}) covers all {n_tokens} tokens of this image: nothing to prune"
    else:
        note = (libs.topv_reason(mctx) or libs.topv_result_string(st.result)
                or f"the TopV stage declined (result code {st.result})")
    return ImageReport(n_tokens=n_tokens, n_kept=st.n_kept if pruned else n_tokens, pruned=pruned,
                       encode_ms=encode_ms, probe_ms=st.probe_ms, pass_ms=st.pass_ms, decode_ms=st.decode_ms, note=note,
                       picture=st.picture, role=role, tile=(st.tile_x, st.tile_y) if role == "tile" else None,
                       tiles=(st.tiles_x, st.tiles_y), budget=st.n_budget,
                       kept_whole=st.result == llama_libs.MTMD_TOPV_KEEP_ALL, video=video, frame=frame,
                       n_frames=max(1, st.n_frames))


def decode_image(libs: llama_libs.LlamaLibs, mctx: Any, lctx: Any, chunk: Any, n_past: int, seq_id: int,
                 n_batch: int, errors: llama_libs.LogRecorder) -> tuple[int, ImageReport]:
    """Encode one image chunk, then decode it through the patched helper (the TopV stage prunes there).

    What mtmd_helper_eval_chunk_single does for an image, with the encode timed: (next n_past, report)."""
    M, L = libs.mtmd_cpp, libs.llama_cpp
    n_tokens = M.mtmd_input_chunk_get_n_tokens(chunk)
    t0 = time.perf_counter()
    rc = M.mtmd_encode_chunk(mctx, chunk)
    if rc != 0:
        raise ChatError(f"could not encode the image (code {rc}): {explain_llama_error(errors.errors())}")
    encode_ms = (time.perf_counter() - t0) * 1e3
    new_n_past = L.llama_pos(0)
    rc = M.mtmd_helper_decode_image_chunk(mctx, lctx, chunk, M.mtmd_get_output_embd(mctx), n_past, seq_id, n_batch,
                                          ctypes.byref(new_n_past), M.mtmd_helper_post_decode_callback(), None)
    if rc != 0:
        raise ChatError(f"llama.cpp could not decode the image (code {rc}): {explain_llama_error(errors.errors())}")
    chunk_id = M.mtmd_input_chunk_get_id(chunk)
    return new_n_past.value, image_report(libs, mctx, n_tokens, encode_ms, (chunk_id or b"").decode(errors="replace"))
