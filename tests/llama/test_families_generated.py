"""Every generated family (topv_edge.lab.synth) loads in the patched llama.cpp and answers unpruned, through
the Python runtime and through llama-mtmd-cli, with the image tokens its layout says (docs/families.md)."""

from __future__ import annotations

import ctypes
import os
import subprocess

import numpy as np
import pytest

from topv_edge.lab.synth import FAMILIES as WRITER_FAMILIES, TILED_FAMILIES
from topv_edge.lab.synth import ImageLayout, demo_image, image_layout, pair_paths, preset_config

from helpers.families import GENERATED_FAMILIES
from helpers.server import binary

THREADS = 2
# a non-square picture for every family; pixtral has one token per 16 px patch, so a smaller one
PICTURE_SIZE = {"pixtral": (192, 128)}
DEFAULT_SIZE = (336, 224)
# what the layout gives for those pictures (written out: a change in the writer or in llama.cpp shows here)
EXPECTED = {
    "llava": (8, 8, 64),          # fixed 112 x 112, patch 14, one token per patch
    "gemma3": (4, 4, 16),         # fixed 112 x 112, 8 x 8 patches average-pooled 2 x 2
    "gemma4": (11, 7, 77),        # 336 x 224 -> at least 70 tokens of 48 px: 528 x 336
    "qwen2vl": (12, 8, 96),       # 336 x 224 in 28 px tokens (2 x 2 patches of 14)
    "qwen25vl": (12, 8, 96),      # same grid; 112 px attention windows (4 x 4 tokens)
    "qwen3vl": (11, 7, 77),       # 32 px tokens: 336 rounds to 352
    "qwen35": (11, 7, 77),
    "pixtral": (12, 8, 103),      # 16 px patches, 12 x 8 + an [IMG_BREAK] after each of the first 7 rows
}
MROPE = {"qwen2vl", "qwen25vl", "qwen3vl", "qwen35"}
NON_CAUSAL = {"gemma3", "gemma4"}  # gemma4: every width but E2B's and E4B's


def _picture(tmp_path_factory, family: str):
    size = PICTURE_SIZE.get(family, DEFAULT_SIZE)
    path = tmp_path_factory.getbasetemp() / f"picture-{size[0]}x{size[1]}.png"
    if not path.exists():
        demo_image(size, seed=3).save(path)
    return path, size


def test_every_writer_family_is_tested():
    # the tiled families are tested by tests/llama/test_families_tiled.py
    assert set(GENERATED_FAMILIES) == set(WRITER_FAMILIES) - TILED_FAMILIES == set(EXPECTED)


@pytest.mark.parametrize("family", GENERATED_FAMILIES)
def test_layout_of_the_test_picture(family):
    vcfg = preset_config(family, "tiny").vision
    lay = image_layout(vcfg, *PICTURE_SIZE.get(family, DEFAULT_SIZE))
    assert (lay.nx, lay.ny, lay.n_tokens) == EXPECTED[family]
    assert 16 <= lay.n_tokens <= 150
    if family not in ("llava", "gemma3"):
        assert lay.nx != lay.ny  # the dynamic-grid families get a non-square grid


class _Mtmd:
    """The raw mtmd API on the patched build: tokenise a prompt + picture, evaluate, read what llama.cpp did."""

    def __init__(self, libs, model, mmproj):
        self.L, self.M = libs.llama_cpp, libs.mtmd_cpp
        L, M = self.L, self.M
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(model).encode(), mp)
        assert self.model, f"llama.cpp could not load {model}"
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 1024, 512, 512, THREADS, THREADS
        self.ctx = L.llama_init_from_model(self.model, cp)
        assert self.ctx
        p = M.mtmd_context_params_default()
        p.use_gpu, p.n_threads, p.warmup, p.print_timings = False, THREADS, False, False
        self.mctx = M.mtmd_init_from_file(str(mmproj).encode(), self.model, p)
        assert self.mctx, f"mtmd could not load {mmproj}"

    def close(self):
        self.M.mtmd_free(self.mctx)
        self.L.llama_free(self.ctx)
        self.L.llama_model_free(self.model)

    def run(self, picture) -> dict:
        L, M = self.L, self.M
        data = picture.read_bytes()
        bitmap = M.mtmd_helper_bitmap_init_from_buf(self.mctx, (ctypes.c_uint8 * len(data)).from_buffer_copy(data),
                                                    len(data), False)
        assert bitmap
        text = f"{M.mtmd_default_marker().decode()}What is in the picture?".encode()
        inp = M.mtmd_input_text()
        inp.text, inp.text_len, inp.add_special, inp.parse_special = text, len(text), True, True
        chunks = M.mtmd_input_chunks_init()
        try:
            assert M.mtmd_tokenize(self.mctx, chunks, ctypes.byref(inp), (M.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
            out: dict = {"types": []}
            n_pos_total = 0
            for i in range(M.mtmd_input_chunks_size(chunks)):
                c = M.mtmd_input_chunks_get(chunks, i)
                out["types"].append(M.mtmd_input_chunk_get_type(c))
                n_pos_total += M.mtmd_input_chunk_get_n_pos(c)
                if M.mtmd_input_chunk_get_type(c) == 1:  # MTMD_INPUT_CHUNK_TYPE_IMAGE
                    it = M.mtmd_input_chunk_get_tokens_image(c)
                    out.update(n_tokens=M.mtmd_image_tokens_get_n_tokens(it), nx=M.mtmd_image_tokens_get_nx(it),
                               ny=M.mtmd_image_tokens_get_ny(it))
                    assert M.mtmd_encode_chunk(self.mctx, c) == 0
                    n_embd = L.llama_model_n_embd_inp(self.model) if hasattr(L, "llama_model_n_embd_inp") else None
                    emb = M.mtmd_get_output_embd(self.mctx)
                    if n_embd:
                        out["embd"] = np.ctypeslib.as_array(emb, shape=(out["n_tokens"] * n_embd,)).reshape(
                            out["n_tokens"], n_embd).copy()
            L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
            n_past = L.llama_pos(0)
            assert M.mtmd_helper_eval_chunks(self.mctx, self.ctx, chunks, 0, 0, 512, True, ctypes.byref(n_past)) == 0
            out["n_past"], out["n_pos_total"] = n_past.value, n_pos_total
            out["logits"] = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, -1),
                                                  shape=(L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model)),)).copy()
            out["mrope"] = bool(M.mtmd_decode_use_mrope(self.mctx))
            out["non_causal"] = bool(M.mtmd_decode_use_non_causal(self.mctx, None))
        finally:
            M.mtmd_input_chunks_free(chunks)
            M.mtmd_bitmap_free(bitmap)
        return out


@pytest.mark.parametrize("family", GENERATED_FAMILIES)
def test_tiny_pair_through_mtmd(models_dir, libs, tmp_path_factory, family):
    """The image is one chunk of the layout's tokens, the grid and RoPE/causality are the family's, the logits
    are finite and depend on the picture."""
    picture, _ = _picture(tmp_path_factory, family)
    other = tmp_path_factory.getbasetemp() / f"other-{family}.png"
    demo_image(PICTURE_SIZE.get(family, DEFAULT_SIZE), seed=4).save(other)
    s = _Mtmd(libs, *pair_paths(family, "tiny", models_dir))
    try:
        a, b = s.run(picture), s.run(other)
    finally:
        s.close()
    nx, ny, n = EXPECTED[family]
    assert a["types"].count(1) == 1 and a["types"][0] == 0 and a["types"][-1] == 0  # text, image, text
    assert a["n_tokens"] == n
    assert a["mrope"] == (family in MROPE) and a["non_causal"] == (family in NON_CAUSAL)
    if family in MROPE:  # M-RoPE chunks carry their grid (ordinary-RoPE ones report (n_tokens, 1))
        assert (a["nx"], a["ny"]) == (nx, ny)
    assert a["n_past"] == a["n_pos_total"]
    assert np.all(np.isfinite(a["logits"])) and np.std(a["logits"]) > 1e-3
    assert not np.allclose(a["logits"], b["logits"])  # the picture reaches the text model
    if "embd" in a:
        assert np.all(np.isfinite(a["embd"]))
        if family == "pixtral":  # every row but the last ends with the same [IMG_BREAK] embedding
            rows = a["embd"][: ny * (nx + 1) - 1]
            breaks = rows[nx::nx + 1]
            assert len(breaks) == ny - 1 and np.allclose(breaks, breaks[0]) and not np.allclose(rows[0], breaks[0])


def test_deepstack_rows_are_wide(models_dir, libs):
    """Qwen3-VL: each image row is [main | deepstack 1 | deepstack 2], (1 + n_deepstack) * n_embd wide."""
    cfg = preset_config("qwen3vl", "tiny")
    s = _Mtmd(libs, *pair_paths("qwen3vl", "tiny", models_dir))
    try:
        assert libs.llama_cpp.llama_model_n_embd(s.model) == cfg.text.n_embd
        if hasattr(libs.llama_cpp, "llama_model_n_embd_inp"):
            assert libs.llama_cpp.llama_model_n_embd_inp(s.model) == (1 + cfg.text.n_deepstack) * cfg.text.n_embd
    finally:
        s.close()


@pytest.mark.parametrize("family", GENERATED_FAMILIES)
def test_unpruned_answer_through_vision_chat(models_dir, libs, tmp_path_factory, family):
    from topv_edge.options import TopVOptions
    from topv_edge.session import VisionChat

    picture, _ = _picture(tmp_path_factory, family)
    model, mmproj = pair_paths(family, "tiny", models_dir)
    with VisionChat(model, mmproj, topv=TopVOptions(enabled=False), threads=THREADS, max_tokens=4) as chat:
        answer, report = chat.ask("What is in the picture?", images=[picture])
    assert isinstance(answer, str)
    assert len(report.images) == 1
    im = report.images[0]
    assert im.n_tokens == EXPECTED[family][2] and im.n_kept == im.n_tokens and not im.pruned
    # a first token was sampled from finite logits (random weights may well end the answer at once), greedily: the
    # same question again gives the same answer
    assert not report.stopped and report.ttft_ms == report.ttft_ms and 0 <= report.generated_tokens <= 4
    with VisionChat(model, mmproj, topv=TopVOptions(enabled=False), threads=THREADS, max_tokens=4) as chat:
        again, _ = chat.ask("What is in the picture?", images=[picture])
        assert np.isfinite(chat.logits()).all()
    assert again == answer


@pytest.mark.parametrize("family", GENERATED_FAMILIES)
def test_unpruned_answer_through_llama_mtmd_cli(models_dir, libs, tmp_path_factory, family):
    picture, _ = _picture(tmp_path_factory, family)
    model, mmproj = pair_paths(family, "tiny", models_dir)
    exe = binary(libs, "llama-mtmd-cli")
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs.directory / "lib"))
    # --jinja: Gemma 4's template is not among llama.cpp's built-in ones (real Gemma 4 GGUFs need it too)
    r = subprocess.run([str(exe), "-m", str(model), "--mmproj", str(mmproj), "--image", str(picture),
                        "-p", "What is in the picture?", "-n", "4", "--temp", "0", "-t", str(THREADS), "--jinja",
                        "--no-warmup"], capture_output=True, text=True, errors="replace", env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mtmd batch encoding done" in r.stderr or "image decoded" in r.stderr, r.stderr[-2000:]


def test_image_layout_follows_llama_cpp_resizing():
    """The writer's image_layout mirrors mtmd's smart resize: rounding to the token size, the token limits."""
    q = preset_config("qwen2vl", "tiny").vision
    assert image_layout(q, 336, 224) == ImageLayout(336, 224, 12, 8, 96)
    assert image_layout(q, 42, 42).n_tokens >= 8  # below the minimum of 8 tokens: scaled up
    assert image_layout(q, 4000, 4000).n_tokens <= 4096  # above the maximum: scaled down
    p = preset_config("pixtral", "tiny").vision
    lay = image_layout(p, 48, 32)
    assert lay.n_tokens == lay.nx * lay.ny + lay.ny - 1 and lay.nx * lay.ny >= 8


def test_qwen25vl_attends_in_112_px_windows(models_dir, libs, tmp_path):
    """The window layout is in effect: with full attention in fewer blocks (n_wa_pattern 4: block 1 windowed
    too) the image tokens of a picture spanning 3 x 2 windows change, those of a picture inside one window
    (112 x 112) do not. (n_wa_pattern 1, all global, is no valid mmproj: the graph then lacks window_mask.)"""
    from dataclasses import replace

    from topv_edge.lab.synth import pair_weights, write_mmproj

    cfg = preset_config("qwen25vl", "tiny")
    model, mmproj = pair_paths("qwen25vl", "tiny", models_dir)
    glob = write_mmproj(tmp_path / "mmproj-fewer-global.gguf", replace(cfg.vision, n_wa_pattern=4), cfg.text.n_embd,
                        pair_weights("qwen25vl", "tiny")[1])
    out = {}
    for size in ((336, 224), (112, 112)):
        pic = tmp_path / f"{size[0]}.png"
        demo_image(size, seed=3).save(pic)
        for name, mm in (("window", mmproj), ("global", glob)):
            s = _Mtmd(libs, model, mm)
            try:
                out[size, name] = s.run(pic)["embd"]
            finally:
                s.close()
    assert out[(336, 224), "window"].shape[0] == 96
    assert not np.allclose(out[(336, 224), "window"], out[(336, 224), "global"], atol=1e-3)
    np.testing.assert_allclose(out[(112, 112), "window"], out[(112, 112), "global"], atol=1e-4)
