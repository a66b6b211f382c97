"""A text model and its mmproj loaded into the patched llama.cpp, checked to belong together."""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import Any, Callable

from ..errors import ChatError, explain_llama_error
from ..llama import libs as llama_libs
from .files import gguf_architecture
from .templates import LLAVA15_TEMPLATE, compile_chat_template


class ModelPair:
    """The loaded model (`model`, `vocab`, `n_layer`), the mtmd context of its mmproj (`mctx`), the chat template
    and the media marker. Frees both on close()."""

    def __init__(self, libs: llama_libs.LlamaLibs, model_path: Path, mmproj_path: Path, *, threads: int,
                 n_gpu_layers: int | None, mmproj_offload: bool, progress: Callable[[str], None],
                 chat_template: str | None = None) -> None:
        self.libs = libs
        self.chat_template = chat_template  # replaces the model's own (None: the model's)
        self.model_path, self.mmproj_path = model_path, mmproj_path
        self._stack = contextlib.ExitStack()
        try:
            self._load(threads, n_gpu_layers, mmproj_offload, progress)
        except BaseException:
            self.close()
            raise

    def _load(self, threads: int, n_gpu_layers: int | None, mmproj_offload: bool,
              progress: Callable[[str], None]) -> None:
        L, M, log = self.libs.llama_cpp, self.libs.mtmd_cpp, self.libs.log
        progress(f"loading {self.model_path.name} and {self.mmproj_path.name}...")
        mparams = L.llama_model_default_params()
        if n_gpu_layers is not None:
            mparams.n_gpu_layers = n_gpu_layers
        with log.capture() as rec:
            self.model = L.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self.model:
            why = explain_llama_error(rec.errors(), path=str(self.model_path), model=self.model_path.name,
                                      mmproj=self.mmproj_path.name, what="the model")
            raise ChatError(f"could not load the model {self.model_path}: {why}")
        self._stack.callback(L.llama_model_free, self.model)
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_layer = L.llama_model_n_layer(self.model)

        cparams = M.mtmd_context_params_default()
        cparams.use_gpu = mmproj_offload
        cparams.print_timings = False
        cparams.n_threads = threads
        cparams.warmup = False
        with log.capture() as rec:
            self.mctx = M.mtmd_init_from_file(str(self.mmproj_path).encode(), self.model, cparams)
        if not self.mctx:
            raise ChatError(f"could not load the mmproj {self.mmproj_path}: {self._mmproj_error(rec.errors())}")
        self._stack.callback(M.mtmd_free, self.mctx)
        if not M.mtmd_support_vision(self.mctx):
            raise ChatError(f"{self.mmproj_path.name} has no vision encoder")
        # llama.cpp checks the widths only; the stage's layout table (one per projector type, in C) knows which
        # text models each projector pairs with (e.g. M-RoPE image positions for Qwen2-VL)
        reason = self.libs.topv_check_model(self.mctx, self.model)
        if reason is not None:
            raise ChatError(f"the mmproj {self.mmproj_path.name} does not match the model {self.model_path.name}: "
                            f"{reason}")
        self.marker = M.mtmd_default_marker().decode()
        self.template = self._load_template()
        progress("")

    def _mmproj_error(self, errors: list[str]) -> str:
        why = explain_llama_error(errors, path=str(self.mmproj_path), model=self.model_path.name,
                                  mmproj=self.mmproj_path.name, what="the vision encoder")
        arch = gguf_architecture(self.mmproj_path) if why.startswith("llama.cpp said") else None
        if arch not in (None, "clip"):  # a text model given as the mmproj: clip only says which key it missed
            why = f"{self.mmproj_path} is a text model ({arch}), not an mmproj (a vision projector); {why}"
        return why

    def _load_template(self) -> Any:
        if self.chat_template is not None:
            return compile_chat_template(self.chat_template, "the chat template given")
        buf = ctypes.create_string_buffer(1 << 16)
        n = self.libs.llama_cpp.llama_model_meta_val_str(self.model, b"tokenizer.chat_template", buf, len(buf))
        return compile_chat_template(buf.value.decode("utf-8", "replace") if n > 0 else LLAVA15_TEMPLATE,
                                     f"{self.model_path.name}'s chat template")

    def close(self) -> None:
        self._stack.close()
        self.model = self.mctx = self.vocab = None  # nothing may use the freed pointers
