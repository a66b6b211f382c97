"""A multimodal chat session on the patched llama.cpp, with TopV pruning of image tokens.

The pruning itself happens inside llama.cpp (the TopV stage the patch adds to
`mtmd_helper_eval_chunk_single`); this module drives it through
llama-cpp-python's low-level bindings: it loads the model and the mmproj,
renders the model's own chat template, tokenises text and images with mtmd,
evaluates the chunks (the stage encodes, probes, prunes and decodes the kept
tokens at their original positions) and samples the answer.

Why not `llama_cpp.Llama`: it indexes its token history by position and so
needs `n_ctx` >= every position, pruned or not. Driving llama.cpp directly,
the context holds only the cells actually used (text + kept image tokens), so
the KV cache is allocated for the pruned prompt, not the original one.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import llama_libs
from .chat_templates import LLAVA15_TEMPLATE, compile_chat_template
from ._native import METHODS, status_string
from .pruning import DEFAULT_KEEP, DEFAULT_LAYER, DEFAULT_OVERVIEW_WEIGHT, PARAM_NAMES, default_method, make_params


class ChatError(Exception):
    """A problem the user can fix (bad file, bad option): reported in plain words, no traceback."""


MAX_THREADS = 512  # GGML_MAX_N_THREADS


def check_threads(threads: int | None) -> int:
    """`threads`, or every core when None; 1..MAX_THREADS."""
    if threads is None:
        return llama_libs.default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise ChatError(f"--threads must be a whole number from 1 to {MAX_THREADS} (this machine has "
                        f"{os.cpu_count()} cores), got {threads!r}")
    return threads


# llama.cpp's error lines -> what they mean for the user: (substring, sentence); the first match wins
_LOAD_CAUSES: tuple[tuple[str, str], ...] = (
    ("CLIP cannot be used as main model",
     "{path} is a vision projector (mmproj), not a text model: model and --mmproj are swapped?"),
    ("mismatch between text model",
     "the mmproj {mmproj} does not belong to the model {model}: its image embeddings have another width"),
    ("failed to seek", "{path} is truncated or damaged (its tensor data ends early); download it again"),
    ("failed to read", "{path} is truncated or damaged (its tensor data ends early); download it again"),
    ("not within the file bounds", "{path} is truncated or damaged (its tensor data ends early); download it again"),
    ("failed to allocate", "not enough memory for {what}"),
    ("unable to allocate", "not enough memory for {what}"),
    ("out of memory", "not enough memory for {what}"),
    ("bad_alloc", "not enough memory for {what}"),
    ("cannot find tensor", "{path} lacks tensors its architecture needs: not a file of this kind, or damaged"),
    ("unknown model architecture", "{path} has an architecture this llama.cpp does not know"),
)


def explain_llama_error(errors: list[str], **names: str) -> str:
    """A plain sentence for llama.cpp's error lines of one failing call, with llama.cpp's own first line.

    `names` fills the sentences: path (the file being loaded), model, mmproj, what (what was allocated)."""
    for needle, sentence in _LOAD_CAUSES:
        for line in errors:
            if needle in line:
                return f"{sentence.format_map(_Names(names))} (llama.cpp: {line})"
    if errors:
        return f"llama.cpp said: {errors[0]}"
    return "llama.cpp refused it without an error message (run with -v to see its log)"


class _Names(dict):
    def __missing__(self, key: str) -> str:
        return "it"


# ---------------------------------------------------------------------------------------------
# files


def find_mmproj(model_path: str | Path) -> Path:
    """The mmproj beside `model_path`: a .gguf file whose name contains "mmproj"."""
    model_path = Path(model_path)
    candidates = sorted(p for p in model_path.parent.glob("*.gguf") if "mmproj" in p.name.lower() and p != model_path)
    if not candidates:
        raise ChatError(f"no mmproj found next to {model_path} (a .gguf file whose name contains 'mmproj'); "
                        "pass one with --mmproj")
    if len(candidates) > 1:
        # prefer mmproj-<stem>.gguf (as llama.cpp model repos name them), then the one sharing the model's stem
        exact = [p for p in candidates if p.stem.lower() in (f"mmproj-{model_path.stem}".lower(), f"{model_path.stem}-mmproj".lower())]
        if len(exact) == 1:
            return exact[0]
        same = [p for p in candidates if model_path.stem in p.stem]
        if len(same) == 1:
            return same[0]
        names = ", ".join(p.name for p in candidates)
        raise ChatError(f"several mmproj files next to {model_path}: {names}; choose one with --mmproj")
    return candidates[0]


def check_gguf(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ChatError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ChatError(f"{what} {path} is not a GGUF file")
    return path


def read_image(path: str | Path) -> bytes:
    """The file's bytes, after checking that Pillow can decode it as an image ('~' is expanded)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path).expanduser()
    if path.is_dir():
        raise ChatError(f"{path} is a directory, not an image")
    if not path.is_file():
        raise ChatError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ChatError(f"{path} is not an image Pillow can read ({e})") from None
    data = path.read_bytes()
    if data[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1", b"\xff\xd8\xff\xdb") or data[:3] == b"\xff\xd8\xff":
        return data
    # llama.cpp's loader (stb_image) reads PNG/JPEG/BMP/GIF...; anything else goes through Pillow to PNG
    import io

    with Image.open(path) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# options and reports


@dataclass
class TopVOptions:
    """How to prune: `keep` is a ratio in (0, 1] or a token count; `layer` the probe layer Li; `method`
    topv, or a baseline (uniform: evenly spaced, norm: largest source-feature norm); `renumber_positions`
    a diagnostic that decodes the kept tokens at consecutive positions instead of their original ones."""

    enabled: bool = True
    keep: float | int = DEFAULT_KEEP
    layer: int = DEFAULT_LAYER
    params: dict[str, float | int] = field(default_factory=dict)  # alpha, beta, ... (defaults from C)
    method: str = field(default_factory=default_method)
    # diagnostic: kept tokens at consecutive positions, text right after them (ignored by M-RoPE models)
    renumber_positions: bool = False
    # tiled pictures: the overview's weight when the picture's budget is spread over its chunks (the stage's
    # mtmd_topv_params.overview_weight; 1: every chunk the same ratio; float("inf"): the overview kept whole)
    overview_weight: float = DEFAULT_OVERVIEW_WEIGHT

    @property
    def is_count(self) -> bool:
        """True when `keep` is a token count (an int), False for a ratio (a float: 1.0 keeps everything)."""
        return isinstance(self.keep, int) and not isinstance(self.keep, bool)

    def keep_label(self) -> str:
        """`keep` unambiguously: '25%' for a ratio, '16 tokens' for a count, 'all' when pruning is off."""
        if not self.enabled:
            return "all"
        if self.is_count:
            return f"{self.keep} token{'s' if self.keep != 1 else ''}"
        return f"{100 * float(self.keep):.4g}%"

    def validate(self) -> None:
        k = self.keep
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise ChatError(f"--keep must be a ratio in (0, 1] or a token count, got {k!r}")
        if isinstance(k, float) and not (0.0 < k <= 1.0):
            raise ChatError(f"--keep ratio must be in (0, 1], got {k}")
        if isinstance(k, int) and k < 1:
            raise ChatError(f"--keep count must be at least 1, got {k}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ChatError(f"--layer must be a whole number >= 0, got {self.layer!r}")
        w = self.overview_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise ChatError(f"--overview-weight must be a number > 0 (inf keeps the overview whole), got {w!r}")
        if self.method not in METHODS:
            raise ChatError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        unknown = set(self.params) - set(PARAM_NAMES)
        if unknown:
            raise ChatError(f"unknown TopV parameter(s): {', '.join(sorted(unknown))}")


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

    @property
    def kept_fraction(self) -> float:
        return self.n_kept / self.n_tokens if self.n_tokens else 1.0


@dataclass
class PictureReport:
    """One picture of a turn and its image chunks (one, or an overview and tiles), in decode order."""
    index: int
    chunks: list[ImageReport]

    @property
    def n_tokens(self) -> int:
        return sum(c.n_tokens for c in self.chunks)

    @property
    def n_kept(self) -> int:
        return sum(c.n_kept for c in self.chunks)

    @property
    def n_tiles(self) -> int:
        return sum(c.role == "tile" for c in self.chunks)

    @property
    def tiles(self) -> tuple[int, int]:
        return self.chunks[0].tiles

    def as_dict(self) -> dict[str, Any]:
        return {"picture": self.index, "tiles": self.n_tiles, "tile_grid": list(self.tiles), "n_tokens": self.n_tokens,
                "n_kept": self.n_kept, "kept_fraction": self.n_kept / self.n_tokens if self.n_tokens else 1.0,
                "chunks": [{"role": c.role, "tile": list(c.tile) if c.tile else None, "n_tokens": c.n_tokens,
                            "n_kept": c.n_kept, "pruned": c.pruned, "note": c.note} for c in self.chunks]}


def group_pictures(images: list[ImageReport]) -> list[PictureReport]:
    """The chunks of a turn grouped into their pictures (consecutive chunks with the same picture index)."""
    pictures: list[PictureReport] = []
    for im in images:
        if pictures and pictures[-1].index == im.picture and im.role != "single":
            pictures[-1].chunks.append(im)
        else:
            pictures.append(PictureReport(im.picture, [im]))
    return pictures


@dataclass
class TurnReport:
    images: list[ImageReport]
    text_tokens: int      # prompt text tokens evaluated this turn
    prefill_ms: float     # all prompt chunks (text + images), encode included
    ttft_ms: float        # from the start of the turn to the first answer token
    generated_tokens: int
    generate_ms: float
    kv_cells: int         # KV cells in use after the turn (text + kept image tokens + answer)
    n_ctx: int
    keep: str = "all"     # the requested keep, unambiguous: "25%" (a ratio) or "16 tokens" (a count)
    keep_ratio: float | None = None  # the requested ratio (None when keep is a count or pruning is off)
    keep_count: int | None = None    # the requested count (None when keep is a ratio or pruning is off)
    method: str = ""      # the method that chose the kept tokens
    stopped: bool = False  # the answer was cut short by the caller (Ctrl-C in the chat)

    @property
    def pictures(self) -> list[PictureReport]:
        return group_pictures(self.images)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for im, di in zip(self.images, d["images"]):
            di["kept_fraction"] = im.kept_fraction
        d["image_tokens"] = sum(i.n_tokens for i in self.images)
        d["kept_tokens"] = sum(i.n_kept for i in self.images)
        d["pictures"] = [p.as_dict() for p in self.pictures]
        return d


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
    try:
        p.pass_params = make_params(options.method, threads=threads, **options.params)
    except (TypeError, ValueError) as e:
        raise ChatError(f"TopV parameters: {e}") from None
    rc = libs.topv_set_params(mctx, p)
    if rc != 0:
        raise ChatError(f"TopV parameters rejected by llama.cpp: {status_string(rc)}")


def image_report(libs: llama_libs.LlamaLibs, mctx: Any, n_tokens: int, encode_ms: float) -> ImageReport:
    """What the TopV stage did with the image chunk just decoded; every chunk it did not prune gets a reason."""
    st = libs.topv_stats(mctx)
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
                       kept_whole=st.result == llama_libs.MTMD_TOPV_KEEP_ALL)


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
    return new_n_past.value, image_report(libs, mctx, n_tokens, encode_ms)


# ---------------------------------------------------------------------------------------------
# the session


class VisionChat:
    """A conversation with a llama.cpp vision-language model, image tokens pruned by TopV.

    >>> with VisionChat("model.gguf", "mmproj.gguf") as chat:
    ...     answer, report = chat.ask("What is in the picture?", images=["photo.jpg"])
    """

    def __init__(self, model_path: str | Path, mmproj_path: str | Path | None = None, *,
                 topv: TopVOptions | None = None, n_ctx: int | None = None, threads: int | None = None,
                 seed: int = 0, temp: float = 0.0, max_tokens: int = 256, verbose: bool = False,
                 progress: Callable[[str], None] | None = None, n_gpu_layers: int | None = None,
                 mmproj_offload: bool = True) -> None:
        self.model_path = check_gguf(model_path, "model")
        self.mmproj_path = check_gguf(mmproj_path, "mmproj") if mmproj_path else find_mmproj(self.model_path)
        self.topv = topv or TopVOptions()
        self.topv.validate()
        if n_ctx is not None and n_ctx < 16:
            raise ChatError(f"--ctx must be at least 16, got {n_ctx}")
        if temp < 0:
            raise ChatError(f"--temp must be >= 0, got {temp}")
        if max_tokens < 1:
            raise ChatError(f"--max-tokens must be at least 1, got {max_tokens}")
        self.requested_ctx = n_ctx
        self.threads = check_threads(threads)
        # the build's GPU, as llama.cpp: n_gpu_layers None = every layer (a CPU build ignores both)
        if n_gpu_layers is not None and (isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int)
                                         or n_gpu_layers < 0):
            raise ChatError(f"--ngl must be a whole number >= 0 (layers on the GPU), got {n_gpu_layers!r}")
        self.n_gpu_layers = n_gpu_layers
        self.mmproj_offload = bool(mmproj_offload)
        self.seed = seed
        self.temp = temp
        self.max_tokens = max_tokens
        self.progress = progress or (lambda msg: None)
        self._stack = contextlib.ExitStack()
        self.ctx = None  # created at the first turn, sized for what it needs (and grown when an image needs more)
        self._ctx_parts: list[tuple[Callable[[Any], None], Any]] = []
        try:
            self._lib = llama_libs.load()
        except llama_libs.LlamaBuildMissing as e:
            raise ChatError(str(e)) from None
        self._lib.log.verbose = verbose
        self.log = self._lib.log
        self.llama = self._lib.llama_cpp
        self.mtmd = self._lib.mtmd_cpp
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        self.messages: list[dict[str, Any]] = []
        self._images: list[bytes] = []  # the conversation's images, in order (to re-evaluate from scratch)
        self._evaluated_text = ""     # the prompt text whose tokens are in the KV cache
        self.n_past = 0               # next position (unpruned numbering)
        self.kv_cells = 0             # cells in use (pruned numbering)

    # -- set-up --------------------------------------------------------------------------------

    def _load(self) -> None:
        L, M = self.llama, self.mtmd
        self.progress(f"loading {self.model_path.name} and {self.mmproj_path.name}...")
        mparams = L.llama_model_default_params()
        if self.n_gpu_layers is not None:
            mparams.n_gpu_layers = self.n_gpu_layers
        with self.log.capture() as log:
            self.model = L.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self.model:
            why = explain_llama_error(log.errors(), path=str(self.model_path), model=self.model_path.name,
                                      mmproj=self.mmproj_path.name, what="the model")
            raise ChatError(f"could not load the model {self.model_path}: {why}")
        self._stack.callback(L.llama_model_free, self.model)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_layer = L.llama_model_n_layer(self.model)
        # the stage probes the input and the post-attention norm of layer Li; the last layer's norm sees only
        # the output rows, so Li runs 0..n_layer-2 (checked here, where the depth is first known)
        if self.topv.enabled and self.topv.layer > self.n_layer - 2:
            raise ChatError(f"--layer {self.topv.layer} is beyond what TopV can probe in this model: it has "
                            f"{self.n_layer} layers, so --layer must be 0..{max(0, self.n_layer - 2)}")

        cparams = M.mtmd_context_params_default()
        cparams.use_gpu = self.mmproj_offload
        cparams.print_timings = False
        cparams.n_threads = self.threads
        cparams.warmup = False
        with self.log.capture() as log:
            self.mctx = M.mtmd_init_from_file(str(self.mmproj_path).encode(), self.model, cparams)
        if not self.mctx:
            raise ChatError(f"could not load the mmproj {self.mmproj_path}: {self._mmproj_error(log.errors())}")
        self._stack.callback(M.mtmd_free, self.mctx)
        if not M.mtmd_support_vision(self.mctx):
            raise ChatError(f"{self.mmproj_path.name} has no vision encoder")
        # llama.cpp checks the widths only; the stage's layout table (one per projector type, in C) knows which
        # text models each projector pairs with (e.g. M-RoPE image positions for Qwen2-VL)
        reason = self._lib.topv_check_model(self.mctx, self.model)
        if reason is not None:
            raise ChatError(f"the mmproj {self.mmproj_path.name} does not match the model {self.model_path.name}: "
                            f"{reason}")
        self.marker = M.mtmd_default_marker().decode()
        self.template = self._load_template()
        self._apply_topv()
        self.progress("")

    def _mmproj_error(self, errors: list[str]) -> str:
        names = dict(path=str(self.mmproj_path), model=self.model_path.name, mmproj=self.mmproj_path.name,
                     what="the vision encoder")
        why = explain_llama_error(errors, **names)
        if why.startswith("llama.cpp said") and _gguf_architecture(self.mmproj_path) not in (None, "clip"):
            # a text model given as the mmproj: clip only says which key it missed
            arch = _gguf_architecture(self.mmproj_path)
            why = f"{self.mmproj_path} is a text model ({arch}), not an mmproj (a vision projector); {why}"
        return why

    def _apply_topv(self) -> None:
        configure_topv(self._lib, self.mctx, self.topv, self.threads)

    def set_topv(self, options: TopVOptions) -> None:
        """Prune later images with other options (the images already in the conversation stay as they are)."""
        options.validate()
        if options.enabled and options.layer > self.n_layer - 2:
            raise ChatError(f"--layer {options.layer}: this model has {self.n_layer} layers, TopV probes 0..{self.n_layer - 2}")
        self.topv = options
        self._apply_topv()

    @property
    def n_images(self) -> int:
        """Pictures in the conversation so far."""
        return len(self._images)

    def _load_template(self):
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.llama.llama_model_meta_val_str(self.model, b"tokenizer.chat_template", buf, len(buf))
        return compile_chat_template(buf.value.decode("utf-8", "replace") if n > 0 else LLAVA15_TEMPLATE)

    def _create_context(self, n_cells_needed: int, n_ubatch: int) -> None:
        """A context of --ctx (or what the prompt needs) whose batch holds the largest image in one ubatch."""
        L = self.llama
        self._free_context()
        n_ctx = self.requested_ctx or _round_up(n_cells_needed + self.max_tokens + 256, 256)
        n_ubatch = max(512, n_ubatch)  # the probe needs a whole image in one ubatch
        p = L.llama_context_default_params()
        # llama.cpp caps n_batch at the n_ctx asked for, then rounds n_ctx up to 256: ask for at least the batch
        # when the rounding gives that much anyway (--ctx 100 is a context of 256 whose batch holds an image)
        p.n_ctx = max(n_ctx, min(n_ubatch, _round_up(n_ctx, 256)))
        p.n_batch = n_ubatch
        p.n_ubatch = n_ubatch
        p.n_threads = self.threads
        p.n_threads_batch = self.threads
        p.no_perf = True
        with self.log.capture() as log:
            ctx = L.llama_init_from_model(self.model, p)
        if not ctx:
            why = explain_llama_error(log.errors(), what=f"a context of {n_ctx} tokens (use a smaller --ctx)")
            raise ChatError(f"could not create a context of {n_ctx} tokens: {why}")
        self.ctx = ctx
        self._ctx_parts.append((L.llama_free, ctx))
        self.n_ctx = L.llama_n_ctx(ctx)
        self.n_batch = L.llama_n_batch(ctx)  # llama.cpp caps n_batch (and so n_ubatch) at n_ctx
        self.n_ubatch = L.llama_n_ubatch(ctx)
        self.sampler = self._make_sampler()
        self._ctx_parts.append((L.llama_sampler_free, self.sampler))
        self._batch = L.llama_batch_init(1, 0, 1)
        self._ctx_parts.append((L.llama_batch_free, self._batch))

    def _free_context(self) -> None:
        while self._ctx_parts:
            free, obj = self._ctx_parts.pop()
            free(obj)
        self.ctx = None

    def _make_sampler(self):
        L = self.llama
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if self.temp == 0:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(40))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(0.95, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(0.05, 1))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(self.temp))
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(self.seed & 0xFFFFFFFF))
        return chain

    # -- conversation --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the conversation and its pictures (the KV cache is cleared; the model stays loaded)."""
        self.messages = []
        self._images = []
        self._clear_cache()
        if self.ctx:
            self.llama.llama_sampler_reset(self.sampler)

    def add_user_message(self, text: str, images: list[str | Path] | tuple = ()) -> tuple[list[ImageReport], int, float]:
        """Evaluate a user message (images are encoded, pruned and decoded): (image reports, text tokens, ms).

        After it, the model is ready to answer: `logits()` are the next-token logits, `generate()` samples.
        If it fails (ChatError), the conversation is as it was before the call."""
        image_bytes = [read_image(p) for p in images]
        content: list[dict[str, str]] = [{"type": "text", "text": self.marker} for _ in image_bytes]
        content.append({"type": "text", "text": text})
        messages = self.messages + [{"role": "user", "content": content}]
        prompt = self._render(messages)
        incremental = bool(self._evaluated_text) and prompt.startswith(self._evaluated_text) and self.ctx is not None
        if incremental:
            chunks = self._tokenize(prompt[len(self._evaluated_text):], image_bytes)
        else:  # first turn, or the template rewrote earlier turns: evaluate everything
            self._clear_cache()
            chunks = self._tokenize(prompt, self._images + image_bytes)
        try:
            plan = self._plan(chunks)
            if self.ctx is None:
                self._create_context(self._cells(plan)[1], self._max_image(plan))
            elif not self._context_fits(plan) and (self.requested_ctx is None or self._ubatch_short(plan)):
                # grow the context (its batch must hold a new, larger image whole) and evaluate the whole
                # conversation again in it: pruning never turns off for want of a batch
                needed = (self.kv_cells if incremental else 0) + self._cells(plan)[1]
                max_image = max(self._max_image(plan), self.n_ubatch)
                self.mtmd.mtmd_input_chunks_free(chunks)
                chunks = None
                self._create_context(needed, max_image)
                self._clear_cache()
                chunks = self._tokenize(prompt, self._images + image_bytes)
                plan = self._plan(chunks)
            self._check_room(plan)
            result = self._prefill(plan)
        finally:
            if chunks is not None:
                self.mtmd.mtmd_input_chunks_free(chunks)
        self.messages = messages
        self._images += image_bytes
        self._evaluated_text = prompt
        return result

    def ask(self, text: str, images: list[str | Path] | tuple = (), on_token: Callable[[str], None] | None = None,
            stop: Callable[[], bool] | None = None) -> tuple[str, TurnReport]:
        """Add a user message (text and images), generate the answer; returns it with a report.

        `stop()` is asked before each answer token: True ends the answer there (it stays in the conversation,
        cut short, and the report says `stopped`)."""
        t_start = time.perf_counter()
        report_images, n_text, prefill_ms = self.add_user_message(text, images)
        answer, n_gen, ttft_ms, gen_ms, stopped = self._generate(on_token, t_start, stop)
        self.messages.append({"role": "assistant", "content": answer})
        self._evaluated_text = self._text_through_answer(answer)
        if not self._evaluated_text:
            self._clear_cache()
        t = self.topv
        report = TurnReport(images=report_images, text_tokens=n_text, prefill_ms=prefill_ms, ttft_ms=ttft_ms,
                            generated_tokens=n_gen, generate_ms=gen_ms, kv_cells=self.kv_cells, n_ctx=self.n_ctx,
                            keep=t.keep_label(), keep_ratio=None if (t.is_count or not t.enabled) else float(t.keep),
                            keep_count=int(t.keep) if (t.is_count and t.enabled) else None, method=t.method,
                            stopped=stopped)
        return answer, report

    def logits(self) -> np.ndarray:
        """The next-token logits after the last evaluated token (a copy)."""
        n_vocab = self.llama.llama_vocab_n_tokens(self.vocab)
        ptr = self.llama.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, (n_vocab,)).copy()

    def last_selection(self) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
        """(kept indices, TopV scores, grid (W, H)) of the last image, None if it was not pruned."""
        kept = self._lib.topv_kept(self.mctx)
        if kept is None:
            return None
        st = self._lib.topv_stats(self.mctx)
        return kept, self._lib.topv_scores(self.mctx), (st.grid_w, st.grid_h)

    def devices(self) -> dict[str, Any]:
        """Where the model runs: the llama.cpp build's backend, its GPU (None when nothing runs on one), the text
        model's layers on it out of all (llama.cpp counts the output layer as one) and whether the encoder does."""
        gpus = self._lib.gpu_devices()
        n = self.n_layer + 1
        gpu_layers = 0 if not gpus else (n if self.n_gpu_layers is None else min(self.n_gpu_layers, n))
        on_gpu = bool(gpus) and (gpu_layers > 0 or self.mmproj_offload)
        return {"build": self._lib.backend, "gpu": gpus[0] if on_gpu else None, "gpu_layers": gpu_layers,
                "layers": n, "encoder_on_gpu": bool(gpus) and self.mmproj_offload}

    def kv_cell_positions(self) -> np.ndarray:
        """The positions of the KV cells sequence 0 holds, read back from llama.cpp (ascending)."""
        return self._lib.kv_cell_positions(self.ctx, 0)

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        L = self.llama

        def piece(tok: int) -> str:
            return _token_text(L, self.vocab, tok) if tok >= 0 else ""

        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=piece(L.llama_vocab_bos(self.vocab)),
                                    eos_token=piece(L.llama_vocab_eos(self.vocab)))

    def _clear_cache(self) -> None:
        self._evaluated_text = ""
        self.n_past = 0
        self.kv_cells = 0
        if self.ctx:
            self.llama.llama_memory_clear(self.llama.llama_get_memory(self.ctx), True)

    def _tokenize(self, text: str, images: list[bytes]):
        M = self.mtmd
        bitmaps = []
        try:
            for data in images:
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                bm = M.mtmd_helper_bitmap_init_from_buf(self.mctx, buf, len(data), False)
                if not bm:
                    raise ChatError("llama.cpp could not decode an image (unsupported format?)")
                bitmaps.append(bm)
            inp = M.mtmd_input_text()
            raw = text.encode()
            inp.text = raw
            inp.text_len = len(raw)
            inp.add_special = self.n_past == 0
            inp.parse_special = True
            chunks = M.mtmd_input_chunks_init()
            arr = (M.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            with self.log.capture() as log:
                rc = M.mtmd_tokenize(self.mctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
            if rc != 0:
                M.mtmd_input_chunks_free(chunks)
                if rc == 1:
                    raise ChatError(f"the prompt has {len(bitmaps)} picture(s) but the chat template placed a "
                                    f"different number of image markers")
                raise ChatError(f"could not tokenise the prompt with its images (code {rc}): "
                                f"{explain_llama_error(log.errors())}")
            return chunks
        finally:
            for bm in bitmaps:
                M.mtmd_bitmap_free(bm)

    # -- prefill -------------------------------------------------------------------------------

    def _plan(self, chunks) -> list[tuple[Any, bool, int, int]]:
        """(chunk, is_image, n_tokens, cells it will take) per chunk."""
        M = self.mtmd
        plan = []
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            n = M.mtmd_input_chunk_get_n_tokens(chunk)
            is_image = M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE
            # an image chunk's kept tokens are the stage's to say (a tiled picture's chunks share one budget)
            kept = self._lib.topv_chunk_n_kept(self.mctx, self.model, chunk) if is_image else n
            plan.append((chunk, is_image, n, kept))
        if plan and plan[-1][1]:
            raise ChatError("the chat template ends the prompt with an image; the model needs text after it")
        return plan

    @staticmethod
    def _cells(plan) -> tuple[int, int]:
        """(cells the chunks take, peak cells while they are evaluated).

        The probe decodes a whole image before it is pruned: for a moment the cache holds the cells before
        the image plus all of its tokens."""
        needed = sum(p[3] for p in plan)
        peak, cells = needed, 0
        for _, is_image, n, kept in plan:
            if is_image and kept < n:
                peak = max(peak, cells + n)
            cells += kept
        return needed, peak

    @staticmethod
    def _max_image(plan) -> int:
        return max((p[2] for p in plan if p[1]), default=0)

    def _ubatch_short(self, plan) -> bool:
        """True when an image the stage would prune is larger than the context's ubatch."""
        return self.ctx is not None and any(is_image and kept < n and n > self.n_ubatch for _, is_image, n, kept in plan)

    def _context_fits(self, plan) -> bool:
        return (self.ctx is not None and not self._ubatch_short(plan)
                and self.kv_cells + self._cells(plan)[1] + 1 <= self.n_ctx)

    def _check_room(self, plan) -> None:
        short = [n for _, is_image, n, kept in plan if is_image and kept < n and n > self.n_ubatch]
        if short:
            raise ChatError(f"an image has {max(short)} tokens but the batch of a context of {self.n_ctx} holds "
                            f"{self.n_ubatch}; the probe decodes an image whole, so start with a larger --ctx "
                            f"(or none: it is sized automatically)")
        peak = self._cells(plan)[1]
        if self.kv_cells + peak + 1 > self.n_ctx:
            raise ChatError(f"the prompt needs {peak} more KV cells (images are probed whole before "
                            f"pruning) but the context has {self.n_ctx - self.kv_cells} free of {self.n_ctx}; "
                            "start with a larger --ctx, a smaller --keep, or /reset")

    def _prefill(self, plan) -> tuple[list[ImageReport], int, float]:
        M = self.mtmd
        reports: list[ImageReport] = []
        n_text = 0
        t0 = time.perf_counter()
        before = (self.n_past, self.kv_cells)
        try:
            for idx, (chunk, is_image, n, _) in enumerate(plan):
                with self.log.capture() as log:
                    if is_image:
                        self.progress(f"encoding and prefilling an image ({n} tokens"
                                      f"{', pruning' if self.topv.enabled else ''})...")
                        self.n_past, report = decode_image(self._lib, self.mctx, self.ctx, chunk, self.n_past, 0,
                                                           self.n_batch, log)
                        self.progress("")
                        reports.append(report)
                        self.kv_cells += report.n_kept
                        continue
                    new_n_past = self.llama.llama_pos(self.n_past)  # the helper adds the chunk's tokens to it
                    rc = M.mtmd_helper_eval_chunk_single(self.mctx, self.ctx, chunk, self.n_past, 0, self.n_batch,
                                                         idx == len(plan) - 1, ctypes.byref(new_n_past))
                if rc != 0:
                    raise ChatError(f"llama.cpp could not evaluate the prompt (code {rc}): "
                                    f"{explain_llama_error(log.errors())}")
                self.n_past = new_n_past.value
                n_text += n
                self.kv_cells += n
        except BaseException:
            # leave the cache as it was before this message: a failed turn must not poison the next one
            self.progress("")
            self.llama.llama_memory_seq_rm(self.llama.llama_get_memory(self.ctx), 0, before[0], -1)
            self.n_past, self.kv_cells = before
            if before == (0, 0):
                self._evaluated_text = ""
            raise
        prefill_ms = (time.perf_counter() - t0) * 1e3
        return reports, n_text, prefill_ms

    # -- the answer ----------------------------------------------------------------------------

    def _generate(self, on_token: Callable[[str], None] | None, t_start: float,
                  stop: Callable[[], bool] | None) -> tuple[str, int, float, float, bool]:
        L = self.llama
        out = bytearray()
        emitted = 0
        ttft = math.nan
        t0 = time.perf_counter()
        n_gen = 0
        stopped = False
        while n_gen < self.max_tokens and self.kv_cells < self.n_ctx:
            if stop is not None and stop():
                stopped = True
                break
            tok = L.llama_sampler_sample(self.sampler, self.ctx, -1)
            if n_gen == 0:
                ttft = (time.perf_counter() - t_start) * 1e3
            if L.llama_vocab_is_eog(self.vocab, tok):
                break
            n_gen += 1
            out += _token_bytes(L, self.vocab, tok)
            # SentencePiece vocabularies start a word with a space: the answer itself starts at its first letter
            text = out.decode("utf-8", "ignore").lstrip()
            if on_token and len(text) > emitted:
                on_token(text[emitted:])
                emitted = len(text)
            self._decode_token(tok)
        return out.decode("utf-8", "replace").lstrip(), n_gen, ttft, (time.perf_counter() - t0) * 1e3, stopped

    def _decode_token(self, tok: int) -> None:
        # an explicit position: after a pruned image, positions run ahead of the cell count
        b = self._batch
        b.n_tokens = 1
        b.token[0] = tok
        b.pos[0] = self.n_past
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = 1
        rc = self.llama.llama_decode(self.ctx, b)
        if rc != 0:
            raise ChatError(f"llama.cpp failed to decode the answer (code {rc})")
        self.n_past += 1
        self.kv_cells += 1

    def _text_through_answer(self, answer: str) -> str:
        """The conversation's text whose tokens are now in the cache: the prompt and the answer.

        Rendered by the template (so the next turn's prompt starts with it); the end-of-turn text after the
        answer was sampled, not decoded, so it stays in the next turn's delta. "" when the template does not
        reproduce the answer verbatim (then the next turn starts over).
        """
        full = self._render(self.messages, add_generation_prompt=False)
        cut = full.rfind(answer) if answer else len(self._evaluated_text)
        return full[: cut + len(answer)] if cut >= 0 else ""

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        self._free_context()
        self._stack.close()

    def __enter__(self) -> "VisionChat":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _gguf_architecture(path: Path) -> str | None:
    """general.architecture of a GGUF file (None if absent or unreadable)."""
    import gguf

    try:
        field = gguf.GGUFReader(str(path)).get_field("general.architecture")
    except Exception:  # a damaged file: llama.cpp's own message says more
        return None
    return field.contents() if field is not None else None


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def _token_bytes(L, vocab, tok: int) -> bytes:
    buf = ctypes.create_string_buffer(256)
    n = L.llama_token_to_piece(vocab, tok, buf, len(buf), 0, False)
    return buf.raw[: max(n, 0)]


def _token_text(L, vocab, tok: int) -> str:
    if tok < 0:
        return ""
    buf = ctypes.create_string_buffer(256)
    n = L.llama_token_to_piece(vocab, tok, buf, len(buf), 0, True)
    return buf.raw[: max(n, 0)].decode("utf-8", "replace")
