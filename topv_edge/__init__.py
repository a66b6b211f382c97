"""topv-edge: training-free visual-token pruning (TopV) for llama.cpp / GGUF models.

Importing the package points llama-cpp-python at the TopV-patched llama.cpp build (environment
variables LLAMA_CPP_LIB_PATH and MTMD_CPP_LIB, unless already set), so import topv_edge before llama_cpp.
"""

from typing import Any

from .errors import ChatError, OptionError, TopVError
from .llama.build import point_llama_cpp_at_build

point_llama_cpp_at_build()

_PRUNING = ("BACKENDS", "METHODS", "PARAM_NAMES", "default_params", "keep_count", "select")

__all__ = ["BACKENDS", "METHODS", "PARAM_NAMES", "ChatError", "OptionError", "TopVChatHandler", "TopVError",
           "TopVOptions", "VisionChat", "default_params", "keep_count", "select"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # loaded when first asked for: `python -m topv_edge.chat` starts without numpy (Ctrl-C then is quiet), and
    # the llama.cpp side loads only when asked for: the pass works without a llama.cpp build
    if name in _PRUNING:
        from . import pruning

        return getattr(pruning, name)
    if name == "TopVOptions":
        from .options import TopVOptions

        return TopVOptions
    if name == "TopVChatHandler":
        from .handler import TopVChatHandler

        return TopVChatHandler
    if name == "VisionChat":
        from .session import VisionChat

        return VisionChat
    raise AttributeError(f"module 'topv_edge' has no attribute {name!r}")
