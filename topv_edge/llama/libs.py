"""The patched llama.cpp libraries, loaded through llama-cpp-python, and the C functions the patch adds.

`scripts/build_llama_cpp.sh` builds llama.cpp with patches/ once into a cache directory keyed by the
llama.cpp commit and the patch; llama-cpp-python is installed without a llama.cpp of its own and
is pointed at that build through LLAMA_CPP_LIB_PATH and MTMD_CPP_LIB, which it reads when first
imported. So `load()` must run before anything imports llama_cpp.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import sys
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np

from ..errors import ChatError, LlamaBuildMissing
from ..pruning.native import TopVParams
from .build import build_backend, build_dir, stale_build_message

# --- the structs the patch adds to mtmd.h ------------------------------------------------------


class MtmdTopvParams(ctypes.Structure):
    """Mirror of `struct mtmd_topv_params`."""

    _fields_ = [
        ("enabled", ctypes.c_bool),
        ("keep_ratio", ctypes.c_float),
        ("keep_count", ctypes.c_int32),
        ("layer", ctypes.c_int32),
        ("pass_params", TopVParams),
        ("renumber_positions", ctypes.c_bool),
        ("overview_weight", ctypes.c_float),  # tiled pictures: the overview's weight in the picture's budget
    ]


class MtmdTopvStats(ctypes.Structure):
    """Mirror of `struct mtmd_topv_stats`."""

    _fields_ = [
        ("result", ctypes.c_int32),
        ("n_tokens", ctypes.c_int32),
        ("n_kept", ctypes.c_int32),
        ("grid_w", ctypes.c_int32),
        ("grid_h", ctypes.c_int32),
        ("n_embd", ctypes.c_int32),
        ("probe_ms", ctypes.c_double),
        ("pass_ms", ctypes.c_double),
        ("decode_ms", ctypes.c_double),
        ("probe_max_layer", ctypes.c_int32),
        ("n_grid", ctypes.c_int32),         # grid tokens (rows of scores and features); 0 from older builds
        ("n_always_kept", ctypes.c_int32),  # structural tokens kept on top of the grid's
        # the chunk's place in its picture (mtmd_topv_chunk_role: 0 single, 1 overview, 2 tile)
        ("picture", ctypes.c_int32),
        ("role", ctypes.c_int32),
        ("tile_x", ctypes.c_int32),
        ("tile_y", ctypes.c_int32),
        ("tiles_x", ctypes.c_int32),
        ("tiles_y", ctypes.c_int32),
        ("chunk_index", ctypes.c_int32),
        ("n_chunks", ctypes.c_int32),
        ("n_picture_tokens", ctypes.c_int32),
        ("n_budget", ctypes.c_int32),
        ("n_frames", ctypes.c_int32),       # video frames merged in the chunk (1: a picture, or one frame)
    ]


GGML_BACKEND_DEVICE_TYPE_GPU = 1  # enum ggml_backend_dev_type
GGML_BACKEND_DEVICE_TYPE_IGPU = 2

MTMD_TOPV_PRUNED = 0
MTMD_TOPV_DISABLED = 1
MTMD_TOPV_KEEP_ALL = 2
MTMD_TOPV_UBATCH_TOO_SMALL = 4


# --- llama.cpp's log, captured ---------------------------------------------------------------------


GGML_LOG_LEVEL_WARN = 3   # enum ggml_log_level
GGML_LOG_LEVEL_ERROR = 4
GGML_LOG_LEVEL_CONT = 5   # continues the previous message


@dataclass(eq=False)  # captures nest: LlamaLog.capture removes its own recorder, not an equal one
class LogRecorder:
    """The log lines (level, text) llama.cpp wrote while one call ran."""

    lines: list[tuple[int, str]] = field(default_factory=list)

    def errors(self) -> list[str]:
        """The error-level lines, in order (what llama.cpp said went wrong)."""
        return [text for level, text in self.lines if level == GGML_LOG_LEVEL_ERROR and text]

    def last(self) -> str:
        """The first error line, else the last warning ("" if neither): the cause, not the last thing logged."""
        errors = self.errors()
        if errors:
            return errors[0]
        warnings = [text for level, text in self.lines if level == GGML_LOG_LEVEL_WARN and text]
        return warnings[-1] if warnings else ""


class LlamaLog:
    """llama.cpp and mtmd log into here: shown on stderr when verbose, otherwise kept for error messages."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self._recorders: list[LogRecorder] = []
        self._partial = ""
        self._partial_level = 1

    def __call__(self, level: int, text: bytes, user_data: object) -> None:
        s = text.decode("utf-8", "replace") if text else ""
        if self.verbose:
            sys.stderr.write(s)
        if level != GGML_LOG_LEVEL_CONT:
            self._partial_level = level
        self._partial += s
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            for r in self._recorders:
                r.lines.append((self._partial_level, line.strip()))

    @contextlib.contextmanager
    def capture(self) -> Iterator[LogRecorder]:
        rec = LogRecorder()
        self._recorders.append(rec)
        try:
            yield rec
        finally:
            self._recorders.remove(rec)


# --- loading ------------------------------------------------------------------------------------


@dataclass
class LlamaLibs:
    """llama_cpp's modules bound to the patched build, and the patch's own functions."""

    llama_cpp: ModuleType
    mtmd_cpp: ModuleType
    log: LlamaLog
    directory: Path
    _callback: object  # keeps the ctypes log callback alive
    _ggml_lib: ctypes.CDLL | None = None
    _rpc: dict[str, list[int]] = field(default_factory=dict)  # endpoint -> its registered devices (process-wide)

    @property
    def backend(self) -> str:
        """The backend this build was made for (cpu, vulkan, cuda, metal)."""
        return build_backend(self.directory)

    def _ggml(self) -> ctypes.CDLL | None:
        """libggml (already loaded by libllama: the same handle) with its device functions typed; None without it."""
        if self._ggml_lib is None:
            libs = [p for p in (self.directory / "lib").iterdir() if p.name.split(".")[0] in ("libggml", "ggml")]
            if not libs:
                return None
            g = ctypes.CDLL(str(libs[0]))
            vp = ctypes.c_void_p
            for fn, args, res in (("ggml_backend_dev_count", [], ctypes.c_size_t),
                                  ("ggml_backend_dev_get", [ctypes.c_size_t], vp),
                                  ("ggml_backend_dev_name", [vp], ctypes.c_char_p),
                                  ("ggml_backend_dev_description", [vp], ctypes.c_char_p),
                                  ("ggml_backend_dev_type", [vp], ctypes.c_int),
                                  ("ggml_backend_dev_backend_reg", [vp], vp),
                                  ("ggml_backend_reg_name", [vp], ctypes.c_char_p),
                                  ("ggml_backend_reg_by_name", [ctypes.c_char_p], vp),
                                  ("ggml_backend_reg_get_proc_address", [vp, ctypes.c_char_p], vp),
                                  ("ggml_backend_reg_dev_count", [vp], ctypes.c_size_t),
                                  ("ggml_backend_reg_dev_get", [vp, ctypes.c_size_t], vp),
                                  ("ggml_backend_register", [vp], None)):
                getattr(g, fn).argtypes = args
                getattr(g, fn).restype = res
            self._ggml_lib = g
        return self._ggml_lib

    def _local_devices(self, types: tuple[int, ...]) -> list[int]:
        """The devices of these types, in registry order, that are not RPC servers' (the machine's own)."""
        g = self._ggml()
        if g is None:
            return []
        devs = [g.ggml_backend_dev_get(i) for i in range(g.ggml_backend_dev_count())]
        return [d for d in devs if g.ggml_backend_dev_type(d) in types
                and g.ggml_backend_reg_name(g.ggml_backend_dev_backend_reg(d)) != b"RPC"]

    def gpu_devices(self) -> list[str]:
        """The GPU devices ggml sees in this build ("Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits)"); [] when none
        (a CPU build, or no usable device: llama.cpp then runs everything on the CPU). RPC servers' devices are
        not this machine's GPUs and are not listed."""
        g = self._ggml()
        return [f"{g.ggml_backend_dev_name(d).decode()}: {g.ggml_backend_dev_description(d).decode()}"
                for d in self._local_devices((GGML_BACKEND_DEVICE_TYPE_GPU, GGML_BACKEND_DEVICE_TYPE_IGPU))]

    def local_gpu_handles(self) -> list[int]:
        """The machine's GPUs as llama.cpp picks them by default: the discrete ones, else the integrated ones of
        the first backend that has any (one GPU backend per build here, so no de-duplication by device id)."""
        gpus = self._local_devices((GGML_BACKEND_DEVICE_TYPE_GPU,))
        if gpus:
            return gpus
        igpus = self._local_devices((GGML_BACKEND_DEVICE_TYPE_IGPU,))
        g = self._ggml()
        return [d for d in igpus if g.ggml_backend_dev_backend_reg(d) == g.ggml_backend_dev_backend_reg(igpus[0])]

    @property
    def supports_rpc(self) -> bool:
        """True when this build has ggml's RPC backend (GGML_RPC=ON: scripts/build_llama_cpp.sh builds it)."""
        g = self._ggml()
        return g is not None and bool(g.ggml_backend_reg_by_name(b"RPC"))

    @property
    def rpc_in_use(self) -> bool:
        """True once an RPC server's devices are registered in this process (llama.cpp would then offload to them
        by default, so a model that should not use them must name its devices)."""
        return bool(self._rpc)

    def rpc_add_server(self, endpoint: str) -> list[int]:
        """Register an RPC server's devices with ggml, as llama.cpp's --rpc does (common/arg.cpp add_rpc_devices),
        once per process and endpoint; returns the device handles.

        ggml aborts the process when it cannot connect, so the server is reached here first."""
        if endpoint in self._rpc:
            return self._rpc[endpoint]
        g = self._ggml()
        reg = g.ggml_backend_reg_by_name(b"RPC") if g is not None else None
        if not reg:
            raise ChatError(f"the llama.cpp build in {self.directory} has no RPC backend; rebuild it with "
                            "scripts/build_llama_cpp.sh (it configures -DGGML_RPC=ON)")
        fn = g.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server")
        if not fn:
            raise ChatError("the RPC backend of this llama.cpp build lacks ggml_backend_rpc_add_server")
        check_rpc_reachable(endpoint)
        add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(fn)
        server_reg = add_server(endpoint.encode())
        if not server_reg:
            raise ChatError(f"the RPC server {endpoint} offers no devices")
        g.ggml_backend_register(server_reg)
        self._rpc[endpoint] = [g.ggml_backend_reg_dev_get(server_reg, i)
                               for i in range(g.ggml_backend_reg_dev_count(server_reg))]
        return self._rpc[endpoint]

    def topv_default_params(self) -> MtmdTopvParams:
        return self.mtmd_cpp._libmtmd.mtmd_topv_default_params()

    def topv_set_params(self, mctx: object, params: MtmdTopvParams) -> int:
        return self.mtmd_cpp._libmtmd.mtmd_topv_set_params(mctx, ctypes.byref(params))

    def topv_get_params(self, mctx: object) -> MtmdTopvParams:
        return self.mtmd_cpp._libmtmd.mtmd_topv_get_params(mctx)

    def topv_stats(self, mctx: object) -> MtmdTopvStats:
        return self.mtmd_cpp._libmtmd.mtmd_topv_get_stats(mctx)

    def topv_chunk_n_kept(self, mctx: object, model: object, chunk: object) -> int:
        """Tokens the stage will decode for an image chunk with the current parameters (its share of the picture's
        budget plus structural tokens; all of them when it would not prune it)."""
        return int(self.mtmd_cpp._libmtmd.mtmd_topv_chunk_n_kept(mctx, model, chunk))

    def topv_chunk_n_cells(self, mctx: object, lctx: object, chunk: object) -> int:
        """KV cells an image chunk takes once decoded in the context `lctx` (mtmd_topv_chunk_n_cells: the kept
        tokens, or all of them where that context makes the stage decode it whole, as a probe beyond its ubatch)."""
        return int(self.mtmd_cpp._libmtmd.mtmd_topv_chunk_n_cells(mctx, lctx, chunk))

    def topv_probes(self, mctx: object) -> bool:
        """Whether the stage decodes an image whole before pruning it (mtmd_topv_probes; TopVOptions.probes says
        the same before a context exists)."""
        return bool(self.mtmd_cpp._libmtmd.mtmd_topv_probes(mctx))

    def topv_reason(self, mctx: object) -> str:
        """The stage's sentence for the last image's result (mtmd_topv_get_reason; "" when it has none)."""
        text = self.mtmd_cpp._libmtmd.mtmd_topv_get_reason(mctx)
        return text.decode("utf-8", "replace") if text else ""

    def topv_result_string(self, result: int) -> str:
        return self.mtmd_cpp._libmtmd.mtmd_topv_result_string(result).decode()

    def topv_chunk_role(self, role: int) -> str:
        """The name of a mtmd_topv_chunk_role: "single", "overview", "tile" ("unknown" otherwise)."""
        return self.mtmd_cpp._libmtmd.mtmd_topv_chunk_role_name(role).decode()

    def topv_check_model(self, mctx: object, model: object) -> str | None:
        """Why the mmproj does not fit the text model per the stage's layout table (None: it fits).

        mtmd_topv_check_model compares the projector with the text model's architecture and rope type, and says
        when the text model's vocabulary lacks the projector's image markers."""
        reason = ctypes.create_string_buffer(512)
        if self.mtmd_cpp._libmtmd.mtmd_topv_check_model(mctx, model, reason, len(reason)) == 0:
            return None
        return reason.value.decode("utf-8", "replace") or "the stage's layout table refuses this pair"

    def topv_kept(self, mctx: object) -> np.ndarray | None:
        """Kept indices of the last image (a copy), None if it was not pruned."""
        st = self.topv_stats(mctx)
        ptr = self.mtmd_cpp._libmtmd.mtmd_topv_get_kept(mctx)
        return np.ctypeslib.as_array(ptr, (st.n_kept,)).copy() if ptr else None

    def topv_scores(self, mctx: object) -> np.ndarray | None:
        st = self.topv_stats(mctx)
        ptr = self.mtmd_cpp._libmtmd.mtmd_topv_get_scores(mctx)
        return np.ctypeslib.as_array(ptr, (st.n_grid or st.n_tokens,)).copy() if ptr else None

    def kv_cell_positions(self, ctx: object, seq_id: int = 0) -> np.ndarray:
        """Positions of the KV cells holding `seq_id`, from llama.cpp's sequence state (llama_state_seq_get_data).

        The state starts with a magic number and the sequence id (llama_context::state_seq_get_data), then
        n_stream, then per stream the cell count and, per cell, pos (int32), n_seq_id
        (uint32), an M-RoPE extension (llama_kv_cell_ext: x, y, tok, int32) when the model has one, and the seq ids
        (src/llama-kv-cache.cpp state_write / state_write_meta). Only the first stream is read."""
        L = self.llama_cpp
        size = L.llama_state_seq_get_size(ctx, seq_id)
        buf = (ctypes.c_uint8 * size)()
        L.llama_state_seq_get_data(ctx, buf, size, seq_id)
        raw = np.frombuffer(bytes(buf), dtype=np.uint8)
        words = raw[: (len(raw) // 4) * 4].view(np.int32)
        n_cells = int(words[3])
        mrope = L.llama_model_rope_type(L.llama_get_model(ctx)) in (8, 40)  # LLAMA_ROPE_TYPE_MROPE / _IMROPE
        stride = 2 + (3 if mrope else 0) + 1  # one sequence id per cell (single-sequence use)
        return words[4:4 + n_cells * stride].reshape(n_cells, stride)[:, 0].copy()

    def topv_features(self, mctx: object, target: bool) -> np.ndarray | None:
        """The probed source (target=False) or target features of the last pruned image, N x d float32."""
        st = self.topv_stats(mctx)
        ptr = self.mtmd_cpp._libmtmd.mtmd_topv_get_features(mctx, target)
        return np.ctypeslib.as_array(ptr, (st.n_grid or st.n_tokens, st.n_embd)).copy() if ptr else None


RPC_CONNECT_TIMEOUT_S = 5.0


def check_rpc_reachable(endpoint: str) -> None:
    """A ChatError unless something accepts TCP connections at HOST:PORT (ggml's RPC client aborts instead).

    rpc-server serves one client at a time; this connection is closed at once, so it only waits in its queue."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=RPC_CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise ChatError(f"cannot reach the RPC server {endpoint}: {e.strerror or e} (is rpc-server running there, "
                        f"started with -H so it listens beyond its own machine?)") from None


def _bind(lib: ctypes.CDLL, name: str, argtypes: list, restype: object) -> None:
    try:
        fn = getattr(lib, name)
    except AttributeError:
        raise LlamaBuildMissing(f"{name} is missing from {lib._name}: that llama.cpp is not the TopV-patched build; "
                                "run scripts/build_llama_cpp.sh") from None
    fn.argtypes = argtypes
    fn.restype = restype


@lru_cache(maxsize=1)
def load() -> LlamaLibs:
    """Import llama_cpp against the patched build (once per process) and bind the patch's functions.

    llama.cpp's log goes to `LlamaLibs.log` (quiet unless `log.verbose` is set)."""
    directory = build_dir()
    lib_dir = directory / "lib"
    if not (lib_dir.is_dir() and any(lib_dir.glob("*mtmd*"))):
        backend = "" if os.environ.get("TOPV_EDGE_LLAMA_DIR") else f" --backend {directory.name.rsplit('-', 1)[-1]}"
        raise LlamaBuildMissing(f"the TopV-patched llama.cpp is not built (expected in {directory}); "
                                f"run scripts/build_llama_cpp.sh{backend} (the README's set-up command does)")
    stale = stale_build_message(directory)
    if stale:
        warnings.warn(stale, stacklevel=2)
    if "llama_cpp" in sys.modules:
        loaded = Path(sys.modules["llama_cpp"].llama_cpp._lib._name).parent  # type: ignore[attr-defined]
        if loaded.resolve() != lib_dir.resolve():
            raise LlamaBuildMissing(f"llama_cpp was imported before topv_edge could point it at the patched build "
                                    f"({loaded} instead of {lib_dir}); import topv_edge first")
    for var in ("LLAMA_CPP_LIB_PATH", "MTMD_CPP_LIB"):
        if os.environ.get(var) and Path(os.environ[var]).resolve() != lib_dir.resolve():
            raise LlamaBuildMissing(f"{var}={os.environ[var]} points away from the patched build {lib_dir}")
        os.environ[var] = str(lib_dir)
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd_cpp

    m = mtmd_cpp._libmtmd
    l = llama_cpp.llama_cpp._lib
    vp = ctypes.c_void_p
    _bind(m, "mtmd_topv_default_params", [], MtmdTopvParams)
    _bind(m, "mtmd_topv_set_params", [vp, ctypes.POINTER(MtmdTopvParams)], ctypes.c_int32)
    _bind(m, "mtmd_topv_get_params", [vp], MtmdTopvParams)
    _bind(m, "mtmd_topv_get_stats", [vp], MtmdTopvStats)
    _bind(m, "mtmd_topv_result_string", [ctypes.c_int32], ctypes.c_char_p)
    _bind(m, "mtmd_topv_get_kept", [vp], ctypes.POINTER(ctypes.c_int32))
    _bind(m, "mtmd_topv_get_scores", [vp], ctypes.POINTER(ctypes.c_double))
    _bind(m, "mtmd_topv_get_features", [vp, ctypes.c_bool], ctypes.POINTER(ctypes.c_float))
    _bind(m, "mtmd_topv_chunk_n_kept", [vp, vp, vp], ctypes.c_int32)
    _bind(m, "mtmd_topv_chunk_n_cells", [vp, vp, vp], ctypes.c_int32)
    _bind(m, "mtmd_topv_probes", [vp], ctypes.c_bool)
    _bind(m, "mtmd_topv_chunk_role_name", [ctypes.c_int32], ctypes.c_char_p)
    _bind(l, "llama_set_eval_callback", [vp, vp, vp], None)
    _bind(l, "llama_set_n_layer_limit", [vp, ctypes.c_uint32], None)
    _bind(l, "llama_get_n_layer_limit", [vp], ctypes.c_uint32)
    _bind(m, "mtmd_topv_check_model", [vp, vp, ctypes.c_char_p, ctypes.c_size_t], ctypes.c_int32)
    _bind(m, "mtmd_topv_get_reason", [vp], ctypes.c_char_p)

    log = LlamaLog(verbose=False)
    callback = llama_cpp.llama_log_callback(log)
    llama_cpp.llama_log_set(callback, None)
    mtmd_cpp.mtmd_helper_log_set(callback, None)
    llama_cpp.llama_backend_init()
    return LlamaLibs(llama_cpp=llama_cpp, mtmd_cpp=mtmd_cpp, log=log, directory=directory, _callback=callback)
