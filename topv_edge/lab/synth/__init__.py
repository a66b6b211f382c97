"""The project's GGUF writer: vision-language model pairs (text model + mmproj) in the layouts llama.cpp
loads at the pinned commit, from given weights (a trained model) or random ones (tests, benchmarks).

    python -m topv_edge.lab.synth --family qwen3vl --preset tiny -o models/
    python -m topv_edge.lab.synth --family qwen3vl --preset 4b --quantize Q4_K_M -o models/

Families (what each reproduces: docs/families.md): `llava` (LLaVA-1.5: text arch `llama`, projector `mlp`;
`--class-embedding` gives its real CLIP tower with the class token), `gemma3`, `gemma4` (projector `gemma4v`,
dynamic non-square grid), `qwen2vl`, `qwen25vl` (`qwen2.5vl_merger`, window attention), `qwen3vl`
(`qwen3vl_merger` with deepstack, IM-RoPE), `qwen35` (hybrid recurrent text arch `qwen35`) and `pixtral`
([IMG_BREAK] after every row). Weights are numpy arrays in PyTorch's convention (a Linear weight is
[out, in]); the writer stores them as GGUF expects (ggml's ne is the reverse of numpy's shape). Same seed,
same bytes.

Tiled families (a large picture becomes several image chunks: `picture_chunks`, `TILED_FAMILIES`):
`llava16` (LLaVA-1.6 anyres: `mlp` with `clip.vision.image_grid_pinpoints`, CLIP with its class token; tiles
first, the overview last, no markers) and `minicpmv` (MiniCPM-V 2.6: text arch `qwen2`, projector `resampler`
with `clip.minicpmv_version` 3; overview first, slices between `<slice>` `</slice>`, each chunk the
resampler's learned queries, not a spatial grid). `smolvlm` (SmolVLM / SmolVLM2: text arch `llama`, projector
`idefics3`: SigLIP, pixel shuffle 4, `clip.vision.preproc_image_size` longest edge; tiles after
`<fake_token_around_image><row_R_col_C>`, `\\n` after each row, then `\\n\\n<fake_token_around_image><global-img>`
overview `<fake_token_around_image>`) and `internvl` (InternVL 2.5 / 3: text arch `qwen2`, projector `internvl`:
InternViT with its class token, pixel shuffle 2, 1..N-tile candidates; `<img>` tiles then overview `</img>`).
Their chunks' tokens are row-major over the pixel-shuffled grid (token y * nx + x).
`lfm2` (LFM2-VL: hybrid text arch `lfm2`, short-convolution and attention layers, `shortconv.l_cache`;
projector `lfm2`: SigLIP2 NaFlex, pixel unshuffle 2, LayerNorm + MLP) tiles only a picture above twice the
256-token budget: `<|image_start|>` then `<|img_row_R_col_C|>` before each 512 px tile, `<|img_thumbnail|>`
thumbnail, `<|image_end|>`; a smaller picture is one chunk on a dynamic grid (64..256 tokens), row-major too.
"""

from __future__ import annotations

from .configs import TextConfig, VisionConfig, ModelConfig
from .tiling import ImageLayout, image_layout, PictureChunk, picture_chunks, lfm2_should_tile
from .presets import TILED_FAMILIES, FAMILIES, PRESETS
from .tokenizer import bytes_to_unicode, Tokenizer, make_tokenizer, family_tokenizer
from .weights import text_weight_shapes, vision_weight_shapes, gemma4_rope_freqs, minicpmv_pos_embed_k, random_weights
from .gguf_writer import LazyRandomWeights, write_text_model, mmproj_block_count, write_mmproj, permute_qk_for_llama
from .pairs import (WRITER_VERSION, FINGERPRINT_KEY, pair_paths, preset_config, pair_fingerprint, read_fingerprint,
    pair_weights, quantize_model, write_pair, main)
from .pictures import demo_image

__all__ = ["bytes_to_unicode", "FAMILIES", "FINGERPRINT_KEY", "ImageLayout", "LazyRandomWeights", "ModelConfig", "PRESETS", "PictureChunk", "TILED_FAMILIES", "TextConfig", "Tokenizer", "VisionConfig", "WRITER_VERSION", "demo_image", "family_tokenizer", "gemma4_rope_freqs", "image_layout", "lfm2_should_tile", "main", "make_tokenizer", "minicpmv_pos_embed_k", "mmproj_block_count", "pair_fingerprint", "pair_paths", "pair_weights", "permute_qk_for_llama", "picture_chunks", "preset_config", "quantize_model", "random_weights", "read_fingerprint", "text_weight_shapes", "vision_weight_shapes", "write_mmproj", "write_pair", "write_text_model"]
