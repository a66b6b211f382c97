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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import llama_libs
from .chat_templates import LLAVA15_TEMPLATE, compile_chat_template
from ._native import status_string
from .pruning import PARAM_NAMES, keep_count, make_params


class ChatError(Exception):
    """A problem the user can fix (bad file, bad option): reported in plain words, no traceback."""


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
        # prefer the one sharing the model's stem (mmproj-<stem>.gguf), as llama.cpp model repos name them
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
    """The file's bytes, after checking that Pillow can decode it as an image."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
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
    keep: float | int = 0.25
    layer: int = 2
    params: dict[str, float | int] = field(default_factory=dict)  # alpha, beta, ... (defaults from C)
    method: str = "topv"
    # diagnostic: kept tokens at consecutive positions, text right after them (ignored by M-RoPE models)
    renumber_positions: bool = False

    def kept_for(self, n_tokens: int) -> int:
        if not self.enabled:
            return n_tokens
        if isinstance(self.keep, int) and not isinstance(self.keep, bool):
            return min(self.keep, n_tokens)
        return keep_count(n_tokens, float(self.keep))

    def validate(self) -> None:
        k = self.keep
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise ChatError(f"--keep must be a ratio in (0, 1] or a token count, got {k!r}")
        if isinstance(k, float) and not (0.0 < k <= 1.0):
            raise ChatError(f"--keep ratio must be in (0, 1], got {k}")
        if isinstance(k, int) and k < 1:
            raise ChatError(f"--keep count must be at least 1, got {k}")
        if self.layer < 0:
            raise ChatError(f"--layer must be >= 0, got {self.layer}")
        unknown = set(self.params) - set(PARAM_NAMES)
        if unknown:
            raise ChatError(f"unknown TopV parameter(s): {', '.join(sorted(unknown))}")


@dataclass
class ImageReport:
    n_tokens: int         # image tokens the model produced for the image
    n_kept: int           # tokens decoded into the KV cache
    pruned: bool          # False when TopV was off or the stage fell back to unpruned
    encode_ms: float
    probe_ms: float
    pass_ms: float
    decode_ms: float      # decode of the kept tokens
    note: str = ""        # why the stage did not prune, if it did not


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

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["image_tokens"] = sum(i.n_tokens for i in self.images)
        d["kept_tokens"] = sum(i.n_kept for i in self.images)
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
    try:
        p.pass_params = make_params(options.method, threads=threads, **options.params)
    except (TypeError, ValueError) as e:
        raise ChatError(f"TopV parameters: {e}") from None
    rc = libs.topv_set_params(mctx, p)
    if rc != 0:
        raise ChatError(f"TopV parameters rejected by llama.cpp: {status_string(rc)}")


def image_report(libs: llama_libs.LlamaLibs, mctx: Any, n_tokens: int, encode_ms: float) -> ImageReport:
    """What the TopV stage did with the image just decoded."""
    st = libs.topv_stats(mctx)
    pruned = st.result == llama_libs.MTMD_TOPV_PRUNED
    expected = (llama_libs.MTMD_TOPV_PRUNED, llama_libs.MTMD_TOPV_DISABLED, llama_libs.MTMD_TOPV_KEEP_ALL)
    note = "" if st.result in expected else libs.topv_result_string(st.result)
    return ImageReport(n_tokens=n_tokens, n_kept=st.n_kept if pruned else n_tokens, pruned=pruned,
                       encode_ms=encode_ms, probe_ms=st.probe_ms, pass_ms=st.pass_ms, decode_ms=st.decode_ms, note=note)


# ---------------------------------------------------------------------------------------------
# the session


@dataclass
class _Pending:
    text: str
    images: list[bytes]


class VisionChat:
    """A conversation with a llama.cpp vision-language model, image tokens pruned by TopV.

    >>> with VisionChat("model.gguf", "mmproj.gguf") as chat:
    ...     answer, report = chat.ask("What is in the picture?", images=["photo.jpg"])
    """

    def __init__(self, model_path: str | Path, mmproj_path: str | Path | None = None, *,
                 topv: TopVOptions | None = None, n_ctx: int | None = None, threads: int | None = None,
                 seed: int = 0, temp: float = 0.0, max_tokens: int = 256, verbose: bool = False,
                 progress: Callable[[str], None] | None = None) -> None:
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
        self.threads = threads or llama_libs.default_threads()
        self.seed = seed
        self.temp = temp
        self.max_tokens = max_tokens
        self.progress = progress or (lambda msg: None)
        self._stack = contextlib.ExitStack()
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
        mparams = L.llama_model_default_params()
        with self.log.capture() as errors:
            self.model = L.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self.model:
            raise ChatError(f"could not load the model {self.model_path}: {errors.last() or 'llama.cpp refused it'}")
        self._stack.callback(L.llama_model_free, self.model)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_layer = L.llama_model_n_layer(self.model)
        if self.topv.enabled and self.topv.layer >= self.n_layer:
            raise ChatError(f"--layer {self.topv.layer} is beyond the model's depth ({self.n_layer} layers: 0..{self.n_layer - 1})")

        cparams = M.mtmd_context_params_default()
        cparams.use_gpu = True
        cparams.print_timings = False
        cparams.n_threads = self.threads
        cparams.warmup = False
        with self.log.capture() as errors:
            self.mctx = M.mtmd_init_from_file(str(self.mmproj_path).encode(), self.model, cparams)
        if not self.mctx:
            reason = errors.last() or "llama.cpp refused it"
            if "mismatch" in reason:
                raise ChatError(f"the mmproj {self.mmproj_path.name} does not match the model {self.model_path.name}: {reason}")
            raise ChatError(f"could not load the mmproj {self.mmproj_path}: {reason}")
        self._stack.callback(M.mtmd_free, self.mctx)
        if not M.mtmd_support_vision(self.mctx):
            raise ChatError(f"{self.mmproj_path.name} has no vision encoder")
        # llama.cpp checks the widths only; a Qwen-VL projector (M-RoPE image positions) on an ordinary-RoPE
        # model or the reverse loads, but places every image token wrongly
        model_mrope = L.llama_model_rope_type(self.model) in (8, 40)  # LLAMA_ROPE_TYPE_MROPE, _IMROPE
        projector = _projector_type(self.mmproj_path)
        if projector is not None and ("qwen" in projector and "vl" in projector) != model_mrope:
            raise ChatError(f"the mmproj {self.mmproj_path.name} ({projector} projector) does not match the model "
                            f"{self.model_path.name} ({'M-RoPE' if model_mrope else 'ordinary RoPE'} positions)")
        self.marker = M.mtmd_default_marker().decode()
        self.template = self._load_template()
        self.ctx = None  # created at the first turn, sized for what it needs
        self._apply_topv()

    def _apply_topv(self) -> None:
        configure_topv(self._lib, self.mctx, self.topv, self.threads)

    def set_topv(self, options: TopVOptions) -> None:
        """Prune later images with other options (the images already in the conversation stay as they are).

        The context keeps the size it got at the first turn; /reset-style use (evaluation loops) is the
        intended case."""
        options.validate()
        self.topv = options
        self._apply_topv()

    def _load_template(self):
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.llama.llama_model_meta_val_str(self.model, b"tokenizer.chat_template", buf, len(buf))
        return compile_chat_template(buf.value.decode("utf-8", "replace") if n > 0 else LLAVA15_TEMPLATE)

    def _create_context(self, n_cells_needed: int, n_ubatch: int) -> None:
        L = self.llama
        n_ctx = self.requested_ctx or _round_up(n_cells_needed + self.max_tokens + 256, 256)
        p = L.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = max(512, n_ubatch)
        p.n_ubatch = max(512, n_ubatch)  # the probe needs a whole image in one ubatch
        p.n_threads = self.threads
        p.n_threads_batch = self.threads
        p.no_perf = True
        with self.log.capture() as errors:
            self.ctx = L.llama_init_from_model(self.model, p)
        if not self.ctx:
            raise ChatError(f"could not create a context of {n_ctx} tokens: {errors.last() or 'out of memory?'}")
        self._stack.callback(L.llama_free, self.ctx)
        self.n_ctx = L.llama_n_ctx(self.ctx)
        self.n_batch = L.llama_n_batch(self.ctx)  # llama.cpp caps n_batch at n_ctx
        self.sampler = self._make_sampler()
        self._stack.callback(L.llama_sampler_free, self.sampler)
        self._batch = L.llama_batch_init(1, 0, 1)
        self._stack.callback(L.llama_batch_free, self._batch)

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
        """Forget the conversation (the KV cache is cleared; the model stays loaded)."""
        self.messages = []
        self._images = []
        self._clear_cache()
        if self.ctx:
            self.llama.llama_sampler_reset(self.sampler)

    def add_user_message(self, text: str, images: list[str | Path] | tuple = ()) -> tuple[list[ImageReport], int, float]:
        """Evaluate a user message (images are encoded, pruned and decoded): (image reports, text tokens, ms).

        After it, the model is ready to answer: `logits()` are the next-token logits, `generate()` samples."""
        image_bytes = [read_image(p) for p in images]
        content: list[dict[str, str]] = [{"type": "text", "text": self.marker} for _ in image_bytes]
        content.append({"type": "text", "text": text})
        messages = self.messages + [{"role": "user", "content": content}]
        prompt = self._render(messages)
        if self._evaluated_text and prompt.startswith(self._evaluated_text):
            delta, delta_images = prompt[len(self._evaluated_text):], image_bytes
        else:  # first turn, or the template rewrote earlier turns: evaluate everything
            self._clear_cache()
            delta, delta_images = prompt, self._images + image_bytes
        chunks = self._tokenize(delta, delta_images)
        try:
            result = self._prefill(chunks)
        finally:
            self.mtmd.mtmd_input_chunks_free(chunks)
        self.messages = messages
        self._images += image_bytes
        self._evaluated_text = prompt
        return result

    def ask(self, text: str, images: list[str | Path] | tuple = (),
            on_token: Callable[[str], None] | None = None) -> tuple[str, TurnReport]:
        """Add a user message (text and images), generate the answer; returns it with a report."""
        t_start = time.perf_counter()
        report_images, n_text, prefill_ms = self.add_user_message(text, images)
        answer, n_gen, ttft_ms, gen_ms = self._generate(on_token, t_start)
        self.messages.append({"role": "assistant", "content": answer})
        self._evaluated_text = self._text_through_answer(answer)
        if not self._evaluated_text:
            self._clear_cache()
        report = TurnReport(images=report_images, text_tokens=n_text, prefill_ms=prefill_ms, ttft_ms=ttft_ms,
                            generated_tokens=n_gen, generate_ms=gen_ms, kv_cells=self.kv_cells, n_ctx=self.n_ctx)
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
            with self.log.capture() as errors:
                rc = M.mtmd_tokenize(self.mctx, chunks, ctypes.byref(inp), arr, len(bitmaps))
            if rc != 0:
                M.mtmd_input_chunks_free(chunks)
                raise ChatError(f"could not tokenise the prompt with its images (code {rc}): {errors.last()}")
            return chunks
        finally:
            for bm in bitmaps:
                M.mtmd_bitmap_free(bm)

    def _prefill(self, chunks) -> tuple[list[ImageReport], int, float]:
        M = self.mtmd
        n_chunks = M.mtmd_input_chunks_size(chunks)
        plan = []  # (chunk, is_image, n_tokens, cells it will take)
        for i in range(n_chunks):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            n = M.mtmd_input_chunk_get_n_tokens(chunk)
            is_image = M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE
            plan.append((chunk, is_image, n, self.topv.kept_for(n) if is_image else n))
        needed = sum(p[3] for p in plan)
        # the probe decodes a whole image before it is pruned: for a moment the cache holds the cells
        # before the image plus all of its tokens
        peak, cells = needed, 0
        for _, is_image, n, kept in plan:
            if is_image and kept < n:
                peak = max(peak, cells + n)
            cells += kept
        max_image = max((p[2] for p in plan if p[1]), default=0)
        if self.ctx is None:
            self._create_context(max(needed, peak), max_image)
        if self.kv_cells + max(needed, peak) + 1 > self.n_ctx:
            raise ChatError(f"the prompt needs {max(needed, peak)} more KV cells (images are probed whole before "
                            f"pruning) but the context has {self.n_ctx - self.kv_cells} free of {self.n_ctx}; "
                            "start with a larger --ctx, a smaller --keep, or /reset")
        reports: list[ImageReport] = []
        n_text = 0
        t0 = time.perf_counter()
        if plan and plan[-1][1]:
            raise ChatError("the chat template ends the prompt with an image; the model needs text after it")
        for idx, (chunk, is_image, n, _) in enumerate(plan):
            new_n_past = self.llama.llama_pos(self.n_past)  # the helper adds the chunk's tokens to it
            with self.log.capture() as errors:
                if is_image:
                    reports.append(self._eval_image(chunk, n, errors))
                    self.kv_cells += reports[-1].n_kept
                    continue
                rc = M.mtmd_helper_eval_chunk_single(self.mctx, self.ctx, chunk, self.n_past, 0, self.n_batch,
                                                     idx == len(plan) - 1, ctypes.byref(new_n_past))
            if rc != 0:
                raise ChatError(f"llama.cpp could not evaluate the prompt (code {rc}): {errors.last()}")
            self.n_past = new_n_past.value
            n_text += n
            self.kv_cells += n
        prefill_ms = (time.perf_counter() - t0) * 1e3
        return reports, n_text, prefill_ms

    def _eval_image(self, chunk, n_tokens: int, errors) -> ImageReport:
        """Encode one image chunk, then decode it through the patched helper (the TopV stage)."""
        M = self.mtmd
        self.progress(f"encoding an image ({n_tokens} tokens)...")
        t0 = time.perf_counter()
        rc = M.mtmd_encode_chunk(self.mctx, chunk)
        if rc != 0:
            raise ChatError(f"could not encode the image (code {rc}): {errors.last()}")
        encode_ms = (time.perf_counter() - t0) * 1e3
        self.progress(f"prefilling the image ({n_tokens} tokens{', pruning' if self.topv.enabled else ''})...")
        new_n_past = self.llama.llama_pos(0)
        rc = M.mtmd_helper_decode_image_chunk(self.mctx, self.ctx, chunk, M.mtmd_get_output_embd(self.mctx),
                                              self.n_past, 0, self.n_batch, ctypes.byref(new_n_past),
                                              M.mtmd_helper_post_decode_callback(), None)
        self.progress("")
        if rc != 0:
            raise ChatError(f"llama.cpp could not decode the image (code {rc}): {errors.last()}")
        self.n_past = new_n_past.value
        return image_report(self._lib, self.mctx, n_tokens, encode_ms)

    def _generate(self, on_token: Callable[[str], None] | None, t_start: float) -> tuple[str, int, float, float]:
        L = self.llama
        out = bytearray()
        emitted = 0
        ttft = math.nan
        t0 = time.perf_counter()
        n_gen = 0
        while n_gen < self.max_tokens and self.kv_cells < self.n_ctx:
            tok = L.llama_sampler_sample(self.sampler, self.ctx, -1)
            if n_gen == 0:
                ttft = (time.perf_counter() - t_start) * 1e3
            if L.llama_vocab_is_eog(self.vocab, tok):
                break
            n_gen += 1
            out += _token_bytes(L, self.vocab, tok)
            text = out.decode("utf-8", "ignore")
            if on_token and len(text) > emitted:
                on_token(text[emitted:])
                emitted = len(text)
            self._decode_token(tok)
        return out.decode("utf-8", "replace"), n_gen, ttft, (time.perf_counter() - t0) * 1e3

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
        self._stack.close()

    def __enter__(self) -> "VisionChat":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _projector_type(mmproj: Path) -> str | None:
    """clip.projector_type of an mmproj file (None if absent)."""
    import gguf

    field = gguf.GGUFReader(str(mmproj)).get_field("clip.projector_type")
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
