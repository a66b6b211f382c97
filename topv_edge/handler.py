"""`TopVChatHandler`: llama-cpp-python's multimodal chat handler with TopV pruning of image tokens.

    import topv_edge                      # first: it points llama_cpp at the patched llama.cpp build
    from llama_cpp import Llama

    handler = topv_edge.TopVChatHandler("mmproj.gguf", keep=0.25)
    llm = Llama("model.gguf", chat_handler=handler, n_ctx=4096, n_batch=1024, n_ubatch=1024)
    llm.create_chat_completion(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "file:///path/photo.jpg"}},
        {"type": "text", "text": "What is in the picture?"}]}])

It is llama-cpp-python's MTMDChatHandler (the model's own chat template, OpenAI-style `image_url` parts
as file paths, file:// URLs, http(s) URLs or data URIs); the patched `mtmd_helper_eval_chunk_single` it
calls prunes each image. Two things a user must know: the probe needs a whole image in one ubatch
(`n_ubatch` >= image tokens, else the image is decoded unpruned with a warning), and llama_cpp.Llama
numbers its tokens by position, so `n_ctx` must hold the unpruned prompt: the KV cells in use shrink
(and the prefill time), not the allocation. `python -m topv_edge.chat` has no such limit.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .errors import ChatError, explain_llama_error
from .llama import libs as llama_libs
from .llama.stage import ImageReport, configure_topv, decode_image
from .options import DEFAULT_KEEP, DEFAULT_LAYER, DEFAULT_OVERVIEW_WEIGHT, TopVOptions, check_threads

_libs = llama_libs.load()

from llama_cpp.llama_chat_format import MTMDChatHandler  # noqa: E402  (after load(): it imports llama_cpp)


class TopVFallbackWarning(RuntimeWarning):
    """An image was decoded unpruned although pruning is on (the message says why)."""


class _TimedImages:
    """llama_cpp.mtmd_cpp, except that image chunks go through `topv_edge.llama.stage.decode_image` (timed, reported).

    MTMDChatHandler evaluates image chunks with mtmd_helper_eval_chunk_single; this does the same two
    steps (encode, then the patched decode), times the encode and keeps each image's report."""

    def __init__(self, handler: "TopVChatHandler", module: Any) -> None:
        self._handler = handler
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def mtmd_helper_eval_chunk_single(self, mctx, lctx, chunk, n_past, seq_id, n_batch, logits_last, new_n_past):
        M = self._module
        if M.mtmd_input_chunk_get_type(chunk) != M.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            return M.mtmd_helper_eval_chunk_single(mctx, lctx, chunk, n_past, seq_id, n_batch, logits_last, new_n_past)
        pos = n_past.value if hasattr(n_past, "value") else int(n_past)
        sid = seq_id.value if hasattr(seq_id, "value") else int(seq_id)
        with _libs.log.capture() as log:
            try:
                next_pos, report = decode_image(_libs, mctx, lctx, chunk, pos, sid, int(n_batch), log)
            except ChatError as e:
                if _libs.log.verbose:
                    print(f"topv: {e}")
                return -1
        new_n_past._obj.value = next_pos
        self._handler._note(report)
        return 0


class TopVChatHandler(MTMDChatHandler):
    """MTMDChatHandler whose image decoding prunes with TopV (same parameters as the chat command).

    An image the stage does not prune although pruning is on (e.g. `n_ubatch` smaller than the image)
    is decoded unpruned with a `TopVFallbackWarning` saying why; `last_image_reports()` has every image
    of the last request."""

    def __init__(self, clip_model_path: str | Path, *, keep: float | int = DEFAULT_KEEP, layer: int = DEFAULT_LAYER,
                 method: str | None = None, no_prune: bool = False, threads: int | None = None, verbose: bool = False,
                 use_gpu: bool = True, overview_weight: float = DEFAULT_OVERVIEW_WEIGHT,
                 **topv_params: float | int) -> None:
        super().__init__(str(clip_model_path), verbose=verbose, use_gpu=use_gpu)
        self.topv = TopVOptions(enabled=not no_prune, keep=keep, layer=layer, method=method or TopVOptions().method,
                                params=dict(topv_params), overview_weight=overview_weight)
        try:
            self.topv.validate()
            self.threads = None if threads is None else check_threads(threads)
        except ChatError as e:
            raise ValueError(str(e)) from None
        self._reports: list[ImageReport] = []
        self._mtmd_cpp = _TimedImages(self, self._mtmd_cpp)

    def _init_mtmd_context(self, llama_model: Any) -> None:
        fresh = self.mtmd_ctx is None
        with _libs.log.capture() as log:
            try:
                super()._init_mtmd_context(llama_model)
            except ValueError as e:  # "Failed to load mtmd context": say why, from llama.cpp's error lines
                why = explain_llama_error(log.errors(), path=str(self.clip_model_path),
                                          mmproj=Path(self.clip_model_path).name,
                                          model=Path(getattr(llama_model, "model_path", "the model")).name,
                                          what="the vision encoder")
                raise ValueError(f"{e}: {why}") from None
        if fresh:
            reason = _libs.topv_check_model(self.mtmd_ctx, llama_model.model)
            if reason is not None:
                raise ValueError(f"the mmproj {Path(self.clip_model_path).name} does not match the model: {reason}")
            try:
                self.topv.validate(_libs.llama_cpp.llama_model_n_layer(llama_model.model))
                configure_topv(_libs, self.mtmd_ctx, self.topv, self.threads or llama_model.n_threads)
            except ChatError as e:
                raise ValueError(str(e)) from None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._reports = []
        return super().__call__(*args, **kwargs)

    def _note(self, report: ImageReport) -> None:
        self._reports.append(report)
        result = _libs.topv_stats(self.mtmd_ctx).result
        if self.topv.enabled and not report.pruned and result != llama_libs.MTMD_TOPV_KEEP_ALL:  # keep-all was asked for
            hint = (f"; give Llama(n_batch=..., n_ubatch=...) of at least {report.n_tokens}"
                    if result == llama_libs.MTMD_TOPV_UBATCH_TOO_SMALL else "")
            warnings.warn(f"image of {report.n_tokens} tokens decoded unpruned: {report.note}{hint}",
                          TopVFallbackWarning, stacklevel=2)

    def last_image_reports(self) -> list[ImageReport]:
        """What the stage did with each image of the last request, in order."""
        return list(self._reports)

    def last_image_report(self) -> ImageReport | None:
        """What the stage did with the last image of the last request (None before any)."""
        return self._reports[-1] if self._reports else None

    def load_image(self, image_url: str) -> bytes:
        # plain file paths too, as the README promises (llama-cpp-python takes URLs and data URIs)
        if "://" not in image_url and not image_url.startswith("data:"):
            return Path(image_url).expanduser().read_bytes()
        return super().load_image(image_url)
