"""End-to-end cost of an image question with and without TopV, on realistic-shape synthetic models.

For each preset (random weights in the exact layout of the family, generated on first use), each keep
ratio and each probe layer, a fresh process loads the model, asks one question about a picture
`--repeats` times (the conversation reset in between, one answer token) and reports medians of: image
encode, probe, pass, kept-token decode, image prefill (probe + pass + decode), time to first token, KV
cells, peak RSS. Every figure is also given as a ratio to unpruned (keep 1.0) measured in the same run.
Prints a table, writes JSON and a PNG plot.

With several --backend values, every configuration runs on each backend's llama.cpp build
(scripts/build_llama_cpp.sh --backend B), side by side in one run: ratios are to unpruned on the same
backend, and each row says whether its answer equals the CPU build's.

    python scripts/bench_e2e.py                              # llava-1b and qwen2vl-2b, all keeps, layers 0 and 2
    python scripts/bench_e2e.py --presets llava:1b --repeats 3
    python scripts/bench_e2e.py --backend cpu vulkan --ngl 99 --presets llava:1b --keep 1.0 0.25 --layer 2
    python scripts/bench_e2e.py --presets qwen3vl:4b:Q4_K_M --image-tokens 1024 4096 --keep 1.0 0.25 --layer 0
    python scripts/bench_e2e.py --presets gemma3:4b:Q4_K_M --picture-size 896x896 --keep 1.0 0.25

--picture-size sets the picture (one baseline each); --image-tokens asks for about N image tokens instead, for the
families whose token count follows the picture's size (Qwen2/2.5/3-VL: a square of (patch x merge)-pixel cells,
within llama.cpp's limit of 4096 tokens). Each row reports the tokens the picture really gave.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What is in the picture?"


def measure(model: str, picture: str, keep: float, layer: int, repeats: int, threads: int,
            ngl: int | None = None, mmproj_offload: bool = True, answer_tokens: int = 8,
            mmproj: str | None = None, warmup_runs: int = 1) -> dict:
    """Runs in the child process: one configuration."""
    import resource

    from topv_edge.llama import libs as llama_libs
    from topv_edge.options import TopVOptions
    from topv_edge.session import VisionChat

    opts = TopVOptions(enabled=keep < 1.0, keep=keep, layer=layer)
    runs = []
    with VisionChat(model, mmproj, topv=opts, threads=threads, max_tokens=answer_tokens, n_gpu_layers=ngl,
                    mmproj_offload=mmproj_offload) as chat:
        for _ in range(repeats + warmup_runs):  # the first runs warm caches and allocations: not counted
            chat.reset()
            answer, rep = chat.ask(QUESTION, [picture])  # greedy: the same answer every run, compared across backends
            ims = rep.images  # one chunk, or a tiled picture's overview and tiles: their sums
            total = {k: sum(getattr(im, k) for im in ims) for k in ("encode_ms", "probe_ms", "pass_ms", "decode_ms")}
            runs.append({**total, "image_prefill_ms": total["probe_ms"] + total["pass_ms"] + total["decode_ms"],
                         "ttft_ms": rep.ttft_ms, "kv_cells": rep.kv_cells - rep.generated_tokens,
                         "image_tokens": sum(im.n_tokens for im in ims), "kept_tokens": sum(im.n_kept for im in ims),
                         "chunks": len(ims),
                         # a tiled picture's overview kept whole by the budget rule counts as pruned with it
                         "pruned": any(im.pruned for im in ims) and all(im.pruned or im.kept_whole for im in ims)})
        device = chat.devices()
    runs = runs[warmup_runs:]
    out = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k != "pruned"}
    out["pruned"] = all(r["pruned"] for r in runs)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["answer"] = answer
    out["device"] = device
    out["build"] = llama_libs.load().backend
    return out


def backend_env(backend: str) -> dict[str, str]:
    """The environment of a child on `backend`'s build (Vulkan: llvmpipe visible, Mesa shader cache kept)."""
    from topv_edge.llama import build as llama_build
    from topv_edge.llama import libs as llama_libs

    env = {k: v for k, v in os.environ.items() if k not in ("TOPV_EDGE_LLAMA_DIR", "LLAMA_CPP_LIB_PATH", "MTMD_CPP_LIB")}
    env["TOPV_EDGE_BACKEND"] = backend
    # the child imports the topv_edge this process runs (sys.path[0] is scripts/, not the repository)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(llama_libs.__file__).resolve().parents[1]),
                                         *filter(None, [os.environ.get("PYTHONPATH")])])
    if backend == "vulkan":
        env.setdefault("GGML_VK_VISIBLE_DEVICES", "0")  # ggml-vulkan hides CPU-type devices (llvmpipe) otherwise
        env.setdefault("MESA_SHADER_CACHE_DIR", str(llama_build.backend_build_dir("vulkan") / "mesa-shader-cache"))
    return env


def run_child(model: Path, picture: Path, keep: float, layer: int, repeats: int, threads: int,
              backend: str = "cpu", ngl: int | None = None, mmproj_offload: bool = True,
              mmproj: Path | None = None, warmup_runs: int = 1) -> dict:
    code = ("import json, sys; sys.path.insert(0, %r); from bench_e2e import measure; "
            "print(json.dumps(measure(%r, %r, %r, %r, %r, %r, %r, %r, mmproj=%r, warmup_runs=%r)))"
            % (str(Path(__file__).parent), str(model), str(picture), keep, layer, repeats, threads, ngl,
               mmproj_offload, None if mmproj is None else str(mmproj), warmup_runs))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=backend_env(backend))
    if r.returncode != 0:
        raise SystemExit(f"benchmark child failed ({backend}, {model.name}, keep {keep}, layer {layer}):\n"
                         f"{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


RATIO_KEYS = ("encode_ms", "image_prefill_ms", "ttft_ms", "kv_cells", "peak_rss_mb")


def picture_size(text: str) -> tuple[int, int]:
    """argparse type: "WxH" -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a picture size is WxH, e.g. 1024x1024, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"a picture needs at least 16 x 16 pixels, got {text!r}")
    return w, h


def size_for_tokens(vision, n_tokens: int) -> tuple[int, int]:
    """The square picture that gives about `n_tokens` image tokens on a Qwen2/2.5/3-VL-style preset, whose
    preprocessor keeps the picture's size in cells of patch x merge pixels (llama.cpp caps it at 4096 tokens)."""
    if not vision.projector.startswith("qwen"):
        raise SystemExit(f"--image-tokens needs a Qwen-VL preset (projector {vision.projector!r}): use --picture-size")
    side = round(n_tokens ** 0.5) * vision.patch_size * vision.spatial_merge
    return side, side


def bench_presets() -> dict:
    """Presets of this benchmark only: llava:16l, a 16-layer llama (n_embd 512) behind a small ViT at 336 px
    (576 image tokens): the depth of a 1B model at a fraction of its cost, for slow devices (Mesa's llvmpipe);
    llava16:16l, the same tiled as LLaVA-1.6 (a tiled picture)."""
    from dataclasses import replace

    from topv_edge.lab.synth import ModelConfig, TextConfig, VisionConfig

    text = TextConfig(n_embd=512, n_ff=1408, n_layer=16, n_head=8, n_head_kv=4)
    vision = VisionConfig(image_size=336, patch_size=14, n_embd=128, n_ff=320, n_layer=2, n_head=4, proj_hidden=512)
    return {("llava", "16l"): ModelConfig("llava", text, vision, dtype="f16"),
            # the same with LLaVA-1.6's anyres pinpoints (336 x 672, 672 x 336, 672 x 672): the 448 px picture
            # becomes 2 x 2 tiles and the overview, 5 x 576 = 2880 image tokens (a tiled picture's prefill)
            ("llava16", "16l"): ModelConfig("llava16", text, replace(vision, grid_pinpoints=(336, 672, 672, 336, 672, 672)),
                                            dtype="f16")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["llava:1b", "qwen2vl:2b"], help="family:preset[:QTYPE] (topv_edge.lab.synth); QTYPE quantises the text model with "
                         "llama-quantize, e.g. qwen3vl:4b:Q4_K_M")
    ap.add_argument("--keep", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.11, 0.05])
    ap.add_argument("--layer", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--repeats", type=int, default=3, help="timed repetitions per configuration (median)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--models", type=Path, default=REPO / "models", help="where presets are generated")
    ap.add_argument("--json", type=Path, default=REPO / "results" / "bench_e2e.json")
    ap.add_argument("--png", type=Path, default=REPO / "results" / "bench_e2e.png")
    ap.add_argument("--backend", nargs="+", default=["cpu"], choices=["cpu", "vulkan", "cuda", "metal"],
                    help="llama.cpp builds to run on, side by side (scripts/build_llama_cpp.sh --backend B)")
    ap.add_argument("--ngl", type=int, default=None,
                    help="text-model layers on the GPU (default: all, as llama.cpp; ignored by the CPU build)")
    ap.add_argument("--no-mmproj-offload", action="store_true", help="run the image encoder on the CPU")
    ap.add_argument("--picture-size", nargs="+", type=picture_size, default=None, metavar="WxH",
                    help="the pictures asked about, one baseline each (default 448x448)")
    ap.add_argument("--image-tokens", nargs="+", type=int, default=None, metavar="N",
                    help="about N image tokens per picture instead (Qwen2/2.5/3-VL presets: a square picture)")
    ap.add_argument("--warmup-runs", type=int, default=1,
                    help="untimed runs before the timed ones, per configuration (0 for the slow large sizes)")
    ap.add_argument("--markdown", type=Path, default=None, metavar="JSON",
                    help="print the Markdown table of a results file this script wrote, and exit (how the tables of "
                         "docs/results.md and the README are made)")
    args = ap.parse_args()
    if args.markdown:
        print(markdown_table(json.loads(args.markdown.read_text())["rows"]))
        return 0
    if args.picture_size and args.image_tokens:
        ap.error("give --picture-size or --image-tokens, not both")

    from topv_edge.llama import build as llama_build

    for b in args.backend:
        if not (llama_build.backend_build_dir(b) / "lib").is_dir():
            raise SystemExit(f"the {b} build of llama.cpp is absent: bash scripts/build_llama_cpp.sh --backend {b}")

    from topv_edge.lab import synth as synthetic
    from topv_edge.lab.synth import demo_image, write_pair

    synthetic.PRESETS.update(bench_presets())

    args.models.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.presets:
        family, preset, *qtype = spec.split(":")  # family:preset[:QTYPE], e.g. qwen3vl:4b:Q4_K_M
        quantize = qtype[0] if qtype else None
        sizes = args.picture_size or [(448, 448)]
        if args.image_tokens:
            sizes = [size_for_tokens(synthetic.PRESETS[(family, preset)].vision, n) for n in args.image_tokens]
        print(f"generating {spec} (once) ...", file=sys.stderr, flush=True)
        model, mmproj = write_pair(family, preset, args.models, seed=0, quantize=quantize)
        preset = f"{preset}-{quantize}" if quantize else preset
        for w, h in sizes:
            picture = args.models / f"bench-picture-{w}x{h}.png"
            demo_image((w, h), seed=7).save(picture)
            answers: dict[tuple, str] = {}  # (keep, layer) -> the CPU build's answer
            for backend in args.backend:
                base = None
                for keep in sorted(set(args.keep), reverse=True):
                    for layer in (args.layer if keep < 1.0 else [args.layer[0]]):
                        print(f"{backend}: {family}/{preset} {w}x{h} keep {keep} layer {layer} ...", file=sys.stderr,
                              flush=True)
                        m = run_child(model, picture, keep, layer, args.repeats, args.threads, backend, args.ngl,
                                      not args.no_mmproj_offload, mmproj, args.warmup_runs)
                        if keep >= 1.0:
                            base = m
                        row = {"model": f"{family}-{preset}", "picture": f"{w}x{h}", "backend": backend,
                               "ngl": args.ngl, "keep": keep, "layer": layer if keep < 1.0 else None, **m}
                        for k in RATIO_KEYS:
                            row[k + "_ratio"] = m[k] / base[k] if base and base[k] else None
                        cfg = (keep, row["layer"])
                        if backend == "cpu":
                            answers[cfg] = m["answer"]
                        row["answer_equals_cpu"] = (m["answer"] == answers[cfg]) if cfg in answers else None
                        rows.append(row)
                        write_json(args, rows)  # after every configuration: a long run stopped early keeps its rows

    head = (f"{'model':<14}{'picture':>10}{'backend':>8}{'keep':>6}{'layer':>6}{'tokens':>9}{'encode':>9}{'probe':>8}{'pass':>7}"
            f"{'decode':>8}{'img prefill':>13}{'ratio':>7}{'TTFT':>9}{'ratio':>7}{'KV cells':>10}{'ratio':>7}"
            f"{'RSS MB':>8}{'ratio':>7}{'= CPU':>7}")
    print(head)
    for r in rows:
        layer = "-" if r["layer"] is None else str(r["layer"])
        same = {True: "yes", False: "NO", None: "-"}[r["answer_equals_cpu"]]
        print(f"{r['model']:<14}{r.get('picture', '448x448'):>10}{r['backend']:>8}{r['keep']:>6.2f}{layer:>6}{r['kept_tokens']:>4.0f}/{r['image_tokens']:<4.0f}"
              f"{r['encode_ms']:>9.0f}{r['probe_ms']:>8.0f}{r['pass_ms']:>7.1f}{r['decode_ms']:>8.0f}"
              f"{r['image_prefill_ms']:>13.0f}{r['image_prefill_ms_ratio']:>7.2f}{r['ttft_ms']:>9.0f}"
              f"{r['ttft_ms_ratio']:>7.2f}{r['kv_cells']:>10.0f}{r['kv_cells_ratio']:>7.2f}"
              f"{r['peak_rss_mb']:>8.0f}{r['peak_rss_mb_ratio']:>7.2f}{same:>7}")
    write_json(args, rows)
    plot(rows, args.png)
    print(f"wrote {args.json} and {args.png}", file=sys.stderr)
    return 0


def write_json(args: argparse.Namespace, rows: list[dict]) -> None:
    args.json.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "threads": args.threads, "repeats": args.repeats,
            "python": platform.python_version(), "question": QUESTION, "backends": args.backend, "ngl": args.ngl,
            "mmproj_offload": not args.no_mmproj_offload, "command": " ".join(["python", *sys.argv]),
            "devices": {r["backend"]: r["device"] for r in rows}}
    args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table: every phase in ms, and the ratios to unpruned of the same picture."""
    def ratio(r: dict, key: str) -> str:
        v = r.get(key + "_ratio")
        return "-" if v is None else f"{v:.2f}"

    def seconds(ms: float) -> str:
        return f"{ms / 1000:.1f}"

    lines = ["| picture | keep | layer | kept / image tokens | encode s | probe s | pass s | kept decode s | "
             "image prefill s | ratio | TTFT s | ratio | KV cells | ratio | peak RSS MiB | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        layer = "-" if r["layer"] is None else str(r["layer"])
        lines.append(f"| {r.get('picture', '448x448')} | {r['keep']:g} | {layer} | "
                     f"{r['kept_tokens']:.0f} / {r['image_tokens']:.0f} | {seconds(r['encode_ms'])} | "
                     f"{seconds(r['probe_ms'])} | {r['pass_ms'] / 1000:.2f} | {seconds(r['decode_ms'])} | "
                     f"{seconds(r['image_prefill_ms'])} | {ratio(r, 'image_prefill_ms')} | {seconds(r['ttft_ms'])} | "
                     f"{ratio(r, 'ttft_ms')} | {r['kv_cells']:.0f} | {ratio(r, 'kv_cells')} | "
                     f"{r['peak_rss_mb']:.0f} | {ratio(r, 'peak_rss_mb')} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Per model: image prefill (thick) and time to first token (thin) relative to unpruned, against keep,
    for each probe layer. Pillow only (no plotting dependency)."""
    from PIL import Image, ImageDraw

    pictures = {r.get("picture") for r in rows}

    def label(r: dict) -> str:  # one panel per model, and per picture and backend when the run has several
        name = r["model"] + (f" {r['picture']}" if len(pictures) > 1 else "")
        return name if r.get("backend", "cpu") == "cpu" else f"{name} {r['backend']}"

    models = list(dict.fromkeys(label(r) for r in rows))
    layers = sorted({r["layer"] for r in rows if r["layer"] is not None})
    colours = ["#c0392b", "#2471a3", "#229954", "#7d3c98"]
    pw, ph, m = 520, 380, 55
    img = Image.new("RGB", (pw * len(models), ph), "white")
    d = ImageDraw.Draw(img)
    ymax = max(1.2, max((r[k] for r in rows for k in ("image_prefill_ms_ratio", "ttft_ms_ratio")
                         if r[k] is not None), default=1.2))
    ymax = float(np.ceil(ymax * 5) / 5)
    for i, model in enumerate(models):
        x0 = i * pw
        left, right, top, bottom = x0 + m, x0 + pw - 15, 40, ph - 45
        px = lambda k: left + k * (right - left)  # noqa: E731
        py = lambda v: bottom - v / ymax * (bottom - top)  # noqa: E731
        d.rectangle((left, top, right, bottom), outline="black")
        d.text((left, 8), f"{model}: cost relative to unpruned", fill="black")
        for t in np.arange(0, ymax + 1e-9, 0.2):
            d.line((left - 4, py(t), left, py(t)), fill="black")
            d.line((left, py(t), right, py(t)), fill="#eeeeee")
            d.text((x0 + 15, py(t) - 6), f"{t:.1f}", fill="black")
        d.line((left, py(1.0), right, py(1.0)), fill="#999999")
        mine = [r for r in rows if label(r) == model]
        for k in sorted({r["keep"] for r in mine}):
            d.text((px(k) - 10, bottom + 6), f"{k:g}", fill="black")
        d.text((left + 120, ph - 20), "keep (fraction of image tokens)", fill="black")
        base = [r for r in mine if r["layer"] is None]
        for j, layer in enumerate(layers):
            for metric, width, what in (("image_prefill_ms_ratio", 4, "image prefill"), ("ttft_ms_ratio", 1, "first token")):
                pts = sorted((r["keep"], r[metric]) for r in mine + [] if r["layer"] == layer or r in base)
                d.line([(px(k), py(v)) for k, v in pts], fill=colours[j % len(colours)], width=width)
                ly = top + 8 + 14 * (2 * j + (width == 1))
                d.line((right - 150, ly + 6, right - 130, ly + 6), fill=colours[j % len(colours)], width=width)
                d.text((right - 125, ly), f"layer {layer}: {what}", fill="black")
    img.save(path)


if __name__ == "__main__":
    raise SystemExit(main())
