"""How to prune (`TopVOptions`) and the one check of every option the chat, the handler, eval and viz take.

Each rule has one owner: the pass owns the method, its parameters and `keep` (topv_edge.pruning); this module
owns the rest (layer, overview weight, threads) and `TopVOptions.validate()` applies them all. Messages name
the library's parameters ("keep must ..."); the command lines put their flag in its place (topv_edge.cli).
The C stage checks its own arguments again, as a C API must.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import OptionError, TopVError
from .pruning import PARAM_NAMES, check_keep, default_method, make_params

# The product's defaults (chat, handler, eval, viz and the llama.cpp stage), chosen on the validation splits
# of both trained models (docs/pass.md, "Decision"). The method is the C library's (topv_default_params);
# the layer and the overview weight are the stage's (mtmd_topv_default_params; a test checks they agree).
DEFAULT_KEEP = 0.25
DEFAULT_LAYER = 0
# tiled pictures: the overview's weight in the picture's budget: infinite, the overview kept whole, chosen on
# the tiled demo model's validation split (docs/tiled.md)
DEFAULT_OVERVIEW_WEIGHT = math.inf
MAX_THREADS = 512  # GGML_MAX_N_THREADS


def check_layer(layer: Any, n_layer: int | None = None) -> int:
    """The probe layer Li: 0..n_layer-2 (the last layer's norm sees only the output rows); only >= 0 while the
    model's depth is not known yet."""
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or layer < 0:
        raise OptionError("layer", f"must be a whole number >= 0, got {layer!r}")
    if n_layer is not None and layer > n_layer - 2:
        raise OptionError("layer", f"must be 0..{max(0, n_layer - 2)} for this model ({n_layer} layers: the method "
                                   f"reads layer Li's input and post-attention norm), got {layer}")
    return int(layer)


def check_overview_weight(weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not weight > 0:
        raise OptionError("overview_weight", f"must be a number > 0 (inf keeps the overview whole), got {weight!r}")
    return float(weight)


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


def check_threads(threads: Any) -> int:
    """`threads`, or every core when None; 1..MAX_THREADS."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or not 1 <= threads <= MAX_THREADS:
        raise OptionError("threads", f"must be a whole number from 1 to {MAX_THREADS} (this machine has "
                                     f"{os.cpu_count()} cores), got {threads!r}")
    return int(threads)


# llama_flash_attn_type (llama.h) for llama.cpp's -fa words: on/enabled/true/1, off/disabled/false/0, auto/-1
FLASH_ATTN_TYPES = {"auto": -1, "-1": -1, "on": 1, "enabled": 1, "true": 1, "1": 1,
                    "off": 0, "disabled": 0, "false": 0, "0": 0}
# llama.cpp's sampling defaults (common/common.h: common_params_sampling), used at temp > 0
DEFAULT_TOP_K, DEFAULT_TOP_P, DEFAULT_MIN_P = 40, 0.95, 0.05


def check_flash_attn(value: Any) -> int:
    """'on', 'off' or 'auto' (and llama.cpp's other spellings) -> llama_flash_attn_type."""
    key = str(value).strip().lower()
    if key not in FLASH_ATTN_TYPES:
        raise OptionError("flash_attn", f"must be on, off or auto, got {value!r}")
    return FLASH_ATTN_TYPES[key]


def check_top_k(k: Any) -> int:
    """Sample from the k likeliest tokens; 0 turns the filter off (as llama.cpp)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
        raise OptionError("top_k", f"must be a whole number >= 0 (0: off), got {k!r}")
    return int(k)


def check_top_p(p: Any) -> float:
    """Nucleus sampling: the likeliest tokens whose probabilities sum to p; 1 turns it off."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 < p <= 1:
        raise OptionError("top_p", f"must be in (0, 1] (1: off), got {p!r}")
    return float(p)


def check_min_p(p: Any) -> float:
    """Drop tokens less likely than p times the likeliest; 0 turns it off."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise OptionError("min_p", f"must be in [0, 1] (0: off), got {p!r}")
    return float(p)


@dataclass
class TopVOptions:
    """How to prune: `keep` is a ratio in (0, 1] (a float) or a token count (an int); `layer` the probe layer
    Li; `method` a name of topv_edge.METHODS; `params` the pass parameters (alpha, beta, ...; defaults from C);
    `overview_weight` the overview's weight in a tiled picture's budget; `renumber_positions` a diagnostic that
    decodes the kept tokens at consecutive positions instead of their original ones (ignored by M-RoPE)."""

    enabled: bool = True
    keep: float | int = DEFAULT_KEEP
    layer: int = DEFAULT_LAYER
    params: dict[str, float | int] = field(default_factory=dict)
    method: str = field(default_factory=default_method)
    renumber_positions: bool = False
    overview_weight: float = DEFAULT_OVERVIEW_WEIGHT

    @property
    def is_count(self) -> bool:
        """True when `keep` is a token count (an int), False for a ratio (a float: 1.0 keeps everything)."""
        return isinstance(self.keep, numbers.Integral) and not isinstance(self.keep, bool)

    @property
    def probes(self) -> bool:
        """True when the stage decodes a picture once before pruning it (the probe): at a layer above 0, or for a
        method that reads the layer's output. Without a probe the unpruned picture never enters the KV cache."""
        from .pruning import native

        return self.enabled and (self.layer > 0 or bool(native.method_reads(native.METHODS[self.method])
                                                           & native.READS_TARGET))

    def keep_label(self) -> str:
        """`keep` unambiguously: '25%' for a ratio, '16 tokens' for a count, 'all' when pruning is off."""
        if not self.enabled:
            return "all"
        if self.is_count:
            return f"{self.keep} token{'s' if self.keep != 1 else ''}"
        return f"{100 * float(self.keep):.4g}%"

    def validate(self, n_layer: int | None = None) -> None:
        """Raise OptionError for the first option out of range (`n_layer`: the model's depth, once known)."""
        check_keep(self.keep)
        check_layer(self.layer, n_layer if self.enabled else None)
        check_overview_weight(self.overview_weight)
        self.pass_params()

    def resolved_params(self) -> dict[str, float | int]:
        """Every pass parameter as the pass will use it: the C defaults with `params` applied."""
        p = self.pass_params()
        return {name: getattr(p, name) for name in PARAM_NAMES}

    def pass_params(self, threads: int = 0):
        """The pass's topv_params for these options (its checks of the method and the parameters)."""
        try:
            return make_params(self.method, threads=threads, **self.params)
        except TopVError as e:
            raise OptionError("params", f"are out of range: {e}") from None
        except TypeError as e:  # an unknown parameter name or a value of the wrong type
            raise OptionError("params", f"are not valid: {e}") from None
        except ValueError as e:  # an unknown method (make_params names the method and the known ones)
            raise OptionError("method", str(e).removeprefix("method ")) from None


__all__ = ["DEFAULT_KEEP", "DEFAULT_LAYER", "DEFAULT_MIN_P", "DEFAULT_OVERVIEW_WEIGHT", "DEFAULT_TOP_K", "DEFAULT_TOP_P",
           "FLASH_ATTN_TYPES", "MAX_THREADS", "PARAM_NAMES", "TopVOptions", "check_flash_attn", "check_keep",
           "check_layer", "check_min_p", "check_overview_weight", "check_threads", "check_top_k", "check_top_p",
           "default_method", "default_threads"]
