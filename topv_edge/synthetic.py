"""The project's GGUF writer: vision-language model pairs (text model + mmproj) in the layouts llama.cpp
loads at the pinned commit, from given weights (a trained model) or random ones (tests, benchmarks).

    python -m topv_edge.synthetic --family llava --preset tiny -o models/

Families: `llava` (LLaVA-1.5: text arch `llama`, projector `mlp`, CLIP ViT without class embedding),
`qwen2vl` (text arch `qwen2vl` with M-RoPE sections, projector `qwen2vl_merger`, 2x2-merged patches) and
`gemma3` (text arch `gemma3`, projector `gemma3`: SigLIP, average-pooled patches, non-causal image attention).
Weights are numpy arrays in PyTorch's convention (a Linear weight is [out, in]); the writer stores them
as GGUF expects (ggml's ne is the reverse of numpy's shape). Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
import numpy as np

from .chat_templates import CHATML_TEMPLATE, GEMMA_TEMPLATE, LLAVA15_TEMPLATE

WRITER_VERSION = 2  # bump when the bytes write_pair produces change (invalidates cached pairs)
FINGERPRINT_KEY = "topv_edge.synthetic.fingerprint"

# ----------------------------------------------------------------------------------------------------
# hyperparameters


@dataclass(frozen=True)
class TextConfig:
    arch: str = "llama"          # llama | qwen2vl | gemma3
    n_embd: int = 128
    n_ff: int = 352              # != n_embd (llama.cpp swaps ffn_up/ffn_down when they are equal)
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    n_ctx_train: int = 4096
    rope_sections: tuple[int, int, int, int] = (0, 0, 0, 0)  # qwen2vl: M-RoPE sections (t, h, w, 0), in pairs

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class VisionConfig:
    projector: str = "mlp"       # mlp | qwen2vl_merger | gemma3
    image_size: int = 112
    patch_size: int = 14
    n_embd: int = 64
    n_ff: int = 160
    n_layer: int = 3
    n_head: int = 4
    ln_eps: float = 1e-5
    proj_hidden: int = 128       # mlp: width between mm.0 and mm.2
    spatial_merge: int = 2       # qwen2vl_merger: merge s x s patches into one token; gemma3: average-pool s x s
    class_embedding: bool = False
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def n_image_tokens(self) -> int:
        """Image tokens per picture (fixed-size families; qwen2vl at image_size x image_size)."""
        g = self.grid
        return g * g if self.projector == "mlp" else (g // self.spatial_merge) ** 2


@dataclass(frozen=True)
class ModelConfig:
    family: str
    text: TextConfig
    vision: VisionConfig
    dtype: str = "f32"           # f32 | f16 for the big matrices


PRESETS: dict[tuple[str, str], ModelConfig] = {
    ("llava", "tiny"): ModelConfig("llava", TextConfig(), VisionConfig()),
    # LLaVA-1.5 shapes around a 1B llama: ViT-L/14-336 (24 x 24 = 576 image tokens), TinyLlama-sized text model
    ("llava", "1b"): ModelConfig(
        "llava",
        TextConfig(n_embd=2048, n_ff=5632, n_layer=16, n_head=32, n_head_kv=4),
        VisionConfig(image_size=336, patch_size=14, n_embd=1024, n_ff=4096, n_layer=24, n_head=16, proj_hidden=2048),
        dtype="f16"),
    ("qwen2vl", "tiny"): ModelConfig(
        "qwen2vl",
        TextConfig(arch="qwen2vl", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6,
                   rope_sections=(4, 6, 6, 0)),
        VisionConfig(projector="qwen2vl_merger", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=2,
                     n_head=4, ln_eps=1e-6, image_mean=(0.48145466, 0.4578275, 0.40821073))),
    ("gemma3", "tiny"): ModelConfig(
        "gemma3",
        TextConfig(arch="gemma3", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rms_eps=1e-6),
        VisionConfig(projector="gemma3", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                     ln_eps=1e-6, spatial_merge=2, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))),
    # Qwen2-VL-2B shapes (text 1536 wide, 28 layers; ViT 1280 wide, 32 layers), image at 448 x 448: 16 x 16 tokens
    ("qwen2vl", "2b"): ModelConfig(
        "qwen2vl",
        TextConfig(arch="qwen2vl", n_embd=1536, n_ff=8960, n_layer=28, n_head=12, n_head_kv=2, rope_base=1e6,
                   rope_sections=(16, 24, 24, 0)),
        VisionConfig(projector="qwen2vl_merger", image_size=448, patch_size=14, n_embd=1280, n_ff=5120, n_layer=32,
                     n_head=16, ln_eps=1e-6),
        dtype="f16"),
}

# ----------------------------------------------------------------------------------------------------
# tokenizer: byte-level BPE (gpt2 style) so that any text tokenises


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_CORPUS = ("the picture shows a red circle a blue square and a green triangle on the left and on the right "
           "what color is the shape how many shapes are there is there a yes no top bottom image question answer "
           "user assistant system describe object")


@dataclass(frozen=True)
class Tokenizer:
    tokens: list[str]
    types: list[int]            # 1 normal, 3 control
    merges: list[str]
    bos: int
    eos: int
    chat_template: str
    special: dict[str, int] = field(default_factory=dict)


def make_tokenizer(specials: list[str], chat_template: str, n_merges: int = 48, corpus: str = _CORPUS) -> Tokenizer:
    """Byte tokens, `n_merges` BPE merges learnt greedily on `corpus` (deterministic), then the special tokens."""
    b2u = _bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    words = [[b2u[b] for b in (" " + w).encode()] for w in corpus.split()]
    merges: list[str] = []
    for _ in range(n_merges):
        counts: dict[tuple[str, str], int] = {}
        for w in words:
            for a, b in zip(w, w[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        (a, b), _ = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        for w in words:
            i = 0
            while i < len(w) - 1:
                if w[i] == a and w[i + 1] == b:
                    w[i:i + 2] = [a + b]
                i += 1
    types = [1] * len(tokens)
    special = {}
    for s in specials:
        special[s] = len(tokens)
        tokens.append(s)
        types.append(3)
    return Tokenizer(tokens, types, merges, bos=special[specials[0]], eos=special[specials[1]],
                     chat_template=chat_template, special=special)


def family_tokenizer(family: str) -> Tokenizer:
    if family == "llava":
        return make_tokenizer(["<s>", "</s>"], LLAVA15_TEMPLATE)
    if family == "qwen2vl":
        return make_tokenizer(["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>",
                               "<|image_pad|>"], CHATML_TEMPLATE)
    if family == "gemma3":
        return make_tokenizer(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
                               "<end_of_image>"], GEMMA_TEMPLATE)
    raise ValueError(f"unknown family {family!r}; known: llava, qwen2vl, gemma3")


# ----------------------------------------------------------------------------------------------------
# weights


def text_weight_shapes(cfg: TextConfig, n_vocab: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and numpy shapes ([out, in] for matrices) of the text model."""
    hd, kv = cfg.head_dim, cfg.n_head_kv * cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (n_vocab, cfg.n_embd),
        "output_norm.weight": (cfg.n_embd,),
        "output.weight": (n_vocab, cfg.n_embd),
    }
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        shapes.update({
            b + "attn_norm.weight": (cfg.n_embd,),
            b + "attn_q.weight": (cfg.n_head * hd, cfg.n_embd),
            b + "attn_k.weight": (kv, cfg.n_embd),
            b + "attn_v.weight": (kv, cfg.n_embd),
            b + "attn_output.weight": (cfg.n_embd, cfg.n_head * hd),
            b + "ffn_norm.weight": (cfg.n_embd,),
            b + "ffn_gate.weight": (cfg.n_ff, cfg.n_embd),
            b + "ffn_up.weight": (cfg.n_ff, cfg.n_embd),
            b + "ffn_down.weight": (cfg.n_embd, cfg.n_ff),
        })
        if cfg.arch == "qwen2vl":  # Qwen2 has q/k/v biases
            shapes.update({b + "attn_q.bias": (cfg.n_head * hd,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)})
        if cfg.arch == "gemma3":  # sandwich norms and q/k norms
            shapes.update({b + "post_attention_norm.weight": (cfg.n_embd,), b + "post_ffw_norm.weight": (cfg.n_embd,),
                           b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)})
    if cfg.arch == "gemma3":  # tied output
        del shapes["output.weight"]
    return shapes


def vision_weight_shapes(cfg: VisionConfig, n_embd_text: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and numpy shapes of the mmproj."""
    d, p = cfg.n_embd, cfg.patch_size
    shapes: dict[str, tuple[int, ...]] = {}
    if cfg.projector in ("mlp", "gemma3"):
        shapes["v.patch_embd.weight"] = (d, 3, p, p)
        shapes["v.patch_embd.bias"] = (d,)
        n_pos = cfg.grid * cfg.grid + (1 if cfg.class_embedding else 0)
        shapes["v.position_embd.weight"] = (n_pos, d)
        if cfg.class_embedding:
            shapes["v.class_embd"] = (d,)
        if cfg.projector == "mlp":  # CLIP's pre-layernorm; SigLIP (gemma3) has none
            shapes["v.pre_ln.weight"] = (d,)
            shapes["v.pre_ln.bias"] = (d,)
    else:  # qwen2vl_merger: a temporal conv of 2 frames, split into two 2D kernels; 2D RoPE, no position table
        shapes["v.patch_embd.weight"] = (d, 3, p, p)
        shapes["v.patch_embd.weight.1"] = (d, 3, p, p)
    for i in range(cfg.n_layer):
        b = f"v.blk.{i}."
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            shapes[b + t + ".weight"] = (d, d)
            shapes[b + t + ".bias"] = (d,)
        for t in ("ln1", "ln2"):
            shapes[b + t + ".weight"] = (d,)
            shapes[b + t + ".bias"] = (d,)
        shapes[b + "ffn_up.weight"] = (cfg.n_ff, d)
        shapes[b + "ffn_up.bias"] = (cfg.n_ff,)
        shapes[b + "ffn_down.weight"] = (d, cfg.n_ff)
        shapes[b + "ffn_down.bias"] = (d,)
    if cfg.projector == "mlp":
        shapes.update({"mm.0.weight": (cfg.proj_hidden, d), "mm.0.bias": (cfg.proj_hidden,),
                       "mm.2.weight": (n_embd_text, cfg.proj_hidden), "mm.2.bias": (n_embd_text,)})
    elif cfg.projector == "gemma3":  # post-layernorm, RMS norm, projection stored [in, out] (the graph transposes it)
        shapes.update({"v.post_ln.weight": (d,), "v.post_ln.bias": (d,), "mm.soft_emb_norm.weight": (d,),
                       "mm.input_projection.weight": (d, n_embd_text)})
    else:
        m = d * cfg.spatial_merge ** 2
        shapes.update({"v.post_ln.weight": (d,), "v.post_ln.bias": (d,),
                       "mm.0.weight": (m, m), "mm.0.bias": (m,),
                       "mm.2.weight": (n_embd_text, m), "mm.2.bias": (n_embd_text,)})
    return shapes


def random_weights(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Scaled so activations stay O(1): matrices ~ N(0, 1/fan_in), norms ~ 1, biases and tables small."""
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            base = 1.0 if ("norm" in name or ".ln" in name or "_ln" in name) and name.endswith("weight") else 0.0
            out[name] = (base + 0.02 * rng.standard_normal(shape)).astype(np.float32)
        elif name in ("token_embd.weight", "v.position_embd.weight"):
            out[name] = rng.standard_normal(shape).astype(np.float32) * (1.0 if name == "token_embd.weight" else 0.1)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------------
# writing


def _store(w: "object", name: str, a: np.ndarray, dtype: str) -> None:
    # 1-D tensors (norms, biases) and the position table stay f32, as llama.cpp's converters do
    if dtype == "f16" and a.ndim >= 2 and name != "v.position_embd.weight":
        a = a.astype(np.float16)
    else:
        a = a.astype(np.float32)  # float64 arrays (a trained model's export) would otherwise be stored as F64
    w.add_tensor(name, np.ascontiguousarray(a))  # type: ignore[attr-defined]


def write_text_model(path: Path, cfg: TextConfig, tok: Tokenizer, weights: dict[str, np.ndarray],
                     dtype: str = "f32", name: str = "topv-edge synthetic",
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write a GGUF text model of architecture `cfg.arch` from `weights` (names and shapes: `text_weight_shapes`).

    Array convention: numpy shapes as PyTorch stores them, a Linear weight is [out, in], the embedding table
    [n_vocab, n_embd]; any float dtype (stored F32, or F16 for >= 2-D tensors when dtype="f16"). For arch
    `llama`, attn_q/attn_k rows must already be in llama.cpp's interleaved RoPE order: apply
    `permute_qk_for_llama` to HuggingFace (rotate_half) weights, as convert_hf_to_gguf.py does. qwen2vl and
    gemma3 use NEOX-style RoPE in llama.cpp: no permutation. gemma3's output is tied to token_embd. Note
    llama.cpp's gemma3 graph scales the token embeddings by sqrt(n_embd) and its RMS norms multiply by the
    stored weight (HF Gemma's `1 + weight` must be folded in before writing)."""
    import gguf

    expected = text_weight_shapes(cfg, len(tok.tokens))
    _check_weights(weights, expected, "text model")
    w = gguf.GGUFWriter(str(path), cfg.arch)
    w.add_name(name)
    w.add_context_length(cfg.n_ctx_train)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.n_ff)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.n_head_kv)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_rope_freq_base(cfg.rope_base)
    w.add_rope_dimension_count(cfg.head_dim)
    if cfg.arch == "qwen2vl":
        w.add_rope_dimension_sections(list(cfg.rope_sections))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tok.tokens)
    w.add_token_types(tok.types)
    w.add_token_merges(tok.merges)
    w.add_bos_token_id(tok.bos)
    w.add_eos_token_id(tok.eos)
    w.add_add_bos_token(cfg.arch in ("llama", "gemma3"))
    w.add_chat_template(tok.chat_template)
    for k, v in (metadata or {}).items():
        w.add_string(k, v)
    for n in expected:
        _store(w, n, weights[n], dtype)
    _finish(w)
    return path


def write_mmproj(path: Path, cfg: VisionConfig, n_embd_text: int, weights: dict[str, np.ndarray],
                 dtype: str = "f32", name: str = "topv-edge synthetic mmproj",
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write a GGUF mmproj (`clip` architecture) for projector `cfg.projector` (names/shapes: `vision_weight_shapes`).

    Same array convention as `write_text_model` (Linear [out, in]; the patch embedding is a Conv2d weight
    [n_embd, 3, patch, patch]); exceptions: gemma3's `mm.input_projection.weight` is [in, out] as in HF
    (the graph transposes it); qwen2vl_merger's Conv3d patch kernel [n_embd, 3, 2, p, p] is written as two
    Conv2d kernels, `v.patch_embd.weight` = k[:, :, 0] and `v.patch_embd.weight.1` = k[:, :, 1].
    llava (mlp): the graph runs only the first n_layer - 1 blocks (HF `hidden_states[-2]`, LLaVA-1.5's
    select layer -2), so the last block is written but unused; with `class_embedding` llama.cpp appends
    the class token after the patches (see docs/patch.md)."""
    import gguf

    expected = vision_weight_shapes(cfg, n_embd_text)
    _check_weights(weights, expected, "mmproj")
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", cfg.projector)
    w.add_bool("clip.use_gelu", cfg.projector in ("mlp", "gemma3"))
    w.add_uint32("clip.vision.image_size", cfg.image_size)
    w.add_uint32("clip.vision.patch_size", cfg.patch_size)
    w.add_uint32("clip.vision.embedding_length", cfg.n_embd)
    w.add_uint32("clip.vision.feed_forward_length", cfg.n_ff)
    w.add_uint32("clip.vision.block_count", cfg.n_layer)
    w.add_uint32("clip.vision.projection_dim", n_embd_text)
    w.add_uint32("clip.vision.attention.head_count", cfg.n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", cfg.ln_eps)
    w.add_array("clip.vision.image_mean", list(cfg.image_mean))
    w.add_array("clip.vision.image_std", list(cfg.image_std))
    if cfg.projector == "gemma3":
        w.add_uint32("clip.vision.projector.scale_factor", cfg.spatial_merge)
    if cfg.projector == "qwen2vl_merger":
        w.add_uint32("clip.vision.spatial_merge_size", cfg.spatial_merge)
        w.add_uint32("clip.vision.image_min_pixels", (cfg.patch_size * cfg.spatial_merge) ** 2 * 4)
        w.add_uint32("clip.vision.image_max_pixels", cfg.image_size * cfg.image_size)
    for k, v in (metadata or {}).items():
        w.add_string(k, v)
    for n in expected:
        _store(w, n, weights[n], dtype)
    _finish(w)
    return path


def permute_qk_for_llama(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate_half) -> llama.cpp (interleaved) RoPE row order of a llama attn_q / attn_k weight or bias.

    `n_head` is the head count of that projection (n_head_kv for attn_k). Same as convert_hf_to_gguf.py."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _check_weights(weights: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], what: str) -> None:
    missing = [n for n in expected if n not in weights]
    if missing:
        raise ValueError(f"{what}: missing weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for n, shape in expected.items():
        if tuple(weights[n].shape) != shape:
            raise ValueError(f"{what}: {n} has shape {tuple(weights[n].shape)}, expected {shape}")
        if not np.all(np.isfinite(weights[n])):
            raise ValueError(f"{what}: {n} has non-finite values")


def _finish(w: "object") -> None:
    w.write_header_to_file()  # type: ignore[attr-defined]
    w.write_kv_data_to_file()  # type: ignore[attr-defined]
    w.write_tensors_to_file()  # type: ignore[attr-defined]
    w.close()  # type: ignore[attr-defined]


def pair_paths(family: str, preset: str, out_dir: str | Path, class_embedding: bool = False) -> tuple[Path, Path]:
    """Where `write_pair` puts a pair: `<family>-<preset>[-cls].gguf` and `mmproj-<family>-<preset>[-cls].gguf`."""
    out = Path(out_dir)
    stem = f"{family}-{preset}" + ("-cls" if class_embedding else "")
    return out / f"{stem}.gguf", out / f"mmproj-{stem}.gguf"


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
        cfg = replace(cfg, vision=replace(cfg.vision, class_embedding=True))
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


def write_pair(family: str, preset: str, out_dir: str | Path, seed: int = 0, overwrite: bool = False,
               class_embedding: bool = False) -> tuple[Path, Path]:
    """Write a random-weight pair of a preset; returns (model, mmproj).

    Cached: if both files exist and carry the fingerprint of this call (writer version, configuration,
    tokenizer, seed), nothing is written. Same arguments, byte-identical files."""
    cfg = preset_config(family, preset, class_embedding)
    fp = pair_fingerprint(family, preset, seed, class_embedding)
    model, mmproj = pair_paths(family, preset, out_dir, class_embedding)
    if not overwrite and all(p.exists() and read_fingerprint(p) == fp for p in (model, mmproj)):
        return model, mmproj
    model.parent.mkdir(parents=True, exist_ok=True)
    tok = family_tokenizer(family)
    rng = np.random.default_rng(seed)
    text_w = random_weights(text_weight_shapes(cfg.text, len(tok.tokens)), rng)
    vis_w = random_weights(vision_weight_shapes(cfg.vision, cfg.text.n_embd), rng)
    meta = {FINGERPRINT_KEY: fp}
    stem = model.stem
    # write to temporary names, then rename: an interrupted run never leaves a half-written "cached" pair
    tmp_model, tmp_mmproj = model.with_suffix(".tmp"), mmproj.with_suffix(".tmp")
    write_text_model(tmp_model, cfg.text, tok, text_w, cfg.dtype, name=stem, metadata=meta)
    write_mmproj(tmp_mmproj, cfg.vision, cfg.text.n_embd, vis_w, cfg.dtype, name=f"mmproj-{stem}", metadata=meta)
    tmp_model.replace(model)
    tmp_mmproj.replace(mmproj)
    return model, mmproj


# ----------------------------------------------------------------------------------------------------
# a test picture


def demo_image(size: tuple[int, int] = (336, 336), seed: int = 0):
    """A deterministic picture: a few coloured shapes on a textured background (PIL.Image, RGB)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    bg = (rng.integers(90, 150, (h // 8 + 1, w // 8 + 1, 3))).astype(np.uint8)
    img = Image.fromarray(np.kron(bg, np.ones((8, 8, 1), np.uint8))[:h, :w])
    d = ImageDraw.Draw(img)
    colours = [(220, 40, 40), (40, 90, 220), (40, 180, 60), (240, 200, 40)]
    for k in range(4):
        r = int(rng.integers(min(w, h) // 12, min(w, h) // 6))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        box = (cx - r, cy - r, cx + r, cy + r)
        [d.ellipse, d.rectangle, lambda b, fill: d.polygon([(b[0], b[3]), (b[2], b[3]), ((b[0] + b[2]) // 2, b[1])],
                                                           fill=fill)][k % 3](box, fill=colours[k])
    return img


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m topv_edge.synthetic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=sorted({f for f, _ in PRESETS}), default="llava")
    ap.add_argument("--preset", default="tiny", help="tiny (tests), 1b (llava) or 2b (qwen2vl): realistic shapes")
    ap.add_argument("-o", "--out", type=Path, default=Path("models"), help="output directory (default models/)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rewrite existing files")
    ap.add_argument("--class-embedding", action="store_true",
                    help="llava: give the ViT a class embedding (files get a -cls suffix)")
    args = ap.parse_args(argv)
    try:
        model, mmproj = write_pair(args.family, args.preset, args.out, seed=args.seed, overwrite=args.force,
                                   class_embedding=args.class_embedding)
    except ValueError as e:
        ap.error(str(e))
    print(model)
    print(mmproj)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
