"""topv-edge: training-free visual-token pruning (TopV) for llama.cpp / GGUF models."""

from ._native import METHODS, TopVError
from .pruning import BACKENDS, PARAM_NAMES, default_params, keep_count, select

__all__ = ["BACKENDS", "METHODS", "PARAM_NAMES", "TopVError", "default_params", "keep_count", "select"]
__version__ = "0.1.0"
