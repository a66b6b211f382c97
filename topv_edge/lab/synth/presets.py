"""The families the writer knows and their presets: tiny (tests) and laptop shapes (benchmarks)."""

from __future__ import annotations


from .configs import ModelConfig, TextConfig, VisionConfig


# families whose large pictures become an overview and tiles (several image chunks): `picture_chunks`
TILED_FAMILIES: frozenset[str] = frozenset({
    "llava16",
    "minicpmv",
    "smolvlm",
    "internvl",
    "lfm2",
})

# family -> text architecture, projector (the layouts of the real GGUFs named in docs/families.md)
FAMILIES: dict[str, tuple[str, str]] = {
    "llava": ("llama", "mlp"),
    "gemma3": ("gemma3", "gemma3"),
    "gemma4": ("gemma4", "gemma4v"),
    "qwen2vl": ("qwen2vl", "qwen2vl_merger"),
    "qwen25vl": ("qwen2vl", "qwen2.5vl_merger"),
    "qwen3vl": ("qwen3vl", "qwen3vl_merger"),
    "qwen35": ("qwen35", "qwen3vl_merger"),
    "pixtral": ("llama", "pixtral"),
    "llava16": ("llama", "mlp"),
    "minicpmv": ("qwen2", "resampler"),
    "smolvlm": ("llama", "idefics3"),
    "internvl": ("qwen2", "internvl"),
    "lfm2": ("lfm2", "lfm2"),
}

_SIGLIP = dict(image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5))

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
                     n_head=4, ln_eps=1e-6, hidden_act="quick_gelu")),
    # Qwen2.5-VL: Qwen2-VL's text model; RMS-norm ViT with SiLU-gated FFNs, window attention (full every 2nd
    # block here, every 8th in the real 3B/7B)
    ("qwen25vl", "tiny"): ModelConfig(
        "qwen25vl",
        TextConfig(arch="qwen2vl", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6,
                   rope_sections=(4, 6, 6, 0), rms_eps=1e-6),
        VisionConfig(projector="qwen2.5vl_merger", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=4,
                     n_head=4, ln_eps=1e-6, hidden_act="silu", n_wa_pattern=2)),
    # Qwen3-VL: Qwen3 text (q/k norms, 32-wide heads over a 128-wide model, tied LM head), IM-RoPE, deepstack
    # after text layers 0 and 1 from ViT blocks 1 and 2 (real 4B: 3 of 24 blocks)
    ("qwen3vl", "tiny"): ModelConfig(
        "qwen3vl",
        TextConfig(arch="qwen3vl", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=5e6,
                   rope_sections=(8, 8, 8, 0), rms_eps=1e-6, n_embd_head=48, tied_output=True, n_deepstack=2),
        VisionConfig(projector="qwen3vl_merger", image_size=256, patch_size=16, n_embd=64, n_ff=160, n_layer=4,
                     n_head=4, ln_eps=1e-6, deepstack=(1, 2), pos_size=16, **_SIGLIP)),
    # Qwen3.5: hybrid text model (gated delta-net layers, every 4th layer full attention with a gated query),
    # IM-RoPE on a quarter of each head; the Qwen3-VL encoder without deepstack
    ("qwen35", "tiny"): ModelConfig(
        "qwen35",
        TextConfig(arch="qwen35", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e7,
                   rope_sections=(3, 3, 2, 0), rms_eps=1e-6, n_embd_head=64, rope_dim=16, tied_output=True,
                   ssm_conv=4, ssm_state=32, ssm_groups=2, ssm_v_heads=4, full_attn_interval=4),
        VisionConfig(projector="qwen3vl_merger", image_size=256, patch_size=16, n_embd=64, n_ff=160, n_layer=2,
                     n_head=4, ln_eps=1e-6, pos_size=16, **_SIGLIP)),
    ("gemma3", "tiny"): ModelConfig(
        "gemma3",
        TextConfig(arch="gemma3", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rms_eps=1e-6),
        VisionConfig(projector="gemma3", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                     ln_eps=1e-6, spatial_merge=2, **_SIGLIP)),
    # Gemma 4 (31B / 26B layout: no per-layer embeddings, non-causal images): sliding-window layers with
    # narrower heads, the last layer global; ViT with 2D RoPE and x/y position tables, 3 x 3 pooling
    ("gemma4", "tiny"): ModelConfig(
        "gemma4",
        TextConfig(arch="gemma4", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rms_eps=1e-6,
                   rope_base=1e6, n_embd_head=64, n_embd_head_swa=32, swa_pattern=(True, True, True, False),
                   n_head_kv_global=1, sliding_window=512, tied_output=True),
        VisionConfig(projector="gemma4v", image_size=224, patch_size=16, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                     ln_eps=1e-6, spatial_merge=3, pos_size=128, hidden_act="quick_gelu", **_SIGLIP)),
    # Pixtral-12B layout (no patch merger): llama text, RMS-norm ViT with 2D RoPE, [IMG_BREAK] after each row
    ("pixtral", "tiny"): ModelConfig(
        "pixtral",
        TextConfig(n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6, n_embd_head=48),
        VisionConfig(projector="pixtral", image_size=1024, patch_size=16, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                     ln_eps=1e-5, hidden_act="silu", spatial_merge=1,
                     image_mean=(0.48145466, 0.4578275, 0.40821073))),
    # Qwen2-VL-2B shapes (text 1536 wide, 28 layers; ViT 1280 wide, 32 layers), image at 448 x 448: 16 x 16 tokens
    ("qwen2vl", "2b"): ModelConfig(
        "qwen2vl",
        TextConfig(arch="qwen2vl", n_embd=1536, n_ff=8960, n_layer=28, n_head=12, n_head_kv=2, rope_base=1e6,
                   rope_sections=(16, 24, 24, 0)),
        VisionConfig(projector="qwen2vl_merger", image_size=448, patch_size=14, n_embd=1280, n_ff=5120, n_layer=32,
                     n_head=16, ln_eps=1e-6, hidden_act="quick_gelu"),
        dtype="f16"),
    # Qwen3-VL-4B-Instruct (config.json): text 2560 wide, 36 layers, 32 heads of 128, 8 KV heads, FFN 9728,
    # tied; ViT 1024 wide, 24 blocks, 16 heads, FFN 4096, patch 16, 48 x 48 position grid, deepstack 5/11/17
    ("qwen3vl", "4b"): ModelConfig(
        "qwen3vl",
        TextConfig(arch="qwen3vl", n_embd=2560, n_ff=9728, n_layer=36, n_head=32, n_head_kv=8, rope_base=5e6,
                   rope_sections=(24, 20, 20, 0), rms_eps=1e-6, n_embd_head=128, tied_output=True, n_deepstack=3,
                   n_ctx_train=262144),
        VisionConfig(projector="qwen3vl_merger", image_size=768, patch_size=16, n_embd=1024, n_ff=4096, n_layer=24,
                     n_head=16, ln_eps=1e-6, deepstack=(5, 11, 17), pos_size=48, **_SIGLIP),
        dtype="f16"),
    # Gemma-3-4B-it: text 2560 wide, 34 layers, 8 heads of 256, 4 KV heads, FFN 10240; SigLIP-So400m/14 at
    # 896 px (27 layers, 1152 wide, FFN 4304), pooled 4 x 4 to 256 tokens
    ("gemma3", "4b"): ModelConfig(
        "gemma3",
        TextConfig(arch="gemma3", n_embd=2560, n_ff=10240, n_layer=34, n_head=8, n_head_kv=4, rms_eps=1e-6,
                   rope_base=1e6, n_embd_head=256, n_ctx_train=131072, sliding_window=1024),
        VisionConfig(projector="gemma3", image_size=896, patch_size=14, n_embd=1152, n_ff=4304, n_layer=27,
                     n_head=16, ln_eps=1e-6, spatial_merge=4, **_SIGLIP),
        dtype="f16"),
}

# LLaVA-1.5's vision tower as its GGUFs carry it (openai/clip-vit-large-patch14-336 through llama.cpp's
# legacy converter): a class embedding, no patch bias, quick-GELU
_LLAVA_CLASS_TOKEN = dict(class_embedding=True, patch_bias=False, hidden_act="quick_gelu")

# LLaVA-1.6 (LLaVA-NeXT, anyres): LLaVA-1.5's tower with its class token, and llava-v1.6's five pinpoints
# (336 x 672, 672 x 336, 672 x 672, 1008 x 336, 336 x 1008) at the tiny image size 112: tiles of 8 x 8 = 64
PRESETS[("llava16", "tiny")] = ModelConfig(
    "llava16", TextConfig(),
    VisionConfig(image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=3, n_head=4,
                 grid_pinpoints=(112, 224, 224, 112, 224, 224, 336, 112, 112, 336), **_LLAVA_CLASS_TOKEN))
# MiniCPM-V 2.6: Qwen2 text (q/k/v biases), SigLIP (patch bias, 70 x 70 position table bucketed to the
# slice's patch grid, post-LN, GELU), resampler (minicpmv_version 3) with 32 learned queries here (64 real)
PRESETS[("minicpmv", "tiny")] = ModelConfig(
    "minicpmv",
    TextConfig(arch="qwen2", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6, rms_eps=1e-6),
    VisionConfig(projector="resampler", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                 ln_eps=1e-6, pos_size=70, minicpmv_version=3, n_queries=32, **_SIGLIP))
# SmolVLM / SmolVLM2 (Idefics3): llama text; SigLIP (patch bias, post-LN, GELU) on square tiles, pixel shuffle
# by 4 as the real ones (512 px tiles of 16 px patches: 8 x 8 = 64 tokens) -> mm.model.fc. Tiny: 128 px tiles of
# 8 px patches, 16 x 16 -> 4 x 4 = 16 tokens; longest edge 384 (real 2048 = 4 tiles): at most 3 x 3 tiles
PRESETS[("smolvlm", "tiny")] = ModelConfig(
    "smolvlm",
    TextConfig(n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e5),
    VisionConfig(projector="idefics3", image_size=128, patch_size=8, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                 ln_eps=1e-6, spatial_merge=4, preproc_longest_edge=384, **_SIGLIP))
# InternVL3-1B/2B, InternVL2.5-1B: Qwen2.5 text (arch qwen2: q/k/v biases; tied output as Qwen2.5-0.5B/1.5B);
# InternViT-300M (class token, position table of n_patches + 1 rows, layer scales ls1/ls2, LayerNorm, GELU) on
# image_size tiles, pixel shuffle 2 (real 448 / 14: 32 x 32 -> 16 x 16 = 256), mlp1 = LN, fc, GELU, fc. Tiny:
# 112 px tiles, 8 x 8 -> 4 x 4 = 16 tokens, 1..6 tiles (real 1..12)
PRESETS[("internvl", "tiny")] = ModelConfig(
    "internvl",
    TextConfig(arch="qwen2", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6, rms_eps=1e-6,
               tied_output=True),
    VisionConfig(projector="internvl", image_size=112, patch_size=14, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                 ln_eps=1e-6, spatial_merge=2, class_embedding=True, preproc_tiles=(1, 6),
                 image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225)))
# LFM2-VL: LFM2 text (hybrid: gated short-convolution layers, kernel 3, and GQA attention layers with q/k
# norms; tied output); SigLIP2 NaFlex tower (patch bias, learned position grid resized to the picture's,
# post-LN, GELU), pixel unshuffle 2 -> LayerNorm -> linear, GELU, linear. Real: 16 px patches, 16 x 16 position
# grid, 512 px tiles of 16 x 16 = 256 tokens. The tile size (512) and token limits (64..256) are llama.cpp
# constants, so the tiny tower has 38 px patches: tiles of 13 x 13 patches, padded to 14 x 14 by the unshuffle,
# 7 x 7 = 49 tokens; the real pattern's first layers are conv, conv, attention (attention at 2, 5, 8, 10, 12, 14)
PRESETS[("lfm2", "tiny")] = ModelConfig(
    "lfm2",
    TextConfig(arch="lfm2", n_embd=128, n_ff=352, n_layer=4, n_head=4, n_head_kv=2, rope_base=1e6, rms_eps=1e-5,
               tied_output=True, ssm_conv=3, attn_layers=(2, 3)),
    VisionConfig(projector="lfm2", image_size=38 * 8, patch_size=38, n_embd=64, n_ff=160, n_layer=2, n_head=4,
                 ln_eps=1e-6, spatial_merge=2, pos_size=8, proj_hidden=128, **_SIGLIP))
