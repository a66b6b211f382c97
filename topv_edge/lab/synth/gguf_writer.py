"""Writing the text model and the mmproj as GGUF files llama.cpp loads."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .configs import TextConfig, VisionConfig
from .tokenizer import Tokenizer
from .weights import random_weights, text_weight_shapes, vision_weight_shapes


class LazyRandomWeights(Mapping):
    """Random weights generated one tensor at a time (seeded by the name), for presets too large to hold in
    memory: the writer streams them to disk. Same scaling as `random_weights`."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int) -> None:
        self.shapes, self.seed = shapes, int(seed)

    def __getitem__(self, name: str) -> np.ndarray:
        digest = hashlib.sha256(f"{self.seed}:{name}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        return random_weights({name: self.shapes[name]}, rng)[name]

    def __contains__(self, name: object) -> bool:  # Mapping's default would generate the tensor
        return name in self.shapes

    def __iter__(self):
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def _stored(name: str, a: np.ndarray, dtype: str) -> np.ndarray:
    # 1-D tensors (norms, biases), the position tables and the class embedding stay f32, as llama.cpp's
    # converters do; float64 arrays (a trained model's export) would otherwise be stored as F64
    keep_f32 = a.ndim < 2 or "position_embd" in name
    return np.ascontiguousarray(a.astype(np.float16 if dtype == "f16" and not keep_f32 else np.float32))


def _write(w: "object", names: list[str], weights: Mapping[str, np.ndarray], expected: dict[str, tuple[int, ...]],
           dtype: str) -> None:
    """Header, metadata, tensor infos, then the tensors one at a time (a lazy mapping is never held whole)."""
    lazy = isinstance(weights, LazyRandomWeights)
    if not lazy:
        for n in names:
            w.add_tensor(n, _stored(n, weights[n], dtype))  # type: ignore[attr-defined]
        _finish(w)
        return
    for n in names:
        dt = np.float16 if dtype == "f16" and len(expected[n]) >= 2 and "position_embd" not in n else np.float32
        nbytes = int(np.prod(expected[n])) * np.dtype(dt).itemsize
        w.add_tensor_info(n, expected[n], np.dtype(dt), nbytes)  # type: ignore[attr-defined]
    w.write_header_to_file()  # type: ignore[attr-defined]
    w.write_kv_data_to_file()  # type: ignore[attr-defined]
    w.write_ti_data_to_file()  # type: ignore[attr-defined]
    for n in names:
        w.write_tensor_data(_stored(n, weights[n], dtype))  # type: ignore[attr-defined]
    w.close()  # type: ignore[attr-defined]


def write_text_model(path: Path, cfg: TextConfig, tok: Tokenizer, weights: Mapping[str, np.ndarray],
                     dtype: str = "f32", name: str = "topv-edge synthetic",
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write a GGUF text model of architecture `cfg.arch` from `weights` (names and shapes: `text_weight_shapes`).

    Array convention: numpy shapes as PyTorch stores them, a Linear weight is [out, in], the embedding table
    [n_vocab, n_embd]; any float dtype (stored F32, or F16 for >= 2-D tensors when dtype="f16"). For arch
    `llama`, attn_q/attn_k rows must already be in llama.cpp's interleaved RoPE order: apply
    `permute_qk_for_llama` to HuggingFace (rotate_half) weights, as convert_hf_to_gguf.py does. The Qwen and
    Gemma architectures use NEOX-style RoPE in llama.cpp: no permutation. gemma*'s output is tied to
    token_embd. Note llama.cpp's gemma graphs scale the token embeddings by sqrt(n_embd) and gemma3's RMS
    norms multiply by the stored weight (HF Gemma's `1 + weight` must be folded in before writing)."""
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
    if cfg.arch == "gemma4" and cfg.n_head_kv_global:  # per layer, as the converter writes it
        w.add_head_count_kv([cfg.layer_head_kv(i) for i in range(cfg.n_layer)])
    elif cfg.arch == "lfm2":  # per layer, 0 for the short-convolution layers (conversion/lfm2.py)
        w.add_head_count_kv([0 if cfg.is_recurrent(i) else cfg.n_head_kv for i in range(cfg.n_layer)])
    else:
        w.add_head_count_kv(cfg.n_head_kv)
    w.add_layer_norm_rms_eps(cfg.rms_eps)
    w.add_rope_freq_base(cfg.rope_base)
    if cfg.arch != "lfm2":  # LFM2's converter writes none (the whole head rotates)
        w.add_rope_dimension_count(cfg.rope_dim or cfg.head_dim)
    if cfg.arch == "lfm2":
        w.add_vocab_size(len(tok.tokens))
        w.add_shortconv_l_cache(cfg.ssm_conv)
    if cfg.n_embd_head:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if cfg.arch in ("qwen2vl", "qwen3vl", "qwen35"):
        w.add_rope_dimension_sections(list(cfg.rope_sections))
    if cfg.n_deepstack:
        w.add_uint32(f"{cfg.arch}.n_deepstack_layers", cfg.n_deepstack)
    if cfg.arch == "qwen35":
        w.add_ssm_conv_kernel(cfg.ssm_conv)
        w.add_ssm_inner_size(cfg.ssm_state * cfg.ssm_v_heads)
        w.add_ssm_state_size(cfg.ssm_state)
        w.add_ssm_time_step_rank(cfg.ssm_v_heads)
        w.add_ssm_group_count(cfg.ssm_groups)
        w.add_uint32(f"{cfg.arch}.full_attention_interval", cfg.full_attn_interval)
        w.add_array(f"{cfg.arch}.attention.recurrent_layers", [cfg.is_recurrent(i) for i in range(cfg.n_layer)])
    if cfg.arch == "gemma3" and cfg.sliding_window:  # the real ones: 5 local layers to 1 global (llama.cpp's default)
        w.add_sliding_window(cfg.sliding_window)
    if cfg.arch == "gemma4":
        w.add_array(f"{cfg.arch}.attention.sliding_window_pattern", list(cfg.swa_pattern))
        w.add_sliding_window(cfg.sliding_window)
        w.add_uint32(f"{cfg.arch}.embedding_length_per_layer_input", 0)
        w.add_uint32(f"{cfg.arch}.attention.key_length_swa", cfg.n_embd_head_swa)
        w.add_uint32(f"{cfg.arch}.attention.value_length_swa", cfg.n_embd_head_swa)
        w.add_uint32(f"{cfg.arch}.rope.dimension_count_swa", cfg.n_embd_head_swa)
        w.add_float32(f"{cfg.arch}.rope.freq_base_swa", cfg.rope_base_swa)
        w.add_float32(f"{cfg.arch}.final_logit_softcapping", 30.0)
        w.add_uint32(f"{cfg.arch}.attention.shared_kv_layers", 0)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("lfm2" if cfg.arch == "lfm2" else "default")
    w.add_token_list(tok.tokens)
    w.add_token_types(tok.types)
    w.add_token_merges(tok.merges)
    w.add_bos_token_id(tok.bos)
    w.add_eos_token_id(tok.eos)
    w.add_add_bos_token(cfg.arch in ("llama", "gemma3", "gemma4", "lfm2"))
    w.add_chat_template(tok.chat_template)
    for k, v in (metadata or {}).items():
        w.add_string(k, v)
    _write(w, list(expected), weights, expected, dtype)
    return path


_PROJECTOR_ACT = {"gelu": "clip.use_gelu", "silu": "clip.use_silu", "quick_gelu": None}


def mmproj_block_count(cfg: VisionConfig) -> int:
    """clip.vision.block_count as the converters write it: llava's (mlp) legacy converter drops the ViT's last
    block (LLaVA-1.5 feeds the projector the penultimate block, HF `hidden_states[-2]`); the others keep all."""
    return cfg.n_layer - 1 if cfg.projector == "mlp" else cfg.n_layer


def write_mmproj(path: Path, cfg: VisionConfig, n_embd_text: int, weights: Mapping[str, np.ndarray],
                 dtype: str = "f32", name: str = "topv-edge synthetic mmproj",
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write a GGUF mmproj (`clip` architecture) for projector `cfg.projector` (names/shapes: `vision_weight_shapes`).

    Same array convention as `write_text_model` (Linear [out, in]; the patch embedding is a Conv2d weight
    [n_embd, 3, patch, patch]); exceptions: gemma3's `mm.input_projection.weight` is [in, out] as in HF
    (the graph transposes it); the Qwen mergers' Conv3d patch kernel [n_embd, 3, 2, p, p] is written as two
    Conv2d kernels, `v.patch_embd.weight` = k[:, :, 0] and `v.patch_embd.weight.1` = k[:, :, 1]; gemma4v's
    position table is [2, pos_size, n_embd] (x table, then y).
    llava (mlp): `weights` holds all n_layer blocks of the HF ViT and, as llama.cpp's legacy converter does,
    the last one is not written (block_count = n_layer - 1): the projector reads the penultimate block's
    output. The patched llama.cpp runs every stored block (patches/10-clip-class-token-first.patch)."""
    import gguf

    expected = vision_weight_shapes(cfg, n_embd_text)
    _check_weights(weights, expected, "mmproj")
    n_blocks = mmproj_block_count(cfg)
    names = [n for n in expected if not (n.startswith("v.blk.") and int(n.split(".")[2]) >= n_blocks)]
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_name(name)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    w.add_bool("clip.has_vision_encoder", True)
    w.add_string("clip.projector_type", cfg.projector)
    act_key = _PROJECTOR_ACT[cfg.hidden_act]
    if act_key is not None:
        w.add_bool(act_key, True)
    elif cfg.projector == "mlp":  # quick GELU is llama.cpp's default; the legacy converter writes use_gelu = false
        w.add_bool("clip.use_gelu", False)
    w.add_uint32("clip.vision.image_size", cfg.image_size)
    w.add_uint32("clip.vision.patch_size", cfg.patch_size)
    w.add_uint32("clip.vision.embedding_length", cfg.n_embd)
    w.add_uint32("clip.vision.feed_forward_length", cfg.n_ff)
    w.add_uint32("clip.vision.block_count", n_blocks)
    # the MiniCPM-V converter writes 0 (the resampler's width is resampler.proj's)
    w.add_uint32("clip.vision.projection_dim", 0 if cfg.projector == "resampler" else n_embd_text)
    w.add_uint32("clip.vision.attention.head_count", cfg.n_head)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", cfg.ln_eps)
    w.add_array("clip.vision.image_mean", list(cfg.image_mean))
    w.add_array("clip.vision.image_std", list(cfg.image_std))
    if cfg.projector in ("gemma3", "gemma4v", "lfm2"):
        w.add_uint32("clip.vision.projector.scale_factor", cfg.spatial_merge)
    if cfg.projector == "qwen2vl_merger":
        w.add_uint32("clip.vision.spatial_merge_size", cfg.spatial_merge)
        w.add_uint32("clip.vision.image_min_pixels", (cfg.patch_size * cfg.spatial_merge) ** 2 * 4)
        w.add_uint32("clip.vision.image_max_pixels", cfg.image_size * cfg.image_size)
    if cfg.projector == "qwen2.5vl_merger":
        w.add_uint32("clip.vision.n_wa_pattern", cfg.n_wa_pattern)
    if cfg.projector == "qwen3vl_merger":
        w.add_uint32("clip.vision.spatial_merge_size", cfg.spatial_merge)
        w.add_array("clip.vision.is_deepstack_layers", [i in cfg.deepstack for i in range(cfg.n_layer)])
    if cfg.projector == "mlp" and cfg.grid_pinpoints:  # LLaVA-1.6 (legacy converter + config_vit.json keys)
        w.add_array("clip.vision.image_grid_pinpoints", list(cfg.grid_pinpoints))
        w.add_string("clip.vision.image_aspect_ratio", "anyres")
        w.add_string("clip.vision.mm_patch_merge_type", "spatial_unpad")
    if cfg.projector == "resampler":  # minicpmv-convert-image-encoder-to-gguf.py
        w.add_bool("clip.has_minicpmv_projector", True)
        w.add_int32("clip.minicpmv_version", cfg.minicpmv_version)
        w.add_uint32("clip.minicpmv_query_num", cfg.n_queries)
    if cfg.projector == "pixtral" and cfg.spatial_merge > 1:
        w.add_uint32("clip.vision.spatial_merge_size", cfg.spatial_merge)
    if cfg.projector in ("idefics3", "internvl"):  # conversion/smolvlm.py, conversion/internvl.py: pixel shuffle
        w.add_uint32("clip.vision.projector.scale_factor", cfg.spatial_merge)
    if cfg.projector == "idefics3":  # the preprocessor's longest edge (preprocessor_config size.longest_edge)
        w.add_uint32("clip.vision.preproc_image_size", cfg.preproc_longest_edge)
    if cfg.projector == "internvl":  # min/max_dynamic_patch, written when the config has them
        if cfg.preproc_tiles[0] > 0:
            w.add_uint32("clip.vision.preproc_min_tiles", cfg.preproc_tiles[0])
        if cfg.preproc_tiles[1] > 0:
            w.add_uint32("clip.vision.preproc_max_tiles", cfg.preproc_tiles[1])
    for k, v in (metadata or {}).items():
        w.add_string(k, v)
    _write(w, names, weights, expected, dtype)
    return path


def permute_qk_for_llama(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF (rotate_half) -> llama.cpp (interleaved) RoPE row order of a llama attn_q / attn_k weight or bias.

    `n_head` is the head count of that projection (n_head_kv for attn_k). Same as convert_hf_to_gguf.py."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def _check_weights(weights: Mapping[str, np.ndarray], expected: dict[str, tuple[int, ...]], what: str) -> None:
    missing = [n for n in expected if n not in weights]
    if missing:
        raise ValueError(f"{what}: missing weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if isinstance(weights, LazyRandomWeights):  # generated to these shapes, finite by construction
        return
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
