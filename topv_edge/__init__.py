"""topv-edge: training-free visual-token pruning (TopV) for llama.cpp / GGUF models.

Importing the package points llama-cpp-python at the TopV-patched llama.cpp build (environment
variables LLAMA_CPP_LIB_PATH and MTMD_CPP_LIB, unless already set), so import topv_edge before llama_cpp.
"""

from typing import Any

from .errors import ChatError, OptionError, TopVError
from .llama.build import point_llama_cpp_at_build
from .options import TopVOptions
from .pruning import BACKENDS, PARAM_NAMES, default_params, keep_count, select

point_llama_cpp_at_build()

__all__ = ["BACKENDS", "METHODS", "PARAM_NAMES", "ChatError", "OptionError", "TopVChatHandler", "TopVError",
           "TopVOptions", "VisionChat", "default_params", "keep_count", "select"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # the C library's method table, and the llama.cpp side, load only when asked for: the pass works without a
    # llama.cpp build, and importing the package needs neither
    if name == "METHODS":
        from .pruning import native

        return native.METHODS
    if name == "TopVChatHandler":
        from .handler import TopVChatHandler

        return TopVChatHandler
    if name == "VisionChat":
        from .session import VisionChat

        return VisionChat
    raise AttributeError(f"module 'topv_edge' has no attribute {name!r}")
