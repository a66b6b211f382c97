"""Chat with a llama.cpp vision-language model about images, with TopV pruning of the image tokens.

  python -m topv_edge.chat MODEL.gguf IMAGE [IMAGE ...]      interactive chat about the images
  python -m topv_edge.chat MODEL.gguf IMAGE --prompt "..."    one question, one answer
  python -m topv_edge.chat --demo                              the bundled demo model and picture

The mmproj (the vision encoder) is the .gguf next to the model whose name contains
"mmproj", or --mmproj. Pruning keeps --keep of each image's tokens (default 0.25),
chosen by TopV at layer --layer (default 2); the kept tokens keep their original
positions, so answers stay grounded, and the KV cache holds only them.

In the chat: /image PATH adds an image to your next message, /stats shows what the
last turn cost, /reset forgets the conversation, /quit (or Ctrl-D) leaves.

Exit codes: 0 done, 2 a problem with the input (the message says which), 1 a bug.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .runtime import ChatError, TopVOptions, TurnReport, VisionChat


def parse_keep(text: str) -> float | int:
    """'0.25' -> ratio 0.25; '144' -> 144 tokens. A ratio must be in (0, 1], a count >= 1."""
    try:
        value: float | int = int(text) if text.strip().lstrip("+").isdigit() else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if isinstance(value, float) and not (0.0 < value <= 1.0):
        raise argparse.ArgumentTypeError(f"a keep ratio must be in (0, 1] (got {text}); a whole number is a token count")
    if isinstance(value, int) and value < 1:
        raise argparse.ArgumentTypeError(f"a keep count must be at least 1 (got {text})")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (got {v})")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # exit code 2 with a plain message, as for every input problem
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="python -m topv_edge.chat", description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="the text model (.gguf)")
    ap.add_argument("images", nargs="*", help="images for the first message (PNG, JPEG, ... anything Pillow reads)")
    ap.add_argument("--demo", action="store_true", help="use the project's trained demo model and its picture (it answers one-word questions about "
                         "coloured shapes: count, colour, shape, yes/no, left/right, top/bottom)")
    ap.add_argument("--mmproj", help="the vision projector (.gguf); default: the *mmproj*.gguf next to the model")
    ap.add_argument("-p", "--prompt", help="ask this once, print the answer and exit (no interactive chat)")
    g = ap.add_argument_group("pruning")
    g.add_argument("--keep", type=parse_keep, default=0.25,
                   help="image tokens to keep: a ratio in (0, 1] (0.25 = a quarter) or a whole count (144); default 0.25")
    g.add_argument("--layer", type=_nonnegative_int, default=2,
                   help="the LLM layer whose input and output features TopV compares (the paper's Li); default 2")
    g.add_argument("--no-prune", action="store_true", help="decode every image token (plain llama.cpp behaviour)")
    g.add_argument("--topv", metavar="NAME=VALUE", action="append", default=[],
                   help="a pass parameter (alpha, beta, gamma, sigma, eps, tau, iters, recover), e.g. --topv recover=0.5")
    g = ap.add_argument_group("generation")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    g.add_argument("--ctx", type=int, default=None,
                   help="context size in tokens; default: what the first message needs after pruning + --max-tokens + 256")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    g.add_argument("--temp", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    g.add_argument("--max-tokens", type=int, default=None,
                   help="longest answer in tokens (default 256; 8 with --demo, whose answers are one word)")
    g = ap.add_argument_group("output")
    g.add_argument("--json", action="store_true",
                   help="after each answer print one JSON line: image tokens, kept tokens, encode/probe/pass/prefill ms, "
                        "time to first token, KV cells used")
    g.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    return ap


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


def _topv_options(args: argparse.Namespace) -> TopVOptions:
    return TopVOptions(enabled=not args.no_prune, keep=args.keep, layer=args.layer, params=parse_topv_params(args.topv))


def _report_json(report: TurnReport) -> str:
    d = report.as_dict()
    d["encode_ms"] = sum(i.encode_ms for i in report.images)
    d["probe_ms"] = sum(i.probe_ms for i in report.images)
    d["pass_ms"] = sum(i.pass_ms for i in report.images)
    return json.dumps(d)


def _print_stats(report: TurnReport | None, out) -> None:
    if report is None:
        print("no turn yet", file=out)
        return
    for k, im in enumerate(report.images, 1):
        state = "pruned" if im.pruned else f"not pruned{': ' + im.note if im.note else ''}"
        print(f"image {k}: {im.n_tokens} tokens -> {im.n_kept} kept ({state}); encode {im.encode_ms:.0f} ms, "
              f"probe {im.probe_ms:.0f} ms, TopV {im.pass_ms:.1f} ms, decode {im.decode_ms:.0f} ms", file=out)
    print(f"prompt text tokens {report.text_tokens}, prefill {report.prefill_ms:.0f} ms, "
          f"first token after {report.ttft_ms:.0f} ms, {report.generated_tokens} tokens in {report.generate_ms:.0f} ms, "
          f"KV cells {report.kv_cells}/{report.n_ctx}", file=out)


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{msg}", end="" if msg else "", file=sys.stderr, flush=True)


def _stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    if args.demo:
        from .demo import demo_files, demo_questions

        try:
            model, mmproj, image = demo_files()
        except FileNotFoundError as e:
            raise ChatError(str(e)) from None
        args.model, args.mmproj = str(model), str(mmproj)
        args.images = args.images or [str(image)]
        if args.max_tokens is None:
            args.max_tokens = 8
        print(f"demo: {model.name} and {image}", file=sys.stderr)
        if args.prompt is None:
            print("ask it, e.g.: " + " / ".join(q["question"] for q in demo_questions()[:3]), file=sys.stderr)
    if not args.model:
        raise ChatError("give a model (MODEL.gguf IMAGE ...) or --demo; see --help")
    options = _topv_options(args)
    chat = VisionChat(args.model, args.mmproj, topv=options, n_ctx=args.ctx, threads=args.threads, seed=args.seed,
                      temp=args.temp, max_tokens=256 if args.max_tokens is None else args.max_tokens, verbose=args.verbose, progress=_progress)
    with chat:
        if args.prompt is not None:
            _answer(chat, args.prompt, args.images, args.json)
            return 0
        return _repl(chat, list(args.images), args.json)


def _answer(chat: VisionChat, text: str, images: Sequence[str], as_json: bool) -> TurnReport:
    _, report = chat.ask(text, images, on_token=_stream)
    print()
    for im in report.images:
        if chat.topv.enabled and not im.pruned:
            print(f"note: image not pruned: {im.note}", file=sys.stderr)
    if as_json:
        print(_report_json(report), flush=True)
    return report


def _repl(chat: VisionChat, pending: list[str], as_json: bool) -> int:
    interactive = sys.stdin.isatty()
    if interactive:
        print("Ask about the image(s). /image PATH adds one, /stats, /reset, /quit.", file=sys.stderr)
    last: TurnReport | None = None
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd in ("/quit", "/exit", "/q"):
                return 0
            if cmd == "/stats":
                _print_stats(last, sys.stdout)
            elif cmd == "/reset":
                chat.reset()
                pending.clear()
                last = None
                print("conversation cleared", file=sys.stderr)
            elif cmd == "/image":
                path = rest.strip()
                if not path:
                    print("usage: /image PATH", file=sys.stderr)
                elif not Path(path).is_file():
                    print(f"image not found: {path}", file=sys.stderr)
                else:
                    pending.append(path)
                    print(f"image {path} will go with your next message", file=sys.stderr)
            else:
                print(f"unknown command {cmd}; /image PATH, /stats, /reset, /quit", file=sys.stderr)
            continue
        try:
            last = _answer(chat, line, pending, as_json)
        except ChatError as e:  # one bad turn (an unreadable image, a full context) does not end the chat
            print(f"error: {e}", file=sys.stderr)
            if not interactive:
                raise
        pending = []


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except ChatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
