"""Chat with a llama.cpp vision-language model about images, with TopV pruning of the image tokens.

  python -m topv_edge.chat MODEL.gguf IMAGE [IMAGE ...]      interactive chat about the images
  python -m topv_edge.chat MODEL.gguf IMAGE --prompt "..."    one question, one answer
  python -m topv_edge.chat --demo                              the bundled demo model and picture

The mmproj (the vision encoder) is the .gguf next to the model whose name contains
"mmproj", or --mmproj. Options may come anywhere, before, between or after the files.
Pruning keeps --keep of each image's tokens (default 0.25), chosen by --method at layer
--layer; the kept tokens keep their original positions, so answers stay
grounded, and the KV cache holds only them.

--keep: '0.25' or '25%' is a ratio of each image's tokens; a whole number ('144') is a
token count, so '--keep 1' keeps one token and '--keep 1.0' or '100%' keeps them all.
Reports give both the ratio and the count. Models that tile large pictures (SmolVLM,
LLaVA-1.6, InternVL, LFM2-VL, MiniCPM-V) make an overview and tiles of one picture: --keep
is then the picture's budget, spread over its chunks (--overview-weight), and /stats and
--json show each picture's tiles and chunks.

The context and its batch are sized automatically: the batch holds the largest image
whole (the probe needs that), and the context what the conversation needs, growing
when a later image needs more; --ctx fixes the context size instead.

In the chat: /image PATH [PATH ...] adds pictures to your next message (quotes and ~
work), /stats shows what the last turn cost, /reset forgets the conversation and its
pictures, /help lists the commands, /quit (or Ctrl-D) leaves. Ctrl-C stops an answer; at the prompt, Ctrl-C
twice leaves. Line editing and history (~/.cache/topv-edge/history) come from readline.

Exit codes: 0 done, 2 a problem with the input (the message says which), 1 a bug,
130 interrupted while loading.
"""

from __future__ import annotations

import signal
import sys


def _leave_quietly(signum, frame) -> None:
    raise SystemExit(130)


# Ctrl-C while the modules below load (a second or more on a busy machine) exits 130 without a traceback;
# main() gives Ctrl-C back to Python (KeyboardInterrupt) once it can handle it.
if __name__ == "__main__":
    signal.signal(signal.SIGINT, _leave_quietly)

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shlex  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Sequence  # noqa: E402

from .cli import (Parser, add_device_flags, device_options, add_pruning_flags, add_sampling_flags, in_flag_terms,  # noqa: E402
                  positive_int, pruning_options, run_command)
from .errors import ChatError  # noqa: E402
from .session import TurnReport, VisionChat  # noqa: E402
from .session.files import check_media  # noqa: E402

COMMANDS = (("/image PATH [PATH ...]", "add pictures to your next message (quotes and ~ work)"),
            ("/stats", "what the last turn cost: image tokens before and after pruning, times, KV cells"),
            ("/reset", "forget the conversation and its pictures (the system prompt stays)"),
            ("/help", "this list"),
            ("/quit", "leave (also /exit, /q, Ctrl-D; Ctrl-C twice at the prompt)"))


def _chat_template(text: str) -> str:
    """--chat-template: a Jinja template, or a file holding one."""
    path = Path(text).expanduser()
    if "{" not in text and path.is_file():
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise argparse.ArgumentTypeError(f"could not read the template file {text}: {e}") from None
    if "{" not in text:
        raise argparse.ArgumentTypeError(f"neither a Jinja template nor a file: {text!r} (llama.cpp's built-in "
                                         "template names are not known here: give the template itself)")
    return text


def _template_file(text: str) -> str:
    if not Path(text).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return _chat_template(text)


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="python -m topv_edge.chat", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="the text model (.gguf); with -m, -hf or --demo every file is a picture")
    ap.add_argument("images", nargs="*", help="images for the first message (PNG, JPEG, ... anything Pillow reads)")
    ap.add_argument("-m", "--model", dest="model_flag", metavar="MODEL",
                    help="the text model, as llama.cpp's -m (then every file on the line is a picture)")
    ap.add_argument("--image", dest="image_flags", metavar="IMAGE", action="append", default=[],
                    help="a picture for the first message, as llama.cpp's --image (repeatable; with the files given)")
    ap.add_argument("--demo", action="store_true", help="use the project's trained demo model and its picture (it answers one-word questions about "
                         "coloured shapes: count, colour, shape, yes/no, left/right, top/bottom)")
    ap.add_argument("--mmproj", help="the vision projector (.gguf); default: the *mmproj*.gguf next to the model")
    ap.add_argument("-p", "--prompt", help="ask this once, print the answer and exit (no interactive chat)")
    g = ap.add_argument_group("from the Hugging Face Hub (needs: pip install huggingface-hub)")
    g.add_argument("-hf", "-hfr", "--hf-repo", dest="hf_repo", metavar="USER/MODEL[:QUANT]",
                   help="download the model and its mmproj into the Hub cache ($HF_HOME), as llama.cpp's -hf: the GGUF "
                        "whose name has QUANT (case-insensitive; default Q4_K_M, else Q8_0, else the first), and the "
                        "repository's *mmproj* GGUF of the closest quantization")
    g.add_argument("-hff", "--hf-file", metavar="FILE", help="with -hf: this file of the repository instead of QUANT's")
    g.add_argument("-hft", "--hf-token", metavar="TOKEN",
                   help="a Hub access token for private or gated repositories (default: $HF_TOKEN or the saved login)")
    g = ap.add_argument_group("pruning")
    add_pruning_flags(g)
    g.add_argument("--no-prune", action="store_true", help="decode every image token (plain llama.cpp behaviour)")
    g = ap.add_argument_group("conversation")
    g.add_argument("-sys", "--system-prompt", metavar="TEXT",
                   help="a system message that opens the conversation (and stays after /reset), placed by the model's "
                        "chat template (a template without a system role may drop or refuse it)")
    g.add_argument("--chat-template", type=_chat_template, metavar="JINJA|FILE",
                   help="a Jinja chat template (or a file holding one) instead of the model's own; it must print "
                        "text parts (pictures are text parts holding the media marker)")
    g.add_argument("--chat-template-file", dest="chat_template", type=_template_file, metavar="FILE",
                   help="the same, from a file, as llama.cpp's flag")
    g = ap.add_argument_group("generation")
    g.add_argument("-c", "--ctx", "--ctx-size", dest="ctx", type=positive_int, default=None,
                   help="context size in tokens (llama.cpp rounds it up to a multiple of 256); default: what the "
                        "conversation needs after pruning + --max-tokens + 256 (grown when a later image needs more); "
                        "beyond the model's trained context it warns, as llama.cpp")
    g.add_argument("-n", "--max-tokens", "--n-predict", "--predict", dest="max_tokens", type=positive_int, default=None,
                   help="longest answer in tokens (default 256; 8 with --demo, whose answers are one word)")
    add_sampling_flags(g)
    add_device_flags(ap.add_argument_group("device (GPU builds: scripts/install.sh --backend cuda|metal|vulkan)"))
    g = ap.add_argument_group("output")
    g.add_argument("--json", action="store_true",
                   help="print JSON only on stdout: one object per answer on its own line (the answer, the options "
                        "used: keep, method, layer, overview_weight, params; image tokens and kept tokens, "
                        "encode/probe/pass/prefill ms, time to first token, KV cells); \"images\" has one entry per "
                        "image chunk, \"pictures\" one per picture (a tiled picture: its tiles and chunks). Notes, "
                        "errors and /stats go to stderr")
    g.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    return ap


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, options anywhere among the files (`MODEL --mmproj P IMAGE` works)."""
    return build_parser().parse_intermixed_args(argv)


def _ms(x: float) -> float | None:
    """A time for JSON: 0.1 ms resolution (3 significant digits below 1 ms), null when not measured (NaN)."""
    if x != x:
        return None
    return round(x, 1) if x >= 1 else float(f"{x:.3g}")


def _figure(x: float | int) -> float | int | str:
    """A pass parameter for JSON: 6 significant digits (they are float32 in C), 'inf' for infinity."""
    if isinstance(x, float):
        return "inf" if math.isinf(x) else float(f"{x:.6g}")
    return x


def _report_json(answer: str, report: TurnReport, devices: dict | None = None) -> str:
    """One answer as one JSON object on one line: the answer first, then the options used and the figures (times
    in ms, rounded). Strict JSON: no NaN, no Infinity (an infinite overview weight is "inf")."""
    d = report.as_dict()
    for key in ("prefill_ms", "ttft_ms", "generate_ms"):
        d[key] = _ms(d[key])
    for im in d["images"]:
        for key in ("encode_ms", "probe_ms", "pass_ms", "decode_ms"):
            im[key] = _ms(im[key])
        im["kept_fraction"] = round(im["kept_fraction"], 4)
    for pic in d["pictures"]:
        pic["kept_fraction"] = round(pic["kept_fraction"], 4)
    d["encode_ms"] = _ms(sum(i.encode_ms for i in report.images))
    d["probe_ms"] = _ms(sum(i.probe_ms for i in report.images))
    d["pass_ms"] = _ms(sum(i.pass_ms for i in report.images))
    d["overview_weight"] = _figure(report.overview_weight)
    d["params"] = {k: _figure(v) for k, v in report.params.items()}
    if devices is not None:
        d["devices"] = devices  # which build and device ran (VisionChat.devices())
    return json.dumps({"answer": answer, **d}, allow_nan=False)


def _stat_ms(x: float, digits: int = 0) -> str:
    """A time for /stats: 'not measured' when it was not (an interrupted prefill, an unpruned image)."""
    return "not measured" if x != x else f"{x:.{digits}f} ms"


def _print_stats(report: TurnReport | None, out) -> None:
    if report is None:
        print("no turn yet", file=out)
        return
    def chunk_line(im) -> str:
        state = f"pruned by {report.method}, --keep {report.keep}" if im.pruned else f"not pruned: {im.note}"
        return (f"{im.n_tokens} tokens -> {im.n_kept} kept ({100 * im.kept_fraction:.1f}%; {state}); "
                f"encode {_stat_ms(im.encode_ms)}, probe {_stat_ms(im.probe_ms)}, "
                f"{report.method or 'pass'} pass {_stat_ms(im.pass_ms, 1)}, decode {_stat_ms(im.decode_ms)}")

    for k, pic in enumerate(report.pictures, 1):
        if pic.is_video:  # one line for the video, then one per chunk (a frame, or two merged in time)
            print(f"video {k}: {pic.n_frames} frames in {len(pic.chunks)} chunks: {pic.n_tokens} tokens -> "
                  f"{pic.n_kept} kept ({100 * pic.n_kept / max(1, pic.n_tokens):.1f}%)", file=out)
            for im in pic.chunks:
                frames = f"frame {im.frame}" if im.n_frames == 1 else f"frames {im.frame}-{im.frame + im.n_frames - 1}"
                print(f"  {frames}: {chunk_line(im)}", file=out)
            continue
        if len(pic.chunks) == 1:
            print(f"image {k}: {chunk_line(pic.chunks[0])}", file=out)
            continue
        # a tiled picture: one budget for all its chunks, then each chunk
        cols, rows = pic.tiles
        print(f"image {k}: overview + {pic.n_tiles} tiles ({cols} x {rows}): {pic.n_tokens} tokens -> {pic.n_kept} "
              f"kept ({100 * pic.n_kept / max(1, pic.n_tokens):.1f}%)", file=out)
        for im in pic.chunks:
            where = "overview" if im.role == "overview" else f"tile ({im.tile[0]}, {im.tile[1]})" if im.tile else im.role
            print(f"  {where}: {chunk_line(im)}", file=out)
    print(f"prompt text tokens {report.text_tokens}, prefill {_stat_ms(report.prefill_ms)}, "
          f"first token after {_stat_ms(report.ttft_ms)}, {report.generated_tokens} tokens in "
          f"{_stat_ms(report.generate_ms)}{' (stopped)' if report.stopped else ''}, "
          f"KV cells {report.kv_cells}/{report.n_ctx}", file=out)


def _print_help(out) -> None:
    width = max(len(cmd) for cmd, _ in COMMANDS)
    for cmd, what in COMMANDS:
        print(f"  {cmd:<{width}}  {what}", file=out)
    print("  anything else is a message to the model; Ctrl-C stops an answer", file=out)


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)


def _stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _check_images(paths: Sequence[str]) -> None:
    """Every command-line picture is readable, before the model loads (a bad one ends the program: exit 2)."""
    for p in paths:
        check_media(p)


class _Session:
    """What the command line adds to a VisionChat: notes, pictures waiting for the next message, Ctrl-C."""

    def __init__(self, chat: VisionChat, as_json: bool) -> None:
        self.chat = chat
        self.as_json = as_json
        self.noted_no_picture = False
        self.last: TurnReport | None = None

    def answer(self, text: str, images: Sequence[str], stop: Callable[[], bool] | None = None) -> TurnReport:
        if not images and self.chat.n_images == 0 and not self.noted_no_picture:
            print("note: no picture in this conversation: the model answers from the text alone"
                  " (/image PATH adds one)", file=sys.stderr)
            self.noted_no_picture = True
        answer, report = self.chat.ask(text, images, on_token=None if self.as_json else _stream, stop=stop)
        if not self.as_json:
            print()
        if report.stopped:
            print("(answer stopped)", file=sys.stderr)
        for im in report.images:
            # (a tiled picture's overview kept whole by the budget rule is the rule, not news)
            if self.chat.topv.enabled and not im.pruned and not (im.kept_whole and im.role != "single"):
                print(f"note: image not pruned: {im.note}", file=sys.stderr)
        if self.as_json:
            print(_report_json(answer, report, self.chat.devices()), flush=True)
        self.last = report
        return report


class _StopOnCtrlC:
    """While active, Ctrl-C asks the answer to stop (at the next token) instead of ending the program."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self) -> "_StopOnCtrlC":
        self.requested = False
        self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._old)


def history_path() -> Path:
    """The REPL's readline history: in the project's cache directory ($XDG_CACHE_HOME or ~/.cache/topv-edge)."""
    from .llama.build import cache_root

    return cache_root() / "history"


def _setup_readline() -> Callable[[], None]:
    """Line editing and history for input(); returns what saves the history (a no-op without readline)."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input()
        return lambda: None
    path = history_path()
    try:
        readline.read_history_file(path)
    except OSError:
        pass  # no history yet
    readline.set_history_length(1000)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError as e:
            print(f"note: could not save the history to {path}: {e}", file=sys.stderr)

    return save


def _files(args: argparse.Namespace) -> None:
    """Where the model and the pictures come from: MODEL IMAGE..., -m MODEL, -hf REPO, --demo; --image adds more."""
    sources = [name for name, given in (("-m", args.model_flag), ("-hf", args.hf_repo), ("--demo", args.demo)) if given]
    if len(sources) > 1:
        raise ChatError(f"{' and '.join(sources)} both name the model: give one")
    if sources and args.model:  # the model comes from the flag: every file on the line is a picture
        args.images = [args.model, *args.images]
        args.model = None
    args.images = [*args.images, *args.image_flags]
    if args.model_flag:
        args.model = args.model_flag
    elif args.hf_repo:
        from .hub import download

        model, mmproj = download(args.hf_repo, args.hf_file, args.hf_token, want_mmproj=args.mmproj is None,
                                 note=lambda msg: print(msg, file=sys.stderr))
        if args.mmproj is None and mmproj is None:
            raise ChatError(f"{args.hf_repo.partition(':')[0]} has no *mmproj*.gguf (the vision projector): give one "
                            "with --mmproj")
        args.model, args.mmproj = str(model), args.mmproj or str(mmproj)
    elif args.hf_file:
        raise ChatError("--hf-file needs -hf USER/MODEL (the repository it is in)")
    elif args.demo:
        _demo_files(args)


def _demo_files(args: argparse.Namespace) -> None:
    from .demo import demo_files, demo_questions

    try:
        model, mmproj, image = demo_files()
    except FileNotFoundError as e:
        raise ChatError(str(e)) from None
    args.model, args.mmproj = str(model), str(mmproj)
    args.images = args.images or [str(image)]
    if args.max_tokens is None:
        args.max_tokens = 8
    print(f"demo: {model.name} and {', '.join(args.images)}", file=sys.stderr)
    if args.prompt is None:
        print("ask it, e.g.: " + " / ".join(q["question"] for q in demo_questions()[:3])
              + " (one question per conversation: /reset between them)", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    _files(args)
    if not args.model:
        raise ChatError("give a model (MODEL.gguf IMAGE ..., -m MODEL.gguf or -hf USER/MODEL) or --demo; see --help")
    options = pruning_options(args)
    options.validate()
    _check_images(args.images)
    chat = VisionChat(args.model, args.mmproj, topv=options, n_ctx=args.ctx, seed=args.seed, temp=args.temp,
                      max_tokens=256 if args.max_tokens is None else args.max_tokens, verbose=args.verbose,
                      progress=_progress, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                      system_prompt=args.system_prompt, chat_template=args.chat_template, **device_options(args))
    with chat:
        session = _Session(chat, args.json)
        if args.prompt is not None:
            session.answer(args.prompt, args.images)
            return 0
        return _repl(session, list(args.images))


def _usable(pending: list[str]) -> list[str]:
    """The pending pictures still readable; each one that is not is dropped, and said so."""
    good = []
    for path in pending:
        try:
            check_media(path)
            good.append(path)
        except ChatError as e:
            print(f"picture dropped: {e}", file=sys.stderr)
    return good


def _add_images(rest: str, pending: list[str]) -> None:
    """/image PATH [PATH ...]: quoted paths and ~ work; a bad picture is refused alone."""
    try:
        paths = shlex.split(rest)
    except ValueError as e:
        print(f"/image: {e} (quote a path with spaces: /image \"my photo.jpg\")", file=sys.stderr)
        return
    if not paths:
        print("usage: /image PATH [PATH ...]", file=sys.stderr)
        return
    for path in paths:
        try:
            check_media(path)
        except ChatError as e:
            print(f"not added: {e}", file=sys.stderr)
            continue
        pending.append(str(Path(path).expanduser()))
        print(f"picture {path} will go with your next message ({len(pending)} waiting)", file=sys.stderr)


def _repl(session: _Session, pending: list[str]) -> int:
    chat = session.chat
    interactive = sys.stdin.isatty()
    report_to = sys.stderr if session.as_json else sys.stdout  # --json: stdout holds the answers' JSON only
    save_history = _setup_readline() if interactive else (lambda: None)
    if interactive:
        print("Ask about the picture(s). /image PATH adds one, /stats, /reset, /help, /quit; Ctrl-C stops an answer.",
              file=sys.stderr)
    interrupted = False  # Ctrl-C at the prompt once: a second one leaves
    stopper = _StopOnCtrlC()
    try:
        while True:
            try:
                line = input("> " if interactive else "")
            except EOFError:
                if interactive:
                    print(file=sys.stderr)
                return 0
            except KeyboardInterrupt:
                print(file=sys.stderr)
                if interrupted:
                    return 0
                interrupted = True
                print("(Ctrl-C again or Ctrl-D to leave)", file=sys.stderr)
                continue
            interrupted = False
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                cmd, _, rest = line.partition(" ")
                if cmd in ("/quit", "/exit", "/q"):
                    return 0
                if cmd == "/stats":
                    _print_stats(session.last, report_to)
                elif cmd in ("/help", "/?"):
                    _print_help(report_to)
                elif cmd == "/reset":
                    turns, pictures = sum(m["role"] == "user" for m in chat.messages), chat.n_images
                    chat.reset()
                    waiting = len(pending)
                    pending.clear()
                    session.last = None
                    print(f"conversation cleared: {turns} message(s) and {pictures} picture(s) are gone"
                          + (f", and the {waiting} waiting picture(s) too" if waiting else "")
                          + "; /image PATH adds a new picture", file=sys.stderr)
                elif cmd == "/image":
                    _add_images(rest, pending)
                else:
                    print(f"unknown command {cmd}; /help lists them: /image PATH, /stats, /reset, /help, /quit",
                          file=sys.stderr)
                continue
            images = _usable(pending)
            pending = []
            try:
                with stopper:
                    session.answer(line, images, stop=stopper)
            except ChatError as e:  # one bad turn (a full context, ...) does not end the chat
                print(f"error: {in_flag_terms(e)}", file=sys.stderr)
                if images:
                    print(f"(that message and its {len(images)} picture(s) were not sent)", file=sys.stderr)
                if not interactive:
                    raise
    finally:
        save_history()


def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on Ctrl-C is a KeyboardInterrupt
    try:
        args = parse_args(argv)
    except KeyboardInterrupt:
        return 130
    return run_command(lambda: run(args), cleanup=lambda: _progress(""))


if __name__ == "__main__":
    sys.exit(main())
