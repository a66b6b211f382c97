"""What the command lines (chat, eval, viz) share: argument types, the pruning flags, and the error exit.

The library's checks (topv_edge.options, topv_edge.pruning) own every rule and word their messages with
parameter names; here a flag's type only parses the text and calls that check, and `run_command` puts the
flag in the parameter's place, so "keep ratio must be in (0, 1]" reads "--keep ratio must be in (0, 1]".
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from .errors import ChatError, ContextWarning, OptionError
from .options import (DEFAULT_KEEP, DEFAULT_LAYER, DEFAULT_MIN_P, DEFAULT_OVERVIEW_WEIGHT, DEFAULT_TOP_K, DEFAULT_TOP_P,
                      MAX_THREADS, TopVOptions, check_flash_attn, check_layer, check_min_p, check_overview_weight,
                      check_threads, check_top_k, check_top_p, default_method)
from .pruning import METHODS, PARAM_NAMES, check_keep
from .session.model import check_rpc_servers

# the library's parameter names -> the flags that set them
FLAGS: dict[str, str] = {"keep": "--keep", "layer": "--layer", "method": "--method", "params": "--topv",
                         "overview_weight": "--overview-weight", "threads": "--threads", "n_ctx": "--ctx",
                         "temp": "--temp", "max_tokens": "--max-tokens", "n_gpu_layers": "--ngl",
                         "top_k": "--top-k", "top_p": "--top-p", "min_p": "--min-p", "flash_attn": "--flash-attn",
                         "rpc_servers": "--rpc"}


class Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and one plain line for a bad flag, as for every input problem."""

    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _checked(check: Callable[[Any], Any], convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type: parse the text with `convert`, then apply the library's `check` (its words)."""
    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        try:
            return check(value)
        except OptionError as e:
            raise argparse.ArgumentTypeError(e.problem) from None
    return parse


def _keep_number(text: str) -> float | int:
    """'0.25' or '25%' -> ratio 0.25; '144' -> 144 tokens ('1' is one token, '1.0' and '100%' keep all)."""
    t = text.strip()
    if t.endswith("%"):
        return float(t[:-1]) / 100.0
    return int(t) if t.lstrip("+").isdigit() else float(t)


def _at_least(minimum: float, convert: Callable[[str], Any]) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not v >= minimum:  # NaN fails too
            raise OptionError("value", f"must be {'>= 0' if minimum == 0 else f'at least {minimum:g}'} (got {v})")
        return v
    return check


keep_arg = _checked(check_keep, _keep_number, "a ratio (0.25), a percentage (25%) or a token count (144)")
layer_arg = _checked(check_layer, int, "a whole number")
threads_arg = _checked(check_threads, int, "a whole number")
overview_weight_arg = _checked(check_overview_weight, float, "a number")
rpc_servers_arg = _checked(check_rpc_servers, lambda t: t.split(","), "a list of HOST:PORT")
top_k_arg = _checked(check_top_k, int, "a whole number")
top_p_arg = _checked(check_top_p, float, "a number")
min_p_arg = _checked(check_min_p, float, "a number")
nonnegative_int = _checked(_at_least(0, int), int, "a whole number")
positive_int = _checked(_at_least(1, int), int, "a whole number")


def parse_topv_params(items: Sequence[str]) -> dict[str, float | int]:
    """--topv NAME=VALUE items -> pass parameters (checked by name and range when applied)."""
    params: dict[str, float | int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ChatError(f"--topv expects NAME=VALUE, got {item!r}")
        try:
            params[name.strip()] = int(value) if name.strip() == "iters" else float(value)
        except ValueError:
            raise ChatError(f"--topv {name}: not a number: {value!r}") from None
    return params


def add_pruning_flags(g: Any, *, many: bool = False) -> None:
    """--keep, --layer, --method, --overview-weight and --topv (`many`: eval's lists of keeps and layers)."""
    nargs = {"nargs": "+"} if many else {}
    g.add_argument("--keep", type=keep_arg, default=[0.5, 0.25, 0.11] if many else DEFAULT_KEEP, **nargs,
                   help="image tokens to keep: a ratio (0.25) or percentage (25%%) of each picture, or a whole "
                        "token count (144; so 1 is one token, 1.0 all of them); default "
                        f"{'0.5 0.25 0.11' if many else DEFAULT_KEEP}")
    g.add_argument("--layer", type=layer_arg, default=[DEFAULT_LAYER] if many else DEFAULT_LAYER, **nargs,
                   help="the LLM layer whose features the method reads (the paper's Li), 0..(layers - 2), "
                        "checked once the model is loaded; at 0 a method that reads no target (divprune, "
                        f"uniform, ...) needs no probe at all; default {DEFAULT_LAYER}")
    if not many:  # eval takes a comma-separated list of methods
        g.add_argument("--method", choices=list(METHODS), default=default_method(),
                       help=f"how to choose the kept tokens (default {default_method()}, chosen on two trained "
                            "models: docs/pass.md): topv (the paper's optimal transport), divprune (greedy feature "
                            "diversity), or another baseline, e.g. uniform2d (an even lattice) or uniform")
    g.add_argument("--overview-weight", type=overview_weight_arg, default=DEFAULT_OVERVIEW_WEIGHT,
                   help="tiled pictures: the overview's tokens count this many times when the picture's budget is "
                        "spread over its overview and tiles (1: the same ratio for every chunk; 'inf': keep the "
                        f"overview whole); default {DEFAULT_OVERVIEW_WEIGHT:g} (docs/tiled.md)")
    g.add_argument("--topv", metavar="NAME=VALUE", action="append", default=[],
                   help=f"a pass parameter ({', '.join(PARAM_NAMES)}), e.g. --topv recover=0.5")


def _flash_attn_word(text: str) -> str:
    """-fa's value as given (checked by the library's rule: on, off or auto)."""
    try:
        check_flash_attn(text)
    except OptionError as e:
        raise argparse.ArgumentTypeError(e.problem) from None
    return text


def add_device_flags(g: Any) -> None:
    """--threads, --ngl, --flash-attn, --no-mmproj-offload, with llama.cpp's names too (-t, -ngl, -fa)."""
    g.add_argument("-t", "--threads", type=threads_arg, default=None,
                   help=f"CPU threads, 1..{MAX_THREADS} (default: all cores)")
    g.add_argument("-ngl", "--ngl", "--n-gpu-layers", "--gpu-layers", dest="ngl", type=nonnegative_int, default=None,
                   help="text-model layers on the GPU, as llama.cpp's -ngl (default: all of them; the CPU build "
                        "runs everything on the CPU)")
    g.add_argument("-fa", "--flash-attn", type=_flash_attn_word, default="auto", metavar="on|off|auto",
                   help="flash attention, as llama.cpp's -fa (default auto: on where the backend supports it); "
                        "pruning works with either")
    g.add_argument("--no-mmproj-offload", action="store_true",
                   help="run the image encoder on the CPU (default: on the GPU when the build has one)")
    g.add_argument("--rpc", metavar="HOST:PORT[,...]", type=rpc_servers_arg, default=None,
                   help="llama.cpp rpc-server(s) on other machines that take text-model layers (--ngl) ahead of "
                        "this machine's GPU, as llama.cpp's --rpc; the image encoder stays here")


def add_sampling_flags(g: Any) -> None:
    """--temp, --top-k, --top-p, --min-p and --seed, as llama.cpp's (the filters apply at --temp > 0)."""
    g.add_argument("--temp", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    g.add_argument("--top-k", type=top_k_arg, default=DEFAULT_TOP_K,
                   help=f"at --temp > 0, sample among the K likeliest tokens; 0 = off (default {DEFAULT_TOP_K})")
    g.add_argument("--top-p", type=top_p_arg, default=DEFAULT_TOP_P,
                   help="at --temp > 0, among the likeliest tokens whose probabilities sum to P; 1 = off "
                        f"(default {DEFAULT_TOP_P})")
    g.add_argument("--min-p", type=min_p_arg, default=DEFAULT_MIN_P,
                   help="at --temp > 0, drop tokens less likely than P times the likeliest; 0 = off "
                        f"(default {DEFAULT_MIN_P})")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")


def device_options(args: argparse.Namespace) -> dict[str, Any]:
    """VisionChat's keyword arguments for the flags of add_device_flags (the same for chat, eval and viz)."""
    return dict(threads=args.threads, n_gpu_layers=args.ngl, flash_attn=args.flash_attn,
                mmproj_offload=not args.no_mmproj_offload, rpc_servers=args.rpc)


def pruning_options(args: argparse.Namespace, **overrides: Any) -> TopVOptions:
    """The TopVOptions the flags of add_pruning_flags ask for (`overrides` for eval's per-row values)."""
    fields = dict(enabled=not getattr(args, "no_prune", False), keep=args.keep, layer=args.layer,
                  method=getattr(args, "method", None) or default_method(), params=parse_topv_params(args.topv),
                  overview_weight=args.overview_weight)
    return TopVOptions(**{**fields, **overrides})


def in_flag_terms(e: ChatError | ContextWarning) -> str:
    """The library's message with the flag in place of the parameter's name."""
    if isinstance(e, (OptionError, ContextWarning)) and e.name in FLAGS:
        return str(e.with_name(FLAGS[e.name]))
    return str(e)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The library's warnings as one line on stderr, in the flags' terms (no file and line of source)."""
    text = in_flag_terms(message) if isinstance(message, ContextWarning) else str(message)
    print(f"warning: {text}", file=sys.stderr)


def run_command(command: Callable[[], int], cleanup: Callable[[], None] = lambda: None) -> int:
    """Run a command line's body: a ChatError is one line on stderr and exit code 2; Ctrl-C is 130."""
    import warnings

    warnings.showwarning = _show_warning
    try:
        return command()
    except ChatError as e:
        cleanup()
        print(f"error: {in_flag_terms(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        cleanup()
        return 130
