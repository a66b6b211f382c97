"""A text model and its mmproj loaded into the patched llama.cpp, checked to belong together."""

from __future__ import annotations

import contextlib
import ctypes
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ChatError, OptionError, explain_llama_error
from ..llama import libs as llama_libs
from .files import gguf_architecture
from .templates import LLAVA15_TEMPLATE, compile_chat_template


def check_rpc_servers(servers: Sequence[str] | None) -> list[str]:
    """RPC servers as llama.cpp's --rpc takes them: HOST:PORT each (ggml splits at the first ':', so no IPv6
    addresses), no repeats; [] for None."""
    if servers is None:
        return []
    if isinstance(servers, str) or not all(isinstance(s, str) for s in servers):
        raise OptionError("rpc_servers", f"must be a list of 'HOST:PORT' strings, got {servers!r}")
    out = [s.strip() for s in servers]
    for s in out:
        host, sep, port = s.partition(":")
        if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
            raise OptionError("rpc_servers", f"expects HOST:PORT with a port from 1 to 65535, got {s!r}")
    if len(set(out)) != len(out):
        raise OptionError("rpc_servers", f"names a server twice: {','.join(out)}")
    return out


def _device_list(devices: list[int]) -> Any:
    """A NULL-terminated ggml_backend_dev_t array, as llama_model_params.devices wants."""
    return (ctypes.c_void_p * (len(devices) + 1))(*devices, None)


class ModelPair:
    """The loaded model (`model`, `vocab`, `n_layer`), the mtmd context of its mmproj (`mctx`), the chat template
    and the media marker. Frees both on close().

    `rpc_devices`: RPC servers' devices (LlamaLibs.rpc_add_server) that take text-model layers ahead of the machine's
    GPUs, as llama.cpp orders them; the encoder stays on this machine."""

    def __init__(self, libs: llama_libs.LlamaLibs, model_path: Path, mmproj_path: Path, *, threads: int,
                 n_gpu_layers: int | None, mmproj_offload: bool, progress: Callable[[str], None],
                 chat_template: str | None = None, rpc_devices: Sequence[int] = ()) -> None:
        self.libs = libs
        self.chat_template = chat_template  # replaces the model's own (None: the model's)
        self.model_path, self.mmproj_path = model_path, mmproj_path
        self._stack = contextlib.ExitStack()
        try:
            self._load(threads, n_gpu_layers, mmproj_offload, progress, list(rpc_devices))
        except BaseException:
            self.close()
            raise

    def _load(self, threads: int, n_gpu_layers: int | None, mmproj_offload: bool,
              progress: Callable[[str], None], rpc_devices: list[int]) -> None:
        L, M, log = self.libs.llama_cpp, self.libs.mtmd_cpp, self.libs.log
        progress(f"loading {self.model_path.name} and {self.mmproj_path.name}...")
        mparams = L.llama_model_default_params()
        if n_gpu_layers is not None:
            mparams.n_gpu_layers = n_gpu_layers
        # once any RPC server is registered (process-wide), llama.cpp's default would offload to all of them:
        # name this pair's devices (its servers first, then the machine's GPUs, llama.cpp's order)
        local_gpus = self.libs.local_gpu_handles() if self.libs.rpc_in_use else []
        devices = _device_list(rpc_devices + local_gpus)
        if self.libs.rpc_in_use:
            mparams.devices = ctypes.addressof(devices)
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
        if self.libs.rpc_in_use:  # clip takes the first GPU-type device, which may be a server's: take a local one
            cparams.use_gpu = mmproj_offload and bool(local_gpus)
            cparams.device = local_gpus[0] if cparams.use_gpu else None
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
