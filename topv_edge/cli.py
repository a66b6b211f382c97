"""What the command lines (chat, eval, viz) share: argument types, the pruning flags, and the error exit.

The library's checks (topv_edge.options, topv_edge.pruning) own every rule and word their messages with
parameter names; here a flag's type only parses the text and calls that check, and `run_command` puts the
flag in the parameter's place, so "keep ratio must be in (0, 1]" reads "--keep ratio must be in (0, 1]".
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

from .errors import ChatError, OptionError
from .options import (DEFAULT_KEEP, DEFAULT_LAYER, DEFAULT_OVERVIEW_WEIGHT, MAX_THREADS, TopVOptions, check_layer,
                      check_overview_weight, check_threads, default_method)
from .pruning import METHODS, PARAM_NAMES, check_keep
from .session.model import check_rpc_servers

# the library's parameter names -> the flags that set them
FLAGS: dict[str, str] = {"keep": "--keep", "layer": "--layer", "method": "--method", "params": "--topv",
                         "overview_weight": "--overview-weight", "threads": "--threads", "n_ctx": "--ctx",
                         "temp": "--temp", "max_tokens": "--max-tokens", "n_gpu_layers": "--ngl",
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


def add_device_flags(g: Any) -> None:
    g.add_argument("--threads", type=threads_arg, default=None, help=f"CPU threads, 1..{MAX_THREADS} (default: all cores)")
    g.add_argument("--ngl", type=nonnegative_int, default=None,
                   help="text-model layers on the GPU, as llama.cpp's -ngl (default: all of them; the CPU build "
                        "runs everything on the CPU)")
    g.add_argument("--no-mmproj-offload", action="store_true",
                   help="run the image encoder on the CPU (default: on the GPU when the build has one)")
    g.add_argument("--rpc", metavar="HOST:PORT[,...]", type=rpc_servers_arg, default=None,
                   help="llama.cpp rpc-server(s) on other machines that take text-model layers (--ngl) ahead of "
                        "this machine's GPU, as llama.cpp's --rpc; the image encoder stays here")


def pruning_options(args: argparse.Namespace, **overrides: Any) -> TopVOptions:
    """The TopVOptions the flags of add_pruning_flags ask for (`overrides` for eval's per-row values)."""
    fields = dict(enabled=not getattr(args, "no_prune", False), keep=args.keep, layer=args.layer,
                  method=getattr(args, "method", None) or default_method(), params=parse_topv_params(args.topv),
                  overview_weight=args.overview_weight)
    return TopVOptions(**{**fields, **overrides})


def in_flag_terms(e: ChatError) -> str:
    """The library's message with the flag in place of the parameter's name."""
    if isinstance(e, OptionError) and e.name in FLAGS:
        return str(e.with_name(FLAGS[e.name]))
    return str(e)


def run_command(command: Callable[[], int], cleanup: Callable[[], None] = lambda: None) -> int:
    """Run a command line's body: a ChatError is one line on stderr and exit code 2; Ctrl-C is 130."""
    try:
        return command()
    except ChatError as e:
        cleanup()
        print(f"error: {in_flag_terms(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        cleanup()
        return 130
