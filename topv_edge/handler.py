"""`TopVChatHandler`: llama-cpp-python's multimodal chat handler with TopV pruning of image tokens.

    import topv_edge                      # first: it points llama_cpp at the patched llama.cpp build
    from llama_cpp import Llama

    handler = topv_edge.TopVChatHandler("mmproj.gguf", keep=0.25, layer=2)
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

from pathlib import Path
from typing import Any

from . import llama_libs
from .runtime import ImageReport, TopVOptions, configure_topv, image_report

_libs = llama_libs.load()

from llama_cpp.llama_chat_format import MTMDChatHandler  # noqa: E402  (after load(): it imports llama_cpp)


class TopVChatHandler(MTMDChatHandler):
    """MTMDChatHandler whose image decoding prunes with TopV (same parameters as the chat command)."""

    def __init__(self, clip_model_path: str | Path, *, keep: float | int = 0.25, layer: int = 2,
                 no_prune: bool = False, threads: int | None = None, verbose: bool = False, use_gpu: bool = True,
                 **topv_params: float | int) -> None:
        super().__init__(str(clip_model_path), verbose=verbose, use_gpu=use_gpu)
        self.topv = TopVOptions(enabled=not no_prune, keep=keep, layer=layer, params=dict(topv_params))
        self.topv.validate()
        self.threads = threads

    def _init_mtmd_context(self, llama_model: Any) -> None:
        fresh = self.mtmd_ctx is None
        super()._init_mtmd_context(llama_model)
        if fresh:
            configure_topv(_libs, self.mtmd_ctx, self.topv, self.threads or llama_model.n_threads)

    def last_image_report(self) -> ImageReport | None:
        """What the stage did with the last image of the last request (None before any)."""
        if self.mtmd_ctx is None:
            return None
        st = _libs.topv_stats(self.mtmd_ctx)
        return image_report(_libs, self.mtmd_ctx, st.n_tokens, float("nan")) if st.n_tokens else None

    def load_image(self, image_url: str) -> bytes:
        # plain file paths too, as the README promises (llama-cpp-python takes URLs and data URIs)
        if "://" not in image_url and not image_url.startswith("data:"):
            return Path(image_url).expanduser().read_bytes()
        return super().load_image(image_url)
