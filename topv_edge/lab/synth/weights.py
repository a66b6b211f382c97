"""The tensors of each family's text model and mmproj: names, shapes, random values."""

from __future__ import annotations


import numpy as np

from .configs import TextConfig, VisionConfig


def _lfm2_text_weight_shapes(cfg: TextConfig, n_vocab: int) -> dict[str, tuple[int, ...]]:
    # src/models/lfm2.cpp load_arch_tensors: the final norm is called token_embd_norm; short-convolution layers
    # (in_proj -> B, C, x; conv kernel [n_embd, l_cache] as numpy, HF's Conv1d weight squeezed) or attention
    # layers with q/k norms; every layer has the same SwiGLU FFN
    d, hd = cfg.n_embd, cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (n_vocab, d), "token_embd_norm.weight": (d,)}
    if not cfg.tied_output:
        shapes["output.weight"] = (n_vocab, d)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        shapes[b + "attn_norm.weight"] = (d,)
        if cfg.is_recurrent(i):
            shapes.update({b + "shortconv.conv.weight": (d, cfg.ssm_conv), b + "shortconv.in_proj.weight": (3 * d, d),
                           b + "shortconv.out_proj.weight": (d, d)})
        else:
            shapes.update({b + "attn_q.weight": (cfg.n_head * hd, d), b + "attn_k.weight": (cfg.n_head_kv * hd, d),
                           b + "attn_v.weight": (cfg.n_head_kv * hd, d), b + "attn_output.weight": (d, cfg.n_head * hd),
                           b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)})
        shapes.update({b + "ffn_norm.weight": (d,), b + "ffn_gate.weight": (cfg.n_ff, d),
                       b + "ffn_up.weight": (cfg.n_ff, d), b + "ffn_down.weight": (d, cfg.n_ff)})
    return shapes


def text_weight_shapes(cfg: TextConfig, n_vocab: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and numpy shapes ([out, in] for matrices) of the text model."""
    if cfg.arch == "lfm2":
        return _lfm2_text_weight_shapes(cfg, n_vocab)
    d = cfg.n_embd
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd.weight": (n_vocab, d),
        "output_norm.weight": (d,),
        "output.weight": (n_vocab, d),
    }
    if cfg.arch == "gemma4":  # proportional RoPE of the global layers (one table, shared)
        shapes["rope_freqs.weight"] = (cfg.head_dim // 2,)
    for i in range(cfg.n_layer):
        b = f"blk.{i}."
        hd = cfg.layer_head_dim(i)
        q, kv = cfg.n_head * hd, cfg.layer_head_kv(i) * hd
        shapes[b + "attn_norm.weight"] = (d,)
        if cfg.is_recurrent(i):  # qwen35 gated delta net: fused q/k/v, output gate, short conv, decay, beta
            key, value = cfg.ssm_state * cfg.ssm_groups, cfg.ssm_state * cfg.ssm_v_heads
            shapes.update({
                b + "attn_qkv.weight": (2 * key + value, d),
                b + "attn_gate.weight": (value, d),
                b + "ssm_conv1d.weight": (2 * key + value, cfg.ssm_conv),
                b + "ssm_dt.bias": (cfg.ssm_v_heads,),
                b + "ssm_a": (cfg.ssm_v_heads,),
                b + "ssm_beta.weight": (cfg.ssm_v_heads, d),
                b + "ssm_alpha.weight": (cfg.ssm_v_heads, d),
                b + "ssm_norm.weight": (cfg.ssm_state,),
                b + "ssm_out.weight": (d, value),
            })
        else:
            shapes.update({
                b + "attn_q.weight": (2 * q if cfg.arch == "qwen35" else q, d),  # qwen35: query and its gate
                b + "attn_k.weight": (kv, d),
                b + "attn_v.weight": (kv, d),
                b + "attn_output.weight": (d, q),
            })
            if cfg.arch in ("gemma3", "gemma4", "qwen3vl", "qwen35"):
                shapes.update({b + "attn_q_norm.weight": (hd,), b + "attn_k_norm.weight": (hd,)})
        if cfg.arch == "qwen35":  # the pre-FFN norm is called post_attention_norm there
            shapes[b + "post_attention_norm.weight"] = (d,)
        else:
            shapes[b + "ffn_norm.weight"] = (d,)
        shapes.update({
            b + "ffn_gate.weight": (cfg.n_ff, d),
            b + "ffn_up.weight": (cfg.n_ff, d),
            b + "ffn_down.weight": (d, cfg.n_ff),
        })
        if cfg.arch in ("qwen2vl", "qwen2"):  # Qwen2 has q/k/v biases
            shapes.update({b + "attn_q.bias": (q,), b + "attn_k.bias": (kv,), b + "attn_v.bias": (kv,)})
        if cfg.arch in ("gemma3", "gemma4"):  # sandwich norms
            shapes.update({b + "post_attention_norm.weight": (d,), b + "post_ffw_norm.weight": (d,)})
        if cfg.arch == "gemma4":  # HF layer_scalar
            shapes[b + "layer_output_scale.weight"] = (1,)
    if cfg.tied_output or cfg.arch in ("gemma3", "gemma4"):
        del shapes["output.weight"]
    return shapes


def _lfm2_vision_weight_shapes(cfg: VisionConfig, n_embd_text: int) -> dict[str, tuple[int, ...]]:
    # SigLIP2 NaFlex (tools/mtmd/models/siglip.cpp: learned position grid resized to the picture's patch grid,
    # LayerNorm blocks with biases, GELU MLP, post-LN), then the LFM2-VL projector (clip.cpp PROJECTOR_TYPE_LFM2:
    # pixel unshuffle, LayerNorm mm.input_norm over the m*m*n_embd row, mm.1, GELU, mm.2)
    d, p, m = cfg.n_embd, cfg.patch_size, cfg.n_embd * cfg.spatial_merge ** 2
    shapes: dict[str, tuple[int, ...]] = {"v.patch_embd.weight": (d, 3, p, p), "v.patch_embd.bias": (d,),
                                          "v.position_embd.weight": (cfg.pos_size * cfg.pos_size, d)}
    for i in range(cfg.n_layer):
        b = f"v.blk.{i}."
        for t in ("attn_q", "attn_k", "attn_v", "attn_out"):
            shapes.update({b + t + ".weight": (d, d), b + t + ".bias": (d,)})
        shapes.update({b + "ln1.weight": (d,), b + "ln1.bias": (d,), b + "ln2.weight": (d,), b + "ln2.bias": (d,),
                       b + "ffn_up.weight": (cfg.n_ff, d), b + "ffn_up.bias": (cfg.n_ff,),
                       b + "ffn_down.weight": (d, cfg.n_ff), b + "ffn_down.bias": (d,)})
    shapes.update({"v.post_ln.weight": (d,), "v.post_ln.bias": (d,), "mm.input_norm.weight": (m,),
                   "mm.input_norm.bias": (m,), "mm.1.weight": (cfg.proj_hidden, m), "mm.1.bias": (cfg.proj_hidden,),
                   "mm.2.weight": (n_embd_text, cfg.proj_hidden), "mm.2.bias": (n_embd_text,)})
    return shapes


def vision_weight_shapes(cfg: VisionConfig, n_embd_text: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and numpy shapes of the mmproj (all n_layer blocks, also for llava: see `write_mmproj`)."""
    if cfg.projector == "lfm2":
        return _lfm2_vision_weight_shapes(cfg, n_embd_text)
    d, p, proj = cfg.n_embd, cfg.patch_size, cfg.projector
    qwen = proj in ("qwen2vl_merger", "qwen2.5vl_merger", "qwen3vl_merger")
    shapes: dict[str, tuple[int, ...]] = {"v.patch_embd.weight": (d, 3, p, p)}
    if qwen:  # a temporal conv of 2 frames, split into two 2D kernels
        shapes["v.patch_embd.weight.1"] = (d, 3, p, p)
    if proj in ("qwen3vl_merger", "resampler", "idefics3", "internvl") or (proj in ("mlp", "gemma3") and cfg.patch_bias):
        shapes["v.patch_embd.bias"] = (d,)
    if proj in ("mlp", "gemma3", "idefics3", "internvl"):  # internvl: class token, n_patches + 1 rows
        shapes["v.position_embd.weight"] = (cfg.grid * cfg.grid + (1 if cfg.class_embedding else 0), d)
        if cfg.class_embedding:
            shapes["v.class_embd"] = (d,)
    elif proj == "qwen3vl_merger":  # a learned pos_size x pos_size grid, resized to the picture's
        shapes["v.position_embd.weight"] = (cfg.pos_size * cfg.pos_size, d)
    elif proj == "gemma4v":  # two tables, x then y: ggml [n_embd, pos_size, 2]
        shapes["v.position_embd.weight"] = (2, cfg.pos_size, d)
    elif proj == "resampler":  # SigLIP's pos_size x pos_size table (70 x 70), bucketed to the slice's patch grid
        shapes["v.position_embd.weight"] = (cfg.pos_size * cfg.pos_size, d)
    if proj in ("mlp", "pixtral"):  # CLIP's pre-layernorm (pixtral: an RMS norm, no bias)
        shapes["v.pre_ln.weight"] = (d,)
        if proj == "mlp":
            shapes["v.pre_ln.bias"] = (d,)
    rms = proj in ("qwen2.5vl_merger", "gemma4v", "pixtral")  # RMS norms: weights only
    biases = proj not in ("gemma4v", "pixtral")
    gated = proj in ("qwen2.5vl_merger", "gemma4v", "pixtral")
    dh = d // cfg.n_head
    for i in range(cfg.n_layer):
        b = f"v.blk.{i}."
        if proj == "qwen3vl_merger":
            shapes[b + "attn_qkv.weight"] = (3 * d, d)
            shapes[b + "attn_qkv.bias"] = (3 * d,)
        else:
            for t in ("attn_q", "attn_k", "attn_v"):
                shapes[b + t + ".weight"] = (d, d)
                if biases:
                    shapes[b + t + ".bias"] = (d,)
        shapes[b + "attn_out.weight"] = (d, d)
        if biases:
            shapes[b + "attn_out.bias"] = (d,)
        for t in ("ln1", "ln2"):
            shapes[b + t + ".weight"] = (d,)
            if not rms:
                shapes[b + t + ".bias"] = (d,)
        if proj == "gemma4v":  # per-head q/k norms, sandwich norms
            shapes.update({b + "attn_q_norm.weight": (dh,), b + "attn_k_norm.weight": (dh,),
                           b + "attn_post_norm.weight": (d,), b + "ffn_post_norm.weight": (d,)})
        if gated:
            shapes[b + "ffn_gate.weight"] = (cfg.n_ff, d)
            if biases:
                shapes[b + "ffn_gate.bias"] = (cfg.n_ff,)
        shapes[b + "ffn_up.weight"] = (cfg.n_ff, d)
        if biases:
            shapes[b + "ffn_up.bias"] = (cfg.n_ff,)
        shapes[b + "ffn_down.weight"] = (d, cfg.n_ff)
        if biases:
            shapes[b + "ffn_down.bias"] = (d,)
        if proj == "internvl":  # InternViT's layer scales (attention, FFN)
            shapes.update({b + "ls1.weight": (d,), b + "ls2.weight": (d,)})
    m = d * cfg.spatial_merge ** 2
    if proj == "mlp":
        shapes.update({"mm.0.weight": (cfg.proj_hidden, d), "mm.0.bias": (cfg.proj_hidden,),
                       "mm.2.weight": (n_embd_text, cfg.proj_hidden), "mm.2.bias": (n_embd_text,)})
        if cfg.grid_pinpoints:  # LLaVA-1.6's image_newline, named as the legacy converter writes it (unread)
            shapes["model.image_newline"] = (n_embd_text,)
    elif proj == "gemma3":  # post-layernorm, RMS norm, projection stored [in, out] (the graph transposes it)
        shapes.update({"v.post_ln.weight": (d,), "v.post_ln.bias": (d,), "mm.soft_emb_norm.weight": (d,),
                       "mm.input_projection.weight": (d, n_embd_text)})
    elif proj == "gemma4v":  # Gemma4MultimodalEmbedder: weightless RMS norm, then a plain [out, in] projection
        shapes["mm.input_projection.weight"] = (n_embd_text, d)
    elif proj == "pixtral":  # LlavaMultiModalProjector (linear_1, GELU, linear_2) and the [IMG_BREAK] embedding
        if cfg.spatial_merge > 1:  # Mistral Small 3.1's patch merger
            shapes.update({"mm.input_norm.weight": (d,), "mm.patch_merger.weight": (d, m)})
        shapes.update({"mm.1.weight": (n_embd_text, d), "mm.1.bias": (n_embd_text,),
                       "mm.2.weight": (n_embd_text, n_embd_text), "mm.2.bias": (n_embd_text,),
                       "v.token_embd.img_break": (n_embd_text,)})
    elif proj == "resampler":  # SigLIP post-LN, then MiniCPM-V's resampler (legacy converter's names and shapes)
        e = n_embd_text
        shapes.update({"v.post_ln.weight": (d,), "v.post_ln.bias": (d,), "resampler.query": (cfg.n_queries, e),
                       "resampler.kv.weight": (e, d)})
        for t in ("q", "k", "v", "out"):  # nn.MultiheadAttention's in_proj split in three, and out_proj
            shapes.update({f"resampler.attn.{t}.weight": (e, e), f"resampler.attn.{t}.bias": (e,)})
        for t in ("q", "kv", "post"):
            shapes.update({f"resampler.ln_{t}.weight": (e,), f"resampler.ln_{t}.bias": (e,)})
        # proj is an nn.Parameter used as x @ proj, stored transposed; pos_embed_k is the 70 x 70 2D sin-cos
        # table the converter adds (the graph computes its own: loaded, unused)
        shapes.update({"resampler.proj.weight": (e, e), "resampler.pos_embed_k": (70 * 70, e)})
    elif proj == "idefics3":  # SigLIP post-LN, pixel shuffle, Idefics3Connector's bias-free projection
        shapes.update({"v.post_ln.weight": (d,), "v.post_ln.bias": (d,), "mm.model.fc.weight": (n_embd_text, m)})
    elif proj == "internvl":  # no post-LN; pixel shuffle, then mlp1: LayerNorm(m), Linear, GELU, Linear
        shapes.update({"mm.model.mlp.0.weight": (m,), "mm.model.mlp.0.bias": (m,),
                       "mm.model.mlp.1.weight": (n_embd_text, m), "mm.model.mlp.1.bias": (n_embd_text,),
                       "mm.model.mlp.3.weight": (n_embd_text, n_embd_text), "mm.model.mlp.3.bias": (n_embd_text,)})
    else:  # qwen mergers: norm over each patch (v.post_ln), then 2 x 2 patches -> MLP
        shapes["v.post_ln.weight"] = (d,)
        if proj != "qwen2.5vl_merger":
            shapes["v.post_ln.bias"] = (d,)
        shapes.update({"mm.0.weight": (m, m), "mm.0.bias": (m,),
                       "mm.2.weight": (n_embd_text, m), "mm.2.bias": (n_embd_text,)})
        for il in cfg.deepstack:  # deepstack mergers: the norm is over the 2 x 2-merged row
            b = f"v.deepstack.{il}."
            shapes.update({b + "norm.weight": (m,), b + "norm.bias": (m,), b + "fc1.weight": (m, m),
                           b + "fc1.bias": (m,), b + "fc2.weight": (n_embd_text, m), b + "fc2.bias": (n_embd_text,)})
    return shapes


def gemma4_rope_freqs(head_dim: int, partial: float) -> np.ndarray:
    """The global layers' "proportional" RoPE as convert_hf_to_gguf.py writes it: divisor 1 for the rotated
    pairs, 1e30 (no rotation) for the rest."""
    n_rot = int(head_dim * partial / 2)
    return np.array([1.0] * n_rot + [1e30] * (head_dim // 2 - n_rot), np.float32)


def minicpmv_pos_embed_k(embed_dim: int, grid: tuple[int, int] = (70, 70)) -> np.ndarray:
    """resampler.pos_embed_k as minicpmv-convert-image-encoder-to-gguf.py writes it (get_2d_sincos_pos_embed,
    [h * w, embed_dim]: sin/cos of the column, then of the row)."""
    def one_d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid[1], dtype=np.float32), np.arange(grid[0], dtype=np.float32))
    return np.concatenate([one_d(embed_dim // 2, gw), one_d(embed_dim // 2, gh)], axis=1).astype(np.float32)


def random_weights(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Scaled so activations stay O(1): matrices ~ N(0, 1/fan_in), norms ~ 1, biases and tables small.
    (gemma4's rope_freqs is not a weight: fill it with `gemma4_rope_freqs`.)"""
    out: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            base = 1.0 if ("norm" in name or ".ln" in name or "_ln" in name) and name.endswith("weight") else 0.0
            if name.endswith(".ssm_a"):  # qwen35: the decay is -exp(A_log), A_log ~ 0
                base = -1.0
            if name.endswith("layer_output_scale.weight"):  # gemma4's layer_scalar
                base = 1.0
            if name.endswith((".ls1.weight", ".ls2.weight")) or name == "mm.model.mlp.0.weight":
                base = 1.0  # internvl: layer scales; mlp1's LayerNorm weight
            if name in ("v.class_embd", "v.token_embd.img_break"):  # embeddings: O(1) like the rows they join
                out[name] = rng.standard_normal(shape).astype(np.float32)
                continue
            out[name] = (base + 0.02 * rng.standard_normal(shape)).astype(np.float32)
        elif name in ("token_embd.weight", "v.position_embd.weight"):
            out[name] = rng.standard_normal(shape).astype(np.float32) * (1.0 if name == "token_embd.weight" else 0.1)
        else:
            fan_in = int(np.prod(shape[1:]))
            out[name] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return out
