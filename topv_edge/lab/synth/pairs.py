"""Model pairs on disk: paths, the fingerprint that names their configuration, writing and quantising them,
and the command line (python -m topv_edge.lab.synth)."""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from .configs import ModelConfig
from .gguf_writer import LazyRandomWeights, write_mmproj, write_text_model
from .presets import FAMILIES, PRESETS, _LLAVA_CLASS_TOKEN
from .tokenizer import family_tokenizer
from .weights import gemma4_rope_freqs, minicpmv_pos_embed_k, random_weights, text_weight_shapes, vision_weight_shapes


WRITER_VERSION = 4  # bump when the bytes write_pair produces change (invalidates cached pairs)
FINGERPRINT_KEY = "topv_edge.lab.synth.fingerprint"


def pair_paths(family: str, preset: str, out_dir: str | Path, class_embedding: bool = False,
               quantize: str | None = None) -> tuple[Path, Path]:
    """Where `write_pair` puts a pair: `<family>-<preset>[-cls][-<QUANT>].gguf` and `mmproj-<family>-<preset>[-cls].gguf`."""
    out = Path(out_dir)
    stem = f"{family}-{preset}" + ("-cls" if class_embedding else "")
    return out / f"{stem}{'-' + quantize if quantize else ''}.gguf", out / f"mmproj-{stem}.gguf"


def preset_config(family: str, preset: str, class_embedding: bool = False) -> ModelConfig:
    """The configuration of a preset (ValueError listing the known ones if there is none)."""
    try:
        cfg = PRESETS[(family, preset)]
    except KeyError:
        known = ", ".join(f"{f}/{p}" for f, p in PRESETS)
        raise ValueError(f"unknown family/preset {family}/{preset}; known: {known}") from None
    if class_embedding:
        if cfg.vision.projector != "mlp":
            raise ValueError("class_embedding is only supported by the llava family (projector mlp)")
        cfg = replace(cfg, vision=replace(cfg.vision, **_LLAVA_CLASS_TOKEN))
    return cfg


def pair_fingerprint(family: str, preset: str, seed: int = 0, class_embedding: bool = False) -> str:
    """What identifies the bytes `write_pair` produces: writer version, configuration, tokenizer, seed."""
    cfg = preset_config(family, preset, class_embedding)
    tok = family_tokenizer(family)
    key = repr((WRITER_VERSION, family, preset, int(seed), cfg, tok.tokens, tok.types, tok.merges,
                tok.chat_template))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_fingerprint(path: str | Path) -> str | None:
    """The fingerprint stored in a GGUF written by `write_pair` (None if absent or unreadable)."""
    import gguf

    try:
        field_ = gguf.GGUFReader(str(path)).get_field(FINGERPRINT_KEY)
    except Exception:  # not a GGUF, truncated, ...
        return None
    return None if field_ is None else str(field_.contents())


# presets with more parameters than this are written from lazily generated weights, tensor by tensor
_STREAM_ABOVE = 50_000_000


def _weights_for(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator, seed: int) -> Mapping[str, np.ndarray]:
    if sum(int(np.prod(s)) for s in shapes.values()) > _STREAM_ABOVE:
        return LazyRandomWeights(shapes, seed)
    return random_weights(shapes, rng)


def pair_weights(family: str, preset: str, seed: int = 0, class_embedding: bool = False
                 ) -> tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]:
    """The random weights `write_pair` writes: (text, vision), in `text_weight_shapes` / `vision_weight_shapes`
    (for llava all n_layer ViT blocks, the last of which the file leaves out). Lazy for large presets."""
    cfg = preset_config(family, preset, class_embedding)
    rng = np.random.default_rng(seed)
    text_w = _weights_for(text_weight_shapes(cfg.text, len(family_tokenizer(family).tokens)), rng, seed)
    if cfg.text.arch == "gemma4":
        text_w = {**text_w, "rope_freqs.weight": gemma4_rope_freqs(cfg.text.head_dim, cfg.text.rope_partial_global)}
    vis_w = _weights_for(vision_weight_shapes(cfg.vision, cfg.text.n_embd), rng, seed + 1)
    if cfg.vision.projector == "resampler":  # not a weight: the converter's fixed table
        vis_w = {**vis_w, "resampler.pos_embed_k": minicpmv_pos_embed_k(cfg.text.n_embd)}
    return text_w, vis_w


def quantize_model(src: Path, dst: Path, qtype: str, threads: int | None = None) -> Path:
    """Quantise a GGUF text model with the patched build's own llama-quantize (e.g. qtype "Q4_K_M")."""
    import os
    import subprocess

    from ...llama import build as llama_build

    exe = llama_build.program("llama-quantize")
    tmp = dst.with_suffix(".tmp")
    env = dict(os.environ, LD_LIBRARY_PATH=str(llama_build.build_dir() / "lib"))
    r = subprocess.run([str(exe), str(src), str(tmp), qtype, str(threads or os.cpu_count() or 1)],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:]
        raise ValueError(f"llama-quantize failed (exit {r.returncode}): {tail[0] if tail else 'no output'}")
    tmp.replace(dst)
    return dst


def write_pair(family: str, preset: str, out_dir: str | Path, seed: int = 0, overwrite: bool = False,
               class_embedding: bool = False, quantize: str | None = None) -> tuple[Path, Path]:
    """Write a random-weight pair of a preset; returns (model, mmproj).

    Cached: if both files exist and carry the fingerprint of this call (writer version, configuration,
    tokenizer, seed), nothing is written. Same arguments, byte-identical files. `quantize` (e.g. "Q4_K_M")
    also writes the text model quantised by llama-quantize and returns that one (the mmproj stays as written,
    as the published GGUFs ship it)."""
    cfg = preset_config(family, preset, class_embedding)
    fp = pair_fingerprint(family, preset, seed, class_embedding)
    model, mmproj = pair_paths(family, preset, out_dir, class_embedding)
    if overwrite or not all(p.exists() and read_fingerprint(p) == fp for p in (model, mmproj)):
        model.parent.mkdir(parents=True, exist_ok=True)
        tok = family_tokenizer(family)
        text_w, vis_w = pair_weights(family, preset, seed, class_embedding)
        meta = {FINGERPRINT_KEY: fp}
        stem = model.stem
        # write to temporary names, then rename: an interrupted run never leaves a half-written "cached" pair
        tmp_model, tmp_mmproj = model.with_suffix(".tmp"), mmproj.with_suffix(".tmp")
        write_text_model(tmp_model, cfg.text, tok, text_w, cfg.dtype, name=stem, metadata=meta)
        write_mmproj(tmp_mmproj, cfg.vision, cfg.text.n_embd, vis_w, cfg.dtype, name=f"mmproj-{stem}", metadata=meta)
        tmp_model.replace(model)
        tmp_mmproj.replace(mmproj)
    if quantize:
        qmodel = pair_paths(family, preset, out_dir, class_embedding, quantize)[0]
        if overwrite or read_fingerprint(qmodel) != fp or qmodel.stat().st_mtime < model.stat().st_mtime:
            quantize_model(model, qmodel, quantize)
        return qmodel, mmproj
    return model, mmproj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m topv_edge.lab.synth", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=list(FAMILIES), default="llava")
    ap.add_argument("--preset", default="tiny",
                    help="tiny (tests) or realistic shapes: " + ", ".join(f"{f} {p}" for f, p in PRESETS if p != "tiny"))
    ap.add_argument("-o", "--out", type=Path, default=Path("models"), help="output directory (default models/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rewrite existing files")
    ap.add_argument("--class-embedding", action="store_true",
                    help="llava: LLaVA-1.5's CLIP tower with its class embedding (files get a -cls suffix)")
    ap.add_argument("--quantize", metavar="TYPE", help="also quantise the text model with llama-quantize (e.g. Q4_K_M)")
    args = ap.parse_args(argv)
    try:
        model, mmproj = write_pair(args.family, args.preset, args.out, seed=args.seed, overwrite=args.force,
                                   class_embedding=args.class_embedding, quantize=args.quantize)
    except ValueError as e:
        ap.error(str(e))
    print(model)
    print(mmproj)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
