"""A multimodal conversation on the patched llama.cpp, with the image tokens pruned by its TopV stage.

The pruning happens inside llama.cpp (the stage in `mtmd_helper_decode_image_chunk`); `VisionChat` drives it
through llama-cpp-python's low-level bindings: it renders the model's own chat template, tokenises text and
images with mtmd, sizes the context from what the stage will keep, evaluates the chunks (the stage encodes,
probes, prunes and decodes the kept tokens at their original positions) and samples the answer.

Why not `llama_cpp.Llama`: it indexes its token history by position and so needs `n_ctx` >= every position,
pruned or not. Driving llama.cpp directly, the context holds only the cells actually used (text + kept image
tokens), so the KV cache is allocated for the pruned prompt, not the original one.
"""

from __future__ import annotations

import ctypes
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ChatError, ContextWarning, LlamaBuildMissing, OptionError, explain_llama_error
from ..llama import libs as llama_libs
from ..llama.stage import ImageReport, configure_topv, decode_image
from ..options import (DEFAULT_MIN_P, DEFAULT_TOP_K, DEFAULT_TOP_P, TopVOptions, check_flash_attn, check_min_p,
                       check_threads, check_top_k, check_top_p)
from .files import check_gguf, find_mmproj, is_video, read_media
from .model import ModelPair, check_rpc_servers
from .plan import ChunkPlan, PromptPlan
from .reports import TurnReport
from .sampling import make_sampler, token_bytes, token_text

MIN_CTX = 16


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


class VisionChat:
    """A conversation with a llama.cpp vision-language model, image tokens pruned by TopV.

    >>> with VisionChat("model.gguf", "mmproj.gguf") as chat:
    ...     answer, report = chat.ask("What is in the picture?", images=["photo.jpg"])
    """

    def __init__(self, model_path: str | Path, mmproj_path: str | Path | None = None, *,
                 topv: TopVOptions | None = None, n_ctx: int | None = None, threads: int | None = None,
                 seed: int = 0, temp: float = 0.0, max_tokens: int = 256, verbose: bool = False,
                 progress: Callable[[str], None] | None = None, n_gpu_layers: int | None = None,
                 mmproj_offload: bool = True, top_k: int = DEFAULT_TOP_K, top_p: float = DEFAULT_TOP_P,
                 min_p: float = DEFAULT_MIN_P, flash_attn: str = "auto", system_prompt: str | None = None,
                 chat_template: str | None = None, rpc_servers: list[str] | None = None) -> None:
        self.model_path = check_gguf(model_path, "model")
        self.mmproj_path = check_gguf(mmproj_path, "mmproj") if mmproj_path else find_mmproj(self.model_path)
        self.topv = topv or TopVOptions()
        self.topv.validate()
        if n_ctx is not None and n_ctx < MIN_CTX:
            raise OptionError("n_ctx", f"must be at least {MIN_CTX}, got {n_ctx}")
        if temp < 0:
            raise OptionError("temp", f"must be >= 0, got {temp}")
        if max_tokens < 1:
            raise OptionError("max_tokens", f"must be at least 1, got {max_tokens}")
        # the build's GPU, as llama.cpp: n_gpu_layers None = every layer (a CPU build ignores both)
        if n_gpu_layers is not None and (isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int)
                                         or n_gpu_layers < 0):
            raise OptionError("n_gpu_layers", f"must be a whole number >= 0 (layers on the GPU), got {n_gpu_layers!r}")
        self.rpc_servers = check_rpc_servers(rpc_servers)  # HOST:PORT of llama.cpp's rpc-server (--rpc)
        self.requested_ctx = n_ctx
        self.threads = check_threads(threads)
        self.n_gpu_layers = n_gpu_layers
        self.mmproj_offload = bool(mmproj_offload)
        self.seed, self.temp, self.max_tokens = seed, temp, max_tokens
        self.top_k, self.top_p, self.min_p = check_top_k(top_k), check_top_p(top_p), check_min_p(min_p)
        self.flash_attn = check_flash_attn(flash_attn)
        # a system message opens every conversation (after reset() too); the model's template places it
        self._opening: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
        self.progress = progress or (lambda msg: None)
        self.ctx = None  # created at the first turn, sized for what it needs (and grown when an image needs more)
        self._ctx_parts: list[tuple[Callable[[Any], None], Any]] = []
        self._pair: ModelPair | None = None
        try:
            self._lib = llama_libs.load()
        except LlamaBuildMissing as e:
            raise ChatError(str(e)) from None
        self._lib.log.verbose = verbose
        self.log = self._lib.log
        self.llama = self._lib.llama_cpp
        self.mtmd = self._lib.mtmd_cpp
        try:
            # registered before the model loads, so llama.cpp can put layers (n_gpu_layers) on the servers
            rpc_devices = [d for server in self.rpc_servers for d in self._lib.rpc_add_server(server)]
            self._pair = ModelPair(self._lib, self.model_path, self.mmproj_path, threads=self.threads,
                                   n_gpu_layers=n_gpu_layers, mmproj_offload=self.mmproj_offload,
                                   progress=self.progress, chat_template=chat_template, rpc_devices=rpc_devices)
            self.set_topv(self.topv)
        except BaseException:
            self.close()
            raise
        self.messages: list[dict[str, Any]] = list(self._opening)
        self._images: list[bytes] = []  # the conversation's images, in order (to re-evaluate from scratch)
        self._evaluated_text = ""     # the prompt text whose tokens are in the KV cache
        self.n_past = 0               # next position (unpruned numbering)
        self.kv_cells = 0             # cells in use (pruned numbering)

    # -- the loaded pair (see ModelPair) -------------------------------------------------------

    @property
    def model(self) -> Any:
        return self._pair.model if self._pair else None

    @property
    def mctx(self) -> Any:
        return self._pair.mctx if self._pair else None

    @property
    def vocab(self) -> Any:
        return self._pair.vocab

    @property
    def n_layer(self) -> int:
        return self._pair.n_layer

    @property
    def marker(self) -> str:
        return self._pair.marker

    @property
    def template(self) -> Any:
        return self._pair.template

    @property
    def n_ctx_train(self) -> int:
        """The context the model was trained for (GGUF metadata; 0 when the file does not say)."""
        return self.llama.llama_model_n_ctx_train(self.model)

    def set_topv(self, options: TopVOptions) -> None:
        """Prune later images with these options (the images already in the conversation stay as they are)."""
        options.validate(self.n_layer)
        configure_topv(self._lib, self.mctx, options, self.threads)
        self.topv = options

    @property
    def n_images(self) -> int:
        """Pictures in the conversation so far."""
        return len(self._images)

    # -- the context ---------------------------------------------------------------------------

    def _create_context(self, n_cells_needed: int, n_ubatch: int) -> None:
        """A context of n_ctx (or what the prompt needs) whose batch holds the largest image in one ubatch."""
        L = self.llama
        self._free_context()
        n_ctx = self.requested_ctx or _round_up(n_cells_needed + self.max_tokens + 256, 256)
        n_ubatch = max(512, n_ubatch)  # the probe needs a whole image in one ubatch
        p = L.llama_context_default_params()
        # llama.cpp caps n_batch at the n_ctx asked for, then rounds n_ctx up to 256: ask for at least the batch
        # when the rounding gives that much anyway (n_ctx 100 is a context of 256 whose batch holds an image)
        p.n_ctx = max(n_ctx, min(n_ubatch, _round_up(n_ctx, 256)))
        p.n_batch = p.n_ubatch = n_ubatch
        p.n_threads = p.n_threads_batch = self.threads
        p.flash_attn_type = self.flash_attn
        p.no_perf = True
        self._warn_beyond_training(p.n_ctx)
        with self.log.capture() as log:
            ctx = L.llama_init_from_model(self.model, p)
        if not ctx:
            why = explain_llama_error(log.errors(), what=f"a context of {n_ctx} tokens")
            if self.requested_ctx:
                raise OptionError("n_ctx", f"of {n_ctx} tokens does not fit: {why}; ask for a smaller one")
            raise ChatError(f"could not create a context of {n_ctx} tokens: {why}")
        self.ctx = ctx
        self._ctx_parts.append((L.llama_free, ctx))
        self.n_ctx = L.llama_n_ctx(ctx)
        self.n_batch = L.llama_n_batch(ctx)  # llama.cpp caps n_batch (and so n_ubatch) at n_ctx
        self.n_ubatch = L.llama_n_ubatch(ctx)
        self.sampler = make_sampler(L, self.temp, self.seed, self.top_k, self.top_p, self.min_p)
        self._ctx_parts.append((L.llama_sampler_free, self.sampler))
        self._batch = L.llama_batch_init(1, 0, 1)
        self._ctx_parts.append((L.llama_batch_free, self._batch))

    def _warn_beyond_training(self, n_ctx: int) -> None:
        """As llama.cpp ("possible training context overflow"), before the KV cache is allocated: positions past
        the trained context are out of the model's training, and the cache may be far larger than needed."""
        n_train = self.n_ctx_train
        if 0 < n_train < n_ctx:
            warnings.warn(ContextWarning("n_ctx", f"{n_ctx} is beyond the {n_train} tokens {self.model_path.name} was "
                                                  f"trained for (answers past that are out of its training); its KV "
                                                  f"cache takes about {self._kv_bytes(n_ctx) / 2**30:.1f} GiB"),
                          stacklevel=4)

    def _kv_bytes(self, n_ctx: int) -> int:
        """The f16 K and V caches of n_ctx cells (llama.cpp's default cache type)."""
        L = self.llama
        n_embd_kv = L.llama_model_n_embd(self.model) // max(1, L.llama_model_n_head(self.model)) \
            * L.llama_model_n_head_kv(self.model)
        return 2 * 2 * self.n_layer * n_embd_kv * n_ctx

    def _free_context(self) -> None:
        while self._ctx_parts:
            free, obj = self._ctx_parts.pop()
            free(obj)
        self.ctx = None

    def _clear_cache(self) -> None:
        self._evaluated_text = ""
        self.n_past = 0
        self.kv_cells = 0
        if self.ctx:
            self.llama.llama_memory_clear(self.llama.llama_get_memory(self.ctx), True)

    # -- conversation --------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the conversation and its pictures (the KV cache is cleared; the model stays loaded); the system
        prompt stays."""
        self.messages = list(self._opening)
        self._images = []
        self._clear_cache()
        if self.ctx:
            self.llama.llama_sampler_reset(self.sampler)

    def add_user_message(self, text: str, images: list[str | Path] | tuple = ()) -> tuple[list[ImageReport], int, float]:
        """Evaluate a user message (images are encoded, pruned and decoded): (image reports, text tokens, ms).

        After it, the model is ready to answer: `logits()` are the next-token logits, `generate()` samples.
        If it fails (ChatError), the conversation is as it was before the call."""
        image_bytes = [read_media(p) for p in images]
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
                self._create_context(plan.peak_cells, plan.largest_image)
            elif not self._context_fits(plan) and (self.requested_ctx is None or self._ubatch_short(plan)):
                # grow the context (its batch must hold a new, larger image whole) and evaluate the whole
                # conversation again in it: pruning never turns off for want of a batch
                needed = (self.kv_cells if incremental else 0) + plan.peak_cells
                largest = max(plan.largest_image, self.n_ubatch)
                self.mtmd.mtmd_input_chunks_free(chunks)
                chunks = None
                self._create_context(needed, largest)
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
                            layer=t.layer, overview_weight=t.overview_weight,
                            params=t.resolved_params() if t.enabled else {}, stopped=stopped)
        return answer, report

    def logits(self) -> np.ndarray:
        """The next-token logits after the last evaluated token (a copy)."""
        n_vocab = self.llama.llama_vocab_n_tokens(self.vocab)
        ptr = self.llama.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, (n_vocab,)).copy()

    def last_selection(self) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
        """(kept indices, scores, grid (W, H)) of the last image, None if it was not pruned."""
        kept = self._lib.topv_kept(self.mctx)
        if kept is None:
            return None
        st = self._lib.topv_stats(self.mctx)
        return kept, self._lib.topv_scores(self.mctx), (st.grid_w, st.grid_h)

    def devices(self) -> dict[str, Any]:
        """Where the model runs: the llama.cpp build's backend, its GPU (None when nothing runs on one), the text
        model's layers on it out of all (llama.cpp counts the output layer as one), whether the encoder does, and
        the RPC servers (HOST:PORT) that take layers ahead of the GPU."""
        gpus = self._lib.gpu_devices()
        n = self.n_layer + 1
        gpu_layers = 0 if not gpus else (n if self.n_gpu_layers is None else min(self.n_gpu_layers, n))
        on_gpu = bool(gpus) and (gpu_layers > 0 or self.mmproj_offload)
        return {"build": self._lib.backend, "gpu": gpus[0] if on_gpu else None, "gpu_layers": gpu_layers,
                "layers": n, "encoder_on_gpu": bool(gpus) and self.mmproj_offload, "rpc": list(self.rpc_servers)}

    def kv_cell_positions(self) -> np.ndarray:
        """The positions of the KV cells sequence 0 holds, read back from llama.cpp (ascending)."""
        return self._lib.kv_cell_positions(self.ctx, 0)

    # -- prompt -> chunks -> plan --------------------------------------------------------------

    def _render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        L = self.llama
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=token_text(L, self.vocab, L.llama_vocab_bos(self.vocab)),
                                    eos_token=token_text(L, self.vocab, L.llama_vocab_eos(self.vocab)))

    def _tokenize(self, text: str, images: list[bytes]) -> Any:
        M = self.mtmd
        bitmaps = []
        videos = []  # a video is a lazy bitmap whose frames its reader gives at mtmd_tokenize: freed after it
        try:
            for data in images:
                buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
                video = is_video(data)
                if video and not M.mtmd_helper_support_video(self.mctx):
                    raise ChatError("this llama.cpp build reads no video (built without MTMD_VIDEO)")
                with self.log.capture() as log:
                    got = M.mtmd_helper_bitmap_init_from_buf_wrapper(self.mctx, buf, len(data), False,
                                                                     M.mtmd_helper_init_opt_default())
                if got.video_ctx:
                    videos.append(got.video_ctx)
                if not got.bitmap:
                    raise ChatError(f"llama.cpp could not read {'a video' if video else 'an image'}: "
                                    f"{explain_llama_error(log.errors())}")
                bitmaps.append(got.bitmap)
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
            for video in videos:
                M.mtmd_helper_video_free(video)

    def _plan(self, chunks: Any) -> PromptPlan:
        M = self.mtmd
        plan = []
        for i in range(M.mtmd_input_chunks_size(chunks)):
            chunk = M.mtmd_input_chunks_get(chunks, i)
            n = M.mtmd_input_chunk_get_n_tokens(chunk)
            is_image = M.mtmd_input_chunk_get_type(chunk) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE
            cells = self._lib.topv_chunk_n_kept(self.mctx, self.model, chunk) if is_image else n
            plan.append(ChunkPlan(chunk, is_image, n, cells))
        if plan and plan[-1].is_image:
            raise ChatError("the chat template ends the prompt with an image; the model needs text after it")
        return PromptPlan(plan, probes=self.topv.probes)

    def _ubatch_short(self, plan: PromptPlan) -> bool:
        """True when an image the stage would prune is larger than the context's ubatch."""
        return self.ctx is not None and bool(plan.probed_images_over(self.n_ubatch))

    def _context_fits(self, plan: PromptPlan) -> bool:
        return (self.ctx is not None and not self._ubatch_short(plan)
                and self.kv_cells + plan.peak_cells + 1 <= self.n_ctx)

    def _check_room(self, plan: PromptPlan) -> None:
        # (only a context of a fixed size gets here short: an automatic one grows first)
        short = plan.probed_images_over(self.n_ubatch)
        # (only a fixed n_ctx gets here: an automatic one grows instead)
        if short:
            raise OptionError("n_ctx", f"{self.n_ctx} is too small: an image has {max(short)} tokens but its batch "
                                       f"holds {self.n_ubatch}; the probe decodes an image whole, so start with a "
                                       f"larger n_ctx (or none: it is sized automatically)")
        if self.kv_cells + plan.peak_cells + 1 > self.n_ctx:
            raise OptionError("n_ctx", f"{self.n_ctx} is too small: the prompt needs {plan.peak_cells} more KV cells "
                                       f"(images are probed whole before pruning) but {self.n_ctx - self.kv_cells} "
                                       "are free; start with a larger n_ctx, a smaller keep, or reset the conversation")

    # -- prefill through the stage -------------------------------------------------------------

    def _prefill(self, plan: PromptPlan) -> tuple[list[ImageReport], int, float]:
        M = self.mtmd
        reports: list[ImageReport] = []
        n_text = 0
        t0 = time.perf_counter()
        before = (self.n_past, self.kv_cells)
        try:
            for idx, c in enumerate(plan.chunks):
                with self.log.capture() as log:
                    if c.is_image:
                        self.progress(f"encoding and prefilling an image ({c.n_tokens} tokens"
                                      f"{', pruning' if self.topv.enabled else ''})...")
                        self.n_past, report = decode_image(self._lib, self.mctx, self.ctx, c.chunk, self.n_past, 0,
                                                           self.n_batch, log)
                        self.progress("")
                        reports.append(report)
                        self.kv_cells += report.n_kept
                        continue
                    new_n_past = self.llama.llama_pos(self.n_past)  # the helper adds the chunk's tokens to it
                    rc = M.mtmd_helper_eval_chunk_single(self.mctx, self.ctx, c.chunk, self.n_past, 0, self.n_batch,
                                                         idx == len(plan.chunks) - 1, ctypes.byref(new_n_past))
                if rc != 0:
                    raise ChatError(f"llama.cpp could not evaluate the prompt (code {rc}): "
                                    f"{explain_llama_error(log.errors())}")
                self.n_past = new_n_past.value
                n_text += c.n_tokens
                self.kv_cells += c.n_tokens
        except BaseException:
            # leave the cache as it was before this message: a failed turn must not poison the next one
            self.progress("")
            self.llama.llama_memory_seq_rm(self.llama.llama_get_memory(self.ctx), 0, before[0], -1)
            self.n_past, self.kv_cells = before
            if before == (0, 0):
                self._evaluated_text = ""
            raise
        return reports, n_text, (time.perf_counter() - t0) * 1e3

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
            out += token_bytes(L, self.vocab, tok)
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
        """Free the context, the model and the mmproj (idempotent; the chat cannot be used afterwards)."""
        self._free_context()
        if self._pair is not None:
            self._pair.close()
            self._pair = None

    def __enter__(self) -> "VisionChat":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
