"""LLaVA-1.5's CLIP tower in llama.cpp against an independent float64 reference of HF's forward
(tests/helpers/llama_reference.py ClipReference): the class token first, patches at positions 1..N, the projector
fed the penultimate block. patches/10-clip-class-token-first.patch fixes the order (upstream issue 25814)
and the encoder depth (upstream issue 25817); without it the tokens below are far from the reference."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from helpers.llama_reference import ClipReference
from topv_edge.lab.synth import demo_image, pair_weights, preset_config, write_pair

THREADS = 2
# ggml's GELU is the tanh approximation (HF LLaVA's projector uses erf) and runs in f32 (tables in f16):
# per-token cosine to the float64 reference >= 0.9999 and the largest error <= 1 % of the tokens' RMS.
# The unpatched order gives a mean cosine of about 0.5 (upstream measured 0.505 on LLaVA-1.5-7B).
MIN_COSINE = 0.9999
MAX_REL_ERR = 1e-2


def _encode(libs, model, mmproj, picture) -> np.ndarray:
    """The image tokens llama.cpp's mtmd produces for one picture: (n_tokens, n_embd_text)."""
    L, M = libs.llama_cpp, libs.mtmd_cpp
    lm = L.llama_model_load_from_file(str(model).encode(), L.llama_model_default_params())
    assert lm
    p = M.mtmd_context_params_default()
    p.use_gpu, p.n_threads, p.warmup, p.print_timings = False, THREADS, False, False
    mctx = M.mtmd_init_from_file(str(mmproj).encode(), lm, p)
    assert mctx
    data = picture.read_bytes()
    bitmap = M.mtmd_helper_bitmap_init_from_buf(mctx, (ctypes.c_uint8 * len(data)).from_buffer_copy(data),
                                                len(data), False)
    chunks = M.mtmd_input_chunks_init()
    try:
        text = M.mtmd_default_marker()
        inp = M.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), False, True
        assert M.mtmd_tokenize(mctx, chunks, ctypes.byref(inp), (M.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
        image = [M.mtmd_input_chunks_get(chunks, i) for i in range(M.mtmd_input_chunks_size(chunks))
                 if M.mtmd_input_chunk_get_type(M.mtmd_input_chunks_get(chunks, i)) == 1]
        assert len(image) == 1
        n = M.mtmd_input_chunk_get_n_tokens(image[0])
        assert M.mtmd_encode_chunk(mctx, image[0]) == 0
        d = L.llama_model_n_embd(lm)
        return np.ctypeslib.as_array(M.mtmd_get_output_embd(mctx), shape=(n * d,)).reshape(n, d).astype(np.float64)
    finally:
        M.mtmd_input_chunks_free(chunks)
        M.mtmd_bitmap_free(bitmap)
        M.mtmd_free(mctx)
        L.llama_model_free(lm)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("class_embedding", [True, False], ids=["class-token", "no-class-token"])
def test_llava_image_tokens_equal_the_hf_reference(libs, tmp_path, class_embedding):
    model, mmproj = write_pair("llava", "tiny", tmp_path, seed=0, class_embedding=class_embedding)
    cfg = preset_config("llava", "tiny", class_embedding).vision
    picture = tmp_path / "picture.png"
    image = demo_image((cfg.image_size, cfg.image_size), seed=3)  # exactly image_size: no resampling
    image.save(picture)
    ref = ClipReference(cfg, pair_weights("llava", "tiny", 0, class_embedding)[1])
    want = ref.image_tokens(image)
    got = _encode(libs, model, mmproj, picture)
    assert got.shape == want.shape == (cfg.grid ** 2, preset_config("llava", "tiny").text.n_embd)
    cos = _cosines(got, want)
    rms = np.sqrt((want ** 2).mean())
    assert cos.min() >= MIN_COSINE, f"per-token cosine min {cos.min():.4f} mean {cos.mean():.4f}"
    assert np.abs(got - want).max() <= MAX_REL_ERR * rms


def test_the_reference_tells_the_orders_apart():
    """The unpatched order (class token last, patches shifted) is far from the reference: the test above can
    fail. Simulated in float64 with the reference's own blocks."""
    cfg = preset_config("llava", "tiny", True).vision
    ref = ClipReference(cfg, pair_weights("llava", "tiny", 0, True)[1])
    image = demo_image((cfg.image_size, cfg.image_size), seed=3)
    right = ref.image_tokens(image)
    unpatched = ClipReference(cfg, ref.w, select_layer=-3).image_tokens(image, order="unpatched")
    assert _cosines(right, unpatched).mean() < 0.9
    # each defect alone is caught too
    assert _cosines(right, ref.image_tokens(image, order="unpatched")).min() < MIN_COSINE
    assert _cosines(right, ClipReference(cfg, ref.w, select_layer=-3).image_tokens(image)).min() < MIN_COSINE
