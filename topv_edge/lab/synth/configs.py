"""Hyperparameters of a pair: the text model, the vision tower, both."""

from __future__ import annotations

from dataclasses import dataclass


from .tiling import image_layout


@dataclass(frozen=True)
class TextConfig:
    arch: str = "llama"          # llama | qwen2vl | qwen3vl | qwen35 | gemma3 | gemma4
    n_embd: int = 128
    n_ff: int = 352              # != n_embd (llama.cpp swaps ffn_up/ffn_down when they are equal)
    n_layer: int = 4
    n_head: int = 4
    n_head_kv: int = 2
    rope_base: float = 10000.0
    rms_eps: float = 1e-5
    n_ctx_train: int = 4096
    rope_sections: tuple[int, int, int, int] = (0, 0, 0, 0)  # M-RoPE / IM-RoPE sections (t, h, w, e), in pairs
    n_embd_head: int = 0         # 0: n_embd // n_head (Qwen3 and Gemma heads are wider than that)
    tied_output: bool = False    # no output.weight: the LM head is token_embd (gemma* always)
    n_deepstack: int = 0         # qwen3vl: image rows carry n_deepstack extra n_embd slices, added after layer il
    rope_dim: int = 0            # 0: the whole head; qwen35 rotates a quarter of it
    # qwen35 gated delta-net layers (every layer but each full_attn_interval-th)
    ssm_conv: int = 4
    ssm_state: int = 0           # head dim of the linear-attention keys and values
    ssm_groups: int = 0          # key heads
    ssm_v_heads: int = 0         # value heads
    full_attn_interval: int = 4
    # gemma4: which layers use sliding-window attention, their head width and window
    swa_pattern: tuple[bool, ...] = ()
    n_embd_head_swa: int = 0
    n_head_kv_global: int = 0    # gemma4: KV heads of the global layers (0: n_head_kv)
    sliding_window: int = 0      # gemma3/gemma4: attention.sliding_window (gemma3: 0 writes none, no SWA)
    rope_base_swa: float = 10000.0
    rope_partial_global: float = 0.25  # gemma4: the global layers rotate this share of their head
    # lfm2: the attention layers (the others are short-convolution layers, kernel ssm_conv = shortconv.l_cache)
    attn_layers: tuple[int, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.n_embd_head or self.n_embd // self.n_head

    def layer_head_dim(self, il: int) -> int:
        """Head width of layer il (gemma4: the sliding-window layers are narrower)."""
        if self.arch == "gemma4" and self.swa_pattern[il]:
            return self.n_embd_head_swa
        return self.head_dim

    def layer_head_kv(self, il: int) -> int:
        if self.arch == "gemma4" and not self.swa_pattern[il] and self.n_head_kv_global:
            return self.n_head_kv_global
        return self.n_head_kv

    def is_recurrent(self, il: int) -> bool:
        if self.arch == "lfm2":  # short-convolution layers: head_count_kv 0 (src/models/lfm2.cpp is_recr_impl)
            return il not in self.attn_layers
        return self.arch == "qwen35" and (il + 1) % self.full_attn_interval != 0


@dataclass(frozen=True)
class VisionConfig:
    projector: str = "mlp"       # mlp | gemma3 | gemma4v | qwen2vl_merger | qwen2.5vl_merger | qwen3vl_merger | pixtral
    image_size: int = 112
    patch_size: int = 14
    n_embd: int = 64
    n_ff: int = 160
    n_layer: int = 3
    n_head: int = 4
    ln_eps: float = 1e-5
    proj_hidden: int = 128       # mlp: width between mm.0 and mm.2
    spatial_merge: int = 2       # qwen*: s x s patches per token; gemma3/gemma4v: s x s average pool; pixtral: patch merger (1: none)
    class_embedding: bool = False
    image_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    hidden_act: str = "gelu"     # gelu (use_gelu) | silu (use_silu) | quick_gelu (neither key: llama.cpp's default)
    patch_bias: bool = True      # mlp: a bias on the patch convolution (HF CLIP has none)
    n_wa_pattern: int = 0        # qwen2.5vl_merger: every n-th block attends globally, the others in 112 px windows
    deepstack: tuple[int, ...] = ()  # qwen3vl_merger: blocks whose output feeds a deepstack merger
    pos_size: int = 0            # qwen3vl_merger: side of the learned position grid; gemma4v: rows of each x/y table
    # tiling
    preproc_longest_edge: int = 0  # idefics3: clip.vision.preproc_image_size
    preproc_tiles: tuple[int, int] = (0, 0)  # internvl: preproc_min/max_tiles (0: none)
    grid_pinpoints: tuple[int, ...] = ()  # mlp: clip.vision.image_grid_pinpoints (w, h, ...): LLaVA-1.6 anyres
    minicpmv_version: int = 0      # resampler: clip.minicpmv_version (3: MiniCPM-V 2.6)
    n_queries: int = 0             # resampler: clip.minicpmv_query_num (learned queries = tokens per chunk)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    def n_image_tokens(self) -> int:
        """Image tokens per picture of image_size x image_size."""
        return image_layout(self, self.image_size, self.image_size).n_tokens


@dataclass(frozen=True)
class ModelConfig:
    family: str
    text: TextConfig
    vision: VisionConfig
    dtype: str = "f32"           # f32 | f16 for the big matrices
